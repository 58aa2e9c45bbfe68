//! Runs the 10-stage chain in a loop, for profilers (`perf record`, `valgrind --tool=callgrind`).
//!
//! `cargo run --release --example profile_chain -- [fluxio|baseline|middleware|handtrio|cache|hit|cb|size] [iterations]`
//! (`middleware`: the chain with CircuitBreaker + Retry + Cache, every input different;
//! `hit`: the chain with a Cache, the same input every time;
//! `handtrio`: the hand-written chain through the same trio written by hand).

use fluxio::prelude::input;
use fluxio_benches::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "fluxio".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipe = if which == "middleware" {
        trio_pipeline()
    } else if which == "cache" || which == "hit" {
        chain_pipeline().with_middleware(bench_cache())
    } else if which == "cb" {
        chain_pipeline().with_middleware(fluxio::prelude::CircuitBreaker::new(5))
    } else {
        chain_pipeline()
    };
    if which == "size" {
        // The run's future lives on the heap once the invoke is polled; its size is what
        // the allocator sees per run.
        let fut = pipe.invoke(input! { c0: 1 });
        println!(
            "invoke, before its first poll: {} bytes",
            std::mem::size_of_val(&fut)
        );
        let sched_fut = chain_baseline(input! { c0: 1 });
        println!(
            "baseline future: {} bytes",
            std::mem::size_of_val(&sched_fut)
        );
        let stage_fut = fluxio::Stage::call(
            &s1,
            &input! { c0: 1 },
            &fluxio::__private::StageEnv::default(),
        );
        println!(
            "one stage future: {} bytes",
            std::mem::size_of_val(&stage_fut)
        );
        return;
    }
    let hand = HandTrio::default();
    rt.block_on(async {
        for i in 0..n as u64 {
            let out = if which == "baseline" {
                chain_baseline(input! { c0: i }).await
            } else if which == "handtrio" {
                chain_trio_baseline(input! { c0: i }, &hand).await.unwrap()
            } else {
                // `hit`: the same input every time, so every stage after the first call
                // is answered from the cache.
                let c = if which == "hit" { 1 } else { i };
                pipe.invoke(input! { c0: c }).await.unwrap()
            };
            std::hint::black_box(out);
        }
    });
}
