//! The `CheckpointStore` contract, run against `RedisStore` on a real Redis server and,
//! as the reference, against `InMemoryStore`: both must behave the same.

#[macro_use]
mod common;

use std::time::Duration;

use fluxio_core::store::{CheckpointStore, RunStatus, Save, StoreError, StoredRun};

const LEASE: Duration = Duration::from_secs(30);

fn start(version: &str, header: &[u8]) -> Save {
    Save::Start {
        version: version.to_string(),
        header: header.to_vec(),
    }
}

fn finish(status: RunStatus, error: Option<&str>) -> Save {
    Save::Finish {
        status,
        error: error.map(str::to_string),
    }
}

fn assert_lock_lost(result: Result<(), StoreError>, run_id: &str) {
    match result {
        Err(StoreError::LockLost { run_id: r }) => assert_eq!(r, run_id),
        other => panic!("expected LockLost for `{run_id}`, got {other:?}"),
    }
}

fn assert_backend(result: Result<(), StoreError>, operation: &str, message: &str) {
    match result {
        Err(e @ StoreError::Backend { .. }) => {
            let StoreError::Backend { operation: op, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*op, operation);
            let text = e.to_string();
            assert!(
                text.contains(message),
                "`{text}` should contain `{message}`"
            );
        }
        other => panic!("expected a Backend error during {operation}, got {other:?}"),
    }
}

/// The contract, one function per property; each is run on both stores.
mod contract {
    use super::*;

    pub(crate) async fn round_trip(store: &dyn CheckpointStore) {
        let run = "run-1";
        assert!(store.acquire(run, "me", LEASE).await.unwrap());
        store.save(run, "me", start("v1", b"header")).await.unwrap();
        store
            .save(run, "me", Save::Entry(b"one".to_vec()))
            .await
            .unwrap();

        let mid = store.load(run).await.unwrap().unwrap();
        assert_eq!(
            mid,
            StoredRun {
                version: "v1".into(),
                status: RunStatus::Running,
                error: None,
                header: b"header".to_vec(),
                entries: vec![b"one".to_vec()],
            }
        );

        store
            .save(run, "me", Save::Entry(b"two".to_vec()))
            .await
            .unwrap();
        store
            .save(run, "me", finish(RunStatus::Completed, None))
            .await
            .unwrap();
        store.release(run, "me").await.unwrap();

        let done = store.load(run).await.unwrap().unwrap();
        assert_eq!(
            done,
            StoredRun {
                version: "v1".into(),
                status: RunStatus::Completed,
                error: None,
                header: b"header".to_vec(),
                entries: vec![b"one".to_vec(), b"two".to_vec()],
            }
        );
    }

    pub(crate) async fn load_missing_is_none(store: &dyn CheckpointStore) {
        assert_eq!(store.load("nobody").await.unwrap(), None);
        assert!(!store.exists("nobody").await.unwrap());
    }

    pub(crate) async fn start_replaces(store: &dyn CheckpointStore) {
        let run = "run-2";
        assert!(store.acquire(run, "me", LEASE).await.unwrap());
        store.save(run, "me", start("v1", b"old")).await.unwrap();
        store
            .save(run, "me", Save::Entry(b"a".to_vec()))
            .await
            .unwrap();
        store
            .save(run, "me", finish(RunStatus::Failed, Some("boom")))
            .await
            .unwrap();

        store.save(run, "me", start("v2", b"new")).await.unwrap();
        let run = store.load(run).await.unwrap().unwrap();
        assert_eq!(
            run,
            StoredRun {
                version: "v2".into(),
                status: RunStatus::Running,
                error: None,
                header: b"new".to_vec(),
                entries: vec![],
            }
        );
    }

    pub(crate) async fn entries_keep_their_order_and_bytes(store: &dyn CheckpointStore) {
        let run = "run-3";
        assert!(store.acquire(run, "me", LEASE).await.unwrap());
        let header: Vec<u8> = (0..=255u8).rev().collect();
        store.save(run, "me", start("v1", &header)).await.unwrap();
        let mut expected = Vec::new();
        for i in 0..100u32 {
            let entry = match i {
                0 => Vec::new(),
                1 => vec![0; 1 << 20],
                2 => b"\r\n$-1\r\n*0\r\n".to_vec(),
                _ => i.to_le_bytes().repeat(i as usize),
            };
            store
                .save(run, "me", Save::Entry(entry.clone()))
                .await
                .unwrap();
            expected.push(entry);
        }
        let stored = store.load(run).await.unwrap().unwrap();
        assert_eq!(stored.header, header);
        assert_eq!(stored.entries.len(), expected.len());
        assert!(stored.entries == expected, "entries differ");
    }

