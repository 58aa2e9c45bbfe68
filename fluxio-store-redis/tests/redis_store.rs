//! What only `RedisStore` has: its key layout, the key prefix, the TTL of finished runs,
//! damaged data, and two connections (as two processes) sharing run ids.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fluxio_core::store::{CheckpointStore, RunStatus, Save, StoreError};
use fluxio_store_redis::{DEFAULT_KEY_PREFIX, RedisStore};
use redis::AsyncCommands;

const LEASE: Duration = Duration::from_secs(30);

fn start() -> Save {
    Save::Start {
        version: "v1".into(),
        header: b"header".to_vec(),
    }
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    conn.pttl(key).await.unwrap()
}

#[tokio::test]
async fn keys_share_the_run_hash_tag() {
    let redis = redis_or_skip!("keys_share_the_run_hash_tag");
    let store = &redis.store;
    let run = "order-17";
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store.save(run, "me", start()).await.unwrap();
    store
        .save(run, "me", Save::Entry(b"e".to_vec()))
        .await
        .unwrap();

    let p = &redis.prefix;
    let keys = store.run_keys(run);
    assert_eq!(keys.meta, format!("{p}:{{{run}}}:meta"));
    assert_eq!(keys.entries, format!("{p}:{{{run}}}:entries"));
    assert_eq!(keys.lock, format!("{p}:{{{run}}}:lock"));
    assert_eq!(keys.tokens, format!("{p}:{{{run}}}:tokens"));
    for key in [&keys.meta, &keys.entries, &keys.lock, &keys.tokens] {
        assert_eq!(common::hash_tag(key), run, "{key}");
    }

    let mut conn = redis.raw().await;
    let kind = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("TYPE")
                .arg(key)
                .query_async::<String>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(kind(keys.meta.clone()).await, "hash");
    assert_eq!(kind(keys.entries.clone()).await, "list");
    assert_eq!(kind(keys.lock.clone()).await, "string");
    assert_eq!(kind(keys.tokens.clone()).await, "set");

    let meta: HashMap<String, Vec<u8>> = conn.hgetall(&keys.meta).await.unwrap();
    let mut fields: Vec<&str> = meta.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["header", "status", "updated_at_ms", "version"]);
    assert_eq!(meta["status"], b"running");
    let at = String::from_utf8(meta["updated_at_ms"].clone()).unwrap();
    assert!(
        at.len() >= 13 && at.bytes().all(|b| b.is_ascii_digit()),
        "milliseconds since the epoch: {at}"
    );
    let entries: Vec<Vec<u8>> = conn.lrange(&keys.entries, 0, -1).await.unwrap();
    assert_eq!(entries, vec![b"e".to_vec()]);
    let owner: String = conn.get(&keys.lock).await.unwrap();
    assert_eq!(owner, "me");
    let ttl = pttl(&mut conn, &keys.lock).await;
    assert!(
        ttl > 25_000 && ttl <= 30_000,
        "the lock expires with the lease: {ttl}"
    );

    // Nothing else under the prefix.
    let mut all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    all.sort();
    let mut expected = vec![keys.entries, keys.lock, keys.meta, keys.tokens];
    expected.sort();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn braces_in_run_ids_do_not_break_the_hash_tag() {
    let redis = redis_or_skip!("braces_in_run_ids_do_not_break_the_hash_tag");
    let store = &redis.store;
    let run = "tenant{7}/job}{";
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store.save(run, "me", start()).await.unwrap();
    store
        .save(run, "me", Save::Entry(b"e".to_vec()))
        .await
        .unwrap();
    let keys = store.run_keys(run);
    assert_eq!(
        keys.meta,
        format!("{}:{{tenant%7B7%7D/job%7D%7B}}:meta", redis.prefix)
    );
    for key in [&keys.meta, &keys.entries, &keys.lock, &keys.tokens] {
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert_eq!(common::hash_tag(key), "tenant%7B7%7D/job%7D%7B");
    }
    let mut conn = redis.raw().await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(&keys.meta)
        .arg(&keys.entries)
        .arg(&keys.lock)
        .arg(&keys.tokens)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(store.load(run).await.unwrap().unwrap().entries.len(), 1);
}

