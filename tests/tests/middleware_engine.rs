//! The middleware engine's paths: calls that wait (the state moves off the fast path),
//! user middleware mixed with built-ins, chains deeper than the engine enters itself, and
//! calls cancelled in the middle. On tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::Error;
use fluxio::prelude::*;
use fluxio_tests::Tag;
use tokio::time::Instant;

fluxio::keys! {
    pub n: u64;
    pub out: u64;
}

/// What the stage does on its next calls, and how often it ran.
#[derive(Default)]
struct Script {
    calls: AtomicU32,
    /// Per call (from the first): how long to wait, and whether to fail then. Calls past
    /// the end succeed at once.
    steps: Mutex<Vec<(u64, bool)>>,
}

impl Script {
    fn new(steps: &[(u64, bool)]) -> Arc<Self> {
        Arc::new(Script {
            calls: AtomicU32::new(0),
            steps: Mutex::new(steps.to_vec()),
        })
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
    fn set(&self, steps: &[(u64, bool)]) {
        *self.steps.lock().unwrap() = steps.to_vec();
        self.calls.store(0, Ordering::SeqCst);
    }
}

#[stage(reads = [n], writes = [out])]
async fn scripted(n: &u64, script: Res<Arc<Script>>) -> Result<u64, StageError> {
    let i = script.calls.fetch_add(1, Ordering::SeqCst) as usize;
    let step = script.steps.lock().unwrap().get(i).copied();
    if let Some((wait_ms, fail)) = step {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        if fail {
            return Err(StageError::msg(format!("call {} failed", i + 1)));
        }
    }
    Ok(n * 10)
}

#[tokio::test(start_paused = true)]
async fn user_middleware_inside_a_retry_sees_every_attempt_in_order() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let script = Script::new(&[(5, true), (5, true)]);
    let pipe = pipeline! { scripted }
        .with_resource(script.clone())
        .with_middleware(Tag::new("outer", &log))
        .with_middleware(Retry::constant(3, Duration::from_millis(10)))
        .with_middleware(Tag::new("inner", &log));
    let res = pipe.invoke(input! { n: 2 }).await.unwrap();
    assert_eq!(res[out], 20);
    assert_eq!(script.calls(), 3);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer before scripted (attempt 1)",
            "inner before scripted (attempt 1)",
            "inner after scripted: false",
            "inner before scripted (attempt 2)",
            "inner after scripted: false",
            "inner before scripted (attempt 3)",
            "inner after scripted: true",
            "outer after scripted: true",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_waits_is_retried_then_cached() {
    let script = Script::new(&[(20, true), (20, false)]);
    let pipe = pipeline! { scripted }
        .with_resource(script.clone())
        .with_middleware(CircuitBreaker::new(5))
        .with_middleware(Retry::constant(3, Duration::from_millis(100)))
        .with_middleware(Cache::ttl(Duration::from_secs(60)));
    let started = Instant::now();
    assert_eq!(pipe.invoke(input! { n: 3 }).await.unwrap()[out], 30);
    // Two calls of 20 ms and one backoff of 100 ms, on the paused clock.
    assert_eq!(started.elapsed(), Duration::from_millis(140));
    assert_eq!(script.calls(), 2);
    // The same input again: served by the cache, inside the retry.
    assert_eq!(pipe.invoke(input! { n: 3 }).await.unwrap()[out], 30);
    assert_eq!(script.calls(), 2);
    // Another input runs the stage.
    assert_eq!(pipe.invoke(input! { n: 4 }).await.unwrap()[out], 40);
    assert_eq!(script.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_inside_a_retry_limits_each_attempt() {
    // The first attempt hangs past the timeout, the second is quick.
    let script = Script::new(&[(10_000, false), (10, false)]);
    let pipe = pipeline! { scripted }
        .with_resource(script.clone())
        .with_middleware(Retry::constant(3, Duration::from_millis(5)))
        .with_middleware(Timeout::new(Duration::from_millis(50)));
    let started = Instant::now();
    assert_eq!(pipe.invoke(input! { n: 1 }).await.unwrap()[out], 10);
    assert_eq!(script.calls(), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(50 + 5 + 10));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_outside_a_retry_limits_all_attempts_together() {
    // Every attempt takes 30 ms and fails: the third would end at 30+5+30+5+30 = 100 ms.
    let script = Script::new(&[(30, true), (30, true), (30, true)]);
    let pipe = pipeline! { scripted }
        .with_resource(script.clone())
        .with_middleware(Timeout::new(Duration::from_millis(80)))
        .with_middleware(Retry::constant(3, Duration::from_millis(5)));
    let started = Instant::now();
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    match err {
        Error::Timeout { stage, after, .. } => {
            assert_eq!((stage, after), ("scripted", Duration::from_millis(80)))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_millis(80));
    assert_eq!(
        script.calls(),
        3,
        "the third attempt was running when time ran out"
    );
}

#[tokio::test(start_paused = true)]
async fn chains_deeper_than_the_engine_enters_run_every_middleware() {
    // Nine timeouts first: the retry and the cache behind them are past the depth the
    // engine enters itself, and run as boxed futures.
    let script = Script::new(&[(1, true)]);
    let mut pipe = pipeline! { scripted }.with_resource(script.clone());
    for _ in 0..9 {
        pipe = pipe.with_middleware(Timeout::new(Duration::from_secs(60)));
    }
    let cache = Cache::ttl(Duration::from_secs(60));
    let pipe = pipe
        .with_middleware(Retry::constant(2, Duration::from_millis(1)))
        .with_middleware(cache.clone());
    assert_eq!(pipe.invoke(input! { n: 5 }).await.unwrap()[out], 50);
    assert_eq!(script.calls(), 2, "the retry behind nine timeouts ran");
    assert_eq!(cache.len(), 1);
    assert_eq!(pipe.invoke(input! { n: 5 }).await.unwrap()[out], 50);
    assert_eq!(script.calls(), 2, "the cache behind nine timeouts answered");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_half_open_trial_frees_the_circuit_after_another_reset_timeout() {
    let script = Script::new(&[(0, true)]);
    let pipe = pipeline! { scripted }
        .with_resource(script.clone())
        .with_middleware(Timeout::new(Duration::from_millis(50)))
        .with_middleware(CircuitBreaker::new(1).reset_after(Duration::from_secs(1)));
    // One failure opens the circuit.
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(err.to_string().contains("call 1 failed"), "{err}");
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");
    // After the reset timeout the trial call hangs and the timeout outside cancels it: it
    // never reports to the breaker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    script.set(&[(10_000, false)]);
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(err, Error::CircuitOpen { .. }),
        "the trial counts as in flight for a reset timeout: {err:?}"
    );
    // Then another trial is let through, and its success closes the circuit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    script.set(&[]);
    assert_eq!(pipe.invoke(input! { n: 1 }).await.unwrap()[out], 10);
    assert_eq!(pipe.invoke(input! { n: 2 }).await.unwrap()[out], 20);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_call_waits_inside_the_outer_middleware() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let script = Script::new(&[]);
    let pipe = pipeline! { scripted }
        .with_resource(script.clone())
        .with_middleware(RateLimit::per_second(10.0).burst(1))
        .with_middleware(Tag::new("inner", &log));
    let started = Instant::now();
    for i in 0..3 {
        pipe.invoke(input! { n: i }).await.unwrap();
    }
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(script.calls(), 3);
    assert_eq!(
        log.lock().unwrap().len(),
        6,
        "every call went through the user's middleware"
    );
}

/// Waits once: a task spawned on its first poll wakes it. Counts how often it is polled.
struct WaitOnce<'a> {
    polls: &'a AtomicU32,
    woken: Arc<std::sync::atomic::AtomicBool>,
}

impl std::future::Future for WaitOnce<'_> {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.polls.fetch_add(1, Ordering::SeqCst) == 0 {
            let (woken, waker) = (self.woken.clone(), cx.waker().clone());
            tokio::spawn(async move {
                woken.store(true, Ordering::SeqCst);
                waker.wake();
            });
        }
        if self.woken.load(Ordering::SeqCst) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

#[stage(reads = [n], writes = [out])]
async fn waits_once(n: &u64, polls: Res<AtomicU32>) -> u64 {
    WaitOnce {
        polls: &polls,
        woken: Default::default(),
    }
    .await;
    *n
}

#[tokio::test]
async fn a_stage_that_waits_once_is_polled_twice_with_or_without_middleware() {
    for with_middleware in [false, true] {
        let polls = Arc::new(AtomicU32::new(0));
        let mut pipe = pipeline! { waits_once }.with_shared_resource(polls.clone());
        if with_middleware {
            pipe = pipe
                .with_middleware(CircuitBreaker::new(5))
                .with_middleware(Retry::exponential(3))
                .with_middleware(Timeout::new(Duration::from_secs(5)));
        }
        assert_eq!(pipe.invoke(input! { n: 3 }).await.unwrap()[out], 3);
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "once to start, once after its wake-up (middleware: {with_middleware})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_outer_cache_stores_the_result_after_an_inner_cache_saw_a_failure() {
    // Cache, Retry, Cache: the first attempt fails inside the inner cache, which must let
    // go of its key so that the outer cache still finds its own on the way out.
    let script = Script::new(&[(0, true)]);
    let (outer, inner) = (
        Cache::ttl(Duration::from_secs(60)),
        Cache::ttl(Duration::from_secs(60)),
    );
    let pipe = pipeline! { scripted }
        .with_resource(script.clone())
        .with_middleware(outer.clone())
        .with_middleware(Retry::constant(2, Duration::from_millis(1)))
        .with_middleware(inner.clone());
    assert_eq!(pipe.invoke(input! { n: 3 }).await.unwrap()[out], 30);
    assert_eq!(script.calls(), 2);
    assert_eq!(inner.len(), 1, "the inner cache stored the second attempt");
    assert_eq!(outer.len(), 1, "and the outer one the call's result");
    assert_eq!(pipe.invoke(input! { n: 3 }).await.unwrap()[out], 30);
    assert_eq!(outer.stats().hits, 1, "the next call is answered outside");
    assert_eq!(script.calls(), 2);
}
