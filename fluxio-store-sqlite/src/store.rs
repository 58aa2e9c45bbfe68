//! `SqliteStore`: the handle, reads, and the `CheckpointStore` implementation.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use fluxio_core::store::{
    BoxFuture, CheckpointStore, RunListing, RunStatus, Save, StoreError, StoreResult, StoredRun,
};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::writer::{Counters, Failure, Op, Outcome, Reply, Request, Writer, now_ms};
use crate::{Error, SqliteOptions, schema};

/// A condition on `r.status` that holds for a status this store never writes (a damaged
/// row): a value below, between or above the sorted status names, or a blob. Written as
/// ranges rather than `NOT IN (..)`, so that SQLite still answers a filtered listing from
/// the `runs_by_status` index (it splits an `OR` over index searches only when every term
/// can use one). Numbers and NULLs need no range: `status` is a `TEXT NOT NULL` column, so
/// SQLite stores a number written there as text and refuses a NULL.
static DAMAGED_STATUS: LazyLock<String> = LazyLock::new(|| {
    let mut known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
    known.sort_unstable();
    // A blob sorts after every text; `x''` is the least blob.
    let mut bounds = vec!["''".to_string()];
    bounds.extend(known.iter().map(|s| format!("'{s}'")));
    bounds.push("x''".to_string());
    let mut ranges: Vec<String> = bounds
        .windows(2)
        .enumerate()
        .map(|(i, pair)| {
            let low = if i == 0 { ">=" } else { ">" };
            format!("(r.status {low} {} AND r.status < {})", pair[0], pair[1])
        })
        .collect();
    ranges.push("r.status >= x''".to_string());
    ranges.join(" OR ")
});

/// How many writes may wait for the writer task before callers wait to queue theirs.
const QUEUE: usize = 4096;

/// A [`CheckpointStore`] in one SQLite file, shared by every process that opens it.
///
/// Writes (saves, lock changes, deletes) go through the store's writer task, which owns the
/// one write connection and commits the writes queued at the same time in one transaction
/// (group commit: with many concurrent runs, one commit carries many runs' stages;
/// [`stats`](Self::stats) shows it). A stage's entry is one `INSERT` whose condition is the
/// lock check, so each save checks, in the same atomic step, that its owner still holds an
/// unexpired lock on the run, and writes nothing otherwise ([`StoreError::LockLost`]); a
/// refused save fails alone, the others of its batch commit. Reads (`load`, `exists`) use a
/// small pool of read connections; the file is in WAL journal mode, so reads never wait for
/// writes.
///
/// Lock leases are measured in wall-clock time (milliseconds since the UNIX epoch), which
/// all processes sharing the file agree on as long as their clocks do.
///
/// Durability: by default a committed write survives a crash of the process, and a power
/// loss may drop the last commits but never corrupts the file; see [`Synchronous`] to choose
/// `FULL` instead.
///
/// Cloning is cheap: clones share the writer and the read pool. The writer task ends when
/// the last clone is dropped. Open the store inside a tokio runtime, and keep that runtime
/// running while the store is used.
///
/// [`Synchronous`]: crate::Synchronous
///
/// ```
/// use std::time::Duration;
/// use fluxio_core::store::{CheckpointStore, RunStatus, Save};
/// use fluxio_store_sqlite::SqliteStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("fluxio-doc-{}.db", std::process::id()));
/// let store = SqliteStore::open(&path).await?;
///
/// // A run is written by the holder of its lock.
/// assert!(store.acquire("run-1", "worker-a", Duration::from_secs(30)).await?);
/// store.save("run-1", "worker-a", Save::Start { version: "v1".into(), header: vec![] }).await?;
/// store.save("run-1", "worker-a", Save::Entry(vec![1, 2, 3])).await?;
/// store.save("run-1", "worker-a", Save::Finish { status: RunStatus::Completed, error: None }).await?;
/// store.release("run-1", "worker-a").await?;
///
/// let run = store.load("run-1").await?.expect("saved above");
/// assert_eq!(run.status, RunStatus::Completed);
/// assert_eq!(run.entries, vec![vec![1, 2, 3]]);
/// # drop(store);
/// # for suffix in ["", "-wal", "-shm"] {
/// #     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
/// # }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Request>,
    reads: SqlitePool,
    counters: Arc<Counters>,
    /// Lock releases asked for and not answered yet: a listing waits for them (a run
    /// dropped a moment ago must list as free).
    releasing: std::sync::atomic::AtomicUsize,
}

