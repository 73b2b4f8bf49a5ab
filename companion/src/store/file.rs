//! The file store, the embedded default (one replica): the table file is
//! loaded at start, watched for hand edits, and the target of admin writes
//! (temp file, fsync, rename, fsync of the directory), so a restart loses
//! nothing.
//!
//! Its epoch and the highest version it served live in a state file beside
//! the table (`<table>.state`, written atomically before anything is
//! served), where neither a hand edit nor a restore of the table file
//! lowers them: a restart goes on above that version under that epoch,
//! unless the table file is what that version served (the state file keeps
//! its digest): then it serves that version again, and pollers holding it
//! stay held. The epoch is also written into the table file; a hand edit's epoch is
//! ignored. Without a state file (first start, or it was removed) the store
//! mints a new epoch, since nothing says the table file was last written by
//! it. A file that cannot be written (a ConfigMap) gets a new epoch on
//! every start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use isogroup_core::epoch::Epoch;
use isogroup_core::{RawTable, TableError};

use super::{next_version, now_ms, Change, ChangeError, Readiness, Served, Snapshot, Store, VersionTooLarge};

/// How often the file is checked for edits. Polling works the same for
/// editors that rewrite in place, rename over, or swap symlinks (ConfigMaps).
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { path: String, errors: Vec<TableError> },
    #[error("{path}: {source}")]
    Version { path: String, source: VersionTooLarge },
}

pub struct FileStore {
    path: PathBuf,
    /// The epoch and the highest version served (`<table>.state`).
    state_path: PathBuf,
    /// The bytes last read or written by us: an identical file is no edit.
    known: Mutex<Vec<u8>>,
    /// Serialises every change (admin writes and file edits alike): each is
    /// a read-modify-write of the current table and takes the next version.
    writer: tokio::sync::Mutex<()>,
    epoch: String,
    served: Served,
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
}

impl FileStore {
    /// Loads the file and serves it; ready at once.
    pub fn open(path: PathBuf, served: Served) -> Result<Arc<FileStore>, FileError> {
        Self::open_inner(path, served, false)
    }

