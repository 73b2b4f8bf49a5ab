//! The table file: loaded at start, watched for hand edits, and the target of
//! admin writes (temp file, fsync, rename, fsync of the directory), so a
//! restart loses nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use isogroup_core::{Limits, RawTable, TableError};

use crate::metrics::Metrics;
use crate::state::{PublishError, Store};

/// How often the file is checked for edits. Polling works the same for
/// editors that rewrite in place, rename over, or swap symlinks (ConfigMaps).
const POLL: Duration = Duration::from_millis(200);

pub struct TableFile {
    path: PathBuf,
    /// The bytes last read or written by us: an identical file is no edit.
    known: Mutex<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { path: String, errors: Vec<TableError> },
}

impl TableFile {
    pub fn new(path: PathBuf) -> TableFile {
        TableFile { path, known: Mutex::new(Vec::new()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses the file (validation is the store's job).
    pub fn load(&self, limits: &Limits) -> Result<RawTable, FileError> {
        let bytes = std::fs::read(&self.path).map_err(|source| self.io(source))?;
        let raw = RawTable::from_json(&bytes, limits).map_err(|e| self.invalid(vec![e]))?;
        self.remember(bytes);
        Ok(raw)
    }

    /// Replaces the file atomically and durably with `bytes`.
    pub fn write(&self, bytes: &[u8]) -> Result<(), FileError> {
        self.remember(bytes.to_vec());
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            self.io(source)
        })
    }

    pub fn invalid(&self, errors: Vec<TableError>) -> FileError {
        FileError::Invalid { path: self.path.display().to_string(), errors }
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
}

/// Watches the file and publishes every valid edit; an invalid one is
/// logged and counted, and the table in force stays.
pub async fn watch(file: Arc<TableFile>, store: Arc<Store>, metrics: Arc<Metrics>) {
    let mut last_stamp = stamp(file.path());
    loop {
        tokio::time::sleep(POLL).await;
        let now = stamp(file.path());
        if now == last_stamp {
            continue;
        }
        last_stamp = now;
        take_edit(&file, &store, &metrics).await;
    }
}

/// Reads the file and publishes it if it is an edit. Under the writers'
/// lock: an admin write between our read and our publish would otherwise be
/// served under a version that this edit's publish then reuses or undoes.
async fn take_edit(file: &TableFile, store: &Store, metrics: &Metrics) {
    let _guard = store.writer.lock().await;
    let Ok(bytes) = std::fs::read(file.path()) else { return };
    if file.is_known(&bytes) {
        return;
    }
    file.remember(bytes.clone());
    let result = RawTable::from_json(&bytes, &store.limits)
        .map_err(|e| PublishError::Invalid(vec![e]))
        .and_then(|raw| store.publish(raw));
    match result {
        Ok(snap) => {
            metrics.table_updated(snap.version);
            tracing::info!(version = snap.version, path = %file.path().display(), "table file changed: published");
        }
        Err(e) => {
            metrics.file_rejects.inc();
            let path = file.path().display();
            tracing::error!(error = %e, %path, "table file edit refused; the table in force stays");
        }
    }
}

/// What tells a change cheaply: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use isogroup_core::{Limits, RawTable};

    use super::{take_edit, TableFile};
    use crate::metrics::Metrics;
    use crate::state::{Snapshot, Store};

    const TABLE: &str = r#"{"services": {"a": {"hosts": ["a"], "clusters": {"base": "a0"}}}}"#;

    #[tokio::test]
    async fn an_edit_waits_for_the_writers_lock() {
        let dir = std::env::temp_dir().join(format!("isogroup-file-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("table.json");
        std::fs::write(&path, TABLE).unwrap();
        let limits = Limits::default();
        let file = Arc::new(TableFile::new(path.clone()));
        let raw = file.load(&limits).unwrap();
        let store = Arc::new(Store::new(Snapshot::build(raw, 10, "base", &limits).unwrap(), "base".into(), limits));
        let metrics = Arc::new(Metrics::new());
        std::fs::write(&path, TABLE.replace("a0", "a1")).unwrap();
        // An admin write is in progress: the edit must not be published under it.
        let guard = store.writer.lock().await;
        let edit = tokio::spawn({
            let (file, store, metrics) = (file.clone(), store.clone(), metrics.clone());
            async move { take_edit(&file, &store, &metrics).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!edit.is_finished(), "the edit went ahead of the lock");
        assert_eq!(store.current().version, 10);
        drop(guard);
        edit.await.unwrap();
        let now = store.current();
        assert!(now.version > 10);
        let want: RawTable = serde_json::from_str(&TABLE.replace("a0", "a1")).unwrap();
        assert_eq!(now.raw.services, want.services);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