/// Counts a release as in flight while it lives ([`Inner::releasing`]).
struct Releasing(Arc<Inner>);

impl Releasing {
    fn new(inner: &Arc<Inner>) -> Self {
        inner
            .releasing
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Releasing(inner.clone())
    }
}

impl Drop for Releasing {
    fn drop(&mut self) {
        self.0
            .releasing
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What a store's writer has done since it was opened (shared by its clones), as
/// [`SqliteStore::stats`] returns it.
///
/// `commits` below `saves` means group commit is at work: several saves shared one
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct StoreStats {
    /// Transactions the writer committed (a lone write of a single statement, such as one
    /// stage's entry, commits on its own and counts as one).
    pub commits: u64,
    /// `save` calls the writer took (including refused and failed ones).
    pub saves: u64,
    /// All writes the writer took: saves, `delete`, `acquire`, `renew`, `release` and
    /// [`purge_finished`](SqliteStore::purge_finished).
    pub writes: u64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `path` with the default
    /// [`SqliteOptions`]: WAL journal, `synchronous = NORMAL`, a 5 second busy timeout.
    /// Creates or upgrades the schema.
    ///
    /// Must be called inside a tokio runtime (it spawns the writer task).
    ///
    /// # Errors
    ///
    /// [`Error::Open`] when the file cannot be opened as a database (missing directory, a
    /// directory, not a database, no permission), [`Error::Migrate`] or
    /// [`Error::SchemaTooNew`] when the schema cannot be brought to this version,
    /// [`Error::NoRuntime`] outside a tokio runtime.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// [`open`](Self::open) with `options`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); [`Error::JournalMode`] when the file cannot be switched to
    /// WAL journal mode.
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let connect = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(!options.read_only)
            .read_only(options.read_only)
            .busy_timeout(options.busy_timeout)
            .synchronous(options.synchronous.to_sqlx())
            // The schema has no foreign keys; skip the pragma.
            .foreign_keys(false);
        let mut conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
        if !options.read_only {
            schema::ensure_wal(&mut conn, &path, options.busy_timeout).await?;
        }
        schema::migrate(&mut conn, &path).await?;

        // From now on the file exists with its schema: a later connection that finds no file
        // (deleted under the store) fails instead of creating an empty database.
        let connect = connect.create_if_missing(false);
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(0)
            .test_before_acquire(false)
            .connect_lazy_with(connect.clone());
        let counters = Arc::new(Counters::default());
        let (writer, queue) = mpsc::channel(QUEUE);
        runtime.spawn(
            Writer::new(
                conn,
                connect,
                counters.clone(),
                options.max_batch.min(QUEUE),
            )
            .run(queue),
        );
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer,
                reads,
                counters,
                releasing: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What the writer has done so far; see [`StoreStats`].
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            saves: c.saves.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
        }
    }

    /// Deletes the checkpoints of finished runs (completed, failed or rolled back) not updated for
    /// `older_than`, and returns how many runs it deleted. Runs whose lock is held are kept
    /// (a run being resumed, whatever status it shows).
    /// Expired lock rows are deleted too; an expired lock already counts as free.
    ///
    /// The store never deletes finished runs by itself: call this periodically, with
    /// `older_than` longer than the time you take to resume failed runs (a purged run
    /// cannot be resumed).
    ///
    /// # Errors
    ///
    /// An SQLite error ([`Error::Sqlx`], or [`Error::Shared`] when the group commit it was
    /// part of failed).
    pub async fn purge_finished(&self, older_than: Duration) -> Result<u64, Error> {
        self.purge(
            older_than,
            [
                Some(RunStatus::Completed.as_str()),
                Some(RunStatus::Failed.as_str()),
                Some(RunStatus::RolledBack.as_str()),
            ],
        )
        .await
    }

