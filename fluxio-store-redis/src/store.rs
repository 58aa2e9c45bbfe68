//! [`RedisStore`]: checkpoints in Redis.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use fluxio_core::store::{
    BoxFuture, CheckpointStore, RunListing, RunStatus, Save, StoreError, StoreResult, StoredRun,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, Script};

use crate::error::{Error, Result, redact_url};
use crate::keys::{self, DEFAULT_KEY_PREFIX, RunKeys, escape};
use crate::scripts::{self, SCRIPTS};

/// How long one attempt to open a connection may take, in [`RedisStore::default_config`]:
/// 2 seconds.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the server may take to answer a command, in [`RedisStore::default_config`]:
/// 5 seconds. A Redis paused or unreachable for longer fails the command (and the run that
/// sent it, with `Error::Store` naming the operation); a shorter stall is ridden out —
/// unless it outlasts the run's lease, which then ends in `Error::LockLost`.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a lost connection is retried before an operation fails, in
/// [`RedisStore::default_config`].
pub const DEFAULT_CONNECTION_RETRIES: usize = 2;

/// The longest lease or TTL sent to Redis, in milliseconds (about 35,000 years): Redis
/// rejects expiry times that overflow when added to the current time.
const MAX_MILLIS: u64 = 1 << 50;

/// A [`CheckpointStore`] in Redis, shared by every process that connects to the same
/// server: runs started by one process can be resumed by another, and a run id is locked
/// across all of them.
///
/// Each write is one Lua script that checks the run's lock and writes in one atomic step,
/// and a stage's entry costs one round trip (`EVALSHA` of a preloaded script). All keys of
/// a run share the hash tag `{run_id}` (see [`RunKeys`]), so every script and transaction
/// stays within one slot, as a Redis Cluster requires.
///
/// Cloning is cheap and gives another handle to the same connection. The connection
/// reconnects on its own after Redis restarts or the network drops: operations fail with
/// [`StoreError::Backend`] while Redis is unreachable (within the timeouts of
/// [`default_config`](Self::default_config)), and work again once it is back. Every
/// operation is retried once when the connection turns out to be broken (the first command
/// after Redis restarted finds it so): all of them can run twice safely — appending a
/// stage's entry carries a token, so a resend whose first attempt did run appends nothing.
///
/// Redis keeps checkpoints only as durably as it is configured to: use AOF persistence if
/// checkpoints must survive a Redis restart.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
///
/// use fluxio_core::store::{CheckpointStore, RunStatus, Save};
/// use fluxio_store_redis::RedisStore;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379")
///     .await?
///     .key_prefix("billing:checkpoint")
///     // Finished runs are deleted a week after they end.
///     .ttl(Duration::from_secs(7 * 24 * 3600));
///
/// // Durable pipelines take it with `pipe.with_store(store)`; used directly:
/// assert!(store.acquire("invoice-42", "worker-1", Duration::from_secs(30)).await?);
/// store
///     .save("invoice-42", "worker-1", Save::Start { version: "v1".into(), header: vec![] })
///     .await?;
/// store.save("invoice-42", "worker-1", Save::Entry(b"stage 1".to_vec())).await?;
/// store
///     .save("invoice-42", "worker-1", Save::Finish { status: RunStatus::Completed, error: None })
///     .await?;
/// store.release("invoice-42", "worker-1").await?;
///
/// let run = store.load("invoice-42").await?.expect("the run was saved");
/// assert_eq!(run.entries, vec![b"stage 1".to_vec()]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    /// The URL, password redacted.
    url: Arc<str>,
    /// The key prefix as the user gave it.
    prefix: Arc<str>,
    /// The key prefix as written in keys (escaped).
    key_prefix: Arc<str>,
    /// How long finished runs are kept; `None`: forever.
    ttl: Option<Duration>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("key_prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host[:port][/db]`,
    /// or `rediss://` with TLS if the `redis` crate was built with it) with
    /// [`default_config`](Self::default_config), and loads the store's scripts.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] if the URL is invalid, the server cannot be reached or refuses
    /// the connection (a password it wants: put it in the URL,
    /// `redis://:password@host:6379`); [`Error::Redis`] if it refuses to load the scripts.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_config(url, Self::default_config()).await
    }

    /// [`connect`](Self::connect) with your own connection settings (timeouts,
    /// reconnection backoff); start from [`default_config`](Self::default_config).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with_config(url: &str, config: ConnectionManagerConfig) -> Result<Self> {
        let redacted = redact_url(url);
        let connect_err = |source| Error::Connect {
            url: redacted.clone(),
            source,
        };
        let client = redis::Client::open(url).map_err(connect_err)?;
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(connect_err)?;
        // One command first: a server refusing every command (a password it wants, say)
        // answers once, not once per script of the pipeline below.
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(connect_err)?;
        preload_scripts(&mut conn).await?;
        Ok(RedisStore {
            conn,
            url: redacted.into(),
            prefix: DEFAULT_KEY_PREFIX.into(),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            ttl: None,
        })
    }

    /// The connection settings [`connect`](Self::connect) uses: a connection attempt times
    /// out after [`DEFAULT_CONNECTION_TIMEOUT`], a command after
    /// [`DEFAULT_RESPONSE_TIMEOUT`], and a lost connection is retried
    /// [`DEFAULT_CONNECTION_RETRIES`] times (100 ms, then 200 ms apart, with jitter) before
    /// the operation fails. So an operation fails within seconds, not minutes, when Redis is
    /// down.
    pub fn default_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_CONNECTION_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
            .set_number_of_retries(DEFAULT_CONNECTION_RETRIES)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1))
    }

    /// Keeps a finished run (completed, failed or rolled back) for `ttl` after it finished,
    /// then Redis deletes it — a failed run too, which could still have been resumed: make
    /// `ttl` longer than the time you take to resume failed runs. Applied when the run's finish record is saved; a finished run that is
    /// resumed loses its TTL until it finishes again. Without this, finished runs are kept
    /// until [`delete`](CheckpointStore::delete)d. Durations are rounded up to whole
    /// milliseconds: `Duration::ZERO` keeps a finished run 1 ms — it deletes every finished
    /// run at once, failed ones included, leaving nothing to inspect or resume.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Puts this store's keys under `prefix` (default [`DEFAULT_KEY_PREFIX`],
    /// `fluxio:checkpoint`), to keep applications sharing a Redis apart. Braces and `%` in
    /// the prefix are escaped (see [`RunKeys`]), so the prefix never changes a key's hash
    /// tag.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix: String = prefix.into();
        self.key_prefix = escape(&prefix).into();
        self.prefix = prefix.into();
        self
    }

    /// The keys holding `run_id` in this store.
    pub fn run_keys(&self, run_id: &str) -> RunKeys {
        RunKeys::new(&self.key_prefix, run_id)
    }

    /// The TTL as sent to the finish script: milliseconds, `0` for none.
    fn ttl_millis(&self) -> u64 {
        self.ttl.map_or(0, millis)
    }
}