    fn open_inner(path: PathBuf, served: Served, _fail_writes: bool) -> Result<Arc<FileStore>, FileError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| FileError::Io { path: name.clone(), source })?;
        let raw = RawTable::from_json(&bytes, &served.limits)
            .map_err(|e| FileError::Invalid { path: name.clone(), errors: vec![e] })?;
        let state_path = state_path(&path);
        let state = read_state(&state_path);
        let epoch = match &state {
            Some(state) => state.epoch.clone(),
            None => crate::random::new_epoch(raw.epoch.as_deref()),
        };
        let fresh = raw.epoch.as_deref() != Some(epoch.as_str());
        let unchanged = state.as_ref().is_some_and(|state| serves_unchanged(&raw, state));
        let version = match &state {
            // What was last served, again: pollers holding it stay held.
            Some(state) if unchanged => state.version,
            // Above the highest version served and the file's own.
            _ => next_version(state.as_ref().map_or(0, |s| s.version), raw.version, now_ms())
                .map_err(|source| FileError::Version { path: name.clone(), source })?,
        };
        let snap = Snapshot::build(raw, Some(epoch.clone()), version, &served.base, &served.limits)
            .map_err(|errors| FileError::Invalid { path: name.clone(), errors })?;
        let store = FileStore {
            path,
            state_path,
            known: Mutex::new(bytes),
            writer: tokio::sync::Mutex::new(()),
            epoch,
            served,
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicBool::new(_fail_writes),
        };
        let recorded = if unchanged { Ok(()) } else { store.write_state(&snap) };
        if let Err(e) = recorded {
            tracing::warn!(
                epoch = %store.epoch, error = %e,
                "the state file cannot be written: this epoch holds until the next start"
            );
        } else if fresh {
            match store.write(&snap.json) {
                Ok(()) => tracing::info!(epoch = %store.epoch, path = %name, "new epoch written into the table file"),
                Err(e) => tracing::warn!(
                    epoch = %store.epoch, error = %e,
                    "the table file cannot be written: this epoch holds until the next start"
                ),
            }
        }
        store.served.publish(snap);
        store.served.set_readiness(Readiness::Ready);
        Ok(Arc::new(store))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the table file atomically and durably with `bytes`.
    fn write(&self, bytes: &[u8]) -> Result<(), FileError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.io(std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem)));
        }
        self.remember(bytes.to_vec());
        replace_file(&self.path, bytes).map_err(|source| self.io(source))
    }

    /// Records `snap`'s epoch and version as the highest served, before it
    /// is served.
    fn write_state(&self, snap: &Snapshot) -> Result<(), FileError> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.io(std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem)));
        }
        let state = State { epoch: self.epoch.clone(), version: snap.version, digest: Some(digest(&snap.json)) };
        let bytes = serde_json::to_vec(&state).unwrap_or_default();
        replace_file(&self.state_path, &bytes)
            .map_err(|source| FileError::Io { path: self.state_path.display().to_string(), source })
    }

    fn io(&self, source: std::io::Error) -> FileError {
        FileError::Io { path: self.path.display().to_string(), source }
    }

    fn remember(&self, bytes: Vec<u8>) {
        if let Ok(mut known) = self.known.lock() {
            *known = bytes;
        }
    }

    fn is_known(&self, bytes: &[u8]) -> bool {
        self.known.lock().map(|k| *k == bytes).unwrap_or(false)
    }

    /// Watches the file and publishes every valid edit; an invalid one is
    /// logged and counted, and the table in force stays.
    pub async fn watch(self: Arc<Self>) {
        let mut last_stamp = stamp(&self.path);
        loop {
            tokio::time::sleep(POLL).await;
            let now = stamp(&self.path);
            if now == last_stamp {
                continue;
            }
            last_stamp = now;
            self.take_edit().await;
        }
    }

    /// Reads the file and publishes it if it is an edit. Under the writers'
    /// lock: an admin write between our read and our publish would otherwise
    /// be served under a version that this edit's publish then reuses or
    /// undoes.
    async fn take_edit(&self) {
        let _guard = self.writer.lock().await;
        let Ok(bytes) = std::fs::read(&self.path) else { return };
        if self.is_known(&bytes) {
            return;
        }
        self.remember(bytes.clone());
        let path = self.path.display().to_string();
        let served = &self.served;
        let result = RawTable::from_json(&bytes, &served.limits)
            .map_err(|e| FileError::Invalid { path: path.clone(), errors: vec![e] })
            .and_then(|raw| {
                let version = next_version(served.current().version, raw.version, now_ms())
                    .map_err(|source| FileError::Version { path: path.clone(), source })?;
                // A hand edit's epoch is ignored: the store owns it.
                Snapshot::build(raw, Some(self.epoch.clone()), version, &served.base, &served.limits)
                    .map_err(|errors| FileError::Invalid { path: path.clone(), errors })
            });
        match result {
            Ok(snap) => {
                // The edit's version is kept where a restart finds it (the
                // table file keeps the edit as it is).
                if let Err(e) = self.write_state(&snap) {
                    tracing::warn!(error = %e, "the state file cannot be written; the edit is served anyway");
                }
                let snap = served.publish(snap);
                tracing::info!(version = snap.version, %path, "table file changed: published");
            }
            Err(e) => {
                served.metrics().file_rejects.inc();
                tracing::error!(error = %e, "table file edit refused; the table in force stays");
            }
        }
    }
}

impl Store for FileStore {
    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Arc<Snapshot>, ChangeError>> {
        Box::pin(async move {
            let _guard = self.writer.lock().await;
            let current = self.served.current();
            let Some(next) = change.apply_to(&current.raw, &self.served.base)? else {
                return Ok(current);
            };
            let version = next_version(current.version, 0, now_ms())?;
            let snap = Snapshot::build(next, Some(self.epoch.clone()), version, &self.served.base, &self.served.limits)
                .map_err(ChangeError::Invalid)?;
            // Durable first: a write that cannot be made durable is not
            // served. The state first: a crash between the two leaves a
            // version above the file's, never below.
            self.write_state(&snap).map_err(|e| ChangeError::WriteFailed(e.to_string()))?;
            self.write(&snap.json).map_err(|e| ChangeError::WriteFailed(e.to_string()))?;
            Ok(self.served.publish(snap))
        })
    }

    fn served(&self) -> &Served {
        &self.served
    }
}

/// `<table>.state`: the epoch and the highest version served, and the
/// digest of that version's JSON as served (absent in state files written
/// before it was kept: a restart then takes a new version).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    epoch: String,
    version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
}

