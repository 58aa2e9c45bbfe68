//! Durable execution: the checkpoint store interface, the checkpoint format, and the
//! in-memory store.
//!
//! A durable run writes, in order: a *start* record (the pipeline version and the input
//! context), one *entry* per finished stage (the keys it wrote and its done mark, in one
//! atomic append), and a *finish* record (completed, or failed with the error text). An
//! entry holds only what its stage wrote, so the bytes a run writes grow with what its stages
//! produce, not with the size of the whole context at every step.
//!
//! Stores keep these records as opaque bytes; [`format`](mod@format) encodes and decodes them.

pub mod contract;
mod depth;
pub mod format;
mod forward;
mod memory;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use forward::ForwardStore;
pub use memory::InMemoryStore;

/// A boxed, sendable future, as store methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `Result` of store operations.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// A type-erased error of a store's backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The run's lock belongs to another owner (or expired and was taken): this holder must
    /// stop writing. This is the fencing that keeps a stale process from overwriting.
    #[error("the lock on run `{run_id}` is held by another owner")]
    LockLost {
        /// The run.
        run_id: String,
    },
    /// What the store holds for the run is not a checkpoint it wrote (a missing field, an
    /// unknown status): the run reports [`Error::CorruptCheckpoint`](crate::Error), to be
    /// kept for inspection rather than retried.
    #[error("the checkpoint of run `{run_id}` is corrupt: {reason}")]
    Corrupt {
        /// The run.
        run_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `Save::Start` refused because the run stopped while rolling back (status
    /// [`RunStatus::RollingBack`]): starting it afresh would drop the rollbacks still to
    /// run. Nothing was written. A resume finishes them; `delete` the run first to start it
    /// afresh anyway.
    #[error("run `{run_id}` is rolling back: a start would drop the rollbacks still to run")]
    RollbackPending {
        /// The run.
        run_id: String,
    },
    /// A `delete` refused because an owner holds the run's lock: a live invoke or resume is
    /// writing it, and would fail at its next save. Nothing was deleted. Wait for the run to
    /// end (or, after a crash, for its lease to expire), then delete it.
    #[error("run `{run_id}` is locked by a live owner: it cannot be deleted while it runs")]
    RunLocked {
        /// The run.
        run_id: String,
    },
    /// The backend failed.
    #[error("{operation} failed: {source}")]
    Backend {
        /// What the store was doing (`save`, `load`, `acquire`, ...).
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// A backend error during `operation`.
    pub fn backend(operation: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            operation,
            source: source.into(),
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Started and not finished (or its process died).
    Running,
    /// Ended with an error; resuming runs the failed stage again.
    Failed,
    /// Ended successfully; resuming returns the final context at once.
    Completed,
    /// Failed, and the rollbacks of its finished stages ran: it cannot be resumed (its
    /// checkpoint still records the compensated stages as done); start it fresh.
    RolledBack,
    /// Failed, and rolling back: recorded before the first rollback runs. Found by a
    /// resume, the run's process stopped (or lost its lock) before the rollbacks ended:
    /// the resume runs them again, and the run ends `RolledBack`. A store keeps such a run
    /// as it keeps a running one (no expiry, no purge).
    RollingBack,
}

impl RunStatus {
    /// Every status, as a store may list them.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Running,
        RunStatus::Failed,
        RunStatus::Completed,
        RunStatus::RolledBack,
        RunStatus::RollingBack,
    ];

    /// The status as stored: `running`, `failed`, `completed`, `rolled_back` or
    /// `rolling_back`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Failed => "failed",
            RunStatus::Completed => "completed",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::RollingBack => "rolling_back",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s output.
    pub fn parse(s: &str) -> Option<Self> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// One write to a run's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Save {
    /// A fresh start: replaces anything stored for the run, unless the run is rolling back
    /// (then the store refuses it with [`StoreError::RollbackPending`]).
    Start {
        /// The pipeline's version.
        version: String,
        /// The encoded input context ([`format::encode_header`]).
        header: Vec<u8>,
    },
    /// One finished stage: its writes and its done mark ([`format::encode_entry`]). Stores
    /// append it in one atomic step.
    Entry(Vec<u8>),
    /// A start record that comes with its entries: replaces anything stored for the run
    /// (status running, no error), in one atomic step. A resume under another pipeline
    /// version (`allow_version_change`) rewrites the checkpoint for the new version this
    /// way, so that a crash never leaves it half old, half new.
    Rewrite {
        /// The pipeline's (new) version.
        version: String,
        /// The encoded input context.
        header: Vec<u8>,
        /// The entries, in order.
        entries: Vec<Vec<u8>>,
    },
    /// The run ended (or, with `RunStatus::Running`, a resume brought it back to life).
    Finish {
        /// How it ended.
        status: RunStatus,
        /// The error text when it failed.
        error: Option<String>,
    },
}

impl Save {
    /// A start record: the pipeline's `version` and the encoded input context.
    ///
    /// ```
    /// # use fluxio_core::store::{RunStatus, Save};
    /// assert_eq!(
    ///     Save::start("v1", b"input".to_vec()),
    ///     Save::Start { version: "v1".into(), header: b"input".to_vec() }
    /// );
    /// assert_eq!(
    ///     Save::finish(RunStatus::Failed, Some("boom")),
    ///     Save::Finish { status: RunStatus::Failed, error: Some("boom".into()) }
    /// );
    /// ```
    pub fn start(version: impl Into<String>, header: impl Into<Vec<u8>>) -> Self {
        Save::Start {
            version: version.into(),
            header: header.into(),
        }
    }

    /// A finish record: the run's `status`, and the error text when it failed.
    pub fn finish(status: RunStatus, error: Option<&str>) -> Self {
        Save::Finish {
            status,
            error: error.map(str::to_string),
        }
    }
}

/// A run's checkpoint as a store returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    /// The pipeline version the run started with.
    pub version: String,
    /// Where the run stands.
    pub status: RunStatus,
    /// The error text of a failed run.
    pub error: Option<String>,
    /// The encoded input context.
    pub header: Vec<u8>,
    /// The encoded stage entries, in the order they were saved.
    pub entries: Vec<Vec<u8>>,
}

/// One run a store holds, as [`CheckpointStore::list_runs`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunListing {
    /// The run's id.
    pub run_id: String,
    /// The pipeline version the run started with (resuming it under another version takes
    /// `.allow_version_change()`).
    pub version: String,
    /// Where the run stands.
    pub status: RunStatus,
    /// When an owner holds the run's lock now (a live invoke or resume), how long its lease
    /// has left; `None` when nobody does. A run whose process just died stays locked that
    /// long, then it is abandoned — when a sweep may look again.
    pub lease_left: Option<Duration>,
    /// When the run's status was last written — its start (or a version change's rewrite),
    /// its finish, or a resume of a finished run (a failed one), which marks it `running`
    /// again — by the store's clock: since when a running run has run (or lain abandoned),
    /// how old a finished one is. Entries do not move it, nor does a resume of a run left
    /// `running` (crashed or dropped): a sweep sees how long ago it was started.
    /// `None` from a store that does not keep it, and for a record written before it did
    /// (Redis records of fluxio builds before this field).
    pub updated_at: Option<std::time::SystemTime>,
    /// The error text a failed (or rolled back) run finished with, as `inspect` gives it.
    pub error: Option<String>,
}

