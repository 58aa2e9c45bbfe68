//! The writer task: every write of a store goes through it, and writes queued together are
//! committed together (group commit).
//!
//! The task owns the store's only write connection. It waits for a request, takes whatever
//! else is already queued (up to `max_batch`), runs them all in one `BEGIN IMMEDIATE`
//! transaction, commits once, and then answers each. Each request checks its own lock
//! (fencing) inside that transaction, and a fenced request writes nothing and fails alone:
//! the checks are part of the statements (`... WHERE EXISTS (lock held)`), or run before
//! any write of the request.
//!
//! A lone request that writes with one statement (a stage's entry, a finish, a lock change)
//! skips `BEGIN`/`COMMIT`: its statement is its transaction, lock check included. That keeps
//! an uncontended stage at one statement.
//!
//! A statement that fails with an SQLite error (disk full, read-only file, ...) may have left
//! the transaction half done, so the batch is rolled back and its requests run again one
//! transaction each: every request gets its own answer and a failed one takes no other
//! down. When the transaction cannot begin or commit, all its requests get that error.
//!
//! The task ends when the last store handle (the last sender of its channel) is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fluxio_core::store::Save;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// A write, as the writer task runs it.
#[derive(Debug)]
pub(crate) enum Op {
    /// `CheckpointStore::save`.
    Save {
        run_id: String,
        owner: String,
        save: Save,
    },
    /// `CheckpointStore::delete`.
    Delete { run_id: String },
    /// `CheckpointStore::acquire`.
    Acquire {
        run_id: String,
        owner: String,
        lease_ms: i64,
    },
    /// `CheckpointStore::renew`.
    Renew {
        run_id: String,
        owner: String,
        lease_ms: i64,
    },
    /// `CheckpointStore::release`.
    Release { run_id: String, owner: String },
    /// Nothing: answered once the requests queued before it have run (a listing waits for
    /// the lock releases of runs dropped before it was asked for).
    Barrier,
    /// `SqliteStore::purge_finished`.
    /// `statuses`: the finished statuses to purge (`None` for an unused slot).
    Purge {
        older_than_ms: i64,
        statuses: [Option<&'static str>; 3],
    },
}

/// What a write returns.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Done (`save`, `delete`, `release`).
    Done,
    /// `acquire` and `renew`: whether the lock is held.
    Flag(bool),
    /// `purge_finished`: how many runs were deleted.
    Count(u64),
}

/// Why a write failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The owner does not hold the lock of this run (or it expired): nothing was written.
    LockLost(String),
    /// A start of a run that is rolling back: nothing was written.
    RollbackPending(String),
    /// A delete of a run an owner holds the lock of: nothing was deleted.
    RunLocked(String),
    /// Anything else.
    Error(Error),
}

pub(crate) type Reply = Result<Outcome, Failure>;

/// A write and where its answer goes.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// What the writer has done, shared with the store handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Transactions committed.
    pub(crate) commits: AtomicU64,
    /// `save` requests taken (committed, fenced or failed).
    pub(crate) saves: AtomicU64,
    /// All write requests taken.
    pub(crate) writes: AtomicU64,
}

/// Wall-clock milliseconds since the UNIX epoch (processes sharing a file compare these).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why an attempt at a batch stopped.
enum Abort {
    /// The transaction could not begin or commit: nothing was written.
    Transaction(Error),
    /// A statement failed; the transaction was rolled back.
    Statement(Error),
}

/// The writer task's state.
#[derive(Debug)]
pub(crate) struct Writer {
    /// The write connection; `None` after it broke, until the next batch reconnects.
    conn: Option<SqliteConnection>,
    connect: SqliteConnectOptions,
    counters: Arc<Counters>,
    max_batch: usize,
}

