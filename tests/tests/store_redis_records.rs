//! Redis records the store did not write itself, through the facade: a run whose meta hash
//! has fields the store does not know (one named in bytes that are not UTF-8) still
//! inspects and resumes, and a run whose lock key holds another Redis type fails with
//! `Error::CorruptCheckpoint` naming it (no retry mends it), not with a retryable
//! `Error::Store`.
//!
//! The server is `FLUXIO_REDIS_URL` (default `redis://127.0.0.1:6379`); each test uses a key
//! prefix of its own and deletes its keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::{RedisStore, RunStatus};
use fluxio_testkit::{delete_keys, redis_url, skip_or_fail, unique_prefix};

fluxio::keys! {
    pub n: u64;
    pub doubled: u64;
}

/// Whether `double` succeeds yet.
struct Open(AtomicBool);

#[stage(reads = [n], writes = [doubled])]
async fn double(n: &u64, open: Res<Arc<Open>>) -> Result<u64, StageError> {
    if open.0.load(Ordering::SeqCst) {
        Ok(n * 2)
    } else {
        Err(StageError::msg("not yet"))
    }
}

/// A store under a key prefix of its own, and a plain connection to its server; the
/// prefix's keys are deleted on drop.
struct Prefixed {
    store: RedisStore,
    raw: redis::aio::MultiplexedConnection,
    url: String,
    prefix: String,
}

impl Prefixed {
    /// Connects, or returns `None` after [`skip_or_fail`] when Redis is unreachable.
    async fn connect(test: &str) -> Option<Prefixed> {
        let url = redis_url();
        let connected = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(&url));
        let store = match connected.await {
            Ok(Ok(store)) => store,
            Ok(Err(e)) => {
                skip_or_fail(&format!("redis unreachable at {url}: {e}"));
                return None;
            }
            Err(_) => {
                skip_or_fail(&format!("redis unreachable at {url}: connect timed out"));
                return None;
            }
        };
        let raw = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let prefix = unique_prefix(test);
        Some(Prefixed {
            store: store.key_prefix(prefix.clone()),
            raw,
            url,
            prefix,
        })
    }
}

impl Drop for Prefixed {
    fn drop(&mut self) {
        if let Err(e) = delete_keys(&self.url, &format!("{}*", self.prefix), &[]) {
            eprintln!("warning: could not delete the keys of {}: {e}", self.prefix);
        }
    }
}

#[tokio::test]
async fn a_run_whose_meta_has_fields_the_store_does_not_know_inspects_and_resumes() {
    let Some(mut redis) = Prefixed::connect("meta_unknown_fields").await else {
        return;
    };
    let open = Arc::new(Open(AtomicBool::new(false)));
    let pipe = pipeline! { double }
        .with_resource(open.clone())
        .with_store(redis.store.clone());
    let run = "odd-fields";
    pipe.invoke(input! { n: 21 })
        .run_id(run)
        .await
        .expect_err("`double` fails until opened");

    // A field name that is not UTF-8, written as `redis-cli` users could.
    let meta = redis.store.run_keys(run).meta;
    let () = redis::cmd("EVAL")
        .arg("redis.call('HSET', KEYS[1], '\\255', 'x')")
        .arg(1)
        .arg(&meta)
        .query_async(&mut redis.raw)
        .await
        .unwrap();

    let record = pipe.inspect(run).await.expect("inspect ignores the field");
    assert_eq!(record.status, RunStatus::Failed);
    open.0.store(true, Ordering::SeqCst);
    let out = pipe.resume(run).await.expect("resume ignores the field");
    assert_eq!(out[doubled], 42);
}

#[tokio::test]
async fn a_run_whose_lock_key_holds_another_type_is_a_corrupt_checkpoint() {
    let Some(mut redis) = Prefixed::connect("lock_key_type").await else {
        return;
    };
    let pipe = pipeline! { double }
        .with_resource(Arc::new(Open(AtomicBool::new(true))))
        .with_store(redis.store.clone());
    let run = "odd-lock";
    let lock = redis.store.run_keys(run).lock;
    let () = redis::cmd("HSET")
        .arg(&lock)
        .arg("owner")
        .arg("someone")
        .query_async(&mut redis.raw)
        .await
        .unwrap();

    let err = pipe.invoke(input! { n: 21 }).run_id(run).await.unwrap_err();
    match &err {
        Error::CorruptCheckpoint { run_id, reason } => {
            assert_eq!(run_id, run);
            assert!(reason.contains("another Redis type"), "{reason}");
        }
        other => panic!("expected CorruptCheckpoint, got {other:?}"),
    }
}

/// A run dropped while it waits for its lock (a caller's timeout, say) may still get the
/// lock — the command was sent — and gives it back after it: the same id is free again at
/// once, or within moments (Redis finishes a dropped run's release in the background), not
/// after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_dropped_while_taking_its_lock_leaves_no_lock_behind() {
    let Some(p) = Prefixed::connect("dropped-acquire").await else {
        return;
    };
    let pipe = pipeline! { double }
        .with_resource(Arc::new(Open(AtomicBool::new(true))))
        .with_store(p.store.clone())
        .with_lease(Duration::from_secs(120));
    for i in 0..200 {
        let id = format!("job-{i}");
        let mut first = Box::pin(pipe.invoke(input! { n: 4 }).run_id(id.clone()));
        // One poll: the lock is asked for, and the call is dropped before the answer (or,
        // rarely on a fast server, after the run ended: the retry then starts it afresh).
        let _ = futures::poll!(&mut first);
        drop(first);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match pipe.invoke(input! { n: 4 }).run_id(id.clone()).await {
                Ok(_) => break,
                Err(Error::RunIdInUse { .. }) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("{id}: {other:?}"),
            }
        }
    }
}

/// A listing carries when each run's status was last written (by Redis's clock: a server
/// on another machine may be a little off), and a failed run's error.
#[tokio::test]
async fn a_listing_says_when_and_why() {
    let Some(p) = Prefixed::connect("listing-times").await else {
        return;
    };
    let open = Arc::new(Open(AtomicBool::new(false)));
    let pipe = pipeline! { double }
        .with_resource(open.clone())
        .with_store(p.store.clone());
    let since = std::time::SystemTime::now();
    pipe.invoke(input! { n: 4 })
        .run_id("failed")
        .await
        .unwrap_err();
    open.0.store(true, Ordering::SeqCst);
    pipe.invoke(input! { n: 4 }).run_id("done").await.unwrap();
    fluxio_tests::assert_listing_has_times_and_errors(
        &p.store,
        since,
        Duration::from_secs(60),
        &[
            ("done", None),
            ("failed", Some("stage `double` failed: not yet")),
        ],
    )
    .await;
}

/// Resumes of a completed run only read it: many at once all get its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resumes_of_a_completed_run_all_get_its_result() {
    let Some(p) = Prefixed::connect("resume-completed").await else {
        return;
    };
    let pipe = pipeline! { double }
        .with_resource(Arc::new(Open(AtomicBool::new(true))))
        .with_store(p.store.clone());
    pipe.invoke(input! { n: 4 }).run_id("done").await.unwrap();
    for out in fluxio_tests::resumes_at_once(&pipe, "done", 50).await {
        assert_eq!(out.map(|ctx| ctx[doubled]).unwrap(), 8);
    }
}
