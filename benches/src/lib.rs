//! The workloads fluxio is measured on, each as a fluxio pipeline and as the hand-written
//! tokio code doing the same context updates, so benches and the `overhead` comparison
//! program time exactly the same thing.

use fluxio::prelude::*;

fluxio::keys! {
    /// Chain input.
    pub c0: u64;
    /// Chain step 1.
    pub c1: u64;
    /// Chain step 2.
    pub c2: u64;
    /// Chain step 3.
    pub c3: u64;
    /// Chain step 4.
    pub c4: u64;
    /// Chain step 5.
    pub c5: u64;
    /// Chain step 6.
    pub c6: u64;
    /// Chain step 7.
    pub c7: u64;
    /// Chain step 8.
    pub c8: u64;
    /// Chain step 9.
    pub c9: u64;
    /// Chain output.
    pub c10: u64;
    /// Fan-out input.
    pub f_in: u64;
    /// Written by the fan-out's first stage.
    pub f_seed: u64;
    /// Branch 0.
    pub f0: u64;
    /// Branch 1.
    pub f1: u64;
    /// Branch 2.
    pub f2: u64;
    /// Branch 3.
    pub f3: u64;
    /// Branch 4.
    pub f4: u64;
    /// Branch 5.
    pub f5: u64;
    /// Branch 6.
    pub f6: u64;
    /// Branch 7.
    pub f7: u64;
    /// The join's output.
    pub f_total: u64;
    /// Second chain, step 1.
    pub d1: u64;
    /// Second chain, step 2.
    pub d2: u64;
    /// Second chain, step 3.
    pub d3: u64;
    /// Second chain, step 4.
    pub d4: u64;
    /// Second chain, step 5.
    pub d5: u64;
    /// Second chain, step 6.
    pub d6: u64;
    /// Second chain, step 7.
    pub d7: u64;
    /// Second chain, step 8.
    pub d8: u64;
    /// Second chain, step 9.
    pub d9: u64;
    /// Second chain, step 10.
    pub d10: u64;
}

/// The trivial work every stage does.
#[inline(never)]
pub async fn step(v: u64) -> u64 {
    std::hint::black_box(v.wrapping_add(1))
}

macro_rules! chain_stage {
    ($name:ident, $from:ident, $to:ident) => {
        #[doc = concat!("Chain stage `", stringify!($name), "`.")]
        #[stage(reads = [$from], writes = [$to])]
        pub async fn $name($from: &u64) -> u64 {
            step(*$from).await
        }
    };
}

chain_stage!(s1, c0, c1);
chain_stage!(s2, c1, c2);
chain_stage!(s3, c2, c3);
chain_stage!(s4, c3, c4);
chain_stage!(s5, c4, c5);
chain_stage!(s6, c5, c6);
chain_stage!(s7, c6, c7);
chain_stage!(s8, c7, c8);
chain_stage!(s9, c8, c9);
chain_stage!(s10, c9, c10);

chain_stage!(t1, c10, d1);
chain_stage!(t2, d1, d2);
chain_stage!(t3, d2, d3);
chain_stage!(t4, d3, d4);
chain_stage!(t5, d4, d5);
chain_stage!(t6, d5, d6);
chain_stage!(t7, d6, d7);
chain_stage!(t8, d7, d8);
chain_stage!(t9, d8, d9);
chain_stage!(t10, d9, d10);

chain_stage!(seed, f_in, f_seed);
chain_stage!(b0, f_seed, f0);
chain_stage!(b1, f_seed, f1);
chain_stage!(b2, f_seed, f2);
chain_stage!(b3, f_seed, f3);
chain_stage!(b4, f_seed, f4);
chain_stage!(b5, f_seed, f5);
chain_stage!(b6, f_seed, f6);
chain_stage!(b7, f_seed, f7);

/// The fan-out's join: reads every branch.
#[stage(reads = [f0, f1, f2, f3, f4, f5, f6, f7], writes = [f_total])]
#[allow(clippy::too_many_arguments, reason = "one parameter per key read")]
pub async fn join(
    f0: &u64,
    f1: &u64,
    f2: &u64,
    f3: &u64,
    f4: &u64,
    f5: &u64,
    f6: &u64,
    f7: &u64,
) -> u64 {
    f0 + f1 + f2 + f3 + f4 + f5 + f6 + f7
}

/// Ten trivial stages, each reading what the previous one wrote.
pub fn chain_pipeline() -> Pipeline {
    pipeline! { s1, s2, s3, s4, s5, s6, s7, s8, s9, s10 }
}