impl Writer {
    pub(crate) fn new(
        conn: SqliteConnection,
        connect: SqliteConnectOptions,
        counters: Arc<Counters>,
        max_batch: usize,
    ) -> Self {
        Writer {
            conn: Some(conn),
            connect,
            counters,
            max_batch: max_batch.max(1),
        }
    }

    /// Serves requests until every sender is gone.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // `recv_many` waits for one request, then takes what is already queued.
        while rx.recv_many(&mut batch, self.max_batch).await > 0 {
            // Barriers take no part in the batch's transaction (a read-only store has none
            // to begin): answered once everything queued before them has run.
            let barriers = take_barriers(&mut batch);
            if !batch.is_empty() {
                self.execute(&mut batch).await;
            }
            for barrier in barriers {
                let _ = barrier.reply.send(Ok(Outcome::Done));
            }
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// Runs a batch and answers each of its requests.
    async fn execute(&mut self, batch: &mut Vec<Request>) {
        let saves = batch
            .iter()
            .filter(|r| matches!(r.op, Op::Save { .. }))
            .count();
        self.counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counters
            .saves
            .fetch_add(saves as u64, Ordering::Relaxed);

        let alone = batch.len() == 1;
        let replies = match self.attempt(batch, !alone).await {
            Ok(replies) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                replies
            }
            Err(Abort::Statement(e) | Abort::Transaction(e)) if alone => {
                vec![Err(Failure::Error(e))]
            }
            Err(Abort::Statement(_)) => {
                // One request broke the transaction: run each in its own, so each gets its
                // own answer.
                let mut replies = Vec::with_capacity(batch.len());
                for req in batch.iter_mut() {
                    replies.push(match self.attempt(std::slice::from_mut(req), false).await {
                        Ok(mut one) => {
                            self.counters.commits.fetch_add(1, Ordering::Relaxed);
                            one.pop().unwrap_or(Ok(Outcome::Done))
                        }
                        Err(Abort::Statement(e) | Abort::Transaction(e)) => Err(Failure::Error(e)),
                    });
                }
                replies
            }
            Err(Abort::Transaction(e)) => {
                let shared = Arc::new(e);
                batch
                    .iter()
                    .map(|_| Err(Failure::Error(Error::Shared(shared.clone()))))
                    .collect()
            }
        };
        for (req, reply) in batch.drain(..).zip(replies) {
            // A caller that went away does not need its answer.
            let _ = req.reply.send(reply);
        }
    }

    /// The write connection, reconnecting if the last one broke.
    async fn connection(&mut self) -> Result<&mut SqliteConnection, Error> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => SqliteConnection::connect_with(&self.connect).await?,
        };
        Ok(self.conn.insert(conn))
    }

    /// Runs `reqs` in one transaction. With `keep`, the requests' byte buffers are copied
    /// into the statements rather than moved, so they can run again.
    async fn attempt(&mut self, reqs: &mut [Request], keep: bool) -> Result<Vec<Reply>, Abort> {
        let conn = self.connection().await.map_err(Abort::Transaction)?;
        if let [req] = reqs {
            if writes_once(&req.op) {
                // One write of one statement: SQLite's own statement transaction is the
                // whole transaction, so skip the BEGIN and COMMIT round trips.
                return match apply(conn, &mut req.op, keep).await {
                    Ok(reply) => Ok(vec![reply]),
                    Err(e) => Err(Abort::Statement(e.into())),
                };
            }
        }
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Abort::Transaction(e.into()))?;
        let mut replies = Vec::with_capacity(reqs.len());
        for req in reqs.iter_mut() {
            match apply(&mut tx, &mut req.op, keep).await {
                Ok(reply) => replies.push(reply),
                Err(e) => {
                    if tx.rollback().await.is_err() {
                        // The connection's transaction state is unknown: start afresh.
                        self.conn = None;
                    }
                    return Err(Abort::Statement(e.into()));
                }
            }
        }
        if let Err(e) = tx.commit().await {
            // SQLite may or may not have rolled back; a new connection is in a known state
            // (and dropping this one rolls back whatever is left).
            self.conn = None;
            return Err(Abort::Transaction(e.into()));
        }
        Ok(replies)
    }
}

