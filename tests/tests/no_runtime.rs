//! A run polled outside a tokio runtime: a pipeline of async stages runs; what needs the
//! runtime — a durable run, a sync stage, a `Retry` backoff, a `RateLimit` wait, a timeout of
//! a stage that waits — fails with `Error::NoRuntime` naming it, instead of panicking inside
//! tokio.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use fluxio::Error;
use fluxio::prelude::*;
use futures::StreamExt;

fluxio::keys! {
    pub n: u64;
    pub doubled: u64;
}

#[stage(reads = [n], writes = [doubled])]
async fn double(n: &u64) -> u64 {
    n * 2
}

#[stage(reads = [n], writes = [doubled])]
fn double_sync(n: &u64) -> u64 {
    n * 2
}

#[stage(reads = [n], writes = [doubled])]
async fn fail(n: &u64) -> Result<u64, StageError> {
    Err(StageError::msg(format!("no luck with {n}")))
}

/// Wakes the thread that polls.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` to its end on this thread, with no tokio runtime anywhere.
fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// What the error says needs a runtime, and its run.
fn needed_by(out: Result<Ctx, Error>) -> (String, Option<String>) {
    match out {
        Err(Error::NoRuntime { needed_by, run_id }) => (needed_by, run_id),
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

#[test]
fn async_stages_alone_run_under_any_executor() {
    let out = block_on(pipeline! { double }.invoke(input! { n: 4 })).unwrap();
    assert_eq!(out[doubled], 8);
}

#[test]
fn a_sync_stage_says_it_needs_the_runtime() {
    let out = block_on(
        pipeline! { double_sync }
            .invoke(input! { n: 4 })
            .run_id("sync-1"),
    );
    let err = out.unwrap_err();
    assert_eq!(
        err.to_string(),
        "run `sync-1`: sync stage `double_sync` (it runs on tokio's blocking pool) needs a \
         tokio runtime, and the run is polled outside one: await it inside one \
         (`#[tokio::main]`, `Runtime::block_on`)"
    );
}

#[test]
fn a_durable_run_says_it_needs_the_runtime() {
    let pipe = pipeline! { double }.with_store(InMemoryStore::new());
    let (what, run) = needed_by(block_on(pipe.invoke(input! { n: 4 }).run_id("durable-1")));
    assert!(what.starts_with("a durable run"), "{what}");
    assert_eq!(run.as_deref(), Some("durable-1"));

    // Streamed (polled in place, outside tokio): the stream's last item, and `finish`.
    let mut s = pipe.stream::<u64>(input! { n: 4 }).run_id("durable-2");
    let items: Vec<_> = block_on(async { (&mut s).collect::<Vec<_>>().await });
    assert!(
        matches!(items.as_slice(), [Err(Error::NoRuntime { .. })]),
        "{items:?}"
    );
    let (what, _) = needed_by(block_on(s.finish()));
    assert!(what.starts_with("a durable run"), "{what}");
}

#[test]
fn a_retry_backoff_says_it_needs_the_runtime_and_what_failed() {
    let pipe = pipeline! { fail }.with_middleware(Retry::constant(3, Duration::from_millis(1)));
    let (what, _) = needed_by(block_on(pipe.invoke(input! { n: 4 })));
    assert_eq!(
        what,
        "`Retry`, to wait before calling stage `fail` again after attempt 1 failed (no luck \
         with 4),"
    );
}

#[test]
fn a_rate_limit_wait_says_it_needs_the_runtime() {
    let pipe = pipeline! { double }.with_middleware(RateLimit::per_second(1.0).burst(1));
    // The one token goes to the first call; the second would wait.
    block_on(pipe.invoke(input! { n: 4 })).unwrap();
    let (what, _) = needed_by(block_on(pipe.invoke(input! { n: 4 })));
    assert_eq!(what, "`RateLimit`, to wait for a token for stage `double`,");
}

/// Pending once (waking itself), then ready: a stage that waits, with no timer involved.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[stage(reads = [n], writes = [doubled], timeout = "1s")]
async fn waits_with_timeout(n: &u64) -> u64 {
    YieldOnce(false).await;
    n * 2
}

#[stage(reads = [n], writes = [doubled])]
async fn waits(n: &u64) -> u64 {
    YieldOnce(false).await;
    n * 2
}

#[test]
fn a_timeout_of_a_stage_that_waits_says_it_needs_the_runtime() {
    // A waiting stage alone is fine.
    let out = block_on(pipeline! { waits }.invoke(input! { n: 4 })).unwrap();
    assert_eq!(out[doubled], 8);

    let (what, _) = needed_by(block_on(
        pipeline! { waits_with_timeout }.invoke(input! { n: 4 }),
    ));
    assert_eq!(
        what,
        "the timeout of stage `waits_with_timeout` (tokio's timer)"
    );

    let timeout = || Timeout::new(Duration::from_secs(1));
    let (what, _) = needed_by(block_on(
        pipeline! { waits }
            .with_middleware(timeout())
            .invoke(input! { n: 4 }),
    ));
    assert_eq!(what, "the `Timeout` of stage `waits` (tokio's timer)");
    // Behind a user's middleware (the boxed path).
    let (what, _) = needed_by(block_on(
        pipeline! { waits }
            .with_middleware(fluxio_tests::PassOn)
            .with_middleware(timeout())
            .invoke(input! { n: 4 }),
    ));
    assert_eq!(what, "the `Timeout` of stage `waits` (tokio's timer)");
}

#[test]
fn retry_does_not_retry_a_missing_runtime() {
    // Even with a predicate that retries everything: the first attempt's error is the
    // answer, said once.
    for retry in [
        Retry::constant(3, Duration::from_millis(1)),
        Retry::constant(3, Duration::from_millis(1)).when(|_| true),
    ] {
        let pipe = pipeline! { double_sync }.with_middleware(retry);
        let (what, _) = needed_by(block_on(pipe.invoke(input! { n: 4 })));
        assert_eq!(
            what,
            "sync stage `double_sync` (it runs on tokio's blocking pool)"
        );
    }
}
