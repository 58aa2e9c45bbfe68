//! Helpers shared by the integration tests: real database files in the temp directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fluxio_core::store::{StoreError, StoreResult};

/// A database path in the temp directory, unique to this test; its files (the database,
/// `-wal` and `-shm`) are removed when it is dropped.
pub(crate) struct TempDb {
    path: PathBuf,
}

impl TempDb {
    pub(crate) fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "fluxio-sqlite-{name}-{}-{nanos}-{}.db",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        TempDb { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A store result reduced to what the contract compares: `ok(..)`, `lock-lost` or
/// `backend(operation)`.
#[allow(dead_code, reason = "not every test file uses every helper")]
pub(crate) fn shape<T: std::fmt::Debug>(r: &StoreResult<T>) -> String {
    match r {
        Ok(v) => format!("ok({v:?})"),
        Err(StoreError::LockLost { .. }) => "lock-lost".into(),
        Err(StoreError::RunLocked { run_id }) => format!("run-locked({run_id})"),
        Err(StoreError::Backend { operation, .. }) => format!("backend({operation})"),
        Err(e) => format!("other({e})"),
    }
}