/// SHA-256 of served JSON, in hex.
fn digest(json: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(json).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `raw` (the table file), served under the state's epoch and
/// version, is byte for byte what was served under them: then a restart
/// serves that version again. A file asking for a higher version (a hand
/// edit) is a change whatever its content.
fn serves_unchanged(raw: &RawTable, state: &State) -> bool {
    let Some(served) = &state.digest else { return false };
    if raw.version > state.version {
        return false;
    }
    let mut stamped = raw.clone();
    stamped.epoch = Some(state.epoch.clone());
    stamped.version = state.version;
    // As `Snapshot::build` writes it.
    serde_json::to_vec(&stamped).is_ok_and(|json| digest(&json) == *served)
}

fn state_path(table: &Path) -> PathBuf {
    let mut name = table.file_name().unwrap_or_default().to_os_string();
    name.push(".state");
    table.with_file_name(name)
}

/// The state file, when it exists and holds a valid epoch (anything else
/// is as if it were missing: a new epoch).
fn read_state(path: &Path) -> Option<State> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<State>(&bytes) {
        Ok(state) if Epoch::parse(&state.epoch).is_some() => Some(state),
        Ok(_) | Err(_) => {
            tracing::warn!(path = %path.display(), "the state file is unreadable; a new epoch");
            None
        }
    }
}

