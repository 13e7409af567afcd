//! Running a configuration: binding listeners, swapping in reloaded configs (SIGHUP or a
//! change to the file), moving listeners whose address changed, and the graceful drain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pachgate_file_watch::FileWatch;
use pachgate_proxy_core::{Gateway, PlainMode};
use pachgate_tls::{CertificateInfo, ListenerTlsHandle};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{self, ListenerTlsSource, RuntimeConfig};
use crate::signals::{Hangups, ShutdownSignals};
use crate::workers::{OwnedTasks, WorkerSockets, Workers};

/// The re-check behind the file-system watch on certificate files, in case an event is
/// missed (network file systems, for example).
const CERTIFICATE_RECHECK: Duration = Duration::from_secs(10);
/// After the drain deadline, how long websocket tunnels get to deliver their close frames.
const TUNNEL_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Edits arrive as several file-system events (write, rename, the `..data` swap of a
/// Kubernetes ConfigMap); the file is read once they settle.
const CONFIG_SETTLE: Duration = Duration::from_millis(300);

struct BoundListener {
    /// The address as configured (`:0` stays `:0`), compared on reload.
    configured: SocketAddr,
    _accepting: OwnedTasks,
}

struct HttpsListener {
    socket: BoundListener,
    bound: SocketAddr,
    source: ListenerTlsSource,
    config: Arc<ArcSwap<ServerConfig>>,
    _certificate_watch: OwnedTasks,
}

/// What the status page shows besides the gateway's own state.
pub struct ServedState {
    pub certificates: ArcSwap<Vec<CertificateInfo>>,
    pub config_file: Option<PathBuf>,
    pub started: std::time::Instant,
}

/// The listeners of the running configuration, and the workers that accept on them.
struct Listeners {
    https: Option<HttpsListener>,
    http: Option<BoundListener>,
    admin: Option<BoundListener>,
    workers: Workers,
}

/// Listener work prepared before anything running is touched, so that a reload that fails
/// (a port in use, a bad certificate, no file descriptor left) changes nothing: every step
/// that can fail is done here, and [`Listeners::commit`] only installs.
struct Prepared {
    https_socket: Option<NewSocket<WorkerSockets>>,
    /// Where https will listen once committed (the new socket, or the one kept).
    https_bound: Option<SocketAddr>,
    tls: Option<(ListenerTlsSource, ListenerTlsHandle)>,
    http_socket: Option<NewSocket<WorkerSockets>>,
    admin_socket: Option<NewSocket<TcpListener>>,
}

/// A socket bound for a listener, announced only once it is installed: a reload refused
/// after binding must not tell scripts that a port is ready.
struct NewSocket<S> {
    socket: S,
    local: SocketAddr,
    what: &'static str,
}

impl<S> NewSocket<S> {
    /// Tests and scripts wait for this line; it is the contract for "ready on this port".
    /// Queued for its own thread: stdout that nobody reads must not stall the reload that
    /// moved a listener, nor a closed one (EPIPE) panic it.
    fn announce(self) -> S {
        crate::announce::announce(format!(
            "pachgate: {} listening on {}",
            self.what, self.local
        ));
        self.socket
    }
}

impl Listeners {
    fn none(workers: Workers) -> Self {
        Listeners {
            https: None,
            http: None,
            admin: None,
            workers,
        }
    }

    async fn prepare(&self, runtime: &ListenerShape) -> Result<Prepared, String> {
        if runtime.https.is_some() && runtime.tls.is_none() {
            return Err("listen.https is set but [tls] is missing".into());
        }
        let moved = |current: Option<SocketAddr>, wanted: Option<SocketAddr>| match wanted {
            Some(addr) if current != Some(addr) => Some(addr),
            _ => None,
        };
        let mut prepared = Prepared {
            https_socket: None,
            https_bound: runtime
                .https
                .and_then(|_| self.https.as_ref().map(|h| h.bound)),
            tls: None,
            http_socket: None,
            admin_socket: None,
        };
        let for_workers = |bound: NewSocket<TcpListener>| -> Result<_, String> {
            Ok(NewSocket {
                socket: self.workers.share(bound.socket)?,
                local: bound.local,
                what: bound.what,
            })
        };
        if let Some(addr) = moved(
            self.https.as_ref().map(|h| h.socket.configured),
            runtime.https,
        ) {
            let bound = bind(addr, "https").await?;
            prepared.https_bound = Some(bound.local);
            prepared.https_socket = Some(for_workers(bound)?);
        }
        if let Some(addr) = moved(
            self.http.as_ref().map(|l| l.configured),
            runtime.http.map(|(addr, _)| addr),
        ) {
            prepared.http_socket = Some(for_workers(bind(addr, "http").await?)?);
        }
        if let Some(addr) = moved(self.admin.as_ref().map(|l| l.configured), runtime.admin) {
            prepared.admin_socket = Some(bind(addr, "admin").await?);
        }
        // Last: building it may write files (a self-signed leaf issued for new hosts), and a
        // running listener whose certificate watch reads the same files would serve them.
        // Every other step that can refuse the reload has passed by now.
        if let (Some(_), Some(source)) = (&runtime.https, &runtime.tls) {
            if self.https.as_ref().map(|h| &h.source) != Some(source) {
                let handle = source
                    .server_config()
                    .map_err(|e| format!("TLS certificate: {e}"))?;
                prepared.tls = Some((source.clone(), handle));
            }
        }
        Ok(prepared)
    }

    /// Installs prepared listeners and drops the ones the new config no longer has. Nothing
    /// here can fail, so a reload is applied whole or (refused in `prepare`) not at all.
    fn commit(
        &mut self,
        prepared: Prepared,
        runtime: &ListenerShape,
        gateway: &Arc<Gateway>,
        state: &Arc<ServedState>,
    ) {
        let Prepared {
            https_socket,
            https_bound: _,
            tls,
            http_socket,
            admin_socket,
        } = prepared;
        match runtime.https {
            None => {
                if self.https.take().is_some() {
                    // Its certificates are no longer served: no expiry series or status
                    // rows for them (an alert on a certificate nobody gets would fire).
                    publish_certificates(gateway, state, &[]);
                }
            }
            Some(configured) => self.commit_https(configured, https_socket, tls, gateway, state),
        }
        match (runtime.http, http_socket) {
            (None, _) => self.http = None,
            (Some((configured, _)), Some(socket)) => {
                let gateway = gateway.clone();
                self.http = Some(BoundListener {
                    configured,
                    _accepting: self.workers.accept_on(socket.announce(), move |socket| {
                        gateway.clone().serve_plain(socket)
                    }),
                })
            }
            (Some(_), None) => {}
        }
        match (runtime.admin, admin_socket) {
            (None, _) => self.admin = None,
            (Some(configured), Some(socket)) => {
                self.admin = Some(BoundListener {
                    configured,
                    // The admin listener stays on the control runtime: a busy worker does not
                    // delay /healthz.
                    _accepting: OwnedTasks::one(tokio::spawn(crate::admin::serve(
                        socket.announce(),
                        gateway.clone(),
                        state.clone(),
                    ))),
                })
            }
            (Some(_), None) => {}
        }
    }

    /// The https listener: new TLS material goes into the shared config cell (or starts a
    /// new listener), a new socket replaces the accept loop; the other parts stay.
    fn commit_https(
        &mut self,
        configured: SocketAddr,
        socket: Option<NewSocket<WorkerSockets>>,
        tls: Option<(ListenerTlsSource, ListenerTlsHandle)>,
        gateway: &Arc<Gateway>,
        state: &Arc<ServedState>,
    ) {
        let mut fresh_tls = None;
        if let Some((source, handle)) = tls {
            let handle = Arc::new(handle);
            let watch = OwnedTasks::one(tokio::spawn(handle.clone().watch(
                CERTIFICATE_RECHECK,
                certificate_observer(gateway, state, &handle),
            )));
            publish_certificates(gateway, state, &handle.certificates());
            match &mut self.https {
                Some(https) => {
                    https.config.store(handle.config.clone());
                    https.source = source;
                    https._certificate_watch = watch;
                }
                None => fresh_tls = Some((source, handle.config.clone(), watch)),
            }
        }
        let Some(socket) = socket else {
            return;
        };
        let bound = socket.local;
        let serve_tls = |config: Arc<ArcSwap<ServerConfig>>| {
            let gateway = gateway.clone();
            move |socket| gateway.clone().serve_tls(socket, config.clone())
        };
        match (&mut self.https, fresh_tls) {
            (Some(https), _) => {
                https.bound = bound;
                https.socket = BoundListener {
                    configured,
                    _accepting: self
                        .workers
                        .accept_on(socket.announce(), serve_tls(https.config.clone())),
                };
            }
            (None, Some((source, config, watch))) => {
                let config = Arc::new(ArcSwap::new(config));
                self.https = Some(HttpsListener {
                    socket: BoundListener {
                        configured,
                        _accepting: self
                            .workers
                            .accept_on(socket.announce(), serve_tls(config.clone())),
                    },
                    bound,
                    source,
                    config,
                    _certificate_watch: watch,
                });
            }
            // Not reached: `prepare` builds TLS whenever no https listener runs yet.
            (None, None) => tracing::error!("internal: a new https listener without TLS"),
        }
    }
}

/// The listener part of a config: addresses and the TLS setup.
struct ListenerShape {
    https: Option<SocketAddr>,
    http: Option<(SocketAddr, PlainMode)>,
    admin: Option<SocketAddr>,
    tls: Option<ListenerTlsSource>,
}

impl ListenerShape {
    fn of(runtime: &RuntimeConfig) -> Self {
        ListenerShape {
            https: runtime.https,
            http: runtime.http,
            admin: runtime.admin,
            tls: runtime.tls.clone(),
        }
    }

    /// The plaintext listener's behaviour, with the real https port when redirects go to
    /// the listen port itself and it is `:0` (known only once bound). Without a plaintext
    /// listener, `running`: the mode of the one a reload is about to close, which accepts
    /// until then (it must not start serving what it redirected).
    fn plain_mode(&self, https_bound: Option<SocketAddr>, running: PlainMode) -> PlainMode {
        match (self.http.map(|(_, mode)| mode), https_bound) {
            (Some(PlainMode::Redirect { https_port: 0 }), Some(bound)) => PlainMode::Redirect {
                https_port: bound.port(),
            },
            (Some(mode), _) => mode,
            (None, _) => running,
        }
    }
}

fn certificate_observer(
    gateway: &Arc<Gateway>,
    state: &Arc<ServedState>,
    handle: &Arc<ListenerTlsHandle>,
) -> impl Fn(&Result<(), pachgate_tls::TlsError>) + Send + 'static {
    let gateway = gateway.clone();
    let state = state.clone();
    let handle = Arc::downgrade(handle);
    move |outcome| {
        gateway.metrics().record_certificate_reload(outcome.is_ok());
        if let Some(handle) = handle.upgrade() {
            publish_certificates(&gateway, &state, &handle.certificates());
        }
    }
}