/// `d` in whole milliseconds, rounded up, between 1 and [`MAX_MILLIS`] (Redis refuses an
/// expiry of 0).
fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(MAX_MILLIS).clamp(1, MAX_MILLIS)
}

/// Loads every script, so that the first `EVALSHA` of each already hits.
async fn preload_scripts(conn: &mut ConnectionManager) -> Result<()> {
    let mut pipe = redis::pipe();
    for (code, _) in SCRIPTS.all() {
        pipe.cmd("SCRIPT").arg("LOAD").arg(code);
    }
    let hashes: Vec<String> = pipe
        .query_async(conn)
        .await
        .map_err(Error::redis("connect"))?;
    for (hash, (_, script)) in hashes.iter().zip(SCRIPTS.all()) {
        if hash != script.get_hash() {
            return Err(Error::UnexpectedReply {
                operation: "connect",
                reply: format!(
                    "SCRIPT LOAD returned {hash}, expected {}",
                    script.get_hash()
                ),
            });
        }
    }
    Ok(())
}

/// One request to the server.
enum Request {
    /// `EVALSHA` of `script`: loaded and sent again if the server does not know it (after a
    /// restart or `SCRIPT FLUSH`).
    Script(&'static Script, Cmd),
    /// A plain command.
    Cmd(Cmd),
    /// A pipeline (here always `MULTI`/`EXEC`).
    Pipe(Pipeline),
}

/// Numbers the entry saves of this process (with the owner, a save's token).
static ENTRY_TOKENS: AtomicU64 = AtomicU64::new(0);

impl Request {
    /// `EVALSHA <script> <keys>`; add the `ARGV` with `arg`.
    fn script(script: &'static Script, keys: &[&str]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
        cmd
    }