/// Twenty trivial stages in a chain (the ten of [`chain_pipeline`], then ten more): the
/// difference with the ten-stage chain is the cost of ten stages.
pub fn chain20_pipeline() -> Pipeline {
    pipeline! { s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10 }
}

/// The cache the middleware benchmarks use: a minute's TTL, a thousand entries (full after
/// the warm-up, so every miss also evicts).
pub fn bench_cache() -> Cache {
    Cache::ttl(Duration::from_secs(60)).max_entries(1_000)
}

/// The chain through CircuitBreaker, Retry and Cache, in that order (outermost first): the
/// middleware whose overhead the targets are about.
pub fn trio_pipeline() -> Pipeline {
    chain_pipeline()
        .with_middleware(CircuitBreaker::new(5))
        .with_middleware(Retry::exponential(3))
        .with_middleware(bench_cache())
}

/// The median of some samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One stage, an 8-wide parallel fan-out, and a join.
pub fn fanout_pipeline() -> Pipeline {
    pipeline! { seed, parallel { b0, b1, b2, b3, b4, b5, b6, b7 }, join }
}

/// The chain, hand-written: the same ten awaits and context updates, no runtime.
pub async fn chain_baseline(input: Ctx) -> Ctx {
    let mut ctx = input;
    let v = step(ctx[c0]).await;
    ctx = ctx.with(c1, v);
    let v = step(ctx[c1]).await;
    ctx = ctx.with(c2, v);
    let v = step(ctx[c2]).await;
    ctx = ctx.with(c3, v);
    let v = step(ctx[c3]).await;
    ctx = ctx.with(c4, v);
    let v = step(ctx[c4]).await;
    ctx = ctx.with(c5, v);
    let v = step(ctx[c5]).await;
    ctx = ctx.with(c6, v);
    let v = step(ctx[c6]).await;
    ctx = ctx.with(c7, v);
    let v = step(ctx[c7]).await;
    ctx = ctx.with(c8, v);
    let v = step(ctx[c8]).await;
    ctx = ctx.with(c9, v);
    let v = step(ctx[c9]).await;
    ctx.with(c10, v)
}

/// The fan-out, hand-written with `join_all`: the same awaits and context updates.
pub async fn fanout_baseline(input: Ctx) -> Ctx {
    let mut ctx = input;
    let v = step(ctx[f_in]).await;
    ctx = ctx.with(f_seed, v);
    let s = ctx[f_seed];
    let outs = futures::future::join_all((0..8).map(|_| step(s))).await;
    ctx = ctx
        .with(f0, outs[0])
        .with(f1, outs[1])
        .with(f2, outs[2])
        .with(f3, outs[3])
        .with(f4, outs[4])
        .with(f5, outs[5])
        .with(f6, outs[6])
        .with(f7, outs[7]);
    let total = ctx[f0] + ctx[f1] + ctx[f2] + ctx[f3] + ctx[f4] + ctx[f5] + ctx[f6] + ctx[f7];
    ctx.with(f_total, total)
}

/// The middleware trio written by hand for this chain, as a careful user would without
/// fluxio: a circuit breaker per stage (outermost), up to three attempts with exponential
/// backoff, and a bounded TTL cache keyed by the stage and its read value (innermost) —
/// specialised to `u64` reads and writes, so it hashes and stores plain integers where
/// fluxio's `Cache` handles any key type. It is the baseline for what the trio costs by
/// hand, next to what fluxio's built-ins cost over the bare runtime.
#[derive(Default)]
pub struct HandTrio {
    /// Consecutive failures per stage; at `BREAKER_THRESHOLD` the stage's circuit is open.
    failures: [std::sync::atomic::AtomicU32; 10],
    cache: std::sync::Mutex<HandCache>,
}

/// The hand-written cache: results by (stage, read), and their insertion order (one TTL
/// for all, so the front is always what expires first).
#[derive(Default)]
struct HandCache {
    map: std::collections::HashMap<
        (u8, u64),
        (u64, tokio::time::Instant),
        foldhash::fast::RandomState,
    >,
    order: std::collections::VecDeque<((u8, u64), tokio::time::Instant)>,
}

/// How many consecutive failures open a circuit of [`HandTrio`].
const BREAKER_THRESHOLD: u32 = 5;
/// How many results [`HandTrio`] keeps: as many as [`bench_cache`].
const HAND_CACHE_ENTRIES: usize = 1_000;
/// How long [`HandTrio`] keeps a result: as long as [`bench_cache`].
const HAND_CACHE_TTL: Duration = Duration::from_secs(60);

