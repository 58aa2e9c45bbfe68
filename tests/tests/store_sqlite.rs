//! `SqliteStore` under durable pipelines, looked at in the database file: a run's input is
//! written once (not again by every status change), and a file of schema version 1 (input in
//! `runs.header`) is upgraded on open with its runs intact.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use fluxio::prelude::*;
use fluxio::store::{CheckpointStore, RunStatus, SqliteStore};
use futures::StreamExt;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

fluxio::keys! {
    pub payload: Vec<u8>;
    pub size: u64;
    pub seed: u64;
    pub half: u64;
    pub done: u64;
}

/// 8 MiB: far more than everything else the run writes.
const INPUT: usize = 8 << 20;

#[stage(reads = [payload], writes = [size])]
fn measure(payload: &Vec<u8>) -> u64 {
    payload.len() as u64
}

static FIRST_RUNS: AtomicU32 = AtomicU32::new(0);
static FAIL_LAST: AtomicBool = AtomicBool::new(false);

#[stage(reads = [seed], writes = [half])]
fn halve(seed: &u64) -> u64 {
    FIRST_RUNS.fetch_add(1, Ordering::SeqCst);
    seed / 2
}

#[stage(reads = [half], writes = [done])]
fn finish(half: &u64) -> Result<u64, StageError> {
    if FAIL_LAST.load(Ordering::SeqCst) {
        return Err(StageError::msg("finish is told to fail"));
    }
    Ok(half + 1)
}

/// A fresh directory in the temp directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("fluxio-store-sqlite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await
    .unwrap()
}

async fn pragma(conn: &mut SqliteConnection, name: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {name}")))
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Every status change of a run (start, finish, ...) updates its row in `runs`, and SQLite
/// writes a whole row again on update: the input must not be in that row, or each change
/// writes it again and leaves its old copy as free pages (a 20 MiB input left 20 MiB free
/// after one run).
#[tokio::test]
async fn a_large_input_is_written_once_per_run() {
    let dir = Scratch::new("input-once");
    let path = dir.file("runs.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let pipe = pipeline! { measure }.with_store(store.clone());
    let out = pipe
        .invoke(input! { payload: vec![7u8; INPUT] })
        .run_id("big")
        .await
        .unwrap();
    assert_eq!(out[size], INPUT as u64);
    assert_eq!(
        store.load("big").await.unwrap().unwrap().status,
        RunStatus::Completed
    );

    // Fold the log into the file, so the file's size is the database's.
    let mut conn = raw(&path).await;
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(busy, 0, "the checkpoint completed");
    let page_size = pragma(&mut conn, "page_size").await;
    let pages = pragma(&mut conn, "page_count").await;
    let free = pragma(&mut conn, "freelist_count").await;
    let file = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "{INPUT} bytes of input: {pages} pages of {page_size} bytes, {free} free, file {file} bytes"
    );
    // A copy of the input written and then replaced would leave 2048 free pages.
    assert!(free * page_size < (INPUT / 16) as i64, "{free} free pages");
    assert!(file < (INPUT + INPUT / 8) as u64, "file of {file} bytes");
}

/// Schema version 1, as fluxio-store-sqlite 0.1 created it: the input in `runs.header`.
const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY NOT NULL,
        version TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        header BLOB NOT NULL,
        updated_at_ms INTEGER NOT NULL
    )",
    "CREATE INDEX runs_by_status ON runs (status, updated_at_ms)",
    "CREATE TABLE entries (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
    )",
    "CREATE TABLE locks (
        run_id TEXT PRIMARY KEY NOT NULL,
        owner TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL
    )",
    "CREATE TABLE fluxio_schema_version (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        version INTEGER NOT NULL
    )",
    "INSERT INTO fluxio_schema_version (id, version) VALUES (0, 1)",
];