fn publish_certificates(gateway: &Gateway, state: &ServedState, certificates: &[CertificateInfo]) {
    let series: Vec<(String, String, i64)> = certificates
        .iter()
        .map(|c| (c.names.join(","), c.file.display().to_string(), c.not_after))
        .collect();
    gateway.metrics().set_certificates(&series);
    state.certificates.store(Arc::new(certificates.to_vec()));
}

/// Parses a config built in code (`demo`, `local`) and starts serving it. Returns the running
/// server and its bound https address once every listener is up.
pub async fn serve_embedded(
    name: &str,
    text: &str,
) -> Result<(JoinHandle<Result<(), String>>, SocketAddr), String> {
    let runtime = config::parse(Path::new(name), text, Path::new(".")).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    pachgate_observe::logging::set_access_format(runtime.access_log.into());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(runtime, Some(ready_tx), None));
    match ready_rx.await {
        Ok(Some(addr)) => Ok((server, addr)),
        _ => Err(match server.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => "the server stopped before it was ready".into(),
            Err(e) => e.to_string(),
        }),
    }
}

/// The file a served config came from, and the bytes it was loaded from.
pub struct ConfigFile {
    pub path: PathBuf,
    pub loaded: Vec<u8>,
}

/// Binds every listener, then serves until SIGINT/SIGTERM, reloading `config_file` (when
/// given) on SIGHUP and when the file changes. `ready` hears the bound https address.
pub async fn serve(
    runtime: RuntimeConfig,
    ready: Option<tokio::sync::oneshot::Sender<Option<SocketAddr>>>,
    config_file: Option<ConfigFile>,
) -> Result<(), String> {
    // Registered before any listener is bound, so an early SIGHUP is a reload request rather
    // than the default "terminate", and an early SIGTERM a drain.
    let mut shutdown = ShutdownSignals::register()?;
    let hangups = config_file.as_ref().and_then(|_| Hangups::register());
    // Watching before the listeners are announced: a script that edits the file as soon as
    // the port is ready must not have its edit missed.
    let watch = config_file.as_ref().and_then(|file| watch_file(&file.path));
    let drain_timeout = runtime.limits.drain_timeout;
    let drain_delay = runtime.limits.drain_delay;
    let state = Arc::new(ServedState {
        certificates: ArcSwap::from_pointee(Vec::new()),
        config_file: config_file.as_ref().map(|file| file.path.clone()),
        started: std::time::Instant::now(),
    });
    let shape = ListenerShape::of(&runtime);
    let workers = Workers::start(crate::worker_threads(runtime.worker_threads)?)?;
    let mut listeners = Listeners::none(workers);
    let prepared = listeners.prepare(&shape).await?;
    let https_bound = prepared.https_bound;
    let snapshot = runtime
        .snapshot
        .with_plain_mode(shape.plain_mode(https_bound, PlainMode::Serve));
    warn_if_connection_cap_unsafe(runtime.limits.max_connections);
    warn_if_proxy_headers_from_anyone(runtime.proxy_headers_from_anyone);
    let gateway = Gateway::new(snapshot, runtime.limits);
    gateway
        .metrics()
        .count_access_log_drops(pachgate_observe::logging::access_log_dropped);
    listeners.commit(prepared, &shape, &gateway, &state);
    if let Some(ready) = ready {
        let _ = ready.send(https_bound);
    }

    // Shared with the reloader, and kept here so listeners (the admin one above all) stay
    // up through the drain even though reloading stops.
    let listeners = Arc::new(tokio::sync::Mutex::new(listeners));
    let reloads = config_file.map(|file| {
        let reloader = Reloader {
            path: file.path,
            gateway: gateway.clone(),
            state: state.clone(),
            listeners: listeners.clone(),
        };
        OwnedTasks::one(tokio::spawn(reloader.run(file.loaded, watch, hangups)))
    });

    shutdown.recv().await;
    // Graceful drain: /readyz fails at once (the load balancer stops sending); for
    // drain_delay everything is still served, new connections included, while the balancer
    // and Kubernetes' endpoints catch up. Then listeners close, h2 clients get GOAWAY and
    // HTTP/1 clients `Connection: close`, and what is in flight gets up to drain_timeout.
    // Websocket tunnels then get close frames (1001). A second signal ends it at once.
    gateway.withdraw();
    if !drain_delay.is_zero() {
        eprintln!(
            "pachgate: /readyz now fails; serving on for {drain_delay:?} before the drain; a \
             second signal exits now"
        );
        tokio::select! {
            _ = tokio::time::sleep(drain_delay) => {}
            _ = shutdown.recv() => {
                eprintln!("pachgate: second signal; exiting now");
                return Ok(());
            }
        }
    }
    eprintln!("pachgate: draining for up to {drain_timeout:?}; a second signal exits now");
    drop(reloads);
    gateway.begin_drain();
    tokio::select! {
        _ = gateway.drained() => eprintln!("pachgate: drained; exiting"),
        _ = tokio::time::sleep(drain_timeout) => {
            eprintln!("pachgate: drain_timeout reached; closing websocket tunnels (1001) and what is left");
            gateway.close_tunnels();
            tokio::select! {
                _ = gateway.drained() => {}
                _ = tokio::time::sleep(TUNNEL_CLOSE_GRACE) => {}
                _ = shutdown.recv() => {}
            }
        }
        _ = shutdown.recv() => eprintln!("pachgate: second signal; exiting now"),
    }
    Ok(())
}