impl RunListing {
    /// A listing of `run_id` (for stores outside this crate: the struct is
    /// `#[non_exhaustive]`).
    pub fn new(
        run_id: impl Into<String>,
        version: impl Into<String>,
        status: RunStatus,
        lease_left: Option<Duration>,
    ) -> Self {
        RunListing {
            run_id: run_id.into(),
            version: version.into(),
            status,
            lease_left,
            updated_at: None,
            error: None,
        }
    }

    /// With the time the run's status was last written ([`updated_at`](Self::updated_at)).
    #[must_use]
    pub fn with_updated_at(mut self, at: std::time::SystemTime) -> Self {
        self.updated_at = Some(at);
        self
    }

    /// With the error text the run finished with ([`error`](Self::error)).
    #[must_use]
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// How long ago the run's status was last written ([`updated_at`](Self::updated_at)),
    /// if the store keeps the time (zero for a time ahead of this machine's clock).
    ///
    /// ```
    /// # use fluxio_core::store::{RunListing, RunStatus};
    /// # use std::time::{Duration, SystemTime};
    /// let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    /// let run = RunListing::new("order-7", "v1", RunStatus::Running, None)
    ///     .with_updated_at(an_hour_ago);
    /// assert!(run.since_update().unwrap() >= Duration::from_secs(3600));
    /// ```
    pub fn since_update(&self) -> Option<Duration> {
        let at = self.updated_at?;
        Some(
            std::time::SystemTime::now()
                .duration_since(at)
                .unwrap_or_default(),
        )
    }

    /// Whether an owner holds the run's lock now (its lease has time left). A run `running`
    /// or `rolling_back` that is not locked was left by a process that stopped, or an invoke
    /// that was dropped: nothing will carry it on but a resume.
    pub fn is_locked(&self) -> bool {
        self.lease_left.is_some()
    }

    /// Whether the run was left unfinished by a process that stopped: `running` or
    /// `rolling_back`, and nobody holds its lock. Resume it to carry it on (or finish its
    /// rollbacks), or `delete` it.
    pub fn is_abandoned(&self) -> bool {
        matches!(self.status, RunStatus::Running | RunStatus::RollingBack) && !self.is_locked()
    }
}