#[tokio::test]
async fn key_prefix_is_honoured() {
    let redis = redis_or_skip!("key_prefix_is_honoured");
    let other_prefix = format!("{}:other", redis.prefix);
    let other = redis.store.clone().key_prefix(other_prefix.clone());
    let run = "shared-id";

    assert!(redis.store.acquire(run, "a", LEASE).await.unwrap());
    redis.store.save(run, "a", start()).await.unwrap();
    // The same run id under another prefix is another run, with another lock.
    assert!(!other.exists(run).await.unwrap());
    assert!(other.acquire(run, "b", LEASE).await.unwrap());
    other
        .save(
            run,
            "b",
            Save::Start {
                version: "v2".into(),
                header: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(redis.store.load(run).await.unwrap().unwrap().version, "v1");
    assert_eq!(other.load(run).await.unwrap().unwrap().version, "v2");

    let mut conn = redis.raw().await;
    let exists: bool = conn
        .exists(format!("{other_prefix}:{{{run}}}:meta"))
        .await
        .unwrap();
    assert!(exists);
    assert!(format!("{other:?}").contains(&other_prefix));
}

#[tokio::test]
async fn default_key_prefix() {
    let mut redis = redis_or_skip!("default_key_prefix");
    let store = RedisStore::connect(&redis.url).await.unwrap();
    // A run id of its own under the shared default prefix; deleted by the guard.
    let run = common::unique_prefix("default_key_prefix");
    let keys = store.run_keys(&run);
    redis.extra_keys.extend([
        keys.meta.clone(),
        keys.entries.clone(),
        keys.lock.clone(),
        keys.tokens.clone(),
    ]);
    assert_eq!(DEFAULT_KEY_PREFIX, "fluxio:checkpoint");
    assert_eq!(keys.meta, format!("fluxio:checkpoint:{{{run}}}:meta"));

    assert!(store.acquire(&run, "me", LEASE).await.unwrap());
    store.save(&run, "me", start()).await.unwrap();
    let mut conn = redis.raw().await;
    let exists: bool = conn.exists(&keys.meta).await.unwrap();
    assert!(exists);
    store.release(&run, "me").await.unwrap();
    store.delete(&run).await.unwrap();
}

fn finish(status: RunStatus) -> Save {
    Save::Finish {
        status,
        error: (status == RunStatus::Failed).then(|| "boom".to_string()),
    }
}

#[tokio::test]
async fn ttl_is_set_when_a_run_finishes() {
    let redis = redis_or_skip!("ttl_is_set_when_a_run_finishes");
    // Long enough that a slow machine does not see the keys expire during the checks.
    let store = redis.store.clone().ttl(Duration::from_secs(5));
    let mut conn = redis.raw().await;
    let run = "finishing";
    let keys = store.run_keys(run);

    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store.save(run, "me", start()).await.unwrap();
    store
        .save(run, "me", Save::Entry(b"1".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        pttl(&mut conn, &keys.meta).await,
        -1,
        "a running run is kept"
    );
    assert_eq!(pttl(&mut conn, &keys.entries).await, -1);

    // Rolling back is not an end: a resume must find it to run the rollbacks again.
    store
        .save(run, "me", finish(RunStatus::RollingBack))
        .await
        .unwrap();
    for key in [&keys.meta, &keys.entries, &keys.tokens] {
        assert_eq!(pttl(&mut conn, key).await, -1, "{key} while rolling back");
    }

    store
        .save(run, "me", finish(RunStatus::Failed))
        .await
        .unwrap();
    for key in [&keys.meta, &keys.entries, &keys.tokens] {
        let ttl = pttl(&mut conn, key).await;
        assert!(ttl > 0 && ttl <= 5_000, "{key}: {ttl}");
    }
    let lock_ttl = pttl(&mut conn, &keys.lock).await;
    assert!(lock_ttl > 5_000, "the lock keeps its lease: {lock_ttl}");

    // Resumed: live again, so kept until it finishes again.
    store
        .save(run, "me", Save::Entry(b"2".to_vec()))
        .await
        .unwrap();
    assert_eq!(pttl(&mut conn, &keys.meta).await, -1);
    assert_eq!(pttl(&mut conn, &keys.entries).await, -1);
    assert_eq!(pttl(&mut conn, &keys.tokens).await, -1);

    store
        .save(run, "me", finish(RunStatus::Completed))
        .await
        .unwrap();
    for key in [&keys.meta, &keys.entries, &keys.tokens] {
        let ttl = pttl(&mut conn, key).await;
        assert!(ttl > 0 && ttl <= 5_000, "{key}: {ttl}");
    }

    // Started again: kept (until it finishes).
    store.save(run, "me", start()).await.unwrap();
    assert_eq!(pttl(&mut conn, &keys.meta).await, -1);
    assert_eq!(store.load(run).await.unwrap().unwrap().entries.len(), 0);
}

#[tokio::test]
async fn ttl_expires_finished_runs() {
    let redis = redis_or_skip!("ttl_expires_finished_runs");
    let store = redis.store.clone().ttl(Duration::from_millis(200));
    let mut conn = redis.raw().await;
    let run = "expiring";
    let keys = store.run_keys(run);
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store.save(run, "me", start()).await.unwrap();
    store
        .save(run, "me", Save::Entry(b"1".to_vec()))
        .await
        .unwrap();
    store
        .save(run, "me", finish(RunStatus::Completed))
        .await
        .unwrap();
    let ttl = pttl(&mut conn, &keys.meta).await;
    assert!(ttl <= 200, "{ttl}");

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.exists(run).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.load(run).await.unwrap(), None);
    let leftovers: i64 = redis::cmd("EXISTS")
        .arg(&keys.meta)
        .arg(&keys.entries)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(leftovers, 0);
    assert!(
        !store.acquire(run, "other", LEASE).await.unwrap(),
        "the lock is not touched by the TTL"
    );
}

#[tokio::test]
async fn without_ttl_finished_runs_are_kept() {
    let redis = redis_or_skip!("without_ttl_finished_runs_are_kept");
    let mut conn = redis.raw().await;
    let run = "kept";
    let keys = redis.store.run_keys(run);
    assert!(redis.store.acquire(run, "me", LEASE).await.unwrap());
    redis.store.save(run, "me", start()).await.unwrap();
    redis
        .store
        .save(run, "me", Save::Entry(b"1".to_vec()))
        .await
        .unwrap();

    // Finished by a store with a TTL, then again by one without: the last finish decides.
    let with_ttl = redis.store.clone().ttl(Duration::from_secs(60));
    with_ttl
        .save(
            run,
            "me",
            Save::Finish {
                status: RunStatus::Completed,
                error: None,
            },
        )
        .await
        .unwrap();
    assert!(pttl(&mut conn, &keys.meta).await > 0);
    redis
        .store
        .save(
            run,
            "me",
            Save::Finish {
                status: RunStatus::Completed,
                error: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(pttl(&mut conn, &keys.meta).await, -1);
    assert_eq!(pttl(&mut conn, &keys.entries).await, -1);
}

/// The reason of a `Corrupt` load (a record the store did not write: not to be retried).
fn corrupt_reason(
    run: &str,
    result: Result<Option<fluxio_core::store::StoredRun>, StoreError>,
) -> String {
    match result {
        Err(StoreError::Corrupt { run_id, reason }) if run_id == run => reason,
        other => panic!("expected a corrupt checkpoint of `{run}`, got {other:?}"),
    }
}

#[tokio::test]
async fn damaged_meta_is_a_corrupt_checkpoint() {
    let redis = redis_or_skip!("damaged_meta_is_a_corrupt_checkpoint");
    let store = &redis.store;
    let mut conn = redis.raw().await;
    let run = "damaged";
    let keys = store.run_keys(run);
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store.save(run, "me", start()).await.unwrap();

    let () = conn.hset(&keys.meta, "status", "paused").await.unwrap();
    let reason = corrupt_reason(run, store.load(run).await);
    assert!(reason.contains("unknown status `paused`"), "{reason}");

    let () = conn.hset(&keys.meta, "status", "running").await.unwrap();
    let () = conn.hdel(&keys.meta, "version").await.unwrap();
    let reason = corrupt_reason(run, store.load(run).await);
    assert!(reason.contains("no field `version`"), "{reason}");

    let () = conn.hset(&keys.meta, "version", b"\xff\xfe").await.unwrap();
    let reason = corrupt_reason(run, store.load(run).await);
    assert!(reason.contains("not UTF-8"), "{reason}");

    // Another type under a key of the run (the server says WRONGTYPE): corrupt too, not a
    // Backend error to retry — loading, and saving (its scripts touch the same keys).
    let () = conn.del(&keys.meta).await.unwrap();
    let () = conn.set(&keys.meta, "not a hash").await.unwrap();
    let reason = corrupt_reason(run, store.load(run).await);
    assert!(reason.contains("another Redis type"), "{reason}");
    let () = conn.del(&keys.meta).await.unwrap();
    store.save(run, "me", start()).await.unwrap();
    let () = conn.del(&keys.entries).await.unwrap();
    let () = conn.set(&keys.entries, "not a list").await.unwrap();
    let reason = corrupt_reason(run, store.load(run).await);
    assert!(reason.contains("another Redis type"), "{reason}");
    let saved = store.save(run, "me", Save::Entry(b"entry".to_vec())).await;
    match saved {
        Err(StoreError::Corrupt { run_id, reason }) if run_id == run => {
            assert!(reason.contains("another Redis type"), "{reason}")
        }
        other => panic!("expected a corrupt checkpoint of `{run}`, got {other:?}"),
    }
}

/// Asserts that `result` is a `Corrupt` error of `run` blaming a key of another Redis type.
fn assert_wrong_type<T: std::fmt::Debug>(run: &str, what: &str, result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Corrupt { run_id, reason }) if run_id == run => {
            assert!(reason.contains("another Redis type"), "{what}: {reason}")
        }
        other => panic!("{what}: expected a corrupt checkpoint of `{run}`, got {other:?}"),
    }
}

#[tokio::test]
async fn meta_fields_the_store_does_not_know_are_ignored() {
    let redis = redis_or_skip!("meta_unknown_fields");
    let store = &redis.store;
    let mut conn = redis.raw().await;
    let run = "newer";
    let keys = store.run_keys(run);
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store.save(run, "me", start()).await.unwrap();
    store
        .save(run, "me", Save::Entry(b"e1".to_vec()))
        .await
        .unwrap();
    // Fields a later version (or a person) may add: one named in UTF-8, one not.
    let () = conn.hset(&keys.meta, "added_later", "x").await.unwrap();
    let () = redis::cmd("EVAL")
        .arg("redis.call('HSET', KEYS[1], '\\255', 'x')")
        .arg(1)
        .arg(&keys.meta)
        .query_async(&mut conn)
        .await
        .unwrap();
    let fields: HashMap<Vec<u8>, Vec<u8>> = conn.hgetall(&keys.meta).await.unwrap();
    assert!(fields.contains_key(&b"\xff"[..]), "{fields:?}");

    let loaded = store.load(run).await.unwrap().expect("the run was saved");
    assert_eq!(
        (
            loaded.version.as_str(),
            loaded.status,
            loaded.header.as_slice()
        ),
        ("v1", RunStatus::Running, &b"header"[..])
    );
    assert_eq!(loaded.entries, vec![b"e1".to_vec()]);
    let listed = store.list_runs(&[]).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].run_id, run);
}