/// Re-reads the config on SIGHUP and when the file (or the directory entry a Kubernetes
/// ConfigMap swaps) changes. A valid file replaces routes, upstreams, auth, client policy
/// and listener addresses; an invalid one is logged with file:line:column, counted as a
/// failed reload, and changes nothing.
struct Reloader {
    path: PathBuf,
    gateway: Arc<Gateway>,
    state: Arc<ServedState>,
    listeners: Arc<tokio::sync::Mutex<Listeners>>,
}

impl Reloader {
    /// `loaded`: the bytes the running config came from. An edit made after they were read
    /// but before `watch` began is reloaded at once.
    async fn run(
        mut self,
        loaded: Vec<u8>,
        mut watch: Option<FileWatch>,
        mut hangups: Option<Hangups>,
    ) {
        let mut last_text = Some(loaded);
        // Unreadable for a moment (a ConfigMap's swap): the watch reports it once it is back.
        // Changed: read again once the edit has settled, as after a watch event, so that a
        // write still in progress is not taken for the new config.
        if config::read(&self.path).is_ok_and(|now| last_text.as_ref() != Some(&now)) {
            tokio::time::sleep(CONFIG_SETTLE).await;
            if let Ok(now) = config::read(&self.path) {
                if last_text.as_ref() != Some(&now) {
                    last_text = Some(now.clone());
                    self.reload("file change", Ok(now)).await;
                }
            }
        }
        loop {
            let explicit = tokio::select! {
                Some(()) = async { hangups.as_mut()?.recv().await } => true,
                Some(()) = async { watch.as_mut()?.changed().await } => {
                    if let Some(watch) = watch.as_mut() {
                        watch.settle(CONFIG_SETTLE).await;
                    }
                    false
                }
                else => return,
            };
            let text = config::read(&self.path);
            // A watch event that did not change the bytes (a touch, a chmod) is no reload.
            if !explicit && text.as_ref().ok() == last_text.as_ref() {
                continue;
            }
            last_text = text.as_ref().ok().cloned();
            let trigger = if explicit { "SIGHUP" } else { "file change" };
            self.reload(trigger, text).await;
        }
    }

