//! Test infrastructure shared by fluxio's own tests: where the Redis server under test is,
//! what a test does when it is unreachable, unique key prefixes and their cleanup, and
//! private `redis-server` processes a test can kill and restart.
//!
//! The server under test is `FLUXIO_REDIS_URL` (default `redis://127.0.0.1:6379`). A test
//! that cannot reach it, or cannot start a `redis-server`, fails when `CI=true` and is
//! skipped otherwise — loudly, on the process's stderr, which the test harness does not
//! capture.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The URL of the Redis server under test.
pub fn redis_url() -> String {
    std::env::var("FLUXIO_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Whether running in CI, where a missing service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Panics in CI; otherwise prints a loud skip message (the caller then returns).
///
/// # Panics
///
/// When `CI=true`.
pub fn skip_or_fail(what: &str) {
    assert!(!in_ci(), "{what} (CI=true, so this is a failure)");
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

/// A key prefix no other test, or test run, uses.
pub fn unique_prefix(test: &str) -> String {
    format!("fluxio-test:{test}:{}:{}", std::process::id(), nanos())
}

/// Connects to the server at `url` and checks it answers `PING`, within a few seconds.
///
/// # Errors
///
/// What went wrong, for a skip or failure message.
pub fn ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(3))
        .map_err(|e| format!("redis unreachable at {url}: {e}"))?;
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .map_err(|e| format!("redis at {url} did not answer PING: {e}"))?;
    Ok(())
}

/// Deletes the keys matching `pattern` (SCAN MATCH, then DEL) and the `extra` ones, on a
/// blocking connection (usable in `Drop`, also after a panic).
///
/// # Errors
///
/// The server's or the connection's error.
pub fn delete_keys(url: &str, pattern: &str, extra: &[String]) -> redis::RedisResult<()> {
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

/// A loopback port free at the time of the call.
///
/// # Panics
///
/// When no port can be bound.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("a bound address").port()
}

/// A `redis-server` child process of a test, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its loopback port.
    pub port: u16,
    /// Its working directory (data and log).
    pub dir: PathBuf,
    persistent: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port. With `persistent`, it keeps its data
    /// in an append-only file (fsync on every write) in its own directory, so a restart
    /// finds the data again. `None` (after [`skip_or_fail`]) when `redis-server` cannot be
    /// started.
    ///
    /// # Panics
    ///
    /// When its directory cannot be created, or in CI when it does not start.
    pub async fn start(test: &str, persistent: bool) -> Option<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "fluxio-redis-{test}-{}-{}",
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
                    skip_or_fail(&format!(
                        "cannot run a private redis-server ({e}); scripts/services.sh installs it"
                    ));
                    return None;
                }
            }
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
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
            if self.answers().await {
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

    async fn answers(&self) -> bool {
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

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL: a crash, nothing is flushed on the way out).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    ///
    /// # Panics
    ///
    /// When it does not start.
    pub async fn restart(&mut self) {
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
