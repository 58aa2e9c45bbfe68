//! Group commit: concurrent writes share transactions, and one refused or failing write
//! takes no other down.

mod common;

use std::time::Duration;

use common::{TempDb, shape};
use fluxio_core::store::{CheckpointStore, RunStatus, Save};
use fluxio_store_sqlite::SqliteStore;
use sqlx::Connection;

const LONG: Duration = Duration::from_secs(30);
const RUNS: usize = 100;
const ENTRIES: usize = 20;

fn entry(run: usize, n: usize) -> Vec<u8> {
    format!("run {run} entry {n}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_share_commits_and_lose_nothing() {
    let db = TempDb::new("group-commit");
    let store = SqliteStore::open(db.path()).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for run in 0..RUNS {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("run-{run}");
            assert!(store.acquire(&id, &id, LONG).await.unwrap());
            store
                .save(
                    &id,
                    &id,
                    Save::Start {
                        version: "v".into(),
                        header: vec![],
                    },
                )
                .await
                .unwrap();
            for n in 0..ENTRIES {
                store
                    .save(&id, &id, Save::Entry(entry(run, n)))
                    .await
                    .unwrap();
            }
            store
                .save(
                    &id,
                    &id,
                    Save::Finish {
                        status: RunStatus::Completed,
                        error: None,
                    },
                )
                .await
                .unwrap();
            store.release(&id, &id).await.unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    for run in 0..RUNS {
        let stored = store
            .load(&format!("run-{run}"))
            .await
            .unwrap()
            .expect("a run");
        assert_eq!(stored.status, RunStatus::Completed);
        let expected: Vec<Vec<u8>> = (0..ENTRIES).map(|n| entry(run, n)).collect();
        assert_eq!(stored.entries, expected, "run {run}");
    }
    let stats = store.stats();
    assert_eq!(stats.saves, (RUNS * (ENTRIES + 2)) as u64);
    assert_eq!(stats.writes, (RUNS * (ENTRIES + 4)) as u64);
    assert!(
        stats.commits < stats.saves,
        "no write shared a commit: {stats:?}"
    );
    eprintln!("{stats:?}");
}

/// Issues all of `saves` at once (they queue before the writer runs, on this single
/// thread), and returns each result's shape.
async fn all_at_once(store: &SqliteStore, saves: Vec<(&str, &str, Save)>) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (run, owner, save)) in saves.into_iter().enumerate() {
        let fut = store.save(run, owner, save);
        tasks.spawn(async move { (i, shape(&fut.await)) });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.push(done.unwrap());
    }
    out.sort();
    out.into_iter().map(|(_, s)| s).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_fenced_save_fails_alone_inside_a_shared_commit() {
    let db = TempDb::new("fenced-in-batch");
    let store = SqliteStore::open(db.path()).await.unwrap();
    for run in ["a", "b"] {
        assert!(store.acquire(run, run, LONG).await.unwrap());
        store
            .save(
                run,
                run,
                Save::Start {
                    version: "v".into(),
                    header: vec![],
                },
            )
            .await
            .unwrap();
    }
    let commits = store.stats().commits;
    let results = all_at_once(
        &store,
        vec![
            ("a", "a", Save::Entry(vec![1])),
            ("a", "intruder", Save::Entry(vec![66])),
            ("b", "b", Save::Entry(vec![2])),
            ("b", "a", Save::Entry(vec![66])),
            ("a", "a", Save::Entry(vec![3])),
            ("never", "never", Save::Entry(vec![66])),
        ],
    )
    .await;
    assert_eq!(
        results,
        [
            "ok(())",
            "lock-lost",
            "ok(())",
            "lock-lost",
            "ok(())",
            "lock-lost"
        ]
    );
    // Six writes in one transaction.
    assert_eq!(store.stats().commits, commits + 1);
    assert_eq!(
        store.load("a").await.unwrap().unwrap().entries,
        vec![vec![1], vec![3]]
    );
    assert_eq!(
        store.load("b").await.unwrap().unwrap().entries,
        vec![vec![2]]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_failing_statement_fails_only_its_own_write() {
    let db = TempDb::new("failing-in-batch");
    let store = SqliteStore::open(db.path()).await.unwrap();
    for run in ["a", "b"] {
        assert!(store.acquire(run, run, LONG).await.unwrap());
    }
    store
        .save(
            "a",
            "a",
            Save::Start {
                version: "v".into(),
                header: vec![],
            },
        )
        .await
        .unwrap();
    // Break entry writes behind the store's back (as a damaged file might): every append
    // now fails with an SQLite error, while the other tables still work.
    let url = format!("sqlite://{}", db.path().display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DROP TABLE entries")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    let results = all_at_once(
        &store,
        vec![
            (
                "b",
                "b",
                Save::Start {
                    version: "v".into(),
                    header: vec![],
                },
            ),
            ("a", "a", Save::Entry(vec![1])),
            (
                "a",
                "a",
                Save::Finish {
                    status: RunStatus::Failed,
                    error: Some("e".into()),
                },
            ),
        ],
    )
    .await;
    // The start of `b` deletes old entries, so it fails too; the finish of `a` does not
    // touch the entries and is written.
    assert_eq!(results, ["backend(save)", "backend(save)", "ok(())"]);
    let err = store
        .save("a", "a", Save::Entry(vec![1]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("entries"), "{err}");
    assert!(!store.exists("b").await.unwrap());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM runs WHERE run_id = 'a'")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert_eq!(status, "failed");
    // The writer goes on with other writes.
    assert!(store.renew("a", "a", LONG).await.unwrap());
}

#[tokio::test]
async fn a_batch_limit_past_the_queue_is_the_queue() {
    // "No limit", say: the writer does not reserve room for it (it died on `usize::MAX`,
    // and every write after failed with "the writer stopped").
    let db = TempDb::new("huge-batch");
    let options = fluxio_store_sqlite::SqliteOptions::new().max_batch(usize::MAX);
    let store = SqliteStore::open_with(db.path(), options).await.unwrap();
    assert!(store.acquire("r", "me", LONG).await.unwrap());
    store.save("r", "me", Save::start("v", b"h")).await.unwrap();
    assert_eq!(
        store.load("r").await.unwrap().unwrap().status,
        RunStatus::Running
    );
}