    /// Applies the config in `text` (the file's bytes as just read, so what is loaded is
    /// what was compared), or reports why it cannot.
    async fn reload(&mut self, trigger: &str, text: Result<Vec<u8>, Vec<config::ConfigError>>) {
        let runtime = match text.and_then(|bytes| config::from_bytes(&self.path, &bytes)) {
            Ok(runtime) => runtime,
            Err(errors) => {
                self.gateway.metrics().record_config_reload(false);
                for error in &errors {
                    tracing::error!(%error, trigger, "config reload refused; the running config stays");
                }
                return;
            }
        };
        let shape = ListenerShape::of(&runtime);
        let mut listeners = self.listeners.lock().await;
        let prepared = match listeners.prepare(&shape).await {
            Ok(prepared) => prepared,
            Err(error) => {
                self.gateway.metrics().record_config_reload(false);
                tracing::error!(%error, trigger, "config reload refused; the running config stays");
                return;
            }
        };
        let running = self.gateway.snapshot().plain_mode();
        let mode = shape.plain_mode(prepared.https_bound, running);
        // The snapshot first: a plaintext listener reads its mode (serve, or redirect to which
        // https port) from the snapshot as it accepts, so one that `commit` starts must find
        // the new mode already there. The new https socket is bound and listening since
        // `prepare`, so a redirect to it is answered as soon as `commit` installs it.
        let routes = runtime.route_count;
        let carried = self
            .gateway
            .replace_snapshot(runtime.snapshot.with_plain_mode(mode));
        listeners.commit(prepared, &shape, &self.gateway, &self.state);
        pachgate_observe::logging::set_access_format(runtime.access_log.into());
        warn_if_proxy_headers_from_anyone(runtime.proxy_headers_from_anyone);
        let max_connections = runtime.limits.max_connections;
        if max_connections != self.gateway.max_connections() {
            // New connections only: those already open stay, even above a lowered cap.
            self.gateway.set_max_connections(max_connections);
            warn_if_connection_cap_unsafe(max_connections);
            tracing::info!(
                max_connections,
                open = self.gateway.metrics().live().connections,
                "limits.max_connections changed; open connections stay"
            );
        }
        self.gateway.metrics().record_config_reload(true);
        tracing::info!(
            file = %self.path.display(),
            routes,
            upstreams_kept = carried.upstreams_kept,
            upstreams_new = carried.upstreams_new,
            token_cache_kept = carried.token_cache_kept,
            trigger,
            "config reloaded"
        );
    }
}

