//! Shared helpers of the integration tests: the Redis server under test, per-test key
//! prefixes with cleanup, and private `redis-server` processes.
//!
//! The server is `FLUXIO_REDIS_URL` (default `redis://127.0.0.1:6379`). When it cannot be
//! reached, tests fail if `CI=true` and are skipped (with a loud message) otherwise.

// Each test binary uses a part of these helpers.
#![allow(dead_code, unused_macros)]

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fluxio_store_redis::RedisStore;

/// The URL of the Redis server under test.
pub(crate) fn url() -> String {
    std::env::var("FLUXIO_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Whether running in CI, where an unreachable Redis is a failure, not a skip.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails the test in CI, else prints a loud skip message. Returns to let the caller return.
pub(crate) fn skip_or_fail(what: &str) {
    if in_ci() {
        panic!("{what} (CI=true, so this is a failure)");
    }
    // Written to the process's stderr directly, not with `eprintln!`, which the test
    // harness captures: the skip must show in a normal `cargo test` run.
    let line = "=".repeat(72);
    let message = format!("\n{line}\nSKIPPED: {what}\n{line}\n");
    let _ = std::io::stderr().write_all(message.as_bytes());
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A key prefix no other test (or test run) uses.
pub(crate) fn unique_prefix(test: &str) -> String {
    format!("fluxio-test:{test}:{}:{}", std::process::id(), nanos())
}

/// A store on the server under test with its own key prefix; its keys are deleted on drop.
pub(crate) struct TestRedis {
    pub(crate) store: RedisStore,
    pub(crate) prefix: String,
    pub(crate) url: String,
    /// Extra keys to delete on drop (keys outside the prefix).
    pub(crate) extra_keys: Vec<String>,
}

impl TestRedis {
    /// Connects, or returns `None` after [`skip_or_fail`] when the server is unreachable.
    pub(crate) async fn connect(test: &str) -> Option<TestRedis> {
        let url = url();
        let connected = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(&url));
        match connected.await {
            Ok(Ok(store)) => {
                let prefix = unique_prefix(test);
                Some(TestRedis {
                    store: store.key_prefix(prefix.clone()),
                    prefix,
                    url,
                    extra_keys: Vec::new(),
                })
            }
            Ok(Err(e)) => {
                skip_or_fail(&format!("redis unreachable at {url}: {e}"));
                None
            }
            Err(_) => {
                skip_or_fail(&format!("redis unreachable at {url}: connect timed out"));
                None
            }
        }
    }

    /// Another store, on its own connection (as another process would have), with the same
    /// prefix.
    pub(crate) async fn second_store(&self) -> RedisStore {
        RedisStore::connect(&self.url)
            .await
            .expect("second connection")
            .key_prefix(self.prefix.clone())
    }

    /// A plain connection for looking at the keys.
    pub(crate) async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Err(e) = delete_keys(&self.url, &format!("{}*", self.prefix), &self.extra_keys) {
            eprintln!("warning: could not delete the keys of {}: {e}", self.prefix);
        }
    }
}

/// Deletes the keys matching `pattern` (SCAN MATCH + DEL) and `extra`, on a blocking
/// connection (this runs in `Drop`, also when the test panicked).
fn delete_keys(url: &str, pattern: &str, extra: &[String]) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    let keys: Vec<String> = {
        let iter = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter::<String>(&mut conn)?;
        iter.collect::<Result<_, _>>()?
    };
    let all: Vec<&String> = keys.iter().chain(extra).collect();
    for chunk in all.chunks(500) {
        redis::cmd("DEL").arg(chunk).exec(&mut conn)?;
    }
    Ok(())
}

/// Connects a test or returns from it (skipping, or failing in CI, when Redis is down).
macro_rules! redis_or_skip {
    ($test:expr) => {
        match $crate::common::TestRedis::connect($test).await {
            Some(redis) => redis,
            None => return,
        }
    };
}

/// A loopback port free at the time of the call.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// A `redis-server` child process of this test, killed (and its directory removed) on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    persistent: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port. With `persistent`, it keeps its data
    /// in an append-only file (fsync on every write) in its own directory, so a restart on
    /// the same port finds the data again. `None` (after [`skip_or_fail`]) when
    /// `redis-server` cannot be started.
    pub(crate) async fn start(test: &str, persistent: bool) -> Option<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "fluxio-store-redis-{test}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&dir).expect("create the server directory");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            persistent,
        };
        // The free port may be taken by someone else before the server binds it: try
        // another one a few times.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match server.spawn().await {
                Ok(()) => return Some(server),
                Err(e) if attempts < 3 && server.log().contains("Address already in use") => {
                    eprintln!("port {} was taken ({e}); trying another", server.port);
                    server.port = free_port();
                }
                Err(e) => {
                    skip_or_fail(&format!("cannot run a private redis-server: {e}"));
                    return None;
                }
            }
        }
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping().await {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited with {status}; its log:\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer PING in 10 s; its log:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let connecting = client.get_multiplexed_async_connection();
        let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_millis(500), connecting).await
        else {
            return false;
        };
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        matches!(pong.as_deref(), Ok("PONG"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL: a crash, nothing is flushed on the way out).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn().await {
            panic!("restarting redis-server failed: {e}");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The hash tag of `key` as Redis Cluster computes it: the text between the first `{` and
/// the first `}` after it, if not empty; else the whole key.
pub(crate) fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}
