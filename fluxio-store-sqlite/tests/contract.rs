//! The `CheckpointStore` contract. Every scenario runs against the reference
//! `InMemoryStore` first and then against `SqliteStore` on a real file, so the expectations
//! are checked to be the reference's behavior.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::{TempDb, shape};
use fluxio_core::store::{CheckpointStore, InMemoryStore, RunStatus, Save, StoreError};
use fluxio_store_sqlite::SqliteStore;

type Store = Arc<dyn CheckpointStore>;

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(100);
/// Comfortably longer than `SHORT`.
const PAST_SHORT: Duration = Duration::from_millis(300);

/// Runs `scenario` on the in-memory store, then on a fresh SQLite file.
async fn on_both<F, Fut>(name: &str, scenario: F)
where
    F: Fn(&'static str, Store) -> Fut,
    Fut: Future<Output = ()>,
{
    scenario("memory", Arc::new(InMemoryStore::new())).await;
    let db = TempDb::new(name);
    let store = SqliteStore::open(db.path()).await.expect("open");
    scenario("sqlite", Arc::new(store)).await;
}

fn start(version: &str, header: &[u8]) -> Save {
    Save::Start {
        version: version.into(),
        header: header.to_vec(),
    }
}

fn finish(status: RunStatus, error: Option<&str>) -> Save {
    Save::Finish {
        status,
        error: error.map(str::to_string),
    }
}

async fn entries(store: &Store, run_id: &str) -> Vec<Vec<u8>> {
    store
        .load(run_id)
        .await
        .expect("load")
        .expect("a run")
        .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_entry_finish_load_round_trip() {
    on_both("round-trip", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap(), "{label}");
        s.save("r", "a", start("v1", &[1, 2])).await.unwrap();
        s.save("r", "a", Save::Entry(vec![10])).await.unwrap();
        s.save("r", "a", Save::Entry(vec![11, 12])).await.unwrap();
        let run = s.load("r").await.unwrap().expect("a run");
        assert_eq!(run.version, "v1", "{label}");
        assert_eq!(run.status, RunStatus::Running, "{label}");
        assert_eq!(run.error, None, "{label}");
        assert_eq!(run.header, vec![1, 2], "{label}");
        assert_eq!(run.entries, vec![vec![10], vec![11, 12]], "{label}");

        s.save("r", "a", finish(RunStatus::Failed, Some("boom")))
            .await
            .unwrap();
        let run = s.load("r").await.unwrap().expect("a run");
        assert_eq!(run.status, RunStatus::Failed, "{label}");
        assert_eq!(run.error.as_deref(), Some("boom"), "{label}");
        assert_eq!(run.entries.len(), 2, "{label}");

        s.save("r", "a", finish(RunStatus::Completed, None))
            .await
            .unwrap();
        let run = s.load("r").await.unwrap().expect("a run");
        assert_eq!(run.status, RunStatus::Completed, "{label}");
        assert_eq!(run.error, None, "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_header_and_entries_round_trip() {
    on_both("empty", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap());
        s.save("r", "a", start("", &[])).await.unwrap();
        s.save("r", "a", Save::Entry(Vec::new())).await.unwrap();
        let run = s.load("r").await.unwrap().expect("a run");
        assert_eq!(run.version, "", "{label}");
        assert_eq!(run.header, Vec::<u8>::new(), "{label}");
        assert_eq!(run.entries, vec![Vec::<u8>::new()], "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_replaces_an_old_run() {
    on_both("replace", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap());
        s.save("r", "a", start("v1", b"old")).await.unwrap();
        s.save("r", "a", Save::Entry(b"e1".to_vec())).await.unwrap();
        s.save("r", "a", finish(RunStatus::Failed, Some("x")))
            .await
            .unwrap();

        s.save("r", "a", start("v2", b"new")).await.unwrap();
        let run = s.load("r").await.unwrap().expect("a run");
        assert_eq!(run.version, "v2", "{label}");
        assert_eq!(run.status, RunStatus::Running, "{label}");
        assert_eq!(run.error, None, "{label}");
        assert_eq!(run.header, b"new".to_vec(), "{label}");
        assert!(run.entries.is_empty(), "{label}");

        s.save("r", "a", Save::Entry(b"e2".to_vec())).await.unwrap();
        assert_eq!(entries(&s, "r").await, vec![b"e2".to_vec()], "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_come_back_in_the_order_they_were_saved() {
    on_both("order", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap());
        assert!(s.acquire("other", "a", LONG).await.unwrap());
        s.save("r", "a", start("v", &[])).await.unwrap();
        s.save("other", "a", start("v", &[])).await.unwrap();
        let expected: Vec<Vec<u8>> = (0u32..200).map(|i| i.to_le_bytes().to_vec()).collect();
        for (i, e) in expected.iter().enumerate() {
            s.save("r", "a", Save::Entry(e.clone())).await.unwrap();
            // Another run's entries interleave without mixing in.
            if i % 10 == 0 {
                s.save("other", "a", Save::Entry(vec![0xff])).await.unwrap();
            }
        }
        assert_eq!(entries(&s, "r").await, expected, "{label}");
        assert_eq!(entries(&s, "other").await.len(), 20, "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_or_finish_before_start_fails_without_writing() {
    on_both("not-started", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap());
        let r = s.save("r", "a", Save::Entry(vec![1])).await;
        assert_eq!(shape(&r), "backend(save)", "{label}");
        assert!(
            r.unwrap_err().to_string().contains("never started"),
            "{label}"
        );
        let r = s.save("r", "a", finish(RunStatus::Completed, None)).await;
        assert_eq!(shape(&r), "backend(save)", "{label}");
        assert!(s.load("r").await.unwrap().is_none(), "{label}");
        assert!(!s.exists("r").await.unwrap(), "{label}");
        // Fencing is checked first.
        let r = s.save("r", "b", Save::Entry(vec![1])).await;
        assert_eq!(shape(&r), "lock-lost", "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_by_a_non_owner_is_lock_lost_and_writes_nothing() {
    on_both("non-owner", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap());
        s.save("r", "a", start("v1", b"h")).await.unwrap();
        s.save("r", "a", Save::Entry(b"e1".to_vec())).await.unwrap();
        let before = s.load("r").await.unwrap();

        for save in [
            start("v2", b"other"),
            Save::Entry(b"intruder".to_vec()),
            finish(RunStatus::Completed, None),
        ] {
            let r = s.save("r", "b", save).await;
            assert_eq!(shape(&r), "lock-lost", "{label}");
            match r {
                Err(StoreError::LockLost { run_id }) => assert_eq!(run_id, "r", "{label}"),
                other => panic!("{label}: {other:?}"),
            }
        }
        assert_eq!(s.load("r").await.unwrap(), before, "{label}");

        // No lock at all: nothing is created.
        let r = s.save("free", "a", start("v1", b"h")).await;
        assert_eq!(shape(&r), "lock-lost", "{label}");
        assert!(!s.exists("free").await.unwrap(), "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_lease_expires_and_another_owner_acquires_the_old_owner_is_fenced() {
    on_both("takeover", |label, s| async move {
        assert!(s.acquire("r", "a", SHORT).await.unwrap());
        s.save("r", "a", start("v1", b"h")).await.unwrap();
        s.save("r", "a", Save::Entry(b"e1".to_vec())).await.unwrap();
        tokio::time::sleep(PAST_SHORT).await;

        // Expired, even before anyone else takes it.
        let r = s.save("r", "a", Save::Entry(b"late".to_vec())).await;
        assert_eq!(shape(&r), "lock-lost", "{label}");

        assert!(s.acquire("r", "b", LONG).await.unwrap(), "{label}");
        for save in [
            Save::Entry(b"stale".to_vec()),
            finish(RunStatus::Completed, None),
            start("v0", b"stale"),
        ] {
            let r = s.save("r", "a", save).await;
            assert_eq!(shape(&r), "lock-lost", "{label}");
        }
        assert!(!s.renew("r", "a", LONG).await.unwrap(), "{label}");
        // The old owner's release does not free the new owner's lock.
        s.release("r", "a").await.unwrap();
        assert!(!s.acquire("r", "a", LONG).await.unwrap(), "{label}");

        s.save("r", "b", Save::Entry(b"e2".to_vec())).await.unwrap();
        let run = s.load("r").await.unwrap().expect("a run");
        assert_eq!(run.version, "v1", "{label}");
        assert_eq!(run.status, RunStatus::Running, "{label}");
        assert_eq!(run.entries, vec![b"e1".to_vec(), b"e2".to_vec()], "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_takes_a_free_expired_or_own_lock_only() {
    on_both("acquire", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap(), "{label}: free");
        assert!(!s.acquire("r", "b", LONG).await.unwrap(), "{label}: held");
        assert!(s.acquire("r", "a", LONG).await.unwrap(), "{label}: own");
        // Locks are per run.
        assert!(s.acquire("r2", "b", LONG).await.unwrap(), "{label}");

        // Re-acquiring sets the new lease, shorter or not.
        assert!(s.acquire("r", "a", SHORT).await.unwrap(), "{label}");
        tokio::time::sleep(PAST_SHORT).await;
        assert!(s.acquire("r", "b", LONG).await.unwrap(), "{label}: expired");
        assert!(!s.acquire("r", "a", LONG).await.unwrap(), "{label}");
        assert!(!s.acquire("r2", "a", LONG).await.unwrap(), "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_extends_only_the_owners_unexpired_lock() {
    on_both("renew", |label, s| async move {
        assert!(s.acquire("r", "a", SHORT).await.unwrap());
        assert!(s.renew("r", "a", LONG).await.unwrap(), "{label}");
        assert!(
            !s.renew("r", "b", LONG).await.unwrap(),
            "{label}: not owner"
        );
        tokio::time::sleep(PAST_SHORT).await;
        // Extended past the first lease.
        assert!(!s.acquire("r", "b", LONG).await.unwrap(), "{label}");
        s.save("r", "a", start("v", &[])).await.unwrap();

        // An expired lock cannot be renewed, even by its owner.
        assert!(s.acquire("r2", "a", SHORT).await.unwrap());
        tokio::time::sleep(PAST_SHORT).await;
        assert!(!s.renew("r2", "a", LONG).await.unwrap(), "{label}: expired");
        // Nor a lock that was never taken, or was released.
        assert!(!s.renew("r3", "a", LONG).await.unwrap(), "{label}");
        s.release("r", "a").await.unwrap();
        assert!(!s.renew("r", "a", LONG).await.unwrap(), "{label}: released");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_frees_only_the_owners_lock() {
    on_both("release", |label, s| async move {
        assert!(s.acquire("r", "a", LONG).await.unwrap());
        s.release("r", "b").await.unwrap();
        assert!(!s.acquire("r", "b", LONG).await.unwrap(), "{label}");
        s.save("r", "a", start("v", &[])).await.unwrap();

        s.release("r", "a").await.unwrap();
        let r = s.save("r", "a", Save::Entry(vec![1])).await;
        assert_eq!(shape(&r), "lock-lost", "{label}: released");
        assert!(s.acquire("r", "b", LONG).await.unwrap(), "{label}");
        // Releasing what nobody holds is fine.
        s.release("nothing", "a").await.unwrap();
        // The checkpoint outlives the lock.
        assert!(s.exists("r").await.unwrap(), "{label}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_checkpoint_but_not_the_lock() {
    on_both("delete", |label, s| async move {
        assert!(!s.exists("r").await.unwrap(), "{label}");
        assert!(s.acquire("r", "a", LONG).await.unwrap());
        s.save("r", "a", start("v", b"h")).await.unwrap();
        s.save("r", "a", Save::Entry(vec![1])).await.unwrap();
        assert!(s.exists("r").await.unwrap(), "{label}");

        s.delete("r").await.unwrap();
        assert!(!s.exists("r").await.unwrap(), "{label}");
        assert!(s.load("r").await.unwrap().is_none(), "{label}");
        // The lock is still a's.
        assert!(!s.acquire("r", "b", LONG).await.unwrap(), "{label}");
        let r = s.save("r", "a", Save::Entry(vec![2])).await;
        assert_eq!(shape(&r), "backend(save)", "{label}");
        // A new start begins from nothing.
        s.save("r", "a", start("v2", b"h2")).await.unwrap();
        assert!(entries(&s, "r").await.is_empty(), "{label}");

        s.delete("never-existed").await.unwrap();
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
    ] {
        assert!(s.acquire(run, "a", LONG).await.unwrap());
        s.save(run, "a", start("v", b"h")).await.unwrap();
        s.save(run, "a", Save::Entry(vec![1])).await.unwrap();
        if let Some(status) = status {
            s.save(run, "a", finish(status, None)).await.unwrap();
        }
        if run != "resuming" {
            s.release(run, "a").await.unwrap();
        }
    }
    // An expired lock on a finished run does not keep it.
    assert!(s.acquire("expired", "a", SHORT).await.unwrap());
    s.save("expired", "a", start("v", b"h")).await.unwrap();
    s.save("expired", "a", finish(RunStatus::Completed, None))
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
    ] {
        assert_eq!(s.exists(run).await.unwrap(), kept, "{run}");
    }
    // A purged run can start again, with no old entries.
    assert!(s.acquire("done", "b", LONG).await.unwrap());
    s.save("done", "b", start("v2", b"h")).await.unwrap();
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
    s.save("r", "a", start("v", &[])).await.unwrap();
    let _ = s.save("r", "b", Save::Entry(vec![1])).await;
    let stats = s.stats();
    assert_eq!(stats.saves, 2);
    assert_eq!(stats.writes, 3);
    assert!(stats.commits >= 1 && stats.commits <= 3, "{stats:?}");
    assert!(format!("{s:?}").contains("SqliteStore"));
}
