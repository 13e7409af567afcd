//! Proxy workers: one thread per worker, each running its own current-thread Tokio runtime
//! and accepting on the same listening sockets (the way nginx, HAProxy and Envoy run one
//! event loop per core). A connection and its streams stay on the worker that accepted it,
//! and each worker keeps its own h2 connection to each upstream endpoint.
//!
//! Why not Tokio's multi-thread scheduler: it runs a woken task from a LIFO slot right away,
//! so a connection task wrote to its socket after each stream task queued a frame for it
//! (strace: 16 writev per read on server streaming), and its work stealing keeps shared
//! queues a single connection never needs. Per-worker current-thread runtimes run woken
//! tasks in order, so one write carries every stream's frames (benches/README.md has the
//! figures); upstream h2 writes are cut into batches of 16 requests so the upstream need
//! not wait for the whole burst (proxy-core's upstream.rs). The control plane (signals,
//! reloads, the admin listener, certificate watches) runs on the main thread's runtime.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Tasks that end when their owner drops them: dropping a listener's accept loops closes
/// its socket (connections already accepted live in their own tasks and are not touched).
pub struct OwnedTasks(Vec<JoinHandle<()>>);

impl OwnedTasks {
    pub fn one(task: JoinHandle<()>) -> Self {
        OwnedTasks(vec![task])
    }
}

impl Drop for OwnedTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Tasks a worker polls between looks at the sockets (Tokio's default is 61). Looking more
/// often lets a connection whose bytes have arrived join the queue while the tasks woken
/// before it still run, instead of after all of them, so the proxy, its clients and its
/// upstreams overlap more (benches/README.md: unary calls/s +8 %).
const WORKER_EVENT_INTERVAL: u32 = 8;

struct Worker {
    runtime: Handle,
    /// Ends the worker's thread (its runtime, and whatever still runs on it, is dropped).
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long stopping the workers waits for their threads to finish dropping what they ran.
const WORKER_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts `count` worker threads, each with its runtime up before this returns.
    pub fn start(count: usize) -> Result<Self, String> {
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .event_interval(WORKER_EVENT_INTERVAL)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start worker runtime {index}: {e}"))?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("pachgate-worker-{index}"))
                .spawn(move || {
                    pachgate_proxy_core::set_worker_index(index);
                    // Dropping the runtime at the end drops whatever it still runs.
                    let _ = runtime.block_on(stopped);
                })
                .map_err(|e| format!("cannot start worker thread {index}: {e}"))?;
            workers.push(Worker {
                runtime: handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    /// One handle to `listener` for each worker, made before anything is started with
    /// them: a clone that fails (out of file descriptors) fails here, while a reload is
    /// still only prepared, and [`Workers::accept_on`] has nothing left that can fail.
    pub fn share(&self, listener: TcpListener) -> Result<WorkerSockets, String> {
        let socket = listener
            .into_std()
            .map_err(|e| format!("cannot hand the listener to the workers: {e}"))?;
        let handles = self
            .workers
            .iter()
            .map(|_| socket.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot hand the listener to the workers: {e}"))?;
        Ok(WorkerSockets(handles))
    }

    /// Runs `accept_loop` on every worker, each with its own handle to the socket. The
    /// socket closes once every loop has ended (returned, or aborted by dropping the tasks).
    pub fn accept_on<F, Fut>(&self, sockets: WorkerSockets, accept_loop: F) -> OwnedTasks
    where
        F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        debug_assert_eq!(
            sockets.0.len(),
            self.workers.len(),
            "shared by other workers"
        );
        let mut tasks = Vec::with_capacity(self.workers.len());
        for (worker, socket) in self.workers.iter().zip(sockets.0) {
            let accept_loop = accept_loop.clone();
            tasks.push(worker.runtime.spawn(async move {
                // Registered with this worker's reactor, so accepts happen on this thread.
                match TcpListener::from_std(socket) {
                    Ok(listener) => accept_loop(listener).await,
                    Err(e) => tracing::error!(error = %e, "a worker cannot watch a listener"),
                }
            }));
        }
        OwnedTasks(tasks)
    }
}

/// A listening socket with a handle for each worker ([`Workers::share`]).
pub struct WorkerSockets(Vec<std::net::TcpListener>);

impl Drop for Workers {
    /// Stops every worker and waits (up to [`WORKER_STOP_WAIT`]) for its thread to end. A
    /// worker's runtime drops the requests still running on it (streams cut at the drain
    /// deadline), and each writes its access-log line as it goes: the log's final flush at
    /// exit must come after those lines, not race them.
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
        let deadline = std::time::Instant::now() + WORKER_STOP_WAIT;
        for worker in &mut self.workers {
            let Some(thread) = worker.thread.take() else {
                continue;
            };
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Dropping the workers returns only once what still ran on them has been dropped (a
    /// request cut at the drain deadline writes its access-log line as it is dropped).
    #[test]
    fn stopping_the_workers_waits_for_their_tasks_to_be_dropped() {
        struct SlowToDrop(Arc<AtomicBool>);
        impl Drop for SlowToDrop {
            fn drop(&mut self) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let workers = Workers::start(2).unwrap();
        let held = SlowToDrop(dropped.clone());
        let (running, started) = std::sync::mpsc::channel();
        workers.workers[1].runtime.spawn(async move {
            let _held = held;
            let _ = running.send(());
            std::future::pending::<()>().await;
        });
        started.recv().unwrap();
        drop(workers);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the task was dropped before this"
        );
    }
}
