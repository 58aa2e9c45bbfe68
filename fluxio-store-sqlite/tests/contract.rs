//! The `CheckpointStore` contract (`fluxio_core::store::contract`, which `InMemoryStore`
//! passes too) on `SqliteStore` with a real file, and what only `SqliteStore` has: purging
//! finished runs and its write statistics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TempDb;
use fluxio_core::store::{CheckpointStore, RunStatus, Save, contract};
use fluxio_store_sqlite::SqliteStore;

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(100);
/// Comfortably longer than `SHORT`.
const PAST_SHORT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_store_contract() {
    let db = TempDb::new("contract");
    let store = SqliteStore::open(db.path()).await.expect("open");
    contract::check_store(|_check| {
        let store = store.clone();
        async move { Arc::new(store) as Arc<dyn CheckpointStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_finished_deletes_old_finished_unlocked_runs() {
    let db = TempDb::new("purge");
    let s = SqliteStore::open(db.path()).await.unwrap();
    for (run, status) in [
        ("done", Some(RunStatus::Completed)),
        ("failed", Some(RunStatus::Failed)),
        ("running", None),
        ("resuming", Some(RunStatus::Failed)),
        // Not over: a resume runs its rollbacks again.
        ("rolling-back", Some(RunStatus::RollingBack)),
    ] {
        assert!(s.acquire(run, "a", LONG).await.unwrap());
        s.save(run, "a", Save::start("v", b"h")).await.unwrap();
        s.save(run, "a", Save::Entry(vec![1])).await.unwrap();
        if let Some(status) = status {
            s.save(run, "a", Save::finish(status, None)).await.unwrap();
        }
        if run != "resuming" {
            s.release(run, "a").await.unwrap();
        }
    }
    // An expired lock on a finished run does not keep it.
    assert!(s.acquire("expired", "a", SHORT).await.unwrap());
    s.save("expired", "a", Save::start("v", b"h"))
        .await
        .unwrap();
    s.save("expired", "a", Save::finish(RunStatus::Completed, None))
        .await
        .unwrap();
    tokio::time::sleep(PAST_SHORT).await;

    assert_eq!(
        s.purge_finished(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert_eq!(s.purge_finished(Duration::ZERO).await.unwrap(), 3);
    for (run, kept) in [
        ("done", false),
        ("failed", false),
        ("expired", false),
        ("running", true),
        ("resuming", true),
        ("rolling-back", true),
    ] {
        assert_eq!(s.exists(run).await.unwrap(), kept, "{run}");
    }
    // A purged run can start again, with no old entries.
    assert!(s.acquire("done", "b", LONG).await.unwrap());
    s.save("done", "b", Save::start("v2", b"h")).await.unwrap();
    assert!(
        s.load("done")
            .await
            .unwrap()
            .expect("a run")
            .entries
            .is_empty()
    );
    assert!(s.acquire("expired", "b", LONG).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_commits_and_saves() {
    let db = TempDb::new("stats");
    let s = SqliteStore::open(db.path()).await.unwrap();
    assert_eq!(s.stats().saves, 0);
    assert!(s.acquire("r", "a", LONG).await.unwrap());
    s.save("r", "a", Save::start("v", Vec::new()))
        .await
        .unwrap();
    let _ = s.save("r", "b", Save::Entry(vec![1])).await;
    let stats = s.stats();
    assert_eq!(stats.saves, 2);
    assert_eq!(stats.writes, 3);
    assert!(stats.commits >= 1 && stats.commits <= 3, "{stats:?}");
    assert!(format!("{s:?}").contains("SqliteStore"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_completed_keeps_failed_and_rolled_back_runs() {
    let db = TempDb::new("purge-completed");
    let s = SqliteStore::open(db.path()).await.unwrap();
    for (run, status) in [
        ("done", RunStatus::Completed),
        ("failed", RunStatus::Failed),
        ("undone", RunStatus::RolledBack),
    ] {
        assert!(s.acquire(run, "a", LONG).await.unwrap());
        s.save(run, "a", Save::start("v", b"h")).await.unwrap();
        s.save(run, "a", Save::Entry(vec![1])).await.unwrap();
        s.save(run, "a", Save::finish(status, None)).await.unwrap();
        s.release(run, "a").await.unwrap();
    }
    assert_eq!(
        s.purge_completed(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    assert_eq!(s.purge_completed(Duration::ZERO).await.unwrap(), 1);
    assert!(!s.exists("done").await.unwrap());
    let failed = s.load("failed").await.unwrap().expect("kept");
    assert_eq!(failed.entries.len(), 1, "with its entries");
    assert!(s.exists("undone").await.unwrap());
    // Then the rest, with `purge_finished`.
    assert_eq!(s.purge_finished(Duration::ZERO).await.unwrap(), 2);
}