/// Where durable runs keep their checkpoints.
///
/// Implementations: [`InMemoryStore`] (this crate), `SqliteStore` (crate
/// `fluxio-store-sqlite`), `RedisStore` (crate `fluxio-store-redis`). All methods return
/// `'static` futures: copy what you need from the arguments before the `async` block.
///
/// A store may do its work when the method is called or when the future is first polled.
/// The runtime polls the futures it gets to completion while the run lives; when the run
/// itself is dropped (a caller's timeout around `invoke`, a `select!`), the future in flight
/// is dropped with it — an `acquire` that may already have reached the store, say, which is
/// why [`release`](Self::release) asks for an order.
///
/// Leases are timed on one clock for every process sharing the store: the server's when
/// there is one (Redis's `TIME`, a database's `clock_timestamp()`), or the machine's for a
/// store on one machine (SQLite, the in-memory store) — so owners whose clocks disagree still
/// agree on when a lease ran out.
///
/// Locking: a run is written only by the holder of its lock. [`acquire`](Self::acquire)
/// takes it for a lease (the holder taking it again sets the new lease, shorter or not),
/// [`renew`](Self::renew) extends it while the run lives, [`release`](Self::release) gives
/// it back. Once the lease has run out, the old owner's `save`s fail with
/// [`StoreError::LockLost`] and its `renew` returns `false` — whether or not another owner
/// took the lock yet; a `save` without the lock fails the same way. Stores check the owner
/// in the same atomic step as the write, and check it before anything else.
///
/// Records: a `Start` replaces whatever the run had (entries, status, error) — except a run
/// stopped while rolling back: its start fails with [`StoreError::RollbackPending`] and
/// writes nothing (checked in the same atomic step as the write); a `Rewrite` replaces
/// whatever the run had, whatever its status, and stores its entries in the same atomic step. An `Entry` or
/// `Finish` for a run with no start record (never started, or deleted) fails with
/// [`StoreError::Backend`] of operation `"save"` and writes nothing. An `Entry` after a
/// `Finish` is kept and leaves the status as it was; a `Finish` sets status and error as
/// given (`Some("")` stays `Some("")`). [`contract`] checks all of this.
pub trait CheckpointStore: Send + Sync + 'static {
    /// Writes `save` for `run_id`, if `owner` holds the run's lock.
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>>;

    /// The run's checkpoint, if there is one.
    fn load(&self, run_id: &str) -> BoxFuture<'static, StoreResult<Option<StoredRun>>>;

    /// Deletes the run's checkpoint — unless an owner holds the run's lock (its lease has
    /// time left): then [`StoreError::RunLocked`], and nothing is deleted. Deleting a run
    /// that does not exist succeeds.
    fn delete(&self, run_id: &str) -> BoxFuture<'static, StoreResult<()>>;

    /// Whether the run has a checkpoint.
    fn exists(&self, run_id: &str) -> BoxFuture<'static, StoreResult<bool>>;

    /// Takes the run's lock for `lease` if it is free or expired; `false` if another owner
    /// holds it.
    fn acquire(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>>;

    /// Extends `owner`'s lock; `false` if `owner` no longer holds it.
    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>>;

    /// Releases `owner`'s lock (nothing happens if another owner holds it).
    ///
    /// A release asked for after an `acquire` of the same owner must apply after it — also
    /// when that acquire's future was dropped before it answered, having already reached
    /// the store: a run dropped while taking its lock asks for the release right away, and
    /// a release applied first would leave the lock the acquire then takes held until its
    /// lease runs out. One writer queue (SQLite) or one ordered connection (Redis) gives
    /// that; a pooled store must send both on one connection, or make the release wait for
    /// the acquire.
    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>>;

    /// The runs the store holds whose status is one of `statuses` (every run when
    /// `statuses` is empty), in no particular order: how a service finds the runs a
    /// crashed process left behind, to resume them —
    /// [`RunListing::is_abandoned`] tells them apart from live ones.
    ///
    /// A listing reads every run's record (or every key, on Redis): call it at start-up or
    /// from a periodic sweep, not per request. A record the store cannot read (an unknown
    /// status, a missing field) fails the listing with [`StoreError::Corrupt`] naming the
    /// run — inspect and `delete` it — rather than being left out unseen. The default
    /// method fails with [`StoreError::Backend`] of operation `"list_runs"`, for stores
    /// written before it.
    fn list_runs(
        &self,
        statuses: &[RunStatus],
    ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
        let _ = statuses;
        Box::pin(std::future::ready(Err(StoreError::backend(
            "list_runs",
            "this store cannot list its runs",
        ))))
    }
}