#[tokio::test]
async fn list_runs_fails_on_a_meta_key_of_another_type() {
    let redis = redis_or_skip!("list_runs_meta_type");
    let store = &redis.store;
    let mut conn = redis.raw().await;
    for run in ["sound", "overwritten"] {
        assert!(store.acquire(run, "me", LEASE).await.unwrap());
        store.save(run, "me", start()).await.unwrap();
    }
    assert_eq!(store.list_runs(&[]).await.unwrap().len(), 2);

    // Someone `SET` a run's meta: the listing names the run instead of leaving it out.
    let keys = store.run_keys("overwritten");
    let () = conn.del(&keys.meta).await.unwrap();
    let () = conn.set(&keys.meta, "not a hash").await.unwrap();
    assert_wrong_type("overwritten", "list_runs", store.list_runs(&[]).await);
    // Whatever statuses are asked for: its status cannot be read.
    assert_wrong_type(
        "overwritten",
        "list_runs(completed)",
        store.list_runs(&[RunStatus::Completed]).await,
    );
}

#[tokio::test]
async fn a_lock_key_of_another_type_is_a_corrupt_run() {
    let redis = redis_or_skip!("lock_key_type");
    let store = &redis.store;
    let mut conn = redis.raw().await;
    let run = "odd-lock";
    let keys = store.run_keys(run);
    let () = conn.hset(&keys.lock, "owner", "me").await.unwrap();

    assert_wrong_type(run, "acquire", store.acquire(run, "me", LEASE).await);
    assert_wrong_type(run, "renew", store.renew(run, "me", LEASE).await);
    assert_wrong_type(run, "release", store.release(run, "me").await);
    assert_wrong_type(run, "save", store.save(run, "me", start()).await);
}