/// Takes the barriers out of `batch`, keeping the order of the rest (the usual batch has
/// none: nothing is moved).
fn take_barriers(batch: &mut Vec<Request>) -> Vec<Request> {
    if !batch.iter().any(|r| matches!(r.op, Op::Barrier)) {
        return Vec::new();
    }
    let (barriers, rest): (Vec<Request>, Vec<Request>) =
        batch.drain(..).partition(|r| matches!(r.op, Op::Barrier));
    batch.extend(rest);
    barriers
}

/// Whether `op` writes with a single statement (its fencing check included), so it is
/// atomic without an explicit transaction.
fn writes_once(op: &Op) -> bool {
    match op {
        // A start writes the run's row and its input (and a rewrite its entries): a
        // transaction of its own.
        Op::Save { save, .. } => matches!(save, Save::Entry(_) | Save::Finish { .. }),
        Op::Acquire { .. } | Op::Renew { .. } | Op::Release { .. } | Op::Barrier => true,
        Op::Delete { .. } | Op::Purge { .. } => false,
    }
}

/// The bytes to bind: moved out of the request, or copied when the request may run again.
fn bytes(buf: &mut Vec<u8>, keep: bool) -> Vec<u8> {
    if keep {
        buf.clone()
    } else {
        std::mem::take(buf)
    }
}

/// Whether an owner holds run `?1`'s lock at time `?2`.
const LOCKED: &str = "SELECT EXISTS (SELECT 1 FROM locks WHERE run_id = ?1 AND expires_at_ms > ?2)";

const HOLDS: &str = "SELECT EXISTS (SELECT 1 FROM locks
     WHERE run_id = ?1 AND owner = ?2 AND expires_at_ms > ?3)";

const APPEND_ENTRY: &str = "INSERT INTO entries (run_id, seq, bytes)
     SELECT ?1, COALESCE((SELECT MAX(seq) FROM entries WHERE run_id = ?1), -1) + 1, ?2
     WHERE EXISTS (SELECT 1 FROM locks
                   WHERE run_id = ?1 AND owner = ?3 AND expires_at_ms > ?4)
       AND EXISTS (SELECT 1 FROM runs WHERE run_id = ?1)";

/// `?4`: whether a run rolling back is replaced too (a rewrite) or left as it is (a start:
/// then no row changes).
const START_RUN: &str = "INSERT INTO runs (run_id, version, status, error, updated_at_ms)
     VALUES (?1, ?2, 'running', NULL, ?3)
     ON CONFLICT (run_id) DO UPDATE SET
         version = excluded.version, status = 'running', error = NULL,
         updated_at_ms = excluded.updated_at_ms
     WHERE ?4 OR runs.status <> 'rolling_back'";

/// The run's input, in a table of its own: SQLite writes a whole row again when one of its
/// columns changes, so in `runs` every status change would write the input again.
const PUT_HEADER: &str = "INSERT INTO run_headers (run_id, header) VALUES (?1, ?2)
     ON CONFLICT (run_id) DO UPDATE SET header = excluded.header";

const FINISH_RUN: &str = "UPDATE runs SET status = ?2, error = ?3, updated_at_ms = ?4
     WHERE run_id = ?1
       AND EXISTS (SELECT 1 FROM locks
                   WHERE run_id = ?1 AND owner = ?5 AND expires_at_ms > ?4)";

const ACQUIRE: &str = "INSERT INTO locks (run_id, owner, expires_at_ms) VALUES (?1, ?2, ?3)
     ON CONFLICT (run_id) DO UPDATE SET
         owner = excluded.owner, expires_at_ms = excluded.expires_at_ms
     WHERE locks.owner = excluded.owner OR locks.expires_at_ms <= ?4";