#[tokio::test]
async fn a_run_stored_under_schema_version_1_is_inspected_and_resumed_after_the_upgrade() {
    let dir = Scratch::new("schema-v1");
    // A failed run's checkpoint as the pipeline writes it (its input, one finished stage).
    let stored = {
        let store = SqliteStore::open(dir.file("source.db")).await.unwrap();
        let pipe = pipeline! { halve, finish }.with_store(store.clone());
        FAIL_LAST.store(true, Ordering::SeqCst);
        let err = pipe
            .invoke(input! { seed: 40 })
            .run_id("old")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("told to fail"), "{err}");
        store.load("old").await.unwrap().expect("a checkpoint")
    };
    assert_eq!(stored.status, RunStatus::Failed);
    assert_eq!(stored.entries.len(), 1);

    // The same checkpoint in a version 1 file.
    let path = dir.file("v1.db");
    let mut conn = raw(&path).await;
    for sql in SCHEMA_V1 {
        sqlx::query(*sql).execute(&mut conn).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO runs (run_id, version, status, error, header, updated_at_ms)
         VALUES ('old', ?1, 'failed', ?2, ?3, 0)",
    )
    .bind(&stored.version)
    .bind(&stored.error)
    .bind(&stored.header)
    .execute(&mut conn)
    .await
    .unwrap();
    for (seq, bytes) in stored.entries.iter().enumerate() {
        sqlx::query("INSERT INTO entries (run_id, seq, bytes) VALUES ('old', ?1, ?2)")
            .bind(seq as i64)
            .bind(bytes)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    let mut conn = raw(&path).await;
    let version: i64 = sqlx::query_scalar("SELECT version FROM fluxio_schema_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 2);
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('runs')")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(!columns.iter().any(|c| c == "header"), "{columns:?}");

    let loaded = store.load("old").await.unwrap().expect("the old run");
    assert_eq!(loaded.header, stored.header);
    assert_eq!(loaded.entries, stored.entries);
    let listed = store.list_runs(&[RunStatus::Failed]).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].run_id, "old");

    let pipe = pipeline! { halve, finish }.with_store(store.clone());
    let record = pipe.inspect("old").await.unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    assert_eq!((record.ctx[seed], record.ctx[half]), (40, 20));

    FAIL_LAST.store(false, Ordering::SeqCst);
    let runs_before = FIRST_RUNS.load(Ordering::SeqCst);
    let out = pipe.resume("old").await.unwrap();
    assert_eq!((out[seed], out[done]), (40, 21));
    assert_eq!(
        FIRST_RUNS.load(Ordering::SeqCst),
        runs_before,
        "the finished stage does not run again"
    );
    let record = pipe.inspect("old").await.unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(record.ctx[seed], 40);

    // Deleting it deletes its input too.
    store.delete("old").await.unwrap();
    let headers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM run_headers")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(headers, 0);
}

