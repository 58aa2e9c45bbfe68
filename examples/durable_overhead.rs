//! What durability costs per stage, against raw drivers writing the same bytes with the same
//! durability settings, measured side by side in one process.
//!
//! `cargo run --release -p fluxio-examples --example durable_overhead` (add `-- --quick` for a short run; the
//! Redis part needs a server at `FLUXIO_REDIS_URL`, default `redis://127.0.0.1:6379`, and is
//! skipped, saying so, without one).
//!
//! Per-stage cost is marginal: (time of a 20-stage durable run - time of a 10-stage durable
//! run) / 10, so the per-run work (lock, start and finish records) is reported apart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fluxio::prelude::*;
use fluxio::store::{RedisStore, SqliteStore};
use fluxio_benches::*;

/// This process's scratch directory (removed when the comparison ends).
fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("fluxio-durable-bench-{}", std::process::id()))
}

fn scratch(name: &str) -> PathBuf {
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// What one store comparison found (medians, microseconds).
struct Figures {
    /// The raw baseline, per write.
    raw: f64,
    /// A 10-stage durable run.
    run10: f64,
    /// The marginal cost of one stage: (20-stage run − 10-stage run) / 10.
    per_stage: f64,
    /// The median over samples of per-sample `per_stage / raw`.
    ratio: f64,
}

/// Times, sample after sample and interleaved so the machine's drift hits all three
/// alike: `iters` raw writes, then 10-stage and 20-stage durable runs on `store`.
async fn compare_store<S, F, Fut>(store: S, samples: usize, iters: usize, mut raw: F) -> Figures
where
    S: CheckpointStore + Clone,
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runs = (iters / 10).max(5);
    let p10 = chain_pipeline().with_store(store.clone());
    let p20 = chain20_pipeline().with_store(store);
    let (mut raws, mut run10s, mut per_stages, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut n = 0;
    for sample in 0..samples {
        let t = Instant::now();
        for _ in 0..iters {
            raw(n).await;
            n += 1;
        }
        let r = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        let mut per_run = [0.0; 2];
        for (k, pipe) in [&p10, &p20].into_iter().enumerate() {
            let t = Instant::now();
            for i in 0..runs {
                pipe.invoke(input! { c0: 1 })
                    .run_id(format!("b{k}-{sample}-{i}"))
                    .await
                    .unwrap();
            }
            per_run[k] = t.elapsed().as_secs_f64() * 1e6 / runs as f64;
        }
        let per_stage = (per_run[1] - per_run[0]) / 10.0;
        raws.push(r);
        run10s.push(per_run[0]);
        per_stages.push(per_stage);
        ratios.push(per_stage / r);
    }
    Figures {
        raw: median(raws),
        run10: median(run10s),
        per_stage: median(per_stages),
        ratio: median(ratios),
    }
}

/// An entry of a chain stage (a u64 write) as the store receives it: its size in bytes.
async fn entry_size(store: &SqliteStore) -> usize {
    let pipe = chain_pipeline().with_store(store.clone());
    pipe.invoke(input! { c0: 1 })
        .run_id("size-probe")
        .await
        .unwrap();
    let run = store.load("size-probe").await.unwrap().unwrap();
    run.entries.iter().map(Vec::len).sum::<usize>() / run.entries.len()
}

async fn sqlx_pool(path: &Path) -> sqlx::SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS entries (run_id TEXT NOT NULL, seq INTEGER NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY (run_id, seq))")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn sqlite(samples: usize, iters: usize) {
    println!("== SQLite (WAL, synchronous=NORMAL, one commit per write) ==");
    let store = SqliteStore::open(scratch("store.db")).await.unwrap();
    let bytes = entry_size(&store).await;
    let blob = vec![7u8; bytes];

    let raw_rusqlite = {
        let conn = rusqlite::Connection::open(scratch("raw-rusqlite.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.execute("CREATE TABLE entries (run_id TEXT NOT NULL, seq INTEGER NOT NULL, bytes BLOB NOT NULL, PRIMARY KEY (run_id, seq))", []).unwrap();
        let mut out = Vec::new();
        let mut n = 0i64;
        for _ in 0..samples {
            let t = Instant::now();
            for _ in 0..iters {
                conn.prepare_cached("INSERT INTO entries (run_id, seq, bytes) VALUES (?1, ?2, ?3)")
                    .unwrap()
                    .execute(rusqlite::params!["raw", n, &blob])
                    .unwrap();
                n += 1;
            }
            out.push(t.elapsed().as_secs_f64() * 1e6 / iters as f64);
        }
        median(out)
    };

    // The raw baseline: one INSERT of the same bytes, committed on its own (autocommit),
    // on a single connection with the same pragmas.
    let pool = sqlx_pool(&scratch("raw-sqlx.db")).await;
    let f = compare_store(store.clone(), samples, iters, |n| {
        let (pool, blob) = (pool.clone(), blob.clone());
        async move {
            sqlx::query("INSERT INTO entries (run_id, seq, bytes) VALUES (?, ?, ?)")
                .bind("raw")
                .bind(n as i64)
                .bind(blob)
                .execute(&pool)
                .await
                .unwrap();
        }
    })
    .await;
    let (raw_sqlx, time10, per_stage) = (f.raw, f.run10, f.per_stage);
    println!("entry size                    {bytes} bytes (a stage writing one u64)");
    println!("raw sqlx insert (autocommit)   {raw_sqlx:>8.1} µs");
    println!("raw rusqlite insert           {raw_rusqlite:>8.1} µs   (the engine's own floor)");
    println!(
        "fluxio per stage (marginal)   {per_stage:>8.1} µs   ratio to sqlx {:.2}x (median of per-sample ratios; target <= 1.3x), to rusqlite {:.2}x",
        f.ratio,
        per_stage / raw_rusqlite
    );
    println!(
        "fluxio per run, fixed part    {:>8.1} µs   (lock, start and finish records, release)",
        time10 - 10.0 * per_stage
    );

    // Group commit: 100 runs at once; their checkpoints share commits.
    let concurrent = 100;
    let p10 = chain_pipeline().with_store(store.clone());
    let rounds = if samples > 11 { 5 } else { 2 };
    let mut rates = Vec::new();
    for r in 0..rounds {
        let t = Instant::now();
        let mut handles = Vec::new();
        for i in 0..concurrent {
            let p = p10.clone();
            handles.push(tokio::spawn(async move {
                p.invoke(input! { c0: 1 })
                    .run_id(format!("gc-{r}-{i}"))
                    .await
                    .unwrap();
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        // 10 entries + start + finish per run.
        rates.push((concurrent * 12) as f64 / t.elapsed().as_secs_f64());
    }
    let grouped = median(rates);
    println!(
        "100 concurrent runs           {grouped:>8.0} checkpoints/s   single-commit rate (raw sqlx) {:.0}/s   {:.1}x",
        1e6 / raw_sqlx,
        grouped / (1e6 / raw_sqlx)
    );
}

async fn redis(samples: usize, iters: usize) {
    let url = std::env::var("FLUXIO_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    println!("\n== Redis ({url}) ==");
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => return println!("SKIPPED: {e}"),
    };
    let mut conn = match client.get_connection_manager().await {
        Ok(c) => c,
        Err(e) => return println!("SKIPPED: redis unreachable ({e})"),
    };
    let prefix = format!("fluxio-bench:{}", std::process::id());
    let store = RedisStore::connect(&url)
        .await
        .unwrap()
        .key_prefix(prefix.clone());
    let probe = chain_pipeline().with_store(store.clone());
    probe
        .invoke(input! { c0: 1 })
        .run_id("size-probe")
        .await
        .unwrap();
    let run = store.load("size-probe").await.unwrap().unwrap();
    let bytes = run.entries.iter().map(Vec::len).sum::<usize>() / run.entries.len();
    let blob = vec![7u8; bytes];

    let key = format!("{prefix}:raw");
    let f = compare_store(store.clone(), samples, iters, |_| {
        let (mut conn, key, blob) = (conn.clone(), key.clone(), blob.clone());
        async move {
            let _: i64 = redis::cmd("RPUSH")
                .arg(&key)
                .arg(blob)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    })
    .await;
    let (raw, time10, per_stage) = (f.raw, f.run10, f.per_stage);
    println!("raw RPUSH round trip          {raw:>8.1} µs   ({bytes} bytes)");
    println!(
        "fluxio per stage (marginal)   {per_stage:>8.1} µs   ratio {:.2}x (median of per-sample ratios; target <= 1.3x)",
        f.ratio
    );
    println!(
        "fluxio per run, fixed part    {:>8.1} µs",
        time10 - 10.0 * per_stage
    );

    // Clean up this benchmark's keys.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (samples, iters) = if quick { (5, 100) } else { (21, 400) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlite(samples, iters).await;
        redis(samples, iters).await;
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(scratch_dir());
}