    /// Like [`purge_finished`](Self::purge_finished), for completed runs only: failed and
    /// rolled-back runs stay for a longer look (and failed ones for a resume). A schedule
    /// may call both: this one with a short `older_than`, `purge_finished` with a long one.
    ///
    /// # Errors
    ///
    /// As [`purge_finished`](Self::purge_finished).
    pub async fn purge_completed(&self, older_than: Duration) -> Result<u64, Error> {
        self.purge(
            older_than,
            [Some(RunStatus::Completed.as_str()), None, None],
        )
        .await
    }

    async fn purge(
        &self,
        older_than: Duration,
        statuses: [Option<&'static str>; 3],
    ) -> Result<u64, Error> {
        let op = Op::Purge {
            older_than_ms: millis(older_than),
            statuses,
        };
        match self.inner.call(op).await {
            Ok(Outcome::Count(n)) => Ok(n),
            Ok(_)
            | Err(Failure::LockLost(_) | Failure::RollbackPending(_) | Failure::RunLocked(_)) => {
                Ok(0)
            }
            Err(Failure::Error(e)) => Err(e),
        }
    }
}

/// The listing's query for `statuses` statuses (`?2`..; all runs when none), `?1` being the
/// time now. Built from placeholders and this store's own status names: no value given to
/// it is spliced into the text.
fn list_sql(statuses: usize) -> String {
    let mut sql = String::from(
        "SELECT r.run_id, r.version, r.status, (SELECT l.expires_at_ms - ?1 FROM locks l
             WHERE l.run_id = r.run_id AND l.expires_at_ms > ?1) AS lease_left_ms, r.updated_at_ms,
             r.error
         FROM runs r",
    );
    if statuses > 0 {
        let places: Vec<String> = (0..statuses).map(|i| format!("?{}", i + 2)).collect();
        // A row whose status is none this store writes (damaged) is listed too, so that
        // the listing fails naming it rather than leaving the run out unseen — as a
        // listing of every run does.
        sql.push_str(&format!(
            " WHERE r.status IN ({}) OR {}",
            places.join(", "),
            *DAMAGED_STATUS
        ));
    }
    sql
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Maps an error reading run `run_id`'s row (`None`: no row at fault, the query failed). What
/// the file holds that the store did not write is a corrupt record, not a store failure:
/// retrying will not help.
fn read_error(operation: &'static str, run_id: Option<&str>, e: Error) -> StoreError {
    match (e, run_id) {
        (Error::UnknownStatus { run_id, status }, _) => StoreError::Corrupt {
            run_id,
            reason: format!("unknown status `{status}` in the database"),
        },
        // A column of another type than the store writes (edited by hand, or by another
        // program).
        (Error::Sqlx(e @ sqlx::Error::ColumnDecode { .. }), Some(run_id)) => StoreError::Corrupt {
            run_id: run_id.to_string(),
            reason: format!("its row does not read back: {e}"),
        },
        (e, _) => StoreError::backend(operation, e),
    }
}

fn store_error(operation: &'static str, failure: Failure) -> StoreError {
    match failure {
        Failure::LockLost(run_id) => StoreError::LockLost { run_id },
        Failure::RollbackPending(run_id) => StoreError::RollbackPending { run_id },
        Failure::RunLocked(run_id) => StoreError::RunLocked { run_id },
        Failure::Error(e) => StoreError::backend(operation, e),
    }
}

/// The status a run's row holds (`UnknownStatus` when this crate does not know it).
fn parse_status(run_id: &str, status: String) -> Result<RunStatus, Error> {
    RunStatus::parse(&status).ok_or_else(|| Error::UnknownStatus {
        run_id: run_id.to_string(),
        status,
    })
}

/// A row of `list_runs`. The run id is decoded first, so any column that does not decode
/// is a corrupt record of that run; a run id that is not text itself is named lossily.
fn listing(row: &SqliteRow) -> StoreResult<RunListing> {
    let run_id: String = match row.try_get("run_id") {
        Ok(run_id) => run_id,
        Err(e) => {
            // Whatever the stored value, its bytes (SQLite converts numbers to text).
            let bytes: Vec<u8> = row.try_get_unchecked("run_id").unwrap_or_default();
            let run_id = String::from_utf8_lossy(&bytes);
            return Err(read_error("list_runs", Some(&run_id), e.into()));
        }
    };
    let decode = || -> Result<RunListing, Error> {
        let version: String = row.try_get("version")?;
        let status = parse_status(&run_id, row.try_get("status")?)?;
        let left_ms: Option<i64> = row.try_get("lease_left_ms")?;
        let left = left_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
        let updated_ms: i64 = row.try_get("updated_at_ms")?;
        // Only words for the operator: a damaged text is read as far as it goes rather than
        // fail the whole listing.
        let error: Option<Vec<u8>> = row.try_get_unchecked("error")?;
        let mut run = RunListing::new(run_id.clone(), version, status, left)
            .with_updated_at(UNIX_EPOCH + Duration::from_millis(updated_ms.max(0) as u64));
        run.error = error.map(|e| String::from_utf8_lossy(&e).into_owned());
        Ok(run)
    };
    decode().map_err(|e| read_error("list_runs", Some(&run_id), e))
}

/// A run as `runs`, `run_headers` and `entries` hold it.
struct RunRow {
    version: String,
    status: String,
    error: Option<String>,
    /// `None` when its `run_headers` row is missing.
    header: Option<Vec<u8>>,
    entries: Vec<Vec<u8>>,
}

impl Inner {
    /// Sends `op` to the writer and waits for its answer.
    async fn call(&self, op: Op) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Request { op, reply })
            .await
            .map_err(|_| Failure::Error(Error::WriterStopped))?;
        answer
            .await
            .map_err(|_| Failure::Error(Error::WriterStopped))?
    }

    async fn write_flag(&self, operation: &'static str, op: Op) -> StoreResult<bool> {
        match self.call(op).await {
            Ok(Outcome::Flag(held)) => Ok(held),
            Ok(_) => Ok(false),
            Err(f) => Err(store_error(operation, f)),
        }
    }

    async fn write(&self, operation: &'static str, op: Op) -> StoreResult<()> {
        self.call(op)
            .await
            .map(|_| ())
            .map_err(|f| store_error(operation, f))
    }

    /// The run's row, input and entries, read in one transaction (one snapshot of the file).
    async fn load(&self, run_id: &str) -> StoreResult<Option<StoredRun>> {
        let read = |e: Error| read_error("load", Some(run_id), e);
        let Some(RunRow {
            version,
            status,
            error,
            header,
            entries,
        }) = self.read_run(run_id).await.map_err(read)?
        else {
            return Ok(None);
        };
        let header = header.ok_or_else(|| StoreError::Corrupt {
            run_id: run_id.to_string(),
            reason: "its input (its `run_headers` row) is missing".into(),
        })?;
        let status = parse_status(run_id, status).map_err(read)?;
        Ok(Some(StoredRun {
            version,
            status,
            error,
            header,
            entries,
        }))
    }

    /// What `load` reads, as stored.
    async fn read_run(&self, run_id: &str) -> Result<Option<RunRow>, Error> {
        let mut tx = self.reads.begin().await?;
        let row = sqlx::query(
            "SELECT r.version, r.status, r.error, h.header
             FROM runs r LEFT JOIN run_headers h ON h.run_id = r.run_id
             WHERE r.run_id = ?1",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let entries: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT bytes FROM entries WHERE run_id = ?1 ORDER BY seq")
                .bind(run_id)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Some(RunRow {
            // By name: a column that does not read back is named in the error.
            version: row.try_get("version")?,
            status: row.try_get("status")?,
            error: row.try_get("error")?,
            header: row.try_get("header")?,
            entries,
        }))
    }

    /// The runs with one of `statuses` (all when empty), with whether their lock is held.
    async fn list_runs(&self, statuses: &[RunStatus]) -> StoreResult<Vec<RunListing>> {
        // After the releases this store was asked for before the listing: the lock of a run
        // dropped a moment ago is given back through the writer, and a sweep right after
        // the drop must see the run free (abandoned), as a resume would. Only then: a
        // listing does not otherwise wait behind the writer's queue.
        if self.releasing.load(std::sync::atomic::Ordering::Acquire) > 0 {
            self.write("list_runs", Op::Barrier).await?;
        }
        let sql = list_sql(statuses.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms());
        for status in statuses {
            query = query.bind(status.as_str());
        }
        // The rows are decoded here, not by the query, so a row that does not read back
        // names its run.
        let rows = query
            .fetch_all(&self.reads)
            .await
            .map_err(|e| read_error("list_runs", None, e.into()))?;
        rows.iter().map(listing).collect()
    }

    async fn exists(&self, run_id: &str) -> Result<bool, Error> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs WHERE run_id = ?1)")
                .bind(run_id)
                .fetch_one(&self.reads)
                .await?,
        )
    }
}

