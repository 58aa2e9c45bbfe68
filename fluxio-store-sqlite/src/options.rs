//! How a store opens its database.

use std::time::Duration;

use sqlx::sqlite::SqliteSynchronous;

/// When SQLite waits for the disk (its `synchronous` setting), in WAL journal mode.
///
/// | Setting | A crash of the process | A power loss or OS crash |
/// |---|---|---|
/// | [`Normal`](Self::Normal) (default) | loses nothing committed | may lose the last committed transactions; never corrupts the file |
/// | [`Full`](Self::Full) | loses nothing committed | loses nothing committed |
///
/// `Normal` syncs the write-ahead log only when SQLite checkpoints it into the database file,
/// so a commit costs no `fsync`; `Full` syncs the log at every commit. For a checkpoint store
/// `Normal` is usually right: a run that loses its last stages to a power cut resumes from an
/// earlier stage and runs those stages again. Choose `Full` when stages have side effects
/// that must not happen twice even then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous = NORMAL`: no sync at commit; durable across process crashes, and
    /// across power loss up to the last checkpoint of the log.
    #[default]
    Normal,
    /// `synchronous = FULL`: the log is synced at every commit; durable across power loss.
    Full,
}

impl Synchronous {
    pub(crate) fn to_sqlx(self) -> SqliteSynchronous {
        match self {
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Full => SqliteSynchronous::Full,
        }
    }
}

/// Options of [`SqliteStore::open_with`](crate::SqliteStore::open_with).
///
/// ```
/// use std::time::Duration;
/// use fluxio_store_sqlite::{SqliteOptions, Synchronous};
///
/// let options = SqliteOptions::new()
///     .synchronous(Synchronous::Full)
///     .busy_timeout(Duration::from_secs(10));
/// assert_eq!(options.synchronous, Synchronous::Full);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// When SQLite waits for the disk; [`Synchronous::Normal`] by default.
    pub synchronous: Synchronous,
    /// How long a statement waits for another connection (of this or another process) that
    /// holds the database's write lock before it fails; 5 seconds by default.
    pub busy_timeout: Duration,
    /// How many connections serve reads (`load`, `exists`) at once; 4 by default (at least 1).
    pub read_connections: u32,
    /// The most writes committed together in one transaction; 256 by default (at least 1,
    /// at most 4,096: the length of the writer's queue).
    pub max_batch: usize,
    /// Opens the file read-only: reads work (`load`, `exists`, so `diff`), every write fails
    /// — taking a run's lock is a write, so `resume` and `replay` need a writable store, even
    /// for a completed run. The file must exist and have the current schema. `false` by
    /// default.
    pub read_only: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
            max_batch: 256,
            read_only: false,
        }
    }
}

impl SqliteOptions {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the `synchronous` field.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets the `busy_timeout` field.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets the `read_connections` field.
    pub fn read_connections(mut self, n: u32) -> Self {
        self.read_connections = n;
        self
    }

    /// Sets the `max_batch` field.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets the `read_only` field.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }
}
