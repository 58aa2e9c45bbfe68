//! Tests on a `redis-server` process of their own: a server crash and restart, a server
//! wanting a password, and what the store sends per stage (measured with the server's
//! command statistics, which other clients of a shared server would disturb).

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::RedisServer;
use fluxio_core::store::{CheckpointStore, RunStatus, Save, StoreError, StoredRun};
use fluxio_store_redis::RedisStore;

const LEASE: Duration = Duration::from_secs(60);

/// The longest an operation may take to fail while the server is down.
const FAIL_WITHIN: Duration = Duration::from_secs(15);

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `INFO commandstats` as command name -> calls.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

fn assert_backend<T: std::fmt::Debug>(result: Result<T, StoreError>, operation: &str) -> String {
    match result {
        Err(e @ StoreError::Backend { .. }) => {
            let StoreError::Backend { operation: op, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*op, operation, "{e}");
            e.to_string()
        }
        other => panic!("expected a Backend error during {operation}, got {other:?}"),
    }
}

#[tokio::test]
async fn crash_fails_fast_then_the_same_handle_reconnects() {
    let Some(mut server) = RedisServer::start("crash", true).await else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let run = "survivor";
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store
        .save(
            run,
            "me",
            Save::Start {
                version: "v1".into(),
                header: b"input".to_vec(),
            },
        )
        .await
        .unwrap();
    for i in 0..3u8 {
        store
            .save(run, "me", Save::Entry(vec![i; 100]))
            .await
            .unwrap();
    }
    let before = store.load(run).await.unwrap().unwrap();

    server.kill();

    // Every kind of operation fails, naming itself, within a bounded time.
    let started = Instant::now();
    let save = tokio::time::timeout(
        FAIL_WITHIN,
        store.save(run, "me", Save::Entry(b"lost".to_vec())),
    )
    .await
    .expect("save must not hang while redis is down");
    let msg = assert_backend(save, "save");
    eprintln!("save while redis is down ({:?}): {msg}", started.elapsed());

    let started = Instant::now();
    let load = tokio::time::timeout(FAIL_WITHIN, store.load(run))
        .await
        .expect("load must not hang while redis is down");
    let msg = assert_backend(load, "load");
    eprintln!("load while redis is down ({:?}): {msg}", started.elapsed());
    assert!(
        msg.starts_with("load failed: redis command failed during load"),
        "{msg}"
    );

    let renew = tokio::time::timeout(FAIL_WITHIN, store.renew(run, "me", LEASE))
        .await
        .expect("renew must not hang while redis is down");
    assert_backend(renew, "renew");
    let exists = tokio::time::timeout(FAIL_WITHIN, store.exists(run))
        .await
        .expect("exists must not hang while redis is down");
    assert_backend(exists, "exists");

    // The server comes back with its append-only file: the same handle reconnects.
    server.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        match store.load(run).await {
            Ok(run) => break run,
            Err(e) if Instant::now() < deadline => {
                eprintln!("load after the restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not reconnect: {e}"),
        }
    };
    assert_eq!(
        after.as_ref(),
        Some(&before),
        "the data written before the crash"
    );

    // The lock survived too (with its lease), so the run goes on where it was.
    assert!(store.renew(run, "me", LEASE).await.unwrap());
    store
        .save(run, "me", Save::Entry(b"after".to_vec()))
        .await
        .unwrap();
    store
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
    let done = store.load(run).await.unwrap().unwrap();
    let mut expected_entries = before.entries.clone();
    expected_entries.push(b"after".to_vec());
    assert_eq!(
        done,
        StoredRun {
            status: RunStatus::Completed,
            entries: expected_entries,
            ..before
        }
    );
}

#[tokio::test]
async fn a_stage_entry_is_one_evalsha() {
    let Some(server) = RedisServer::start("one_evalsha", false).await else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let mut conn = raw(&server).await;
    let run = "counted";
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store
        .save(
            run,
            "me",
            Save::Start {
                version: "v1".into(),
                header: vec![],
            },
        )
        .await
        .unwrap();

    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    const N: u64 = 20;
    for i in 0..N {
        store
            .save(run, "me", Save::Entry(vec![i as u8; 1000]))
            .await
            .unwrap();
    }
    let calls = command_calls(&mut conn).await;
    assert_eq!(calls.get("evalsha"), Some(&N), "{calls:?}");
    assert_eq!(calls.get("rpush"), Some(&N), "{calls:?}");
    // No fallback to EVAL or SCRIPT LOAD: the scripts were preloaded at connect.
    for fallback in ["eval", "script|load", "script"] {
        assert_eq!(calls.get(fallback), None, "{fallback}: {calls:?}");
    }
    // The rest are the commands the script runs, and this connection's own.
    for name in calls.keys() {
        assert!(
            [
                "evalsha",
                "get",
                "pttl",
                // The save's token: a resend after a lost reply appends nothing.
                "sadd",
                "rpush",
                "config|resetstat",
                "info"
            ]
            .contains(&name.as_str()),
            "unexpected command `{name}`: {calls:?}"
        );
    }
}

#[tokio::test]
async fn scripts_are_loaded_again_after_a_flush() {
    let Some(server) = RedisServer::start("script_flush", false).await else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let mut conn = raw(&server).await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let run = "flushed";
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store
        .save(
            run,
            "me",
            Save::Start {
                version: "v1".into(),
                header: vec![],
            },
        )
        .await
        .unwrap();
    store
        .save(run, "me", Save::Entry(b"e".to_vec()))
        .await
        .unwrap();
    assert!(store.renew(run, "me", LEASE).await.unwrap());
    store.release(run, "me").await.unwrap();
    assert_eq!(
        store.load(run).await.unwrap().unwrap().entries,
        vec![b"e".to_vec()]
    );
}

/// The first command after Redis restarted finds the old connection broken. A stage's
/// entry is often that command: it must not fail the run when Redis is already back.
#[tokio::test]
async fn an_entry_saved_right_after_a_restart_goes_through() {
    let Some(mut server) = RedisServer::start("restart-entry", true).await else {
        return;
    };
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let run = "in-flight";
    assert!(store.acquire(run, "me", LEASE).await.unwrap());
    store
        .save(run, "me", Save::start("v1", b"input".to_vec()))
        .await
        .unwrap();
    store
        .save(run, "me", Save::Entry(b"one".to_vec()))
        .await
        .unwrap();
    server.kill();
    server.restart().await;
    store
        .save(run, "me", Save::Entry(b"two".to_vec()))
        .await
        .expect("the entry after the restart");
    let entries = store.load(run).await.unwrap().unwrap().entries;
    assert_eq!(
        entries,
        [b"one".to_vec(), b"two".to_vec()],
        "each entry once"
    );
}

#[tokio::test]
async fn a_server_wanting_a_password_is_reported_once_at_connect() {
    let Some(server) = RedisServer::start("password", false).await else {
        return;
    };
    let mut conn = raw(&server).await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let err = RedisStore::connect(&server.url()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, fluxio_store_redis::Error::Connect { .. }),
        "{err:?}"
    );
    assert!(text.contains(&server.url()), "{text}");
    assert_eq!(text.matches("NOAUTH").count(), 1, "{text}");
    assert!(text.contains("put it in the URL"), "{text}");

    let with_password = format!("redis://:s3cret@127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&with_password).await.unwrap();
    assert!(store.load("nothing-here").await.unwrap().is_none());
}