/// Replaces `path` atomically and durably with `bytes` (temp file, fsync,
/// rename, fsync of the directory). The temp file name is unique per
/// write, so replicas sharing a volume never collide.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{:016x}.tmp", std::process::id(), crate::random::u64()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What tells a change cheaply: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use isogroup_core::{Limits, RawTable};

    use super::FileStore;
    use crate::metrics::Metrics;
    use crate::store::{Change, Served, Store};

    const TABLE: &str = r#"{"version": 3, "services": {"a": {"hosts": ["a"], "clusters": {"base": "a0"}}}}"#;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("isogroup-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn served() -> Served {
        Served::new("base".into(), Limits::default(), Arc::new(Metrics::new())).unwrap()
    }

    fn on_disk(path: &PathBuf) -> RawTable {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn an_edit_waits_for_the_writers_lock() {
        let dir = dir("lock");
        let path = dir.join("table.json");
        std::fs::write(&path, TABLE).unwrap();
        let store = FileStore::open(path.clone(), served()).unwrap();
        let v = store.served.current().version;
        std::fs::write(&path, TABLE.replace("a0", "a1")).unwrap();
        // An admin write is in progress: the edit must not be published under it.
        let guard = store.writer.lock().await;
        let edit = tokio::spawn({
            let store = store.clone();
            async move { store.take_edit().await }
        });
        // Only a bounded wait can show that something does not happen.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!edit.is_finished(), "the edit went ahead of the lock");
        assert_eq!(store.served.current().version, v);
        drop(guard);
        edit.await.unwrap();
        let now = store.served.current();
        assert!(now.version > v);
        assert_eq!(now.raw.services["a"].clusters["base"], "a1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_epoch_is_written_kept_and_hand_edits_cannot_change_it() {
        let dir = dir("epoch");
        let path = dir.join("table.json");
        std::fs::write(&path, TABLE).unwrap();
        let store = FileStore::open(path.clone(), served()).unwrap();
        let first = store.served.current();
        let epoch = first.epoch.clone().unwrap();
        // written into the file with the version at start
        assert_eq!((on_disk(&path).epoch, on_disk(&path).version), (Some(epoch.clone()), first.version));
        // a hand edit naming another epoch: published under ours
        std::fs::write(&path, TABLE.replace("a0", "a1").replace(r#""version": 3"#, r#""epoch": "99999999999999-ff""#))
            .unwrap();
        store.take_edit().await;
        let edited = store.served.current();
        assert_eq!(edited.raw.services["a"].clusters["base"], "a1");
        assert_eq!(edited.epoch.as_deref(), Some(&*epoch));
        assert!(edited.stamp() > first.stamp());
        // an admin write lands in the file with our epoch
        let change = Change::Register { service: "a".into(), group: "x".into(), cluster: "ax".into() };
        let written = store.apply(change.clone()).await.unwrap();
        assert_eq!(on_disk(&path).epoch.as_deref(), Some(&*epoch));
        assert!(written.stamp() > edited.stamp());
        // the same change again changes nothing: no new version
        assert_eq!(store.apply(change).await.unwrap().version, written.version);
        // a restart on the table it last served serves the same (epoch, version)
        drop(store);
        let again = FileStore::open(path.clone(), served()).unwrap();
        let restarted = again.served.current();
        assert_eq!(restarted.epoch.as_deref(), Some(&*epoch));
        assert_eq!(restarted.version, written.version);
        assert_eq!(restarted.json, written.json);
        // no temp files left behind
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["table.json", "table.json.state"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_written_gets_an_epoch_per_start() {
        let dir = dir("readonly");
        let path = dir.join("table.json");
        std::fs::write(&path, TABLE).unwrap();
        let a = FileStore::open_inner(path.clone(), served(), true).unwrap();
        let b = FileStore::open_inner(path.clone(), served(), true).unwrap();
        let (a, b) = (a.served.current(), b.served.current());
        assert_ne!(a.epoch, b.epoch);
        assert!(a.epoch.is_some() && b.epoch.is_some());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), TABLE, "the file is untouched");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A state file written before the digest was kept: a restart goes on
    /// above its version under its epoch (and records the digest).
    #[tokio::test]
    async fn a_state_file_without_a_digest_takes_a_new_version() {
        let dir = dir("nodigest");
        let path = dir.join("table.json");
        std::fs::write(&path, TABLE).unwrap();
        let first = FileStore::open(path.clone(), served()).unwrap().served.current();
        let state_path = dir.join("table.json.state");
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
        assert!(state["digest"].is_string(), "{state}");
        let old_format = serde_json::json!({ "epoch": first.epoch, "version": first.version });
        std::fs::write(&state_path, old_format.to_string()).unwrap();
        let second = FileStore::open(path.clone(), served()).unwrap().served.current();
        assert_eq!(second.epoch, first.epoch);
        assert!(second.version > first.version);
        // the digest is kept again: the next restart keeps the version
        let third = FileStore::open(path.clone(), served()).unwrap().served.current();
        assert_eq!((third.epoch.clone(), third.version), (second.epoch.clone(), second.version));
        // a digest that does not match (a state file edited by hand): a new version
        std::fs::write(&state_path, r#"{"epoch":"EPOCH","version":VERSION,"digest":"00"}"#
            .replace("EPOCH", third.epoch.as_deref().unwrap())
            .replace("VERSION", &third.version.to_string()))
        .unwrap();
        let fourth = FileStore::open(path.clone(), served()).unwrap().served.current();
        assert!(fourth.version > third.version);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A restored older table file, or one hand-edited back, and a restart:
    /// the epoch stays and the version goes on above the highest served,
    /// even one a hand edit set far above the clock.
    #[tokio::test]
    async fn a_restored_older_file_and_a_restart_never_go_back() {
        let dir = dir("restore");
        let path = dir.join("table.json");
        std::fs::write(&path, TABLE).unwrap();
        let store = FileStore::open(path.clone(), served()).unwrap();
        let epoch = store.served.current().epoch.clone().unwrap();
        let backup = std::fs::read(&path).unwrap();
        let change = Change::Register { service: "a".into(), group: "x".into(), cluster: "ax".into() };
        store.apply(change).await.unwrap();
        // A hand edit with a version far above the clock: served, and the
        // table file keeps the edit as it was written.
        let far = super::now_ms() * 1000;
        std::fs::write(&path, TABLE.replace("a0", "a9").replace(r#""version": 3"#, &format!(r#""version": {far}"#)))
            .unwrap();
        store.take_edit().await;
        let highest = store.served.current();
        assert_eq!(highest.version, far);
        drop(store);
        // The backup taken before both comes back, and the companion restarts.
        std::fs::write(&path, &backup).unwrap();
        let again = FileStore::open(path.clone(), served()).unwrap();
        let restarted = again.served.current();
        assert_eq!(restarted.epoch.as_deref(), Some(&*epoch), "the same epoch");
        assert!(restarted.version > highest.version, "{} > {}", restarted.version, highest.version);
        drop(again);
        // A table file from another store (another epoch), same state file:
        // its epoch is ignored, and what it serves is what was last served
        // (the backup's content), so that version stays.
        std::fs::write(&path, TABLE.replace(r#""version": 3"#, r#""epoch": "99999999999999-ff""#)).unwrap();
        let third = FileStore::open(path.clone(), served()).unwrap().served.current();
        assert_eq!(third.epoch.as_deref(), Some(&*epoch));
        assert_eq!(third.version, restarted.version);
        // No state file (removed, or a table file brought from elsewhere):
        // nothing says who wrote the table, so a new, newer epoch.
        std::fs::remove_file(dir.join("table.json.state")).unwrap();
        let fourth = FileStore::open(path.clone(), served()).unwrap().served.current();
        assert!(fourth.stamp() > third.stamp());
        assert_ne!(fourth.epoch.as_deref(), Some(&*epoch));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
