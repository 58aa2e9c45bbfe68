//! Compares fluxio's runtime with hand-written tokio code doing the same context updates,
//! measured side by side in one process, and prints medians and ratios.
//!
//! Run it with `cargo run --release -p fluxio-benches --example overhead` (add `-- --quick` for a short run).
//! The machine is noisy: samples of both sides are interleaved and the medians compared.

use std::future::Future;
use std::time::Instant;

/// Keeps the compiler from optimizing a result away.
fn sink<T>(v: T) {
    std::hint::black_box(v);
}
use fluxio::prelude::{CircuitBreaker, Duration, Pipeline, Retry, Timeout, input};
use fluxio_benches::*;

/// Median nanoseconds per call of `f` over `samples` samples of `iters` calls each, for two
/// workloads measured alternately.
fn compare<A, FA, OA, B, FB, OB>(
    rt: &tokio::runtime::Runtime,
    samples: usize,
    iters: usize,
    mut a: A,
    mut b: B,
) -> (f64, f64)
where
    A: FnMut() -> FA,
    FA: Future<Output = OA>,
    B: FnMut() -> FB,
    FB: Future<Output = OB>,
{
    let mut ta = Vec::with_capacity(samples);
    let mut tb = Vec::with_capacity(samples);
    // Warm up both.
    rt.block_on(async {
        for _ in 0..iters {
            sink(a().await);
            sink(b().await);
        }
    });
    for _ in 0..samples {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..iters {
                sink(a().await);
            }
            ta.push(t.elapsed().as_nanos() as f64 / iters as f64);
            let t = Instant::now();
            for _ in 0..iters {
                sink(b().await);
            }
            tb.push(t.elapsed().as_nanos() as f64 / iters as f64);
        });
    }
    (median(ta), median(tb))
}

fn report(name: &str, fluxio_ns: f64, base_ns: f64, target: f64) {
    let ratio = fluxio_ns / base_ns;
    println!(
        "{name:<28} fluxio {fluxio_ns:>9.0} ns   baseline {base_ns:>9.0} ns   ratio {ratio:>5.2}x   target <= {target:.1}x   {}",
        if ratio <= target { "ok" } else { "OVER" }
    );
}