const RENEW: &str = "UPDATE locks SET expires_at_ms = ?3
     WHERE run_id = ?1 AND owner = ?2 AND expires_at_ms > ?4";

const RELEASE: &str = "DELETE FROM locks WHERE run_id = ?1 AND owner = ?2";

/// The condition on `runs` of a purge: runs of the statuses ?3, ?4, ?5 (finished ones; a
/// `NULL` matches nothing) last updated at or before ?1 whose lock is not held at ?2 (a
/// failed run being resumed stays `failed` until it finishes again).
macro_rules! purgeable {
    () => {
        "status IN (?3, ?4, ?5) AND updated_at_ms <= ?1
         AND NOT EXISTS (SELECT 1 FROM locks
                         WHERE locks.run_id = runs.run_id AND locks.expires_at_ms > ?2)"
    };
}

const PURGE_ENTRIES: &str = concat!(
    "DELETE FROM entries WHERE run_id IN (SELECT run_id FROM runs WHERE ",
    purgeable!(),
    ")"
);

const PURGE_HEADERS: &str = concat!(
    "DELETE FROM run_headers WHERE run_id IN (SELECT run_id FROM runs WHERE ",
    purgeable!(),
    ")"
);

const PURGE_RUNS: &str = concat!("DELETE FROM runs WHERE ", purgeable!());

/// Whether `owner` holds an unexpired lock on `run_id`.
async fn holds(
    conn: &mut SqliteConnection,
    run_id: &str,
    owner: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(HOLDS)
        .bind(run_id)
        .bind(owner)
        .bind(now)
        .fetch_one(conn)
        .await
}

/// Why a fenced statement changed nothing: the lock (checked first, as the in-memory store
/// does), or a run that was never started.
async fn refused(
    conn: &mut SqliteConnection,
    run_id: &str,
    owner: &str,
    now: i64,
) -> Result<Reply, sqlx::Error> {
    Ok(if holds(conn, run_id, owner, now).await? {
        Err(Failure::Error(Error::NotStarted {
            run_id: run_id.to_string(),
        }))
    } else {
        Err(Failure::LockLost(run_id.to_string()))
    })
}

/// A start record: the run's row, its input, and the entries of a rewrite (inside the
/// batch's transaction, so all of it or nothing).
async fn start(
    conn: &mut SqliteConnection,
    run_id: &str,
    owner: &str,
    save: &mut Save,
    keep: bool,
    now: i64,
) -> Result<Reply, sqlx::Error> {
    let (version, header, entries, rewrite) = match save {
        Save::Start { version, header } => (version, header, &mut [][..], false),
        Save::Rewrite {
            version,
            header,
            entries,
        } => (version, header, &mut entries[..], true),
        Save::Entry(_) | Save::Finish { .. } => unreachable!("`apply` passes start records only"),
    };
    if !holds(conn, run_id, owner, now).await? {
        return Ok(Err(Failure::LockLost(run_id.to_string())));
    }
    // The run's row first: a start it refuses (the run is rolling back) leaves the input
    // and the entries.
    let started = sqlx::query(START_RUN)
        .bind(run_id)
        .bind(version.as_str())
        .bind(now)
        .bind(rewrite)
        .execute(&mut *conn)
        .await?;
    if started.rows_affected() == 0 {
        return Ok(Err(Failure::RollbackPending(run_id.to_string())));
    }
    sqlx::query(PUT_HEADER)
        .bind(run_id)
        .bind(bytes(header, keep))
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM entries WHERE run_id = ?1")
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
    for (seq, entry) in entries.iter_mut().enumerate() {
        sqlx::query("INSERT INTO entries (run_id, seq, bytes) VALUES (?1, ?2, ?3)")
            .bind(run_id)
            .bind(seq as i64)
            .bind(bytes(entry, keep))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(Outcome::Done))
}