impl CheckpointStore for SqliteStore {
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        let inner = self.inner.clone();
        let op = Op::Save {
            run_id: run_id.to_string(),
            owner: owner.to_string(),
            save,
        };
        Box::pin(async move { inner.write("save", op).await })
    }

    fn load(&self, run_id: &str) -> BoxFuture<'static, StoreResult<Option<StoredRun>>> {
        let inner = self.inner.clone();
        let run_id = run_id.to_string();
        Box::pin(async move { inner.load(&run_id).await })
    }

    fn delete(&self, run_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        let inner = self.inner.clone();
        let op = Op::Delete {
            run_id: run_id.to_string(),
        };
        Box::pin(async move { inner.write("delete", op).await })
    }

    /// Reads the `runs` table (its `status` index when `statuses` are given) and the
    /// `locks` table, from the read pool. It waits for the writer only while a lock release
    /// this store was asked for is unanswered (a run dropped a moment ago lists as free,
    /// as a resume finds it); otherwise not, so a listing answers while the file is busy.
    fn list_runs(
        &self,
        statuses: &[RunStatus],
    ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
        let inner = self.inner.clone();
        let statuses = statuses.to_vec();
        Box::pin(async move { inner.list_runs(&statuses).await })
    }

    fn exists(&self, run_id: &str) -> BoxFuture<'static, StoreResult<bool>> {
        let inner = self.inner.clone();
        let run_id = run_id.to_string();
        Box::pin(async move {
            inner
                .exists(&run_id)
                .await
                .map_err(|e| StoreError::backend("exists", e))
        })
    }

    fn acquire(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        let inner = self.inner.clone();
        let op = Op::Acquire {
            run_id: run_id.to_string(),
            owner: owner.to_string(),
            lease_ms: millis(lease),
        };
        Box::pin(async move { inner.write_flag("acquire", op).await })
    }

    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        let inner = self.inner.clone();
        let op = Op::Renew {
            run_id: run_id.to_string(),
            owner: owner.to_string(),
            lease_ms: millis(lease),
        };
        Box::pin(async move { inner.write_flag("renew", op).await })
    }

    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
        let inner = self.inner.clone();
        let op = Op::Release {
            run_id: run_id.to_string(),
            owner: owner.to_string(),
        };
        // Counted from now until answered (or dropped unsent).
        let releasing = Releasing::new(&inner);
        Box::pin(async move {
            let _releasing = releasing;
            inner.write("release", op).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filtered listing is answered from the `runs_by_status` index, damaged rows
    /// included: a sweep for running runs does not read every finished one.
    #[tokio::test]
    async fn a_filtered_listing_searches_the_status_index() {
        let dir = std::env::temp_dir().join(format!("fluxio-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plan.db");
        let _ = std::fs::remove_file(&path);
        let mut conn = SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        schema::migrate(&mut conn, &path).await.unwrap();
        // `EXPLAIN QUERY PLAN` rows are (id, parent, notused, detail).
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            list_sql(2)
        )))
        .bind(0_i64)
        .bind("running")
        .bind("rolling_back")
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let details: Vec<String> = rows.iter().map(|r| r.get::<String, _>(3)).collect();
        assert!(
            details.iter().any(|d| d.contains("runs_by_status")),
            "{details:#?}"
        );
        assert!(
            !details.iter().any(|d| d.starts_with("SCAN r")),
            "{details:#?}"
        );
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
