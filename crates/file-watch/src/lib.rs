//! The file-system watch behind config reload and certificate reload: it watches the
//! *directories* that hold the files, not the files, because the files are replaced rather
//! than edited in place — an editor saves by rename, and a Kubernetes ConfigMap or Secret
//! volume swaps its `..data` symlink — and a watch on the old file would go quiet. It only
//! says "something changed, and the burst has settled".
//!
//! Must not: read or parse the watched files, or decide whether a change matters; its owners
//! compare the bytes and reload (or refuse) themselves.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;

/// The entry a Kubernetes ConfigMap or Secret volume swaps to publish a new version.
const KUBERNETES_DATA: &str = "..data";

/// A running watch. Dropping it stops the watch.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
}

/// Why no watch could be started; the owner falls back to its other trigger.
#[derive(Debug)]
pub struct WatchError {
    dir: Option<PathBuf>,
    source: notify::Error,
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dir {
            Some(dir) => write!(f, "cannot watch {}: {}", dir.display(), self.source),
            None => write!(f, "{}", self.source),
        }
    }
}

impl std::error::Error for WatchError {}

impl FileWatch {
    /// Watches one file: events in its directory (`.` for a bare name) that name the file,
    /// or the `..data` entry a ConfigMap mount swaps.
    pub fn file(path: &Path) -> Result<Self, WatchError> {
        let names = path
            .file_name()
            .map(|name| vec![name.to_os_string(), OsString::from(KUBERNETES_DATA)])
            .unwrap_or_default();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::start(&[dir], Some(names))
    }

    /// Watches every entry of these directories (duplicates are watched once); any event in
    /// any of them counts. All must be watchable, or there is no watch.
    pub fn directories(dirs: impl IntoIterator<Item = PathBuf>) -> Result<Self, WatchError> {
        let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
        dirs.sort();
        dirs.dedup();
        Self::start(&dirs, None)
    }

    /// `names`: the entry names that count; `None`, every event.
    fn start(dirs: &[PathBuf], names: Option<Vec<OsString>>) -> Result<Self, WatchError> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else {
                    return;
                };
                // Reading a file is not changing it: the owner's own read after each wake
                // would otherwise wake the watch again, a reload loop at the settle pace.
                if !changes_entries(&event.kind) {
                    return;
                }
                let relevant = match &names {
                    None => true,
                    Some(names) => event
                        .paths
                        .iter()
                        .any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n))),
                };
                if relevant {
                    let _ = tx.send(());
                }
            })
            .map_err(|source| WatchError { dir: None, source })?;
        for dir in dirs {
            watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    dir: Some(dir.clone()),
                    source,
                })?;
        }
        Ok(FileWatch {
            _watcher: watcher,
            events,
        })
    }

    /// Waits for the next event. Cancel-safe, for a `select!` branch; follow it with
    /// [`FileWatch::settle`].
    pub async fn changed(&mut self) -> Option<()> {
        self.events.recv().await
    }

    /// A replacement is several file operations: waits `quiet` for them to land, then drops
    /// the events they raised, so the owner reads the files once.
    pub async fn settle(&mut self, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        while self.events.try_recv().is_ok() {}
    }
}

/// Whether an event may mean new content: anything but an access, except a close after
/// writing (notify's backend also reports every open, which a read makes).
fn changes_entries(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Long enough for inotify on a loaded machine; only reached when a test fails.
    const EVENT: Duration = Duration::from_secs(5);
    /// How long "no event" is watched for.
    const QUIET: Duration = Duration::from_millis(300);

    async fn woke(watch: &mut FileWatch, within: Duration) -> bool {
        tokio::time::timeout(within, watch.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn a_file_wakes_on_its_replacement_and_not_on_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pachgate.toml");
        fs::write(&path, "a").unwrap();
        let mut watch = FileWatch::file(&path).unwrap();

        fs::write(dir.path().join("other.toml"), "x").unwrap();
        assert!(
            !woke(&mut watch, QUIET).await,
            "a neighbour's write woke the watch"
        );

        // An editor's save: a new file renamed over the old one.
        let tmp = dir.path().join(".pachgate.toml.swp");
        fs::write(&tmp, "b").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(
            woke(&mut watch, EVENT).await,
            "the rename over the file was not seen"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_file_wakes_on_a_configmap_data_swap() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("..v1")).unwrap();
        fs::write(dir.path().join("..v1/pachgate.toml"), "a").unwrap();
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pachgate.toml", dir.path().join("pachgate.toml"))
            .unwrap();
        let mut watch = FileWatch::file(&dir.path().join("pachgate.toml")).unwrap();

        // What the kubelet does: a new version directory, a new link, renamed over `..data`;
        // the `pachgate.toml` entry itself never changes.
        fs::create_dir(dir.path().join("..v2")).unwrap();
        fs::write(dir.path().join("..v2/pachgate.toml"), "b").unwrap();
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        assert!(
            woke(&mut watch, EVENT).await,
            "the ..data swap was not seen"
        );
    }

    #[tokio::test]
    async fn directories_wake_on_any_entry_and_settle_drains_the_burst() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut watch = FileWatch::directories([
            a.path().to_path_buf(),
            b.path().to_path_buf(),
            a.path().to_path_buf(),
        ])
        .unwrap();

        fs::write(b.path().join("tls.key"), "k").unwrap();
        fs::write(b.path().join("tls.crt"), "c").unwrap();
        fs::write(a.path().join("anything"), "x").unwrap();
        assert!(
            woke(&mut watch, EVENT).await,
            "writes in the directories were not seen"
        );
        watch.settle(QUIET).await;
        assert!(
            !woke(&mut watch, QUIET).await,
            "settle left events of the same burst"
        );

        fs::write(a.path().join("anything"), "y").unwrap();
        assert!(woke(&mut watch, EVENT).await, "a later write was not seen");
    }

    /// The owners read the files after each wake: those reads (opens, in inotify's terms)
    /// must not wake the watch again.
    #[tokio::test]
    async fn reading_the_watched_files_wakes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pachgate.toml");
        fs::write(&path, "a").unwrap();
        fs::write(dir.path().join("tls.crt"), "c").unwrap();
        let mut file = FileWatch::file(&path).unwrap();
        let mut directory = FileWatch::directories([dir.path().to_path_buf()]).unwrap();

        fs::read(&path).unwrap();
        fs::read(dir.path().join("tls.crt")).unwrap();
        assert!(
            !woke(&mut file, QUIET).await,
            "a read woke the file's watch"
        );
        assert!(
            !woke(&mut directory, QUIET).await,
            "a read woke the directory's watch"
        );

        fs::write(&path, "b").unwrap();
        assert!(woke(&mut file, EVENT).await, "a write was not seen");
        assert!(woke(&mut directory, EVENT).await, "a write was not seen");
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = FileWatch::directories([missing.clone()]).err().unwrap();
        assert!(
            error.to_string().contains(&*missing.to_string_lossy()),
            "{error}"
        );
    }
}