#[tokio::test]
async fn two_connections_contend_for_a_run_id() {
    let redis = redis_or_skip!("two_connections_contend_for_a_run_id");
    let a = Arc::new(redis.store.clone());
    let b = Arc::new(redis.second_store().await);
    for round in 0..25 {
        let run = format!("contended-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let contend = |store: Arc<RedisStore>, owner: &'static str| {
            let (run, barrier) = (run.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.acquire(&run, owner, LEASE).await.unwrap()
            })
        };
        let (ta, tb) = (contend(a.clone(), "a"), contend(b.clone(), "b"));
        let (won_a, won_b) = (ta.await.unwrap(), tb.await.unwrap());
        assert!(won_a ^ won_b, "round {round}: a {won_a}, b {won_b}");

        let (winner, loser, w, l) = if won_a {
            (&a, &b, "a", "b")
        } else {
            (&b, &a, "b", "a")
        };
        winner.save(&run, w, start()).await.unwrap();
        assert!(matches!(
            loser.save(&run, l, Save::Entry(vec![1])).await,
            Err(StoreError::LockLost { .. })
        ));
        assert!(!loser.renew(&run, l, LEASE).await.unwrap());
        winner.release(&run, w).await.unwrap();
        assert!(loser.acquire(&run, l, LEASE).await.unwrap());
        loser.save(&run, l, Save::Entry(vec![2])).await.unwrap();
        assert_eq!(
            winner.load(&run).await.unwrap().unwrap().entries,
            vec![vec![2]]
        );
    }
}