/// Watches the config file's directory; events about the file, or about the entries a
/// Kubernetes ConfigMap mount swaps (`..data`), wake the reloader.
fn watch_file(path: &Path) -> Option<FileWatch> {
    FileWatch::file(path)
        .map_err(
            |e| tracing::warn!(error = %e, "no file watch on the config; reload on SIGHUP only"),
        )
        .ok()
}

/// Warns when `limits.max_connections` is off, or above what the open-files limit
/// (`ulimit -n`) can carry: an overload would then run out of descriptors before the cap.
fn warn_if_connection_cap_unsafe(max_connections: usize) {
    if max_connections == 0 {
        tracing::warn!(
            "limits.max_connections = 0: client connections are not capped, so an overload \
             can use up the open-files limit"
        );
        return;
    }
    let Some(open_files) = pachgate_proxy_core::open_files_limit() else {
        return;
    };
    let carried = pachgate_proxy_core::max_connections_for_descriptors(open_files);
    if max_connections > carried {
        tracing::warn!(
            max_connections,
            open_files,
            carried,
            "limits.max_connections is above what the open-files limit carries (each client \
             connection may need a second descriptor toward an upstream): raise `ulimit -n` \
             or lower the cap"
        );
    }
}

/// PROXY headers believed from any peer let whoever reaches the listener directly (from
/// inside the cluster, say) claim any client address, past allow-lists and rate limits.
fn warn_if_proxy_headers_from_anyone(from_anyone: bool) {
    if from_anyone {
        tracing::warn!(
            "listen.proxy_protocol is on and trusted_proxies is empty: any peer that reaches \
             the listener may send a PROXY header and name any client address; list the \
             load balancers' addresses in trusted_proxies"
        );
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<NewSocket<TcpListener>, String> {
    let socket = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))?;
    let local = socket
        .local_addr()
        .map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))?;
    Ok(NewSocket {
        socket,
        local,
        what,
    })
}