    async fn send_once<T: FromRedisValue>(&self, conn: &mut ConnectionManager) -> RedisResult<T> {
        match self {
            Request::Script(script, cmd) => match cmd.query_async(conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(conn).await?;
                    cmd.query_async(conn).await
                }
                other => other,
            },
            Request::Cmd(cmd) => cmd.query_async(conn).await,
            Request::Pipe(pipe) => pipe.query_async(conn).await,
        }
    }

    /// Sends the request, and once more if the connection turned out to be broken (every
    /// request of this store can run twice safely).
    async fn send<T: FromRedisValue>(&self, conn: &mut ConnectionManager) -> RedisResult<T> {
        match self.send_once(conn).await {
            // The connection manager reconnects after such an error; the second attempt
            // waits for the new connection.
            Err(e) if is_broken_connection(&e) => self.send_once(conn).await,
            other => other,
        }
    }
}

/// Whether `e` means the connection is gone (not a timeout: waiting for a second timeout
/// would only double the wait).
fn is_broken_connection(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
}

/// Maps a Redis error during `operation` to the trait's error.
fn backend(operation: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |source| Error::Redis { operation, source }.into_store(operation)
}

/// Maps a Redis error during `operation` on run `run_id`: a key of the run holding another
/// type than the store writes (`WRONGTYPE`) is a corrupt record, which no retry mends.
fn run_error(operation: &'static str, run_id: &str, source: RedisError) -> StoreError {
    if wrong_type_at(&source).is_some() {
        return wrong_type(run_id, &source);
    }
    backend(operation)(source)
}

/// Where `source` says a command ran against a key of another Redis type (`WRONGTYPE`): the
/// command's position in a pipeline or transaction, 0 for a command alone or a script.
/// (Redis before 7 reports an error inside a script as `ERR Error running script …`, with
/// `WRONGTYPE` in its text only.)
fn wrong_type_at(source: &RedisError) -> Option<usize> {
    let found = source.clone().into_server_errors().and_then(|errors| {
        errors
            .iter()
            .find(|(_, e)| e.code() == "WRONGTYPE")
            .map(|(at, _)| *at)
    });
    found.or_else(|| source.to_string().contains("WRONGTYPE").then_some(0))
}

/// The error of run `run_id`, a key of which holds another Redis type (`source` says which).
fn wrong_type(run_id: &str, source: &RedisError) -> StoreError {
    StoreError::Corrupt {
        run_id: run_id.to_string(),
        reason: format!(
            "a key of the run holds another Redis type than the store writes (the server \
             said: {source}): something else wrote under the store's key prefix"
        ),
    }
}

fn unexpected(operation: &'static str, reply: i64) -> StoreError {
    Error::UnexpectedReply {
        operation,
        reply: reply.to_string(),
    }
    .into_store(operation)
}

/// A run's meta hash as read: field names and values as bytes.
type Meta = HashMap<Vec<u8>, Vec<u8>>;

/// Meta field `name`'s text, or why it is not text (the record is then corrupt).
fn meta_text(name: &str, bytes: Vec<u8>) -> std::result::Result<String, String> {
    String::from_utf8(bytes).map_err(|_| format!("field `{name}` is not UTF-8"))
}

/// The status the meta's `status` field names, or why it names none.
fn meta_status(bytes: Vec<u8>) -> std::result::Result<RunStatus, String> {
    let status = meta_text("status", bytes)?;
    RunStatus::parse(&status).ok_or_else(|| format!("unknown status `{}`", status.escape_debug()))
}

/// Builds a [`StoredRun`] from the meta hash and the entries; `None` without meta. Fields
/// the store does not know are ignored (a later version may add some), whatever their
/// names: the hash is read as bytes, so a name that is not UTF-8 is just another unknown
/// field.
fn parse_run(run_id: &str, mut meta: Meta, entries: Vec<Vec<u8>>) -> Result<Option<StoredRun>> {
    if meta.is_empty() {
        return Ok(None);
    }
    let corrupt = |reason: String| Error::Corrupt {
        run_id: run_id.to_string(),
        reason,
    };
    let mut field = |name: &str| {
        meta.remove(name.as_bytes())
            .ok_or_else(|| corrupt(format!("its meta has no field `{name}`")))
    };
    let version = meta_text("version", field("version")?).map_err(corrupt)?;
    let status = meta_status(field("status")?).map_err(corrupt)?;
    let header = field("header")?;
    let error = match meta.remove(&b"error"[..]) {
        Some(bytes) => Some(meta_text("error", bytes).map_err(corrupt)?),
        None => None,
    };
    Ok(Some(StoredRun {
        version,
        status,
        error,
        header,
        entries,
    }))
}