/// Invokes per second with `n` chain invokes spawned at once, median over `rounds`; `pipe`
/// `None` runs the hand-written baseline. Inputs differ across all invokes (a cache misses).
fn throughput(
    rt: &tokio::runtime::Runtime,
    n: usize,
    rounds: usize,
    pipe: Option<&Pipeline>,
) -> f64 {
    let mut rates = Vec::new();
    for round in 0..rounds as u64 {
        let t = Instant::now();
        rt.block_on(async {
            let mut handles = Vec::with_capacity(n);
            for i in 0..n as u64 {
                let pipe = pipe.cloned();
                let input = round * n as u64 + i;
                handles.push(tokio::spawn(async move {
                    match pipe {
                        Some(pipe) => pipe.invoke(input! { c0: input }).await.unwrap(),
                        None => chain_baseline(input! { c0: input }).await,
                    }
                }));
            }
            for h in handles {
                std::hint::black_box(h.await.unwrap());
            }
        });
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    median(rates)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (samples, iters) = if quick { (11, 2_000) } else { (41, 10_000) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let chain = chain_pipeline();
    let (f, b) = compare(
        &rt,
        samples,
        iters,
        || chain.invoke(input! { c0: 1 }).into_future(),
        || chain_baseline(input! { c0: 1 }),
    );
    assert_eq!(
        rt.block_on(chain.invoke(input! { c0: 1 }).into_future())
            .unwrap()[c10],
        11
    );
    report("chain of 10 stages", f, b, 1.5);
    println!(
        "{:<28} {:.0} ns per stage over the baseline",
        "",
        (f - b) / 10.0
    );

    let fan = fanout_pipeline();
    let (f, b) = compare(
        &rt,
        samples,
        iters,
        || fan.invoke(input! { f_in: 1 }).into_future(),
        || fanout_baseline(input! { f_in: 1 }),
    );
    assert_eq!(
        rt.block_on(fan.invoke(input! { f_in: 1 }).into_future())
            .unwrap()[f_total],
        24
    );
    report("fan-out 8 + join", f, b, 2.0);

    // Middleware against the bare runtime, per stage: each built-in alone, then the trio the
    // target is about (Retry + Cache + CircuitBreaker). Every input differs, so the cache
    // always misses: it encodes the reads, looks them up, runs the stage and stores the
    // result (evicting the oldest, as the cache is full after the warm-up).
    let variants: Vec<(&str, Pipeline, f64)> = vec![
        (
            "Retry",
            chain_pipeline().with_middleware(Retry::exponential(3)),
            0.0,
        ),
        (
            "CircuitBreaker",
            chain_pipeline().with_middleware(CircuitBreaker::new(5)),
            0.0,
        ),
        (
            "Timeout",
            chain_pipeline().with_middleware(Timeout::new(Duration::from_secs(60))),
            0.0,
        ),
        (
            "Cache (miss)",
            chain_pipeline().with_middleware(bench_cache()),
            0.0,
        ),
        (
            "Retry + Cache (miss) + CircuitBreaker",
            trio_pipeline(),
            1.5,
        ),
    ];
    let bare = chain_pipeline();
    // A cache hit, for reference: the same input every time, so no stage runs after the
    // warm-up (each stage's key is found).
    let hit = chain_pipeline().with_middleware(bench_cache());
    let (w, b) = compare(
        &rt,
        samples,
        iters,
        || hit.invoke(input! { c0: 7 }).into_future(),
        || bare.invoke(input! { c0: 1 }).into_future(),
    );
    println!(
        "{:<40} {:>5.0} ns per stage, bare runtime {:>4.0} ns: {:.2}x",
        "middleware Cache (hit)",
        w / 10.0,
        b / 10.0,
        w / b
    );
    let counter = std::cell::Cell::new(0u64);
    for (name, wrapped, target) in &variants {
        let (w, b) = compare(
            &rt,
            samples,
            iters,
            || {
                counter.set(counter.get() + 1);
                wrapped.invoke(input! { c0: counter.get() }).into_future()
            },
            || bare.invoke(input! { c0: 1 }).into_future(),
        );
        let ratio = w / b;
        let verdict = if *target == 0.0 {
            String::new()
        } else if ratio <= *target {
            format!("target <= {target:.1}x   ok")
        } else {
            format!("target <= {target:.1}x   OVER")
        };
        println!(
            "{:<40} {:>5.0} ns per stage, bare runtime {:>4.0} ns: {ratio:.2}x   {verdict}",
            format!("middleware {name}"),
            w / 10.0,
            b / 10.0,
        );
    }

    // The same trio written by hand around the hand-written chain (`HandTrio`: specialised
    // to this chain's u64 reads), against that chain: what the middleware costs without
    // fluxio. Then fluxio's trio against it directly.
    let hand = HandTrio::default();
    let (h, b) = compare(
        &rt,
        samples,
        iters,
        || {
            counter.set(counter.get() + 1);
            chain_trio_baseline(input! { c0: counter.get() }, &hand)
        },
        || chain_baseline(input! { c0: 1 }),
    );
    println!(
        "{:<40} {:>5.0} ns per stage, hand-written chain {:>4.0} ns: {:.2}x",
        "by hand: Retry + Cache (miss) + CB",
        h / 10.0,
        b / 10.0,
        h / b
    );
    let trio = trio_pipeline();
    let (f, h) = compare(
        &rt,
        samples,
        iters,
        || {
            counter.set(counter.get() + 1);
            trio.invoke(input! { c0: counter.get() }).into_future()
        },
        || {
            counter.set(counter.get() + 1);
            chain_trio_baseline(input! { c0: counter.get() }, &hand)
        },
    );
    println!(
        "{:<40} {:>5.0} ns per stage, by hand {:>4.0} ns: {:.2}x",
        "fluxio's trio against the trio by hand",
        f / 10.0,
        h / 10.0,
        f / h
    );

    let mt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds = if quick { 5 } else { 21 };
    let bare = chain_pipeline();
    let fx = throughput(&mt, 1_000, rounds, Some(&bare));
    let bx = throughput(&mt, 1_000, rounds, None);
    println!(
        "1,000 concurrent chain invokes: fluxio {fx:.0} invokes/s, baseline {bx:.0} invokes/s (ratio {:.2}x time)",
        bx / fx
    );
    // The same through the trio: every stage call takes the cache's lock twice, from every
    // worker thread.
    let trio = trio_pipeline();
    let mx = throughput(&mt, 1_000, rounds, Some(&trio));
    println!(
        "1,000 concurrent chain invokes through Retry + Cache (miss) + CircuitBreaker: {mx:.0} invokes/s ({:.2}x the time of the bare runtime)",
        fx / mx
    );
}

use std::future::IntoFuture;