/// Runs one write inside the batch's transaction. `Err` is an SQLite error (the batch must
/// roll back); a refused write is an `Ok(Err(..))` that wrote nothing.
async fn apply(conn: &mut SqliteConnection, op: &mut Op, keep: bool) -> Result<Reply, sqlx::Error> {
    let now = now_ms();
    match op {
        Op::Save {
            run_id,
            owner,
            save,
        } => match save {
            Save::Entry(buf) => {
                let done = sqlx::query(APPEND_ENTRY)
                    .bind(run_id.as_str())
                    .bind(bytes(buf, keep))
                    .bind(owner.as_str())
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                if done.rows_affected() == 1 {
                    Ok(Ok(Outcome::Done))
                } else {
                    refused(conn, run_id, owner, now).await
                }
            }
            Save::Start { .. } | Save::Rewrite { .. } => {
                start(conn, run_id, owner, save, keep, now).await
            }
            Save::Finish { status, error } => {
                let done = sqlx::query(FINISH_RUN)
                    .bind(run_id.as_str())
                    .bind(status.as_str())
                    .bind(error.as_deref())
                    .bind(now)
                    .bind(owner.as_str())
                    .execute(&mut *conn)
                    .await?;
                if done.rows_affected() == 1 {
                    Ok(Ok(Outcome::Done))
                } else {
                    refused(conn, run_id, owner, now).await
                }
            }
        },
        Op::Delete { run_id } => {
            let locked: bool = sqlx::query_scalar(LOCKED)
                .bind(run_id.as_str())
                .bind(now)
                .fetch_one(&mut *conn)
                .await?;
            if locked {
                return Ok(Err(Failure::RunLocked(run_id.clone())));
            }
            sqlx::query("DELETE FROM entries WHERE run_id = ?1")
                .bind(run_id.as_str())
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM run_headers WHERE run_id = ?1")
                .bind(run_id.as_str())
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM runs WHERE run_id = ?1")
                .bind(run_id.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(Ok(Outcome::Done))
        }
        Op::Acquire {
            run_id,
            owner,
            lease_ms,
        } => {
            let done = sqlx::query(ACQUIRE)
                .bind(run_id.as_str())
                .bind(owner.as_str())
                .bind(now.saturating_add(*lease_ms))
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(Ok(Outcome::Flag(done.rows_affected() == 1)))
        }
        Op::Renew {
            run_id,
            owner,
            lease_ms,
        } => {
            let done = sqlx::query(RENEW)
                .bind(run_id.as_str())
                .bind(owner.as_str())
                .bind(now.saturating_add(*lease_ms))
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(Ok(Outcome::Flag(done.rows_affected() == 1)))
        }
        // Taken out of every batch before it runs (`take_barriers`); were one to get here,
        // it has nothing to do.
        Op::Barrier => Ok(Ok(Outcome::Done)),
        Op::Release { run_id, owner } => {
            sqlx::query(RELEASE)
                .bind(run_id.as_str())
                .bind(owner.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(Ok(Outcome::Done))
        }
        Op::Purge {
            older_than_ms,
            statuses: [s3, s4, s5],
        } => {
            let cutoff = now.saturating_sub(*older_than_ms);
            let purge = |sql: &'static str| {
                sqlx::query(sql)
                    .bind(cutoff)
                    .bind(now)
                    .bind(*s3)
                    .bind(*s4)
                    .bind(*s5)
            };
            // Entries and inputs before the runs: their condition reads the runs.
            purge(PURGE_ENTRIES).execute(&mut *conn).await?;
            purge(PURGE_HEADERS).execute(&mut *conn).await?;
            let purged = purge(PURGE_RUNS).execute(&mut *conn).await?.rows_affected();
            // An expired lock acts as no lock at all, so dropping its row changes nothing.
            sqlx::query("DELETE FROM locks WHERE expires_at_ms <= ?1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(Ok(Outcome::Count(purged)))
        }
    }
}