impl CheckpointStore for RedisStore {
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        let keys = self.run_keys(run_id);
        let script_keys = [
            keys.lock.as_str(),
            keys.meta.as_str(),
            keys.entries.as_str(),
            keys.tokens.as_str(),
        ];
        let request = match save {
            Save::Start { version, header } => {
                let script = &SCRIPTS.save_start;
                let mut cmd = Request::script(script, &script_keys);
                cmd.arg(owner).arg(version).arg(header.as_slice()).arg("1");
                Request::Script(script, cmd)
            }
            Save::Rewrite {
                version,
                header,
                entries,
            } => {
                let script = &SCRIPTS.save_start;
                let mut cmd = Request::script(script, &script_keys);
                cmd.arg(owner).arg(version).arg(header.as_slice()).arg("0");
                for entry in &entries {
                    cmd.arg(entry.as_slice());
                }
                // It replaces everything: doing it twice leaves the same run.
                Request::Script(script, cmd)
            }
            Save::Entry(entry) => {
                let script = &SCRIPTS.save_entry;
                let mut cmd = Request::script(script, &script_keys);
                // The token makes a resend after a lost reply append nothing: the script
                // skips an entry whose token it appended before.
                let token = format!("{owner}:{}", ENTRY_TOKENS.fetch_add(1, Ordering::Relaxed));
                cmd.arg(owner).arg(entry.as_slice()).arg(token);
                Request::Script(script, cmd)
            }
            Save::Finish { status, error } => {
                let script = &SCRIPTS.save_finish;
                let mut cmd = Request::script(script, &script_keys);
                cmd.arg(owner)
                    .arg(status.as_str())
                    .arg(if error.is_some() { "1" } else { "0" })
                    .arg(error.as_deref().unwrap_or(""))
                    .arg(self.ttl_millis());
                Request::Script(script, cmd)
            }
        };
        let mut conn = self.conn.clone();
        let run_id = run_id.to_string();
        Box::pin(async move {
            let reply: i64 = request
                .send(&mut conn)
                .await
                .map_err(|e| run_error("save", &run_id, e))?;
            match reply {
                scripts::OK => Ok(()),
                scripts::LOCK_LOST => Err(StoreError::LockLost { run_id }),
                scripts::ROLLBACK_PENDING => Err(StoreError::RollbackPending { run_id }),
                scripts::NOT_STARTED => Err(Error::NotStarted { run_id }.into_store("save")),
                other => Err(unexpected("save", other)),
            }
        })
    }

    fn load(&self, run_id: &str) -> BoxFuture<'static, StoreResult<Option<StoredRun>>> {
        let keys = self.run_keys(run_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HGETALL")
            .arg(&keys.meta)
            .cmd("LRANGE")
            .arg(&keys.entries)
            .arg(0)
            .arg(-1);
        let request = Request::Pipe(pipe);
        let mut conn = self.conn.clone();
        let run_id = run_id.to_string();
        Box::pin(async move {
            // Bytes, which every reply converts to: what they must hold is checked by
            // `parse_run`, which names the run when they do not.
            let (meta, entries): (Meta, Vec<Vec<u8>>) = request
                .send(&mut conn)
                .await
                .map_err(|e| run_error("load", &run_id, e))?;
            parse_run(&run_id, meta, entries).map_err(|e| e.into_store("load"))
        })
    }

    /// One script: the lock check and the delete are atomic.
    fn delete(&self, run_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        let keys = self.run_keys(run_id);
        let script = &SCRIPTS.delete;
        let cmd = Request::script(
            script,
            &[&keys.lock, &keys.meta, &keys.entries, &keys.tokens],
        );
        let request = Request::Script(script, cmd);
        let mut conn = self.conn.clone();
        let run_id = run_id.to_string();
        Box::pin(async move {
            let deleted: i64 = request.send(&mut conn).await.map_err(backend("delete"))?;
            if deleted == 0 {
                return Err(StoreError::RunLocked { run_id });
            }
            Ok(())
        })
    }

    fn exists(&self, run_id: &str) -> BoxFuture<'static, StoreResult<bool>> {
        let keys = self.run_keys(run_id);
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(&keys.meta);
        let request = Request::Cmd(cmd);
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let n: i64 = request.send(&mut conn).await.map_err(backend("exists"))?;
            Ok(n > 0)
        })
    }

    fn acquire(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        let keys = self.run_keys(run_id);
        let script = &SCRIPTS.acquire;
        let mut cmd = Request::script(script, &[&keys.lock]);
        cmd.arg(owner).arg(millis(lease));
        lock_call(
            "acquire",
            run_id,
            Request::Script(script, cmd),
            self.conn.clone(),
        )
    }

    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        let keys = self.run_keys(run_id);
        let script = &SCRIPTS.renew;
        let mut cmd = Request::script(script, &[&keys.lock]);
        cmd.arg(owner).arg(millis(lease));
        lock_call(
            "renew",
            run_id,
            Request::Script(script, cmd),
            self.conn.clone(),
        )
    }

    /// `SCAN`s the keys under the store's prefix for the runs' meta hashes, then reads each
    /// one's version, status, time and error (`HMGET`) and its lock's time left (`PTTL`),
    /// a thousand at a time in one round trip. A meta key of another type fails the listing with
    /// [`StoreError::Corrupt`] naming its run (the scan does not filter by type: that would
    /// leave such a run out without a word). On a Redis Cluster it sees the keys of the
    /// node it is connected to only.
    fn list_runs(
        &self,
        statuses: &[RunStatus],
    ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
        let pattern = keys::meta_pattern(&self.key_prefix);
        let prefix = self.key_prefix.clone();
        let statuses = statuses.to_vec();
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let mut cursor: u64 = 0;
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                // Keys as bytes: one that is not UTF-8 is not this store's (run ids are
                // strings) and is passed over, not an error.
                let (next, found): (u64, Vec<Vec<u8>>) = Request::Cmd(scan)
                    .send(&mut conn)
                    .await
                    .map_err(backend("list_runs"))?;
                // SCAN may return a key twice.
                let runs: Vec<(String, String)> = found
                    .into_iter()
                    .filter_map(|meta| String::from_utf8(meta).ok())
                    .filter_map(|meta| Some((keys::run_id_of_meta(&prefix, &meta)?, meta)))
                    .filter(|(run_id, _)| seen.insert(run_id.clone()))
                    .collect();
                if !runs.is_empty() {
                    let mut pipe = redis::pipe();
                    for (run_id, meta) in &runs {
                        let lock = RunKeys::new(&prefix, run_id).lock;
                        pipe.cmd("HMGET")
                            .arg(meta)
                            .arg("version")
                            .arg("status")
                            .arg("updated_at_ms")
                            .arg("error")
                            .cmd("PTTL")
                            .arg(lock);
                    }
                    let replies: Vec<redis::Value> = match Request::Pipe(pipe).send(&mut conn).await
                    {
                        Ok(replies) => replies,
                        // Two commands per run: the `HMGET` of its meta was refused.
                        Err(e) => match wrong_type_at(&e).and_then(|at| runs.get(at / 2)) {
                            Some((run_id, _)) => return Err(wrong_type(run_id, &e)),
                            None => return Err(backend("list_runs")(e)),
                        },
                    };
                    for ((run_id, _), pair) in runs.into_iter().zip(replies.chunks(2)) {
                        if let Some(run) = listing(run_id, pair)? {
                            if statuses.is_empty() || statuses.contains(&run.status) {
                                out.push(run);
                            }
                        }
                    }
                }
                if next == 0 {
                    return Ok(out);
                }
                cursor = next;
            }
        })
    }

    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
        let keys = self.run_keys(run_id);
        let script = &SCRIPTS.release;
        let mut cmd = Request::script(script, &[&keys.lock]);
        cmd.arg(owner);
        let released = lock_call(
            "release",
            run_id,
            Request::Script(script, cmd),
            self.conn.clone(),
        );
        Box::pin(async move { released.await.map(|_| ()) })
    }
}

