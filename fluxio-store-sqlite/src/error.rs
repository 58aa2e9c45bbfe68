//! The store's error type.

use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong in a [`SqliteStore`](crate::SqliteStore).
///
/// At the [`CheckpointStore`](fluxio_core::store::CheckpointStore) boundary these errors are
/// wrapped in [`StoreError::Backend`](fluxio_core::store::StoreError::Backend), which names
/// the operation (`save`, `load`, `acquire`, ...) — except a save refused because the writer
/// no longer holds the run's lock ([`StoreError::LockLost`](fluxio_core::store::StoreError))
/// and a stored run this store did not write (an unknown status, a column of another type:
/// [`StoreError::Corrupt`](fluxio_core::store::StoreError)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file could not be opened or configured: the directory does not exist,
    /// the path is a directory, the file is not a database, permissions, ...
    #[error("cannot open sqlite database `{}`: {source}", path.display())]
    Open {
        /// The path given to [`SqliteStore::open`](crate::SqliteStore::open).
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database is not in WAL journal mode and could not be switched to it (WAL is what
    /// lets readers and the writer, and several processes, share the file).
    #[error(
        "cannot switch sqlite database `{}` to WAL journal mode (it stays in `{mode}` mode)",
        path.display()
    )]
    JournalMode {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported.
        mode: String,
    },
    /// Creating or upgrading the schema failed.
    #[error("cannot set up the schema of sqlite database `{}` (create, read or upgrade it): {source}", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database was written by a newer version of this crate, whose schema this version
    /// does not know.
    #[error(
        "sqlite database `{}` has schema version {found}, newer than version {supported} that \
         this fluxio-store-sqlite supports",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version stored in the file.
        found: i64,
        /// The newest version this crate knows.
        supported: i64,
    },
    /// A statement failed (disk full, read-only file, lock timeout, ...).
    #[error("sqlite error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// An error shared by all the writes of one group commit: the transaction they shared
    /// could not begin or commit, so none of them was written.
    #[error(transparent)]
    Shared(Arc<Error>),
    /// `Save::Entry` or `Save::Finish` for a run that has no start record.
    #[error("run `{run_id}` has no checkpoint (never started, or deleted since)")]
    NotStarted {
        /// The run.
        run_id: String,
    },
    /// A stored run holds a status this crate does not know (the file was edited, or written
    /// by another program).
    #[error("run `{run_id}` has an unknown status `{status}` in the database")]
    UnknownStatus {
        /// The run.
        run_id: String,
        /// The stored status.
        status: String,
    },
    /// [`SqliteStore::open`](crate::SqliteStore::open) was polled outside a tokio runtime
    /// (the store's writer is a tokio task).
    #[error("opening a sqlite store needs a tokio runtime")]
    NoRuntime,
    /// The store's writer task has stopped, which happens when the tokio runtime the store
    /// was opened in shuts down while handles to the store live on.
    #[error("the sqlite store's writer task has stopped (was its tokio runtime shut down?)")]
    WriterStopped,
}
/// Lets `?` turn a store error into a `fluxio::Error` (as
/// [`Error::StoreSetup`](fluxio_core::Error::StoreSetup)), for
/// `.with_store(SqliteStore::open(path).await?)` in a function returning `fluxio::Result`.
impl From<Error> for fluxio_core::Error {
    fn from(e: Error) -> Self {
        fluxio_core::Error::StoreSetup {
            source: std::sync::Arc::new(e),
        }
    }
}
