//! Criterion benches of the runtime's overhead against hand-written baselines.
//!
//! `cargo bench -p fluxio-benches`. For the side-by-side ratios, run the comparison
//! program: `cargo run --release -p fluxio-benches --example overhead`.

#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::future::IntoFuture;

use criterion::{Criterion, criterion_group, criterion_main};
use fluxio::prelude::input;
use fluxio_benches::*;

fn chain(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipe = chain_pipeline();
    let mut g = c.benchmark_group("chain10");
    g.bench_function("fluxio", |b| {
        b.to_async(&rt)
            .iter(|| pipe.invoke(input! { c0: 1 }).into_future())
    });
    g.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| chain_baseline(input! { c0: 1 }))
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipe = fanout_pipeline();
    let mut g = c.benchmark_group("fanout8");
    g.bench_function("fluxio", |b| {
        b.to_async(&rt)
            .iter(|| pipe.invoke(input! { f_in: 1 }).into_future())
    });
    g.bench_function("baseline", |b| {
        b.to_async(&rt).iter(|| fanout_baseline(input! { f_in: 1 }))
    });
    g.finish();
}

/// The chain through Retry + Cache (always a miss) + CircuitBreaker.
fn middleware(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipe = trio_pipeline();
    let mut input = 0u64;
    let mut g = c.benchmark_group("chain10_middleware");
    g.bench_function("retry_cache_miss_breaker", |b| {
        b.to_async(&rt).iter(|| {
            input += 1;
            pipe.invoke(input! { c0: input }).into_future()
        })
    });
    g.finish();
}

criterion_group!(benches, chain, fanout, middleware);
criterion_main!(benches);