/// The listing of `run_id` from its replies to `HMGET meta version status updated_at_ms
/// error` and `PTTL lock` (-2: no lock): `None` when the run was deleted since the scan found it.
fn listing(run_id: String, replies: &[redis::Value]) -> StoreResult<Option<RunListing>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        run_id: run_id.clone(),
        reason,
    };
    let [fields, locked] = replies else {
        return Err(unexpected("list_runs", replies.len() as i64));
    };
    type Fields = (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let (version, status, updated_ms, error): Fields =
        redis::from_redis_value_ref(fields).map_err(|e| corrupt(format!("its meta: {e}")))?;
    let pttl: i64 =
        redis::from_redis_value_ref(locked).map_err(|e| corrupt(format!("its lock: {e}")))?;
    let (version, status) = match (version, status) {
        (None, None) => return Ok(None),
        (Some(v), Some(s)) => (v, s),
        (v, _) => {
            let field = if v.is_none() { "version" } else { "status" };
            return Err(corrupt(format!("its meta has no `{field}`")));
        }
    };
    let version = meta_text("version", version).map_err(corrupt)?;
    let status = meta_status(status).map_err(corrupt)?;
    // -2: no lock. -1: a lock without expiry (the store always sets one: another
    // program's key), held for good.
    let left = match pttl {
        -2 => None,
        -1 => Some(Duration::MAX),
        ms => Some(Duration::from_millis(ms.max(0) as u64)),
    };
    // Written by this store since it keeps the time (older records have none).
    let updated_ms: Option<u64> = match updated_ms {
        Some(ms) => Some(
            meta_text("updated_at_ms", ms)
                .map_err(corrupt)?
                .parse()
                .map_err(|e| corrupt(format!("its meta's `updated_at_ms`: {e}")))?,
        ),
        None => None,
    };
    let mut run = RunListing::new(run_id, version, status, left);
    if let Some(ms) = updated_ms {
        run = run.with_updated_at(UNIX_EPOCH + Duration::from_millis(ms));
    }
    // Only words for the operator: a damaged text is read as far as it goes rather than
    // fail the whole listing.
    if let Some(error) = error {
        run = run.with_error(String::from_utf8_lossy(&error));
    }
    Ok(Some(run))
}

