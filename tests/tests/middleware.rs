//! The middleware chain and the built-ins, on tokio's paused clock (no test sleeps in real
//! time: the clock advances only when every task waits).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::Error;
use fluxio::middleware::{Middleware, Next, StageCall};
use fluxio::prelude::*;
use fluxio::store::BoxFuture;
use fluxio_tests::Tag;
use tokio::time::Instant;

fluxio::keys! {
    pub n: u64;
    pub out: u64;
    pub words: String;
}

/// Counts calls, and fails the first `fail_first` of them.
#[derive(Default)]
struct Flaky {
    calls: AtomicU32,
    fail_first: AtomicU32,
}

impl Flaky {
    fn failing(n: u32) -> Arc<Self> {
        Arc::new(Flaky {
            calls: AtomicU32::new(0),
            fail_first: AtomicU32::new(n),
        })
    }
    fn call(&self) -> Result<(), StageError> {
        let i = self.calls.fetch_add(1, Ordering::SeqCst);
        if i < self.fail_first.load(Ordering::SeqCst) {
            return Err(StageError::msg(format!("transient failure {}", i + 1)));
        }
        Ok(())
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[stage(reads = [n], writes = [out])]
async fn work(n: &u64, flaky: Res<Arc<Flaky>>) -> Result<u64, StageError> {
    flaky.call()?;
    Ok(n * 2)
}

#[tokio::test(start_paused = true)]
async fn retry_calls_again_until_success_within_its_attempts() {
    let flaky = Flaky::failing(2);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(Retry::exponential(3));
    let started = Instant::now();
    let res = pipe.invoke(input! { n: 4 }).await.unwrap();
    assert_eq!(res[out], 8);
    assert_eq!(flaky.calls(), 3);
    // Two waits of at least half of 100 ms and 200 ms (jitter), on the paused clock.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_saying_how_many_attempts_ran() {
    let flaky = Flaky::failing(10);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(Retry::exponential(3));
    let err = pipe.invoke(input! { n: 4 }).await.unwrap_err();
    assert_eq!(flaky.calls(), 3);
    assert_eq!(
        err.to_string(),
        "stage `work` failed after 3 attempts: transient failure 3"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_only_retries_what_its_predicate_accepts() {
    let flaky = Flaky::failing(10);
    let retry = Retry::constant(5, Duration::from_millis(10))
        .when(|e| !e.to_string().contains("transient"));
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(retry);
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert_eq!(flaky.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_not_to_retry_after_a_retry_is_returned_as_it_is_with_its_attempt_reported() {
    let flaky = Flaky::failing(10);
    // The first failure is retried, the second is not.
    let retry =
        Retry::constant(5, Duration::from_millis(10)).when(|e| e.to_string().ends_with(" 1"));
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(retry)
        .with_callback(sink);
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert_eq!(flaky.calls(), 2);
    assert_eq!(err.to_string(), "stage `work` failed: transient failure 2");
    let failed: Vec<u32> = fluxio_tests::attempts(&events, "stage.failed")
        .into_iter()
        .map(|(_, attempt)| attempt)
        .collect();
    assert_eq!(failed, [2]);
}

#[stage(reads = [words])]
fn stream_fails(
    words: &String,
    flaky: Res<Arc<Flaky>>,
) -> impl Stream<Item = Result<String, StageError>> {
    let first = words.clone();
    let second = flaky.call().map(|()| "second".to_string());
    futures::stream::iter(vec![Ok(first), second])
}

#[tokio::test(start_paused = true)]
async fn stream_stages_are_never_retried_nor_cached() {
    let flaky = Flaky::failing(1);
    let pipe = pipeline! { stream_fails }
        .with_resource(flaky.clone())
        .with_middleware(Retry::exponential(5))
        .with_middleware(Cache::ttl(Duration::from_secs(60)));
    pipe.invoke(input! { words: "w".into() }).await.unwrap_err();
    assert_eq!(flaky.calls(), 1, "a failing stream stage is not retried");
    pipe.invoke(input! { words: "w".into() }).await.unwrap();
    pipe.invoke(input! { words: "w".into() }).await.unwrap();
    assert_eq!(flaky.calls(), 3, "stream stages are not cached");
}

#[tokio::test(start_paused = true)]
async fn cache_reuses_results_for_the_same_reads_until_the_ttl() {
    let flaky = Flaky::failing(0);
    let cache = Cache::ttl(Duration::from_secs(60));
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(cache.clone());
    assert_eq!(pipe.invoke(input! { n: 1 }).await.unwrap()[out], 2);
    assert_eq!(pipe.invoke(input! { n: 1 }).await.unwrap()[out], 2);
    assert_eq!(flaky.calls(), 1, "the second call was a hit");
    assert_eq!(pipe.invoke(input! { n: 2 }).await.unwrap()[out], 4);
    assert_eq!(flaky.calls(), 2, "other reads, other key");
    tokio::time::advance(Duration::from_secs(61)).await;
    pipe.invoke(input! { n: 1 }).await.unwrap();
    assert_eq!(flaky.calls(), 3, "expired after the TTL");
    assert_eq!(
        cache.len(),
        1,
        "expired results are dropped when a new one is stored"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.len),
        (1, 3, 1),
        "{stats:?}"
    );
}

mod json_reads {
    use super::*;

    fluxio::keys! {
        pub query: serde_json::Value;
        pub answer: u64;
    }

    #[stage(reads = [query], writes = [answer])]
    async fn lookup(query: &serde_json::Value, flaky: Res<Arc<Flaky>>) -> Result<u64, StageError> {
        flaky.call()?;
        Ok(query["id"].as_u64().unwrap_or(0))
    }

    #[tokio::test(start_paused = true)]
    async fn equal_reads_of_a_type_checkpoints_cannot_hold_are_still_one_cache_entry() {
        // `serde_json::Value` cannot be read back from a checkpoint, but it encodes: two equal
        // values (other allocations) are the same read for the cache.
        let flaky = Flaky::failing(0);
        let pipe = pipeline! { lookup }
            .with_resource(flaky.clone())
            .with_middleware(Cache::ttl(Duration::from_secs(60)));
        for _ in 0..2 {
            let out = pipe
                .invoke(input! { query: serde_json::json!({ "id": 4 }) })
                .await
                .unwrap();
            assert_eq!(out[answer], 4);
        }
        assert_eq!(flaky.calls(), 1, "the second call was a hit");
    }
}

#[tokio::test(start_paused = true)]
async fn cache_is_bounded() {
    let flaky = Flaky::failing(0);
    let cache = Cache::ttl(Duration::from_secs(60)).max_entries(3);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(cache.clone());
    for i in 0..10 {
        pipe.invoke(input! { n: i }).await.unwrap();
    }
    assert_eq!(cache.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cache_counts_every_call_it_could_not_answer_failed_ones_too() {
    // Two failures, then a success, through a `Retry` outside the cache: three calls the
    // cache had no result for, one result stored, then a hit. Behind a user's middleware
    // too (the chain then runs as boxed futures).
    for behind_a_users_middleware in [false, true] {
        let flaky = Flaky::failing(2);
        let cache = Cache::ttl(Duration::from_secs(60));
        let mut pipe = pipeline! { work }.with_resource(flaky.clone());
        if behind_a_users_middleware {
            pipe = pipe.with_middleware(fluxio_tests::SkipStage("nothing"));
        }
        let pipe = pipe
            .with_middleware(Retry::constant(3, Duration::from_millis(10)))
            .with_middleware(cache.clone());
        assert_eq!(pipe.invoke(input! { n: 5 }).await.unwrap()[out], 10);
        assert_eq!(pipe.invoke(input! { n: 5 }).await.unwrap()[out], 10);
        assert_eq!(flaky.calls(), 3);
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.len),
            (1, 3, 1),
            "behind a user's middleware: {behind_a_users_middleware}; {stats:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_opens_fails_fast_and_closes_after_a_good_trial() {
    let flaky = Flaky::failing(2);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(CircuitBreaker::new(2).reset_after(Duration::from_secs(30)));
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::CircuitOpen { stage: "work", retry_in, .. } if retry_in == Duration::from_secs(20)
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "circuit open for stage `work`: it failed too often; the breaker lets a trial call \
         through in 20s"
    );
    assert_eq!(flaky.calls(), 2, "an open circuit does not call the stage");

    tokio::time::advance(Duration::from_secs(21)).await;
    assert_eq!(
        pipe.invoke(input! { n: 1 }).await.unwrap()[out],
        2,
        "the half-open trial passes"
    );
    assert_eq!(
        pipe.invoke(input! { n: 3 }).await.unwrap()[out],
        6,
        "and the circuit is closed"
    );
    assert_eq!(flaky.calls(), 4);
}

/// An async stage with a bug: it panics on every call (after an await, so on the engine's
/// path the panic comes out of a poll of its future, not of its creation).
#[stage(reads = [n], writes = [out])]
async fn buggy(n: &u64, flaky: Res<Arc<Flaky>>) -> u64 {
    flaky.calls.fetch_add(1, Ordering::SeqCst);
    tokio::task::yield_now().await;
    panic!("bug for input {n}")
}

/// Notes how each call of the stage inside it ended.
#[derive(Clone, Default)]
struct Outcomes(Arc<Mutex<Vec<String>>>);

impl Middleware for Outcomes {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        Box::pin(async move {
            let out = next.run(call).await;
            let seen = match &out {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            self.0.lock().unwrap().push(seen);
            out
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_stage_counts_as_a_failure_for_the_breaker() {
    // Built-ins only (the engine's own path), then behind a user's middleware (the chain
    // as boxed futures): either way the panic is the call's failure.
    let outcomes = Outcomes::default();
    for user in [false, true] {
        let flaky = Flaky::failing(0);
        let mut pipe = pipeline! { buggy }.with_resource(flaky.clone());
        if user {
            pipe = pipe.with_middleware(outcomes.clone());
        }
        let pipe =
            pipe.with_middleware(CircuitBreaker::new(2).reset_after(Duration::from_secs(30)));
        for _ in 0..2 {
            let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "stage `buggy` failed: panicked: bug for input 1",
                "user middleware: {user}"
            );
        }
        let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
        assert!(
            matches!(err, Error::CircuitOpen { stage: "buggy", .. }),
            "user middleware: {user}: {err:?}"
        );
        assert_eq!(flaky.calls(), 2, "an open circuit does not call the stage");
    }
    // The user's middleware saw the panic as the call's error, not an unwind through it.
    assert_eq!(
        *outcomes.0.lock().unwrap(),
        [
            "panicked: bug for input 1",
            "panicked: bug for input 1",
            "circuit open for stage `buggy`: it failed too often; the breaker lets a trial call through in 30s"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_half_open_trial_opens_the_circuit_again() {
    let flaky = Flaky::failing(3);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(CircuitBreaker::new(2).reset_after(Duration::from_secs(30)));
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(31)).await;
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert_eq!(flaky.calls(), 3);
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_outside_the_breaker_returns_an_open_circuit_at_once() {
    let flaky = Flaky::failing(10);
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(Retry::constant(5, Duration::from_secs(1)))
        .with_middleware(CircuitBreaker::new(2).reset_after(Duration::from_secs(60)))
        .with_callback(sink);
    let started = Instant::now();
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    // Two failing attempts open the circuit; the third is refused and not retried.
    assert_eq!(flaky.calls(), 2);
    assert!(
        matches!(err, Error::CircuitOpen { stage: "work", .. }),
        "{err:?}"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "two backoffs, no more"
    );
    assert_eq!(fluxio_tests::attempts(&events, "stage.failed").len(), 1);

    // A predicate that accepts it retries an open circuit too, until it gives up.
    let flaky = Flaky::failing(10);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(Retry::constant(4, Duration::from_secs(1)).when(|_| true))
        .with_middleware(CircuitBreaker::new(1).reset_after(Duration::from_secs(60)));
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert_eq!(flaky.calls(), 1);
    assert!(
        err.to_string()
            == "stage `work` failed after 4 attempts: its circuit is open: it failed too \
                often; the breaker lets a trial call through in 57s",
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn callbacks_hear_the_attempt_of_a_retry_inside_a_users_middleware() {
    let log = Arc::new(Mutex::new(Vec::new()));
    for fail_first in [2, 10] {
        let flaky = Flaky::failing(fail_first);
        let (sink, events) = fluxio_tests::event_log();
        let pipe = pipeline! { work }
            .with_resource(flaky.clone())
            .with_middleware(Tag::new("outer", &log))
            .with_middleware(Retry::constant(3, Duration::from_millis(5)))
            .with_callback(sink);
        let outcome = pipe.invoke(input! { n: 1 }).await;
        assert_eq!(outcome.is_ok(), fail_first == 2);
        assert_eq!(flaky.calls(), 3);
        let ended = if fail_first == 2 {
            "stage.completed"
        } else {
            "stage.failed"
        };
        assert_eq!(
            fluxio_tests::attempts(&events, ended),
            [("work", 3)],
            "{ended} after three attempts"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn durations_past_the_clocks_range_are_no_panic() {
    // A TTL of "forever" caches.
    let flaky = Flaky::failing(0);
    let cache = Cache::ttl(Duration::MAX);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(cache.clone());
    assert_eq!(pipe.invoke(input! { n: 2 }).await.unwrap()[out], 4);
    assert_eq!(pipe.invoke(input! { n: 2 }).await.unwrap()[out], 4);
    assert_eq!((flaky.calls(), cache.len()), (1, 1));

    // A circuit open "forever" refuses calls.
    let flaky = Flaky::failing(10);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(CircuitBreaker::new(1).reset_after(Duration::MAX));
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(err, Error::CircuitOpen { retry_in, .. } if retry_in > Duration::from_secs(86_400 * 365)),
        "{err:?}"
    );
    assert_eq!(flaky.calls(), 1);

    // A rate so low that its wait overflows a Duration waits, without failing the stage.
    let flaky = Flaky::failing(0);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(RateLimit::per_second(1e-300).burst(1));
    pipe.invoke(input! { n: 1 }).await.unwrap();
    let waited = tokio::time::timeout(
        Duration::from_secs(86_400),
        pipe.invoke(input! { n: 1 }).into_future(),
    )
    .await;
    assert!(waited.is_err(), "still waiting after a day: {waited:?}");
    assert_eq!(flaky.calls(), 1);
}

#[stage(reads = [n], writes = [out], timeout = "2s")]
async fn budgeted(n: &u64, flaky: Res<Arc<Flaky>>) -> Result<u64, StageError> {
    // `n` is how long each attempt takes, in ms.
    tokio::time::sleep(Duration::from_millis(*n)).await;
    flaky.call()?;
    Ok(*n)
}

#[tokio::test(start_paused = true)]
async fn a_stages_own_timeout_during_retries_reports_the_attempts_made() {
    // (time per attempt, backoff, attempts that failed and attempts made by 2s): the
    // timeout ends the third backoff, or the second attempt.
    for (work_ms, backoff_ms, failed, made) in [(0, 700, 3, 3), (1_000, 100, 1, 2)] {
        let flaky = Flaky::failing(100);
        let (sink, events) = fluxio_tests::event_log();
        let pipe = pipeline! { budgeted }
            .with_resource(flaky.clone())
            .with_middleware(Retry::constant(10, Duration::from_millis(backoff_ms)))
            .with_callback(sink);
        let err = pipe.invoke(input! { n: work_ms }).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert_eq!(flaky.calls(), failed);
        assert_eq!(
            fluxio_tests::attempts(&events, "stage.failed"),
            [("budgeted", made)],
            "{work_ms} ms per attempt, {backoff_ms} ms between"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_attempts_made_are_reported_behind_a_users_middleware_or_a_rate_limit() {
    // `budgeted` takes `n` ms per attempt and fails here; its own timeout (2s) ends the
    // retries. Behind a user's middleware (10 ms per attempt, 100 ms between): every
    // attempt made is counted...
    let flaky = Flaky::failing(1_000);
    let (sink, events) = fluxio_tests::event_log();
    let log = Arc::new(Mutex::new(Vec::new()));
    let pipe = pipeline! { budgeted }
        .with_resource(flaky.clone())
        .with_middleware(Tag::new("outer", &log))
        .with_middleware(Retry::constant(100, Duration::from_millis(100)))
        .with_callback(sink);
    let err = pipe.invoke(input! { n: 10 }).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let made = flaky.calls();
    assert!(made > 10, "{made}");
    assert_eq!(
        fluxio_tests::attempts(&events, "stage.failed"),
        [("budgeted", made)]
    );

    // ...and waiting for a rate-limit token before its second attempt: one attempt made.
    let flaky = Flaky::failing(1_000);
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { budgeted }
        .with_resource(flaky.clone())
        .with_middleware(Retry::constant(5, Duration::from_millis(10)))
        .with_middleware(RateLimit::per_second(0.1).burst(1))
        .with_callback(sink);
    pipe.invoke(input! { n: 0 }).await.unwrap_err();
    assert_eq!(flaky.calls(), 1);
    assert_eq!(
        fluxio_tests::attempts(&events, "stage.failed"),
        [("budgeted", 1)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_can_refuse_instead_of_waiting() {
    let flaky = Flaky::failing(0);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(RateLimit::per_second(10.0).burst(1).refuse_when_limited());
    let started = Instant::now();
    assert_eq!(pipe.invoke(input! { n: 1 }).await.unwrap()[out], 2);
    let err = pipe
        .invoke(input! { n: 2 })
        .run_id("busy-1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { stage: "work", retry_in, .. } if retry_in == Duration::from_millis(100)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "run `busy-1`: stage `work` was not called: its rate limit has no token left; the next \
         comes in 100ms"
    );
    assert_eq!(flaky.calls(), 1, "a refused call does not call the stage");
    assert_eq!(started.elapsed(), Duration::ZERO, "and does not wait");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(pipe.invoke(input! { n: 3 }).await.unwrap()[out], 6);

    // The same behind a user's middleware (boxed futures).
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(fluxio_tests::SkipStage("nothing"))
        .with_middleware(RateLimit::per_second(10.0).burst(1).refuse_when_limited());
    pipe.invoke(input! { n: 1 }).await.unwrap();
    let err = pipe.invoke(input! { n: 2 }).await.unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert_eq!(flaky.calls(), 3);

    // A refusal is not the stage's failure: a Retry outside returns it at once, and a
    // breaker outside does not count it.
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(CircuitBreaker::new(1).reset_after(Duration::from_secs(60)))
        .with_middleware(Retry::exponential(3))
        .with_middleware(RateLimit::per_second(0.1).burst(1).refuse_when_limited());
    pipe.invoke(input! { n: 1 }).await.unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        pipe.invoke(input! { n: 4 }).await.unwrap()[out],
        8,
        "the circuit stayed closed"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_waits_for_tokens() {
    let flaky = Flaky::failing(0);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(RateLimit::per_second(10.0).burst(1));
    let started = Instant::now();
    for i in 0..4 {
        pipe.invoke(input! { n: i }).await.unwrap();
    }
    // One token at once, then one every 100 ms of the (paused) clock.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(400),
        "{elapsed:?}"
    );
    assert_eq!(flaky.calls(), 4);
}

#[stage(reads = [n], writes = [out])]
async fn sleepy(n: &u64) -> u64 {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    *n
}

#[tokio::test(start_paused = true)]
async fn a_call_timed_out_inside_a_cache_is_a_miss_and_stores_nothing() {
    let cache = Cache::ttl(Duration::from_secs(60));
    let pipe = pipeline! { sleepy }
        .with_middleware(Timeout::new(Duration::from_millis(50)))
        .with_middleware(cache.clone());
    for _ in 0..2 {
        let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.len),
        (0, 2, 0),
        "{stats:?}"
    );
}

#[stage(reads = [n], writes = [out], timeout = "50ms")]
async fn sleepy_with_a_limit(n: &u64) -> u64 {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    *n
}

#[tokio::test(start_paused = true)]
async fn every_call_a_cache_could_not_answer_is_a_miss_however_it_ends() {
    let misses = |cache: &Cache| {
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.len), (0, 0), "{stats:?}");
        stats.misses
    };
    // Cut off by the stage's own timeout.
    let cache = Cache::ttl(Duration::from_secs(60));
    let pipe = pipeline! { sleepy_with_a_limit }.with_middleware(cache.clone());
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert_eq!(misses(&cache), 1, "the stage's own timeout");
    // By a `Timeout` outside the cache, the chain behind a user's middleware (boxed
    // futures), with the user's middleware outside the `Timeout` or inside it.
    for users_middleware_outside in [true, false] {
        let cache = Cache::ttl(Duration::from_secs(60));
        let mut pipe = pipeline! { sleepy };
        if users_middleware_outside {
            pipe = pipe.with_middleware(fluxio_tests::SkipStage("nothing"));
        }
        pipe = pipe.with_middleware(Timeout::new(Duration::from_millis(50)));
        if !users_middleware_outside {
            pipe = pipe.with_middleware(fluxio_tests::SkipStage("nothing"));
        }
        let pipe = pipe.with_middleware(cache.clone());
        pipe.invoke(input! { n: 1 }).await.unwrap_err();
        assert_eq!(
            misses(&cache),
            1,
            "a `Timeout`, the user's middleware outside it: {users_middleware_outside}"
        );
    }
    // The run cancelled (dropped) while the stage waits, on the engine's path and behind
    // a user's middleware.
    for behind_a_users_middleware in [false, true] {
        let cache = Cache::ttl(Duration::from_secs(60));
        let mut pipe = pipeline! { sleepy };
        if behind_a_users_middleware {
            pipe = pipe.with_middleware(fluxio_tests::SkipStage("nothing"));
        }
        let pipe = pipe.with_middleware(cache.clone());
        let run = tokio::time::timeout(Duration::from_secs(1), pipe.invoke(input! { n: 1 }));
        run.await.unwrap_err();
        assert_eq!(
            misses(&cache),
            1,
            "cancelled, behind a user's middleware: {behind_a_users_middleware}"
        );
    }
    // Skipped by a middleware inside the cache.
    let cache = Cache::ttl(Duration::from_secs(60));
    let pipe = pipeline! { sleepy }
        .with_middleware(cache.clone())
        .with_middleware(fluxio_tests::SkipStage("sleepy"));
    for _ in 0..2 {
        pipe.invoke(input! { n: 1 }).await.unwrap();
    }
    assert_eq!(misses(&cache), 2, "skipped: not stored, a miss each time");
}

#[tokio::test(start_paused = true)]
async fn timeout_middleware_limits_stages_without_their_own() {
    let pipe = pipeline! { sleepy }.with_middleware(Timeout::new(Duration::from_millis(50)));
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    match err {
        Error::Timeout {
            stage,
            run_id,
            after,
        } => {
            assert_eq!((stage, after), ("sleepy", Duration::from_millis(50)));
            assert_eq!(run_id, None, "a run without an id");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn the_first_middleware_added_is_the_outermost() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let pipe = pipeline! { work }
        .with_resource(Flaky::failing(0))
        .with_middleware(Tag::new("outer", &log))
        .with_middleware(Tag::new("inner", &log));
    pipe.invoke(input! { n: 1 }).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer before work (attempt 1)",
            "inner before work (attempt 1)",
            "inner after work: true",
            "outer after work: true"
        ]
    );
}

/// Refuses every call with an explicit error, without calling the stage.
struct Deny;

impl Middleware for Deny {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        Box::pin(std::future::ready(Err(StageError::msg(format!(
            "{} is not allowed here",
            call.meta.name
        )))))
    }
}

#[tokio::test]
async fn middleware_can_short_circuit_with_an_explicit_error() {
    let flaky = Flaky::failing(0);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(Deny);
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `work` failed: work is not allowed here"
    );
    assert_eq!(flaky.calls(), 0);
}

/// A guard: refuses calls whose `n` is odd (a tenant it denies), counting how often it
/// is asked.
#[derive(Default)]
struct OddGuard {
    asked: AtomicU32,
    /// Refuse with a plain error instead of a refusal.
    plain: bool,
}

impl Middleware for OddGuard {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if call.ctx.get(n).is_some_and(|v| v % 2 == 1) {
            let denied = StageError::msg(format!("n is odd: `{}` denied", call.meta.name));
            let err = if self.plain {
                denied
            } else {
                StageError::refusal(denied)
            };
            return Box::pin(std::future::ready(Err(err)));
        }
        next.run(call)
    }
}

/// A middleware's refusal (`StageError::refusal`) is the stage's error for the run, but,
/// like an open circuit, says nothing about the stage's health: `Retry` does not repeat it
/// and a `CircuitBreaker` does not count it — one denied tenant does not open the circuit
/// for the others. A plain error from the same guard does both (the contrast).
#[tokio::test(start_paused = true)]
async fn a_middleware_refusal_is_neither_retried_nor_counted_by_a_breaker() {
    for plain in [false, true] {
        let flaky = Flaky::failing(0);
        let guard = Arc::new(OddGuard {
            plain,
            ..Default::default()
        });
        let pipe = pipeline! { work }
            .with_resource(flaky.clone())
            .with_middleware(CircuitBreaker::new(2))
            .with_middleware(Retry::constant(3, std::time::Duration::from_millis(5)))
            .with_middleware(guard.clone());
        for _ in 0..2 {
            let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
            assert!(matches!(err, Error::Stage { stage: "work", .. }), "{err:?}");
            assert!(
                err.to_string().ends_with("n is odd: `work` denied"),
                "{err}"
            );
        }
        let asked = guard.asked.load(Ordering::SeqCst);
        let allowed = pipe.invoke(input! { n: 2 }).await;
        if plain {
            assert_eq!(asked, 6, "a plain error is retried: 3 attempts per run");
            assert!(
                matches!(allowed, Err(Error::CircuitOpen { stage: "work", .. })),
                "and counted: the circuit opened for every caller: {allowed:?}"
            );
        } else {
            assert_eq!(asked, 2, "a refusal is not retried");
            assert_eq!(
                allowed.unwrap()[out],
                4,
                "nor counted: the circuit stayed closed"
            );
            assert_eq!(flaky.calls(), 1);
        }
    }
}

/// Wraps every error of the calls inside it as a refusal.
struct RefuseErrors;

impl Middleware for RefuseErrors {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        Box::pin(async move { next.run(call).await.map_err(StageError::refusal) })
    }
}

/// A refusal made of an error that says the stage could not be called (its read missing,
/// its writer skipped) keeps that error: the run fails with `MissingKey`, its reason
/// naming the skip.
#[tokio::test]
async fn a_refusal_keeps_a_missing_read_as_it_is() {
    let flaky = Flaky::failing(0);
    let pipe = pipeline! { work, after_work }
        .with_resource(flaky.clone())
        .with_middleware(SkipStage("work"))
        .with_middleware(RefuseErrors);
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    match &err {
        Error::MissingKey {
            stage: "after_work",
            key: "out",
            reason,
            ..
        } => assert!(reason.contains("skipped by a middleware"), "{reason}"),
        other => panic!("expected MissingKey, got {other:?}"),
    }
}

/// Skips one stage by name, with a reason.
struct SkipStage(&'static str);

impl Middleware for SkipStage {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        if call.meta.name == self.0 {
            return Box::pin(std::future::ready(Ok(fluxio::StageOutput::Skip(
                "skipped during maintenance".into(),
            ))));
        }
        next.run(call)
    }
}

#[stage(reads = [out], writes = [words])]
async fn after_work(out: &u64) -> String {
    out.to_string()
}

#[tokio::test]
async fn middleware_can_skip_a_stage_with_a_reason() {
    let skipped = Arc::new(Mutex::new(Vec::new()));
    #[derive(Clone)]
    struct Skips(Arc<Mutex<Vec<String>>>);
    impl fluxio::Callback for Skips {
        fn on_stage_skip(&self, e: &fluxio::StageEvent<'_>, reason: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}: {reason}", e.stage));
        }
    }
    let flaky = Flaky::failing(0);
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(SkipStage("work"))
        .with_callback(Skips(skipped.clone()));
    let res = pipe.invoke(input! { n: 1 }).await.unwrap();
    assert!(!res.contains(out), "a skipped stage writes nothing");
    assert_eq!(flaky.calls(), 0);
    assert_eq!(
        *skipped.lock().unwrap(),
        ["work: skipped during maintenance"]
    );

    // A stage reading what the skipped one would have written fails, naming the key.
    let pipe = pipeline! { work, after_work }
        .with_resource(flaky.clone())
        .with_middleware(SkipStage("work"));
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::MissingKey {
                stage: "after_work",
                key: "out",
                reason,
                ..
            } if reason == "`work` was skipped by a middleware"
        ),
        "{err:?}"
    );
}

#[stage(reads = [n, words], writes = [out])]
async fn pair(n: &u64, words: &String, flaky: Res<Arc<Flaky>>) -> Result<u64, StageError> {
    flaky.call()?;
    Ok(n + words.len() as u64)
}

#[tokio::test(start_paused = true)]
async fn cache_keys_use_every_read_and_the_same_context_hits() {
    let flaky = Flaky::failing(0);
    let cache = Cache::ttl(Duration::from_secs(60));
    let pipe = pipeline! { pair }
        .with_resource(flaky.clone())
        .with_middleware(cache.clone());
    let input = input! { n: 1, words: "ab".into() };
    assert_eq!(pipe.invoke(input.clone()).await.unwrap()[out], 3);
    // The very same values (shared with the first run's context) hit.
    assert_eq!(pipe.invoke(input).await.unwrap()[out], 3);
    assert_eq!(flaky.calls(), 1);
    // Equal values, built anew, hit too.
    pipe.invoke(input! { n: 1, words: "ab".into() })
        .await
        .unwrap();
    assert_eq!(flaky.calls(), 1);
    // A change in either read is another key.
    pipe.invoke(input! { n: 1, words: "abc".into() })
        .await
        .unwrap();
    pipe.invoke(input! { n: 2, words: "ab".into() })
        .await
        .unwrap();
    assert_eq!(flaky.calls(), 3);
    assert_eq!(cache.len(), 3);
}

#[stage(name = "twin", reads = [n], writes = [out])]
async fn twin_number(n: &u64) -> u64 {
    n + 100
}

#[stage(name = "twin", reads = [words], writes = [out])]
async fn twin_text(words: &String) -> u64 {
    words.len() as u64 + 200
}

#[tokio::test(start_paused = true)]
async fn stages_sharing_a_name_and_a_cache_do_not_share_results() {
    // `0u64` and `""` have the same encoding (one zero byte): a cache keyed by stage name
    // and bytes alone would answer one stage with the other's result.
    let cache = Cache::ttl(Duration::from_secs(60));
    let numbers = pipeline! { twin_number }.with_middleware(cache.clone());
    let texts = pipeline! { twin_text }.with_middleware(cache.clone());
    assert_eq!(numbers.invoke(input! { n: 0 }).await.unwrap()[out], 100);
    assert_eq!(
        texts.invoke(input! { words: String::new() }).await.unwrap()[out],
        200
    );
    assert_eq!(numbers.invoke(input! { n: 0 }).await.unwrap()[out], 100);
}

mod billing {
    use super::*;

    /// Named `lookup`, like the one in `shipping`, and reading the same key.
    #[stage(reads = [n], writes = [out])]
    pub async fn lookup(n: &u64) -> u64 {
        n + 1_000
    }
}

mod shipping {
    use super::*;

    #[stage(reads = [n], writes = [out])]
    pub async fn lookup(n: &u64) -> u64 {
        n + 2_000
    }
}

#[tokio::test(start_paused = true)]
async fn stages_sharing_a_name_and_their_reads_do_not_share_results() {
    let cache = Cache::ttl(Duration::from_secs(60));
    let billing = pipeline! { billing::lookup }.with_middleware(cache.clone());
    let shipping = pipeline! { shipping::lookup }.with_middleware(cache.clone());
    assert_eq!(billing.invoke(input! { n: 1 }).await.unwrap()[out], 1_001);
    assert_eq!(shipping.invoke(input! { n: 1 }).await.unwrap()[out], 2_001);
    assert_eq!(billing.invoke(input! { n: 1 }).await.unwrap()[out], 1_001);
    assert_eq!(cache.len(), 2);
}

/// Answers for every stage with the writes it is given, without calling it.
struct Answer(fn() -> fluxio::Writes);

impl Middleware for Answer {
    fn handle<'a>(
        &'a self,
        _call: StageCall<'a>,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        let writes = (self.0)();
        Box::pin(async move { Ok(fluxio::StageOutput::Writes(writes)) })
    }
}

/// Answers every call with a route choice.
struct AnswerRoute;

impl Middleware for AnswerRoute {
    fn handle<'a>(
        &'a self,
        _call: StageCall<'a>,
        _next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        Box::pin(async { Ok(fluxio::StageOutput::Route(fluxio::Route::to("big"))) })
    }
}

#[tokio::test]
async fn a_middleware_answering_for_a_stage_is_held_to_its_writes() {
    let flaky = Flaky::failing(0);
    let run = |answer: fn() -> fluxio::Writes| {
        let pipe = pipeline! { work }
            .with_resource(flaky.clone())
            .with_middleware(Answer(answer));
        async move { pipe.invoke(input! { n: 1 }).await }
    };
    // Its own writes: fine.
    let ok = run(|| {
        let mut w = fluxio::Writes::none();
        w.push::<out>(42);
        w
    })
    .await
    .unwrap();
    assert_eq!(ok[out], 42);
    // A key the stage does not declare — here, over the run's input.
    let err = run(|| {
        let mut w = fluxio::Writes::none();
        w.push::<out>(42);
        w.push::<n>(777);
        w
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UndeclaredWrite {
                stage: "work",
                key: "n",
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing at all: a success with empty writes is refused, naming the key.
    let err = run(fluxio::Writes::none).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `work` failed: a middleware's answer for the stage does not write `out`: return \
         every key in its `writes`, or `StageOutput::Skip(reason)`"
    );
    assert_eq!(flaky.calls(), 0);
}

/// Turns a stage's failure into a success with no writes.
struct Swallow;

impl Middleware for Swallow {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        Box::pin(async move {
            match next.run(call).await {
                Err(_) => Ok(fluxio::StageOutput::Writes(fluxio::Writes::none())),
                ok => ok,
            }
        })
    }
}

#[stage(reads = [n])]
async fn pick_lane(n: &u64) -> Route {
    Route::to(if *n > 1 { "big" } else { "small" })
}

#[stage(reads = [n], writes = [out])]
async fn big(n: &u64) -> u64 {
    n * 100
}

#[stage(reads = [n], writes = [out])]
async fn small(n: &u64) -> u64 {
    *n
}

/// Writes `out` only when `n` is even: a ctx-style stage writes what it changes.
#[stage(reads = [n], writes = [out, words])]
async fn maybe_out(ctx: Ctx) -> Ctx {
    let n = ctx[n];
    if n % 2 == 0 { ctx.with(out, n) } else { ctx }
}

/// Passes every call through.
struct Observe;

impl Middleware for Observe {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        next.run(call)
    }
}

#[tokio::test]
async fn a_middleware_cannot_hide_a_failure_or_overrule_a_route() {
    // A failure turned into a success without the stage's writes.
    let flaky = Flaky::failing(1);
    let err = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(Swallow)
        .invoke(input! { n: 1 })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not write `out`"), "{err}");
    // Writes for a route stage would let every branch run.
    let err = pipeline! { pick_lane => { "big" => [big], "small" => [small] } }
        .with_middleware(Answer(fluxio::Writes::none))
        .invoke(input! { n: 2 })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("answered for a route stage with writes"),
        "{err}"
    );
    // A route choice for a stage that is not a route.
    let err = pipeline! { maybe_out }
        .with_middleware(AnswerRoute)
        .invoke(input! { n: 2 })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `maybe_out` failed: a middleware answered with a route choice for a stage that \
         is not a route: return the stage's writes (`StageOutput::Writes`), or \
         `StageOutput::Skip(reason)`"
    );
    // A ctx-style stage's own answer may write part of its `writes`.
    let pipe = pipeline! { maybe_out }.with_middleware(Observe);
    assert!(
        pipe.invoke(input! { n: 1 })
            .await
            .unwrap()
            .get(out)
            .is_none()
    );
    assert_eq!(pipe.invoke(input! { n: 2 }).await.unwrap()[out], 2);
}

/// Skips every stage while `on` is set (a maintenance switch).
struct Maintenance(Arc<std::sync::atomic::AtomicBool>);

impl Middleware for Maintenance {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        if self.0.load(Ordering::SeqCst) {
            return Box::pin(async { Ok(fluxio::StageOutput::Skip("maintenance".into())) });
        }
        next.run(call)
    }
}

#[tokio::test]
async fn a_skip_is_not_cached() {
    let flaky = Flaky::failing(0);
    let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pipe = pipeline! { work }
        .with_resource(flaky.clone())
        .with_middleware(Cache::ttl(Duration::from_secs(60)))
        .with_middleware(Maintenance(on.clone()));
    let first = pipe.invoke(input! { n: 1 }).await.unwrap();
    assert!(first.get(out).is_none());
    on.store(false, Ordering::SeqCst);
    let second = pipe.invoke(input! { n: 1 }).await.unwrap();
    assert_eq!(
        (second[out], flaky.calls()),
        (2, 1),
        "the stage ran once maintenance ended"
    );
}

/// A stage's own error type, as a user would declare it.
#[derive(Debug, PartialEq)]
struct Declined {
    code: u16,
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "card declined ({})", self.code)
    }
}

impl std::error::Error for Declined {}

#[stage(reads = [n], writes = [out])]
async fn charge(n: &u64) -> Result<u64, StageError> {
    Err(Declined { code: *n as u16 })?
}

#[tokio::test(start_paused = true)]
async fn a_stage_error_comes_back_as_its_own_type_in_the_source_chain() {
    // Without middleware: the error's source is the stage's error.
    let err = pipeline! { charge }
        .invoke(input! { n: 51 })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "stage `charge` failed: card declined (51)");
    let Error::Stage { stage, source, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*stage, "charge");
    assert_eq!(
        source.downcast_ref::<Declined>(),
        Some(&Declined { code: 51 })
    );
    // The same through `std::error::Error::source`, as error reporters walk it.
    assert_eq!(
        std::error::Error::source(&err).and_then(|s| s.downcast_ref::<Declined>()),
        Some(&Declined { code: 51 })
    );
    assert_eq!(err.find::<Declined>(), Some(&Declined { code: 51 }));

    // After retries, one more link: `RetriesExhausted`, whose source is the last error.
    let err = pipeline! { charge }
        .with_middleware(Retry::constant(2, Duration::from_millis(10)))
        .invoke(input! { n: 52 })
        .await
        .unwrap_err();
    assert_eq!(
        err.find::<Declined>(),
        Some(&Declined { code: 52 }),
        "{err:?}"
    );
    let Error::Stage { source, .. } = &err else {
        panic!("{err:?}")
    };
    let exhausted = source
        .downcast_ref::<fluxio::middleware::RetriesExhausted>()
        .expect("the retries' error");
    assert_eq!(exhausted.attempts, 2);
    let innermost = err.find::<Error>().expect("a fluxio error");
    assert!(
        std::ptr::eq(innermost, &err),
        "the stage's error is the innermost"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_found_behind_the_retries_that_gave_up() {
    let is_timeout = |e: &Error| matches!(e.find::<Error>(), Some(Error::Timeout { .. }));
    let timed = pipeline! { sleepy }.with_middleware(Timeout::new(Duration::from_millis(100)));
    let err = timed.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. }) && is_timeout(&err),
        "{err:?}"
    );

    let retried = pipeline! { sleepy }
        .with_middleware(Retry::constant(2, Duration::from_millis(10)))
        .with_middleware(Timeout::new(Duration::from_millis(100)));
    let err = retried.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(matches!(err, Error::Stage { .. }), "{err:?}");
    assert!(is_timeout(&err), "{err:?}");
    assert_eq!(
        err.find::<fluxio::middleware::RetriesExhausted>()
            .map(|r| r.attempts),
        Some(2)
    );
    // The stage is named once.
    assert_eq!(
        err.to_string(),
        "stage `sleepy` failed after 2 attempts: timed out after 100ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stage_failure_names_the_run_it_failed_in() {
    let err = pipeline! { charge }
        .invoke(input! { n: 51 })
        .run_id("order-42")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "run `order-42`: stage `charge` failed: card declined (51)"
    );
    assert!(
        matches!(&err, Error::Stage { run_id: Some(id), .. } if id == "order-42"),
        "{err:?}"
    );
    let err = pipeline! { sleepy }
        .with_middleware(Timeout::new(Duration::from_millis(50)))
        .invoke(input! { n: 1 })
        .run_id("order-43")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "run `order-43`: stage `sleepy` timed out after 50ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_past_the_clocks_range_is_no_limit() {
    let flaky = Flaky::failing(0);
    let ctx = pipeline! { work }
        .with_resource(flaky)
        .with_middleware(Timeout::new(Duration::MAX))
        .invoke(input! { n: 2 })
        .await
        .unwrap();
    assert_eq!(ctx[out], 4);
}

/// Keeps the error text each run ended with, as `on_run_end` saw it.
#[derive(Default, Clone)]
struct RunEnds(Arc<Mutex<Vec<String>>>);

impl fluxio::Callback for RunEnds {
    fn on_run_end(
        &self,
        _run_id: &str,
        result: Result<&fluxio::Ctx, &Error>,
        _took: std::time::Duration,
    ) {
        if let Err(e) = result {
            self.0.lock().unwrap().push(e.to_string());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn callbacks_hear_a_failure_without_the_run_prefix_the_caller_gets() {
    let ends = RunEnds::default();
    let err = pipeline! { charge }
        .with_callback(ends.clone())
        .invoke(input! { n: 51 })
        .run_id("order-44")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "run `order-44`: stage `charge` failed: card declined (51)"
    );
    assert_eq!(
        *ends.0.lock().unwrap(),
        ["stage `charge` failed: card declined (51)"]
    );
}

/// Calls per stage, failing the stages named in `failing`.
#[derive(Default)]
struct Counts {
    calls: Mutex<Vec<&'static str>>,
    failing: Vec<&'static str>,
}

impl Counts {
    fn failing(stages: &[&'static str]) -> Arc<Self> {
        Arc::new(Counts {
            failing: stages.to_vec(),
            ..Counts::default()
        })
    }
    fn hit(&self, stage: &'static str) -> Result<(), StageError> {
        self.calls.lock().unwrap().push(stage);
        if self.failing.contains(&stage) {
            return Err(StageError::msg(format!("{stage} is down")));
        }
        Ok(())
    }
    fn of(&self, stage: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == stage)
            .count()
    }
}

#[stage(reads = [n], writes = [words])]
async fn spell(n: &u64, counts: Res<Arc<Counts>>) -> Result<String, StageError> {
    counts.hit("spell")?;
    Ok(n.to_string())
}

#[stage(reads = [n], writes = [out])]
async fn double(n: &u64, counts: Res<Arc<Counts>>) -> Result<u64, StageError> {
    counts.hit("double")?;
    Ok(n * 2)
}

#[tokio::test(start_paused = true)]
async fn a_scoped_middleware_applies_to_its_stages_only() {
    // Behind a user's middleware too: the rest of the chain then runs as boxed futures.
    for behind_a_users_middleware in [false, true] {
        let scoped = |pipe: Pipeline| {
            if behind_a_users_middleware {
                pipe.with_middleware(fluxio_tests::SkipStage("nothing"))
            } else {
                pipe
            }
        };
        // A cache of `spell` only.
        let counts = Counts::failing(&[]);
        let cache_stats = Cache::ttl(Duration::from_secs(60));
        let cache = cache_stats.clone().only(spell);
        let pipe = scoped(pipeline! { spell, double })
            .with_resource(counts.clone())
            .with_middleware(cache);
        for _ in 0..3 {
            let res = pipe.invoke(input! { n: 4 }).await.unwrap();
            assert_eq!((&res[words][..], res[out]), ("4", 8));
        }
        assert_eq!((counts.of("spell"), counts.of("double")), (1, 3));
        let stats = cache_stats.stats();
        assert_eq!(
            (stats.hits, stats.misses),
            (2, 1),
            "`double` is not counted"
        );

        // Retries for all but `double`.
        let counts = Counts::failing(&["spell", "double"]);
        let retry = Retry::constant(3, Duration::from_millis(1)).except(double);
        let pipe = scoped(pipeline! { spell })
            .with_resource(counts.clone())
            .with_middleware(retry.clone());
        pipe.invoke(input! { n: 1 }).await.unwrap_err();
        let pipe = scoped(pipeline! { double })
            .with_resource(counts.clone())
            .with_middleware(retry);
        pipe.invoke(input! { n: 1 }).await.unwrap_err();
        assert_eq!((counts.of("spell"), counts.of("double")), (3, 1));

        // A time limit for `sleepy` only (a `work` call is not limited).
        let flaky = Flaky::failing(0);
        let timeout = Timeout::new(Duration::from_millis(10)).only(sleepy);
        let pipe = scoped(pipeline! { sleepy }).with_middleware(timeout.clone());
        let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    stage: "sleepy",
                    ..
                }
            ),
            "{err:?}"
        );
        let pipe = scoped(pipeline! { work })
            .with_resource(flaky)
            .with_middleware(timeout);
        assert_eq!(pipe.invoke(input! { n: 1 }).await.unwrap()[out], 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_users_middleware_can_be_scoped_too() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let counts = Counts::failing(&[]);
    let pipe = pipeline! { spell, double }
        .with_resource(counts)
        .with_middleware(Tag::new("only-double", &log).only(double))
        .with_middleware(Tag::new("not-double", &log).except(double));
    pipe.invoke(input! { n: 2 }).await.unwrap();
    let mut seen = log.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            "not-double after spell: true",
            "not-double before spell (attempt 1)",
            "only-double after double: true",
            "only-double before double (attempt 1)",
        ]
    );
}

/// A middleware behind an `Arc` (kept by the caller, scoped) or a `Box<dyn Middleware>`
/// (a chain built at run time) wraps the stages like the middleware itself.
#[tokio::test(start_paused = true)]
async fn middleware_behind_an_arc_or_a_box_wraps_the_stages() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Tag::new("arc", &log));
    let from_config: Vec<Box<dyn Middleware>> = vec![
        Box::new(Retry::constant(2, std::time::Duration::from_millis(5))),
        Box::new(Tag::new("boxed", &log)),
    ];
    let flaky = Flaky::failing(1);
    let mut pipe = pipeline! { spell, work }
        .with_resource(Counts::failing(&[]))
        .with_resource(flaky.clone())
        .with_middleware(shared.clone().only(work));
    for m in from_config {
        pipe = pipe.with_middleware(m);
    }
    assert_eq!(pipe.invoke(input! { n: 2 }).await.unwrap()[out], 4);
    assert_eq!(flaky.calls(), 2, "the boxed Retry retried");
    let mut seen = log.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            "arc after work: true",
            "arc before work (attempt 1)",
            "boxed after spell: true",
            "boxed after work: false",
            "boxed after work: true",
            "boxed before spell (attempt 1)",
            "boxed before work (attempt 1)",
            "boxed before work (attempt 2)",
        ]
    );
    // The caller's handle is the middleware the pipeline holds.
    assert_eq!(Arc::strong_count(&shared), 2);
}

