//! Redis stopped in the middle of a durable run: the run fails with `Error::Store` naming
//! the operation, nothing is half-written, and once Redis is back the run resumes.
//!
//! The test starts its own `redis-server` on a spare loopback port (with an append-only
//! file, so what was written before the stop survives the restart) and stops it itself.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::RedisStore;

fluxio::keys! {
    pub seed: u64;
    pub a: u64;
    pub b: u64;
    pub c: u64;
}

/// A redis-server child process, killed when dropped.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
}

impl Server {
    fn start(port: u16, dir: &PathBuf) -> Option<Server> {
        let child = match Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI: cannot start redis-server: {e}"
                );
                eprintln!(
                    "SKIPPED: cannot start redis-server ({e}); install it (scripts/services.sh does)"
                );
                return None;
            }
        };
        let server = Server {
            child: Some(child),
            dir: dir.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("fluxio-redis-fault-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(mut server) = Server::start(port, &dir) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");

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
    server.stop();
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
    let _server = Server::start(port, &dir).expect("restart redis-server");
    probe.go_on.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        match pipe.resume("fault").await {
            Ok(out) => break out,
            // The reconnecting connection may need a moment, and the dead run's lock must
            // expire (its lease) before another invoke may take the run over.
            Err(Error::Store { .. } | Error::RunIdInUse { .. }) if Instant::now() < deadline => {
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