impl std::fmt::Debug for HandTrio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandTrio").finish_non_exhaustive()
    }
}

impl HandTrio {
    /// Calls [`step`] as stage `stage` on `read`, through the breaker, the retries and the
    /// cache.
    pub async fn call(&self, stage: u8, read: u64) -> Result<u64, String> {
        use std::sync::atomic::Ordering;
        let failures = &self.failures[usize::from(stage)];
        if failures.load(Ordering::Relaxed) >= BREAKER_THRESHOLD {
            return Err(format!("circuit of stage {stage} is open"));
        }
        let mut attempt = 1u32;
        let out = loop {
            match self.cached(stage, read).await {
                Ok(v) => break Ok(v),
                Err(e) if attempt >= 3 => {
                    break Err(format!("failed after {attempt} attempts: {e}"));
                }
                Err(_) => {
                    let ms = 100u64 << (attempt - 1).min(6);
                    tokio::time::sleep(Duration::from_millis(ms / 2 + read % (ms / 2 + 1))).await;
                    attempt += 1;
                }
            }
        };
        match out {
            Ok(_) => {
                if failures.load(Ordering::Relaxed) != 0 {
                    failures.store(0, Ordering::Relaxed);
                }
            }
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }

    /// The cache's part: a live result for (stage, read), or the stage called and its
    /// result kept (the oldest evicted first, expired ones before that).
    async fn cached(&self, stage: u8, read: u64) -> Result<u64, String> {
        let key = (stage, read);
        let now = tokio::time::Instant::now();
        if let Some(&(v, expires)) = self.cache.lock().unwrap().map.get(&key)
            && now < expires
        {
            return Ok(v);
        }
        let v = step(read).await;
        let expires = now + HAND_CACHE_TTL;
        let mut cache = self.cache.lock().unwrap();
        while let Some(&(old, at)) = cache.order.front() {
            if at > now && cache.map.len() < HAND_CACHE_ENTRIES {
                break;
            }
            cache.order.pop_front();
            if cache.map.get(&old).is_some_and(|&(_, e)| e == at) {
                cache.map.remove(&old);
            }
        }
        cache.map.insert(key, (v, expires));
        cache.order.push_back((key, expires));
        Ok(v)
    }
}

/// The chain through [`HandTrio`]: the same ten awaits and context updates as
/// [`chain_baseline`], each step behind the hand-written middleware.
pub async fn chain_trio_baseline(input: Ctx, trio: &HandTrio) -> Result<Ctx, String> {
    let mut ctx = input;
    let v = trio.call(0, ctx[c0]).await?;
    ctx = ctx.with(c1, v);
    let v = trio.call(1, ctx[c1]).await?;
    ctx = ctx.with(c2, v);
    let v = trio.call(2, ctx[c2]).await?;
    ctx = ctx.with(c3, v);
    let v = trio.call(3, ctx[c3]).await?;
    ctx = ctx.with(c4, v);
    let v = trio.call(4, ctx[c4]).await?;
    ctx = ctx.with(c5, v);
    let v = trio.call(5, ctx[c5]).await?;
    ctx = ctx.with(c6, v);
    let v = trio.call(6, ctx[c6]).await?;
    ctx = ctx.with(c7, v);
    let v = trio.call(7, ctx[c7]).await?;
    ctx = ctx.with(c8, v);
    let v = trio.call(8, ctx[c8]).await?;
    ctx = ctx.with(c9, v);
    let v = trio.call(9, ctx[c9]).await?;
    Ok(ctx.with(c10, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(trio: &HandTrio) -> usize {
        trio.cache.lock().unwrap().map.len()
    }

    /// The hand-written trio is a real cache: equal inputs hit, it stays bounded, and the
    /// chain's result is the bare chain's.
    #[tokio::test]
    async fn the_hand_written_trio_caches_within_its_bound() {
        let trio = HandTrio::default();
        let out = chain_trio_baseline(input! { c0: 1 }, &trio).await.unwrap();
        assert_eq!(out[c10], chain_baseline(input! { c0: 1 }).await[c10]);
        assert_eq!(cached(&trio), 10);
        chain_trio_baseline(input! { c0: 1 }, &trio).await.unwrap();
        assert_eq!(cached(&trio), 10, "the same inputs hit");
        for i in 0..200 {
            chain_trio_baseline(input! { c0: 1_000 * i }, &trio)
                .await
                .unwrap();
        }
        assert_eq!(cached(&trio), HAND_CACHE_ENTRIES);
        assert_eq!(trio.cache.lock().unwrap().order.len(), HAND_CACHE_ENTRIES);
    }
}