/// Runs a lock script of run `run_id` answering 1 (true) or 0 (false).
fn lock_call(
    operation: &'static str,
    run_id: &str,
    request: Request,
    mut conn: ConnectionManager,
) -> BoxFuture<'static, StoreResult<bool>> {
    let run_id = run_id.to_string();
    Box::pin(async move {
        let reply: i64 = request
            .send(&mut conn)
            .await
            .map_err(|e| run_error(operation, &run_id, e))?;
        match reply {
            1 => Ok(true),
            0 => Ok(false),
            other => Err(unexpected(operation, other)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_rounds_up_and_clamps() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
    }

    fn meta(fields: &[(&str, &[u8])]) -> Meta {
        fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn parse_run_reads_every_field() {
        let run = parse_run(
            "r",
            meta(&[
                ("version", b"v1"),
                ("status", b"failed"),
                ("error", b"boom"),
                ("header", b"\x00\xff"),
            ]),
            vec![b"e1".to_vec()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(run.version, "v1");
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.error.as_deref(), Some("boom"));
        assert_eq!(run.header, b"\x00\xff");
        assert_eq!(run.entries, vec![b"e1".to_vec()]);
    }

    #[test]
    fn parse_run_ignores_fields_it_does_not_know() {
        let mut fields = meta(&[
            ("version", b"v1"),
            ("status", b"running"),
            ("header", b""),
            ("added_later", b"x"),
        ]);
        fields.insert(b"\xff".to_vec(), b"x".to_vec());
        let run = parse_run("r", fields, vec![]).unwrap().unwrap();
        assert_eq!(
            (run.version.as_str(), run.status),
            ("v1", RunStatus::Running)
        );
    }

    #[test]
    fn parse_run_without_meta_is_none() {
        assert!(
            parse_run("r", HashMap::new(), vec![b"orphan".to_vec()])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn parse_run_rejects_bad_meta() {
        let unknown = parse_run(
            "r",
            meta(&[("version", b"v1"), ("status", b"paused"), ("header", b"")]),
            vec![],
        );
        let msg = unknown.unwrap_err().to_string();
        assert!(msg.contains("unknown status `paused`"), "{msg}");

        let missing = parse_run("r", meta(&[("status", b"running")]), vec![]);
        let msg = missing.unwrap_err().to_string();
        assert!(msg.contains("no field `version`"), "{msg}");

        let not_utf8 = parse_run(
            "r",
            meta(&[
                ("version", b"\xff"),
                ("status", b"running"),
                ("header", b""),
            ]),
            vec![],
        );
        assert!(matches!(not_utf8, Err(Error::Corrupt { .. })));
    }
}