/// Two stages named `calc`, in two modules: one always fails, the other never does.
mod same_name {
    pub mod good {
        use fluxio::prelude::*;
        #[stage(reads = [super::super::n], writes = [super::super::out])]
        pub async fn calc(n: &u64) -> u64 {
            *n
        }
    }
    pub mod bad {
        use fluxio::prelude::*;
        #[stage(reads = [super::super::n], writes = [super::super::out])]
        pub async fn calc(n: &u64) -> Result<u64, StageError> {
            Err(StageError::msg(format!("bad calc of {n}")))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_shared_breaker_keeps_stages_of_one_name_apart() {
    let breaker = CircuitBreaker::new(1);
    let good = pipeline! { same_name::good::calc }.with_middleware(breaker.clone());
    let bad = pipeline! { same_name::bad::calc }.with_middleware(breaker.clone());
    bad.invoke(input! { n: 1 }).await.unwrap_err();
    let err = bad.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(err, Error::CircuitOpen { stage: "calc", .. }),
        "{err:?}"
    );
    assert_eq!(
        good.invoke(input! { n: 2 }).await.unwrap()[out],
        2,
        "the other `calc` never failed: its circuit is closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_per_stage_rate_limit_keeps_stages_of_one_name_apart() {
    let limit = RateLimit::per_second(0.001)
        .burst(1)
        .per_stage()
        .refuse_when_limited();
    let good = pipeline! { same_name::good::calc }.with_middleware(limit.clone());
    let other = pipeline! { same_name::good::calc }.with_middleware(limit.clone());
    let bad = pipeline! { same_name::bad::calc }.with_middleware(limit.clone());
    good.invoke(input! { n: 1 }).await.unwrap();
    let err = other.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(err, Error::RateLimited { stage: "calc", .. }),
        "the same stage in another pipeline shares its bucket: {err:?}"
    );
    let err = bad.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        err.to_string().contains("bad calc of 1"),
        "the other `calc` has its own token: it ran and failed on its own: {err}"
    );
}
