//! Redis stopped in the middle of a durable run: the run fails with `Error::Store` naming
//! the operation, nothing is half-written, and once Redis is back the run resumes.
//!
//! The test starts its own `redis-server` on a spare loopback port (with an append-only
//! file, so what was written before the stop survives the restart) and kills it itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::RedisStore;
use fluxio_testkit::RedisServer;

fluxio::keys! {
    pub seed: u64;
    pub a: u64;
    pub b: u64;
    pub c: u64;
}

struct Probe {
    runs: Mutex<HashMap<&'static str, u32>>,
    reached_b: tokio::sync::Notify,
    go_on: tokio::sync::Semaphore,
}

impl Probe {
    fn hit(&self, stage: &'static str) {
        *self.runs.lock().unwrap().entry(stage).or_default() += 1;
    }
    fn count(&self, stage: &str) -> u32 {
        self.runs.lock().unwrap().get(stage).copied().unwrap_or(0)
    }
}

#[stage(reads = [seed], writes = [a])]
async fn sa(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.hit("sa");
    seed + 1
}

#[stage(reads = [a], writes = [b])]
async fn sb(a: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.hit("sb");
    probe.reached_b.notify_one();
    let _permit = probe.go_on.acquire().await.unwrap();
    a * 2
}

#[stage(reads = [b], writes = [c])]
async fn sc(b: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.hit("sc");
    b + 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_clearly_and_the_run_resumes_when_it_is_back() {
    let Some(mut server) = RedisServer::start("fault", true).await else {
        return;
    };
    let url = server.url();

    let probe = Arc::new(Probe {
        runs: Mutex::default(),
        reached_b: tokio::sync::Notify::new(),
        go_on: tokio::sync::Semaphore::new(0),
    });
    let store = RedisStore::connect(&url).await.unwrap();
    // A short lease, so the dead run's lock expires soon after Redis is back.
    let pipe = pipeline! { sa, sb, sc }
        .with_resource(probe.clone())
        .with_store(store)
        .with_lease(Duration::from_secs(2));

    let reached_b = probe.reached_b.notified();
    let run = tokio::spawn({
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { seed: 1 }).run_id("fault").await }
    });
    reached_b.await;
    server.kill();
    probe.go_on.add_permits(1);
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run hung")
        .unwrap()
        .unwrap_err();
    match &err {
        Error::Store {
            run_id, operation, ..
        } => {
            assert_eq!(run_id, "fault");
            assert_eq!(*operation, "save", "{err}");
        }
        other => panic!("expected Error::Store, got {other:?}"),
    }
    assert_eq!(probe.count("sc"), 0, "no stage ran after the store failed");

    // Redis comes back (with what it had written); the same pipeline resumes the run.
    server.restart().await;
    probe.go_on.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        match pipe.resume("fault").await {
            Ok(out) => break out,
            // The reconnecting connection may need a moment, and the dead run's lock must
            // expire (its lease) before another invoke may take the run over.
            Err(Error::Store { .. } | Error::RunIdInUse { .. } | Error::LockLost { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("resume failed: {e}"),
        }
    };
    assert_eq!(out[c], (1 + 1) * 2 + 3);
    assert_eq!(
        probe.count("sa"),
        1,
        "`sa` was checkpointed before the stop and did not run again"
    );
    assert_eq!(probe.count("sb"), 2, "`sb` was in flight: it runs again");
}