    pub(crate) async fn concurrent_entries_are_all_kept(store: &dyn CheckpointStore) {
        let run = "run-4";
        assert!(store.acquire(run, "me", LEASE).await.unwrap());
        store.save(run, "me", start("v1", b"")).await.unwrap();
        let saves: Vec<_> = (0..50u8)
            .map(|i| store.save(run, "me", Save::Entry(vec![i])))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for save in saves {
            tasks.spawn(save);
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let mut entries = store.load(run).await.unwrap().unwrap().entries;
        entries.sort();
        assert_eq!(entries, (0..50u8).map(|i| vec![i]).collect::<Vec<_>>());
    }

    pub(crate) async fn entry_or_finish_before_start_fails(store: &dyn CheckpointStore) {
        let run = "run-5";
        assert!(store.acquire(run, "me", LEASE).await.unwrap());
        assert_backend(
            store.save(run, "me", Save::Entry(b"x".to_vec())).await,
            "save",
            "never started",
        );
        assert_backend(
            store
                .save(run, "me", finish(RunStatus::Completed, None))
                .await,
            "save",
            "never started",
        );
        assert!(!store.exists(run).await.unwrap());
        assert_eq!(store.load(run).await.unwrap(), None);
    }

    pub(crate) async fn finish_sets_and_clears_the_error(store: &dyn CheckpointStore) {
        let run = "run-6";
        assert!(store.acquire(run, "me", LEASE).await.unwrap());
        store.save(run, "me", start("v1", b"h")).await.unwrap();
        let text = "stage `b` failed: ünïcödé \u{1F4A5}\nsecond line";
        store
            .save(run, "me", finish(RunStatus::Failed, Some(text)))
            .await
            .unwrap();
        let failed = store.load(run).await.unwrap().unwrap();
        assert_eq!(failed.status, RunStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some(text));

        // An empty error text is still an error.
        store
            .save(run, "me", finish(RunStatus::Failed, Some("")))
            .await
            .unwrap();
        assert_eq!(
            store.load(run).await.unwrap().unwrap().error.as_deref(),
            Some("")
        );

        // Resumed and completed: the old error is gone.
        store
            .save(run, "me", Save::Entry(b"e".to_vec()))
            .await
            .unwrap();
        let resumed = store.load(run).await.unwrap().unwrap();
        assert_eq!(
            resumed.status,
            RunStatus::Failed,
            "an entry keeps the status"
        );
        store
            .save(run, "me", finish(RunStatus::Completed, None))
            .await
            .unwrap();
        let completed = store.load(run).await.unwrap().unwrap();
        assert_eq!(completed.status, RunStatus::Completed);
        assert_eq!(completed.error, None);
        assert_eq!(completed.entries, vec![b"e".to_vec()]);
    }

    pub(crate) async fn save_without_the_lock_is_refused(store: &dyn CheckpointStore) {
        let run = "run-7";
        assert_lock_lost(store.save(run, "me", start("v1", b"h")).await, run);
        assert!(!store.exists(run).await.unwrap());
    }

    pub(crate) async fn save_by_another_owner_is_refused(store: &dyn CheckpointStore) {
        let run = "run-8";
        assert!(store.acquire(run, "owner", LEASE).await.unwrap());
        store.save(run, "owner", start("v1", b"h")).await.unwrap();
        store
            .save(run, "owner", Save::Entry(b"1".to_vec()))
            .await
            .unwrap();
        let before = store.load(run).await.unwrap();

        assert_lock_lost(store.save(run, "intruder", start("v9", b"x")).await, run);
        assert_lock_lost(
            store
                .save(run, "intruder", Save::Entry(b"2".to_vec()))
                .await,
            run,
        );
        assert_lock_lost(
            store
                .save(run, "intruder", finish(RunStatus::Failed, Some("x")))
                .await,
            run,
        );
        assert_eq!(
            store.load(run).await.unwrap(),
            before,
            "nothing was written"
        );
    }

    pub(crate) async fn expired_lease_fences_the_old_owner(store: &dyn CheckpointStore) {
        let run = "run-9";
        let short = Duration::from_millis(150);
        assert!(store.acquire(run, "old", short).await.unwrap());
        store.save(run, "old", start("v1", b"h")).await.unwrap();
        store
            .save(run, "old", Save::Entry(b"1".to_vec()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Expired: the old owner can no longer write, even before anyone took over.
        assert_lock_lost(
            store.save(run, "old", Save::Entry(b"2".to_vec())).await,
            run,
        );
        assert!(!store.renew(run, "old", LEASE).await.unwrap());

        assert!(store.acquire(run, "new", LEASE).await.unwrap());
        assert_lock_lost(
            store.save(run, "old", Save::Entry(b"3".to_vec())).await,
            run,
        );
        assert_lock_lost(
            store
                .save(run, "old", finish(RunStatus::Completed, None))
                .await,
            run,
        );
        assert!(!store.acquire(run, "old", LEASE).await.unwrap());

        let stored = store.load(run).await.unwrap().unwrap();
        assert_eq!(stored.entries, vec![b"1".to_vec()]);
        assert_eq!(stored.status, RunStatus::Running);
        store
            .save(run, "new", Save::Entry(b"4".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            store.load(run).await.unwrap().unwrap().entries,
            vec![b"1".to_vec(), b"4".to_vec()]
        );
    }

    pub(crate) async fn acquire_renew_release(store: &dyn CheckpointStore) {
        let run = "run-10";
        assert!(store.acquire(run, "a", LEASE).await.unwrap());
        assert!(
            store.acquire(run, "a", LEASE).await.unwrap(),
            "the holder may take it again"
        );
        assert!(!store.acquire(run, "b", LEASE).await.unwrap());
        assert!(!store.renew(run, "b", LEASE).await.unwrap());
        assert!(store.renew(run, "a", LEASE).await.unwrap());

        store.release(run, "b").await.unwrap();
        assert!(
            !store.acquire(run, "b", LEASE).await.unwrap(),
            "a release by another owner does nothing"
        );

        store.release(run, "a").await.unwrap();
        assert!(!store.renew(run, "a", LEASE).await.unwrap());
        assert!(store.acquire(run, "b", LEASE).await.unwrap());
        store.release(run, "b").await.unwrap();
        store.release(run, "b").await.unwrap();
        store.release("never-locked", "b").await.unwrap();
    }

    pub(crate) async fn renew_extends_the_lease(store: &dyn CheckpointStore) {
        let run = "run-11";
        let short = Duration::from_millis(1000);
        assert!(store.acquire(run, "a", short).await.unwrap());
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(store.renew(run, "a", short).await.unwrap());
        }
        // 1.2 s after acquiring a 1 s lease: still held thanks to the renewals.
        assert!(!store.acquire(run, "b", LEASE).await.unwrap());
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(store.acquire(run, "b", LEASE).await.unwrap());
    }

    pub(crate) async fn delete_and_exists(store: &dyn CheckpointStore) {
        let run = "run-12";
        assert!(!store.exists(run).await.unwrap());
        store.delete(run).await.unwrap();
        assert!(store.acquire(run, "a", LEASE).await.unwrap());
        assert!(
            !store.exists(run).await.unwrap(),
            "a lock is not a checkpoint"
        );
        store.save(run, "a", start("v1", b"h")).await.unwrap();
        store
            .save(run, "a", Save::Entry(b"e".to_vec()))
            .await
            .unwrap();
        assert!(store.exists(run).await.unwrap());

        store.delete(run).await.unwrap();
        assert!(!store.exists(run).await.unwrap());
        assert_eq!(store.load(run).await.unwrap(), None);
        assert!(
            !store.acquire(run, "b", LEASE).await.unwrap(),
            "delete keeps the lock"
        );
        assert_backend(
            store.save(run, "a", Save::Entry(b"e".to_vec())).await,
            "save",
            "never started",
        );

        // Started again after a delete: no leftover entries.
        store.save(run, "a", start("v2", b"h2")).await.unwrap();
        assert_eq!(
            store.load(run).await.unwrap().unwrap().entries,
            Vec::<Vec<u8>>::new()
        );
    }

    pub(crate) async fn run_ids_are_independent(store: &dyn CheckpointStore) {
        let ids = [
            "a",
            "a{b}",
            "a%7Bb%7D",
            "{",
            "}",
            "}{",
            "",
            "%",
            "x:y",
            "naïve run \u{1F680}",
        ];
        for (i, id) in ids.iter().enumerate() {
            assert!(store.acquire(id, "me", LEASE).await.unwrap(), "{id:?}");
            store
                .save(id, "me", start(&format!("v{i}"), id.as_bytes()))
                .await
                .unwrap();
            store
                .save(id, "me", Save::Entry(vec![i as u8]))
                .await
                .unwrap();
        }
        for (i, id) in ids.iter().enumerate() {
            let run = store.load(id).await.unwrap().unwrap();
            assert_eq!(run.version, format!("v{i}"), "{id:?}");
            assert_eq!(run.header, id.as_bytes(), "{id:?}");
            assert_eq!(run.entries, vec![vec![i as u8]], "{id:?}");
            // Each id has its own lock.
            assert!(!store.acquire(id, "other", LEASE).await.unwrap(), "{id:?}");
        }
        store.delete("a{b}").await.unwrap();
        assert!(!store.exists("a{b}").await.unwrap());
        assert!(store.exists("a%7Bb%7D").await.unwrap());
        assert!(store.exists("a").await.unwrap());
    }
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        /// The contract on the reference store.
        mod in_memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = fluxio_core::store::InMemoryStore::new();
                    super::contract::$name(&store).await;
                }
            )*
        }

        /// The contract on Redis.
        mod on_redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let redis = redis_or_skip!(stringify!($name));
                    super::contract::$name(&redis.store).await;
                }
            )*
        }
    };
}

contract_tests!(
    round_trip,
    load_missing_is_none,
    start_replaces,
    entries_keep_their_order_and_bytes,
    concurrent_entries_are_all_kept,
    entry_or_finish_before_start_fails,
    finish_sets_and_clears_the_error,
    save_without_the_lock_is_refused,
    save_by_another_owner_is_refused,
    expired_lease_fences_the_old_owner,
    acquire_renew_release,
    renew_extends_the_lease,
    delete_and_exists,
    run_ids_are_independent,
);