#[tokio::test]
async fn another_connection_takes_over_after_the_lease() {
    let redis = redis_or_skip!("another_connection_takes_over_after_the_lease");
    let old = &redis.store;
    let new = redis.second_store().await;
    let run = "taken-over";
    assert!(
        old.acquire(run, "old", Duration::from_millis(200))
            .await
            .unwrap()
    );
    old.save(run, "old", start()).await.unwrap();
    old.save(run, "old", Save::Entry(b"1".to_vec()))
        .await
        .unwrap();
    assert!(!new.acquire(run, "new", LEASE).await.unwrap());

    // The old holder stops renewing (it hangs or died): the lease runs out.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(new.acquire(run, "new", LEASE).await.unwrap());
    let resumed = new.load(run).await.unwrap().unwrap();
    assert_eq!(resumed.entries, vec![b"1".to_vec()]);
    new.save(run, "new", Save::Entry(b"2".to_vec()))
        .await
        .unwrap();

    // The old holder wakes up: every write is refused, nothing is written.
    for save in [
        Save::Entry(b"stale".to_vec()),
        Save::Finish {
            status: RunStatus::Failed,
            error: Some("stale".into()),
        },
        start(),
    ] {
        assert!(matches!(
            old.save(run, "old", save).await,
            Err(StoreError::LockLost { .. })
        ));
    }
    assert!(!old.renew(run, "old", LEASE).await.unwrap());
    old.release(run, "old").await.unwrap();
    let stored = new.load(run).await.unwrap().unwrap();
    assert_eq!(stored.entries, vec![b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(stored.status, RunStatus::Running);
    assert!(
        new.renew(run, "new", LEASE).await.unwrap(),
        "still the holder"
    );
}

#[tokio::test]
async fn connect_errors_are_clear() {
    // An invalid URL and a port nobody listens on; no server needed.
    let err = RedisStore::connect("http://nope").await.unwrap_err();
    assert!(matches!(err, fluxio_store_redis::Error::Connect { .. }));
    assert!(err.to_string().contains("http://nope"), "{err}");

    let port = common::free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = RedisStore::connect(&url).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("hunter2"), "the password leaked: {msg}");
    assert!(msg.starts_with("cannot connect to redis at"), "{msg}");
}

#[tokio::test]
async fn debug_shows_the_configuration() {
    let redis = redis_or_skip!("debug_shows_the_configuration");
    let debug = format!("{:?}", redis.store.clone().ttl(Duration::from_secs(5)));
    assert!(debug.starts_with("RedisStore"), "{debug}");
    assert!(debug.contains(&redis.prefix), "{debug}");
    assert!(debug.contains("5s"), "{debug}");
}

#[tokio::test]
async fn list_runs_finds_exactly_its_prefix_runs_whatever_their_characters() {
    let redis = redis_or_skip!("list_runs_characters");
    // A prefix with glob characters, and a sibling prefix an unescaped `SCAN MATCH` of it
    // would take in too.
    let odd = redis
        .store
        .clone()
        .key_prefix(format!("{}:a*[?]\\", redis.prefix));
    let sibling = redis
        .store
        .clone()
        .key_prefix(format!("{}:abc[?]\\", redis.prefix));
    let ids = [
        "",
        "*",
        "?",
        "[x]",
        "\\",
        "{",
        "}",
        "%",
        "%7B",
        "a}:meta",
        "x:{y}:meta",
        "é",
    ];
    for id in ids {
        assert!(odd.acquire(id, "me", LEASE).await.unwrap());
        odd.save(id, "me", start()).await.unwrap();
    }
    assert!(sibling.acquire("other", "me", LEASE).await.unwrap());
    sibling.save("other", "me", start()).await.unwrap();

    let mut listed: Vec<String> = odd
        .list_runs(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|run| {
            assert_eq!(
                (run.status, run.version.as_str(), run.is_locked()),
                (RunStatus::Running, "v1", true)
            );
            run.run_id
        })
        .collect();
    listed.sort();
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);

    for id in ids {
        odd.release(id, "me").await.unwrap();
        odd.delete(id).await.unwrap();
    }
    assert!(odd.list_runs(&[]).await.unwrap().is_empty());
}