/// A run whose stored status is none the store writes (a row edited by hand) fails a
/// listing by status — naming it — as it fails a listing of every run: a recovery sweep
/// asking for running runs must not pass over it unseen.
#[tokio::test]
async fn a_damaged_status_fails_a_filtered_listing_too() {
    let dir = Scratch::new("damaged-status");
    let path = dir.file("runs.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let pipe = pipeline! { measure }.with_store(store.clone());
    for id in ["fine", "weird", "blob"] {
        pipe.invoke(input! { payload: vec![1u8] })
            .run_id(id)
            .await
            .unwrap();
    }
    let listed = store.list_runs(&[RunStatus::Completed]).await.unwrap();
    assert_eq!(listed.len(), 3);

    let mut conn = raw(&path).await;
    sqlx::query("UPDATE runs SET status = 'RUNNING' WHERE run_id = 'weird'")
        .execute(&mut conn)
        .await
        .unwrap();
    for statuses in [
        &[][..],
        &[RunStatus::Running, RunStatus::RollingBack][..],
        &[RunStatus::Completed][..],
    ] {
        let err = store.list_runs(statuses).await.unwrap_err().to_string();
        assert!(err.contains("`weird`"), "{statuses:?}: {err}");
    }
    sqlx::query("UPDATE runs SET status = 'running' WHERE run_id = 'weird'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE runs SET status = X'72756E6E696E67' WHERE run_id = 'blob'")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store
        .list_runs(&[RunStatus::Running])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`blob`"), "{err}");
}

#[stage(reads = [seed], writes = [half])]
async fn hang(seed: &u64, started: Res<std::sync::Arc<tokio::sync::Notify>>) -> u64 {
    started.notify_one();
    std::future::pending::<()>().await;
    *seed
}

/// A run dropped mid-stage gives its lock back before the drop returns (the request is in
/// the writer's queue ahead of anything asked after it): the next call — a listing, a
/// lock request — finds the id free.
#[tokio::test]
async fn a_dropped_run_gives_its_lock_back_before_the_next_call() {
    let dir = Scratch::new("dropped");
    // Writes wait for a busy file far longer than the test waits for a listing.
    let store = SqliteStore::open_with(
        dir.file("dropped.db"),
        fluxio::store::SqliteOptions::new().busy_timeout(std::time::Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let pipe = pipeline! { hang }
        .with_resource(started.clone())
        .with_store(store.clone());
    let mut run = Box::pin(pipe.invoke(input! { seed: 4 }).run_id("dropped"));
    tokio::select! {
        out = &mut run => panic!("the stage never ends: {out:?}"),
        () = started.notified() => {}
    }
    // Another process holds the file's write lock a moment: the release waits in the
    // writer's queue, and a listing (which reads apart from the writer) must wait for it.
    let mut other = SqliteConnection::connect_with(
        &SqliteConnectOptions::new().filename(dir.file("dropped.db")),
    )
    .await
    .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    // Dropped (cancelled): no await between the drop and the next call.
    drop(run);
    let listing = tokio::spawn({
        let store = store.clone();
        async move { store.list_runs(&[]).await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // A sweep's listing sees the run free (abandoned), as a resume would.
    let listed = listing.await.unwrap();
    let run = listed
        .iter()
        .find(|r| r.run_id == "dropped")
        .expect("listed");
    assert_eq!(
        (run.is_locked(), run.is_abandoned()),
        (false, true),
        "{run:?}"
    );
    let free = store
        .acquire("dropped", "next-owner", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(free, "the dropped run still held its lock");

    // With no release in flight, a listing does not wait behind the writer: it answers
    // while another process holds the write lock and a save waits for it.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let save = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .save("dropped", "next-owner", fluxio::store::Save::Entry(vec![1]))
                .await
        }
    });
    tokio::task::yield_now().await;
    let listed = tokio::time::timeout(std::time::Duration::from_secs(10), store.list_runs(&[]))
        .await
        .expect("the listing waited for the writer")
        .unwrap();
    assert_eq!(listed.len(), 1);
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let _ = save.await.unwrap();
}

#[stage(reads = [seed], writes = [half])]
async fn halve_quietly(seed: &u64) -> u64 {
    seed / 2
}

/// A run dropped while it waits for its lock (a caller's timeout, say) may still get the
/// lock — the writer finishes what it was sent — and gives it back: retried at once, the
/// same id is free, and no lock is left behind unseen by `list_runs`.
#[tokio::test]
async fn a_run_dropped_while_taking_its_lock_leaves_no_lock_behind() {
    let dir = Scratch::new("dropped-acquire");
    let store = SqliteStore::open(dir.file("acquire.db")).await.unwrap();
    let pipe = pipeline! { halve_quietly }.with_store(store.clone());
    for i in 0..20 {
        let id = format!("job-{i}");
        let mut first = Box::pin(pipe.invoke(input! { seed: 4 }).run_id(id.clone()));
        // One poll: the lock is asked for, and the call is dropped before the answer (or,
        // rarely on a fast server, after the run ended: the retry then starts it afresh).
        let _ = futures::poll!(&mut first);
        drop(first);
        let retried = pipe.invoke(input! { seed: 4 }).run_id(id.clone()).await;
        assert!(retried.is_ok(), "{id}: {retried:?}");
    }
    let free = store
        .acquire("job-0", "next-owner", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(free);

    // The same for a streamed run, cancelled while its task waits for the lock.
    for i in 0..20 {
        let id = format!("stream-{i}");
        let mut first = pipe.stream::<u64>(input! { seed: 4 }).run_id(id.clone());
        assert!(futures::poll!(first.next()).is_pending());
        // Its task runs up to the lock request.
        tokio::task::yield_now().await;
        let _ = first.cancel().await;
        let retried = pipe.invoke(input! { seed: 4 }).run_id(id.clone()).await;
        assert!(retried.is_ok(), "{id}: {retried:?}");
    }
}

#[stage(reads = [seed], writes = [half])]
async fn halve_or_fail(seed: &u64) -> Result<u64, StageError> {
    if *seed == 0 {
        return Err(StageError::msg("zero"));
    }
    Ok(seed / 2)
}

/// A listing carries when each run's status was last written, and a failed run's error —
/// also one whose error text is not UTF-8 (read as far as it goes: the listing does not
/// fail for it).
#[tokio::test]
async fn a_listing_says_when_and_why() {
    let dir = Scratch::new("listing-times");
    let store = SqliteStore::open(dir.file("times.db")).await.unwrap();
    let pipe = pipeline! { halve_or_fail }.with_store(store.clone());
    let since = std::time::SystemTime::now();
    pipe.invoke(input! { seed: 4 })
        .run_id("done")
        .await
        .unwrap();
    pipe.invoke(input! { seed: 0 })
        .run_id("failed")
        .await
        .unwrap_err();
    fluxio_tests::assert_listing_has_times_and_errors(
        &store,
        since,
        std::time::Duration::ZERO,
        &[
            ("done", None),
            ("failed", Some("stage `halve_or_fail` failed: zero")),
        ],
    )
    .await;

    let mut conn = raw(&dir.file("times.db")).await;
    sqlx::query("UPDATE runs SET error = X'6661696CFF' WHERE run_id = 'failed'")
        .execute(&mut conn)
        .await
        .unwrap();
    let listed = store.list_runs(&[RunStatus::Failed]).await.unwrap();
    assert_eq!(listed[0].error.as_deref(), Some("fail\u{FFFD}"));
}

/// Resumes of a completed run only read it: many at once all get its result, though each
/// takes the run's lock a moment (two retries of one request must not get `RunIdInUse`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_of_a_completed_run_all_get_its_result() {
    let dir = Scratch::new("resume-completed");
    let store = SqliteStore::open(dir.file("done.db")).await.unwrap();
    let pipe = pipeline! { halve_quietly }.with_store(store);
    pipe.invoke(input! { seed: 8 })
        .run_id("done")
        .await
        .unwrap();
    for out in fluxio_tests::resumes_at_once(&pipe, "done", 50).await {
        assert_eq!(out.map(|ctx| ctx[half]).unwrap(), 4);
    }
}
