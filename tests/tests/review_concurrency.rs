//! Adversarial review: the executor's concurrency and failure semantics — parallel blocks,
//! cancellation in every phase, streaming, timeouts, and what callbacks hear.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::Error;
use fluxio::prelude::*;
use futures::StreamExt;

fluxio::keys! {
    pub n: u64;
    pub a: u64;
    pub b: u64;
    pub c: u64;
    pub d: u64;
    pub e: u64;
}

/// Every callback, as a line of text.
use fluxio_tests::LifecycleLog as Log;

static ROLLBACKS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---------------------------------------------------------------------------------------
// Parallel block: one branch fails while others run.

#[stage(reads = [n], writes = [a], rollback = undo_pa)]
async fn pa(n: &u64) -> u64 {
    sleep_ms(10).await;
    *n
}
async fn undo_pa(_n: &u64) {
    ROLLBACKS.lock().unwrap().push("pa");
}

#[stage(reads = [n], writes = [b], rollback = undo_pb)]
async fn pb(n: &u64) -> u64 {
    sleep_ms(20).await;
    *n
}
async fn undo_pb(_n: &u64) {
    ROLLBACKS.lock().unwrap().push("pb");
}

#[stage(reads = [n], writes = [c], rollback = undo_pslow)]
async fn pslow(n: &u64) -> u64 {
    sleep_ms(1_000_000).await;
    *n
}
async fn undo_pslow(_n: &u64) {
    ROLLBACKS.lock().unwrap().push("pslow");
}

#[stage(reads = [n], writes = [d])]
async fn pfail(_n: &u64) -> Result<u64, StageError> {
    sleep_ms(30).await;
    Err(StageError::msg("pfail broke"))
}

#[tokio::test(start_paused = true)]
async fn parallel_failure_cancels_running_siblings_and_rolls_back_finished_ones_in_reverse() {
    ROLLBACKS.lock().unwrap().clear();
    let log = Log::default();
    let pipe = pipeline! { parallel { pa, pb, pslow, pfail } }.with_callback(log.clone());
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(err.to_string().contains("pfail broke"), "{err}");
    assert_eq!(*ROLLBACKS.lock().unwrap(), ["pb", "pa"]);
    let lines = log.lines();
    assert!(lines.contains(&"cancelled pslow".to_string()), "{lines:#?}");
    log.check_invariants();
}

// ---------------------------------------------------------------------------------------
// Cancellation during a retry backoff.

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[stage(reads = [n], writes = [a])]
async fn always_fails(_n: &u64) -> Result<u64, StageError> {
    FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(StageError::msg("nope"))
}

#[tokio::test(start_paused = true)]
async fn dropping_a_run_during_a_retry_backoff_stops_retrying() {
    FLAKY_CALLS.store(0, Ordering::SeqCst);
    let log = Log::default();
    let pipe = pipeline! { always_fails }
        .with_middleware(Retry::constant(5, Duration::from_secs(10)))
        .with_callback(log.clone());
    let r = tokio::time::timeout(Duration::from_secs(1), pipe.invoke(input! { n: 1 })).await;
    assert!(r.is_err(), "still backing off");
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 1);
    let lines = log.lines();
    assert_eq!(
        lines,
        [
            "run_start",
            "start always_fails",
            "retry always_fails",
            "cancelled always_fails",
            "run_cancelled"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Cancellation during a rollback.

static UNDO_STARTED: AtomicU32 = AtomicU32::new(0);
static UNDO_DONE: AtomicU32 = AtomicU32::new(0);

#[stage(reads = [n], writes = [a], rollback = slow_undo)]
async fn does_work(n: &u64) -> u64 {
    *n
}
async fn slow_undo(_n: &u64) {
    UNDO_STARTED.fetch_add(1, Ordering::SeqCst);
    sleep_ms(10_000).await;
    UNDO_DONE.fetch_add(1, Ordering::SeqCst);
}

#[stage(reads = [a], writes = [b])]
async fn fails_after(_a: &u64) -> Result<u64, StageError> {
    sleep_ms(10).await;
    Err(StageError::msg("after broke"))
}

#[tokio::test(start_paused = true)]
async fn dropping_a_run_during_a_rollback_reports_it_cancelled() {
    let log = Log::default();
    let pipe = pipeline! { does_work, fails_after }.with_callback(log.clone());
    let r = tokio::time::timeout(Duration::from_secs(1), pipe.invoke(input! { n: 1 })).await;
    assert!(r.is_err(), "still rolling back");
    assert_eq!(UNDO_STARTED.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(UNDO_DONE.load(Ordering::SeqCst), 0);
    log.check_invariants();
    let lines = log.lines();
    assert_eq!(lines.last().unwrap(), "run_cancelled", "{lines:#?}");
}

// ---------------------------------------------------------------------------------------
// A fallback running while a sibling fails.

#[stage(reads = [n], writes = [a], fallback = slow_fallback)]
async fn fails_fast(_n: &u64) -> Result<u64, StageError> {
    Err(StageError::msg("fast failure"))
}
async fn slow_fallback(_n: &u64) -> u64 {
    sleep_ms(10_000).await;
    0
}

#[stage(reads = [n], writes = [b])]
async fn fails_later(_n: &u64) -> Result<u64, StageError> {
    sleep_ms(100).await;
    Err(StageError::msg("later failure"))
}

#[tokio::test(start_paused = true)]
async fn a_fallback_cut_short_by_a_sibling_failure_is_reported_cancelled() {
    let log = Log::default();
    let pipe = pipeline! { parallel { fails_fast, fails_later } }.with_callback(log.clone());
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(err.to_string().contains("later failure"), "{err}");
    log.check_invariants();
    assert!(log.lines().contains(&"cancelled fails_fast".to_string()));
}

// ---------------------------------------------------------------------------------------
// A stage's own timeout while its fallback runs.

#[stage(reads = [n], writes = [a], fallback = slow_fallback, timeout = "1s")]
async fn fails_then_slow_fallback(_n: &u64) -> Result<u64, StageError> {
    sleep_ms(500).await;
    Err(StageError::msg("first"))
}

#[tokio::test(start_paused = true)]
async fn a_stage_timeout_during_its_fallback_is_a_timeout_with_one_end() {
    let log = Log::default();
    let pipe = pipeline! { fails_then_slow_fallback }.with_callback(log.clone());
    let start = tokio::time::Instant::now();
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    log.check_invariants();
}

// ---------------------------------------------------------------------------------------
// Streaming.

#[stage(reads = [n])]
fn stream_then_fail(n: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    let n = *n;
    futures::stream::unfold(0u64, move |i| async move {
        sleep_ms(10).await;
        if i < n {
            Some((Ok(i), i + 1))
        } else if i == n {
            Some((Err(StageError::msg("stream broke")), i + 1))
        } else {
            None
        }
    })
}

/// Counts how often the stream holding it was dropped (a resource, one per test).
struct Dropped(AtomicU32);

struct DropFlag(Res<Dropped>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[stage(reads = [a])]
fn ticker(a: &u64, dropped: Res<Dropped>) -> impl Stream<Item = Result<u64, StageError>> {
    let flag = DropFlag(dropped.clone());
    let base = *a * 1000;
    futures::stream::unfold((0u64, flag), move |(i, flag)| async move {
        sleep_ms(25).await;
        Some((Ok(base + i), (i + 1, flag)))
    })
}

#[stage(reads = [n], writes = [a])]
async fn seed_a(n: &u64) -> u64 {
    *n
}

#[tokio::test(start_paused = true)]
async fn a_stream_stage_failing_after_chunks_beside_another_stream_delivers_chunks_then_the_error()
{
    let log = Log::default();
    let pipe = pipeline! { seed_a, parallel { stream_then_fail, ticker } }
        .with_resource(Dropped(AtomicU32::new(0)))
        .with_callback(log.clone());
    let mut s = pipe.stream::<u64>(input! { n: 3 });
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    let mut err = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(c) if c.stage == "stream_then_fail" => mine.push(c.data),
            Ok(c) => theirs.push(c.data),
            Err(e) => {
                assert!(err.is_none(), "two errors");
                err = Some(e);
            }
        }
    }
    assert_eq!(mine, [0, 1, 2]);
    assert!(
        theirs.windows(2).all(|w| w[0] < w[1]),
        "ticker in order: {theirs:?}"
    );
    let err = err.expect("the error comes last");
    assert!(err.to_string().contains("stream broke"), "{err}");
    assert!(s.finish().await.is_err());
    log.check_invariants();
    assert!(log.lines().contains(&"cancelled ticker".to_string()));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_stream_handle_mid_stream_cancels_the_run() {
    let flag = Arc::new(Dropped(AtomicU32::new(0)));
    let log = Log::default();
    let pipe = pipeline! { seed_a, ticker }
        .with_shared_resource(flag.clone())
        .with_callback(log.clone());
    let mut s = pipe.stream::<u64>(input! { n: 1 });
    for want in 0..3 {
        assert_eq!(s.next().await.unwrap().unwrap().data, 1000 + want);
    }
    drop(s);
    sleep_ms(1).await;
    assert_eq!(
        flag.0.load(Ordering::SeqCst),
        1,
        "the stream stage is dropped"
    );
    log.check_invariants();
    assert_eq!(log.lines().last().unwrap(), "run_cancelled");
}

#[stage(reads = [a], timeout = "100ms")]
fn timed_ticker(a: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    let base = *a * 1000;
    futures::stream::unfold(0u64, move |i| async move {
        sleep_ms(30).await;
        Some((Ok(base + i), i + 1))
    })
}

#[tokio::test(start_paused = true)]
async fn a_stream_stage_that_outlives_its_timeout_while_read_promptly_times_out() {
    let log = Log::default();
    let pipe = pipeline! { seed_a, timed_ticker }.with_callback(log.clone());
    let mut s = pipe.stream::<u64>(input! { n: 1 });
    let mut got = Vec::new();
    let mut err = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(c) => got.push(c.data),
            Err(e) => err = Some(e),
        }
    }
    assert_eq!(got, [1000, 1001, 1002]);
    assert!(matches!(err, Some(Error::Timeout { .. })), "{err:?}");
    log.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn finish_after_a_failure_with_unread_chunks_returns_the_error() {
    let pipe = pipeline! { stream_then_fail };
    let mut s = pipe.stream::<u64>(input! { n: 5 });
    assert_eq!(s.next().await.unwrap().unwrap().data, 0);
    let err = s.finish().await.unwrap_err();
    assert!(err.to_string().contains("stream broke"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Before start.

#[tokio::test]
async fn a_run_dropped_before_its_first_poll_tells_nobody() {
    let log = Log::default();
    let pipe = pipeline! { seed_a }.with_callback(log.clone());
    let fut = std::future::IntoFuture::into_future(pipe.invoke(input! { n: 1 }));
    drop(fut);
    let s = pipe.stream::<u64>(input! { n: 1 });
    drop(s);
    tokio::task::yield_now().await;
    assert!(log.lines().is_empty(), "{:?}", log.lines());
}

// ---------------------------------------------------------------------------------------
// Durable: a run dropped mid-stage resumes; a parallel failure keeps finished siblings.

static DUR_A: AtomicU32 = AtomicU32::new(0);
static DUR_B: AtomicU32 = AtomicU32::new(0);
static DUR_B_FAIL: AtomicU32 = AtomicU32::new(0);

#[stage(reads = [n], writes = [a])]
async fn dur_a(n: &u64) -> u64 {
    DUR_A.fetch_add(1, Ordering::SeqCst);
    *n + 1
}

#[stage(reads = [n], writes = [b])]
async fn dur_b(n: &u64) -> Result<u64, StageError> {
    DUR_B.fetch_add(1, Ordering::SeqCst);
    sleep_ms(50).await;
    if DUR_B_FAIL.load(Ordering::SeqCst) > 0 {
        return Err(StageError::msg("b broke"));
    }
    Ok(*n + 2)
}

#[stage(reads = [a, b], writes = [c])]
async fn dur_c(a: &u64, b: &u64) -> u64 {
    a + b
}

#[tokio::test(start_paused = true)]
async fn durable_parallel_failure_keeps_the_finished_sibling_for_resume() {
    DUR_A.store(0, Ordering::SeqCst);
    DUR_B.store(0, Ordering::SeqCst);
    DUR_B_FAIL.store(1, Ordering::SeqCst);
    let store = InMemoryStore::new();
    let log = Log::default();
    let pipe = pipeline! { parallel { dur_a, dur_b }, dur_c }
        .with_store(store.clone())
        .with_callback(log.clone());
    pipe.invoke(input! { n: 1 })
        .run_id("par-1")
        .await
        .unwrap_err();
    log.check_invariants();
    DUR_B_FAIL.store(0, Ordering::SeqCst);
    let out = pipe.resume("par-1").await.unwrap();
    assert_eq!(out[c], 5);
    assert_eq!(DUR_A.load(Ordering::SeqCst), 1);
    assert_eq!(DUR_B.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_durable_run_dropped_mid_stage_resumes_from_its_checkpoint() {
    DUR_A.store(0, Ordering::SeqCst);
    DUR_B.store(0, Ordering::SeqCst);
    DUR_B_FAIL.store(0, Ordering::SeqCst);
    let store = InMemoryStore::new();
    let log = Log::default();
    let pipe = pipeline! { dur_a, dur_b, dur_c }
        .with_store(store.clone())
        .with_callback(log.clone());
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        pipe.invoke(input! { n: 1 }).run_id("drop-1"),
    )
    .await;
    assert!(r.is_err());
    log.check_invariants();
    tokio::task::yield_now().await;
    let out = pipe.resume("drop-1").await.unwrap();
    assert_eq!(out[c], 5);
    assert_eq!(DUR_A.load(Ordering::SeqCst), 1);
    assert_eq!(DUR_B.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------
// A sync stage running on the blocking pool when a sibling fails the run.

struct SyncGate {
    entered: tokio::sync::Notify,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
    in_charge: std::sync::atomic::AtomicBool,
    charged: AtomicU32,
    refunded: AtomicU32,
    /// Whether `charge_sync` was still running when `first`'s rollback ran.
    rollback_saw_charge_running: std::sync::atomic::AtomicBool,
}

impl SyncGate {
    /// A gate, and the sender that lets the charge's body through.
    fn new() -> (Arc<Self>, std::sync::mpsc::Sender<()>) {
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let gate = SyncGate {
            entered: tokio::sync::Notify::new(),
            release: Mutex::new(release_rx),
            in_charge: Default::default(),
            charged: AtomicU32::new(0),
            refunded: AtomicU32::new(0),
            rollback_saw_charge_running: Default::default(),
        };
        (Arc::new(gate), release_tx)
    }
}

#[stage(reads = [n], writes = [a], rollback = undo_first)]
async fn first(n: &u64, _gate: Res<SyncGate>) -> u64 {
    *n
}
async fn undo_first(_n: &u64, gate: Res<SyncGate>) {
    gate.rollback_saw_charge_running
        .store(gate.in_charge.load(Ordering::SeqCst), Ordering::SeqCst);
}

#[stage(reads = [a], writes = [b], rollback = refund_sync)]
fn charge_sync(a: &u64, gate: Res<SyncGate>) -> u64 {
    charge_sync_body(a, &gate)
}
fn refund_sync(_a: &u64, gate: Res<SyncGate>) {
    gate.refunded.fetch_add(1, Ordering::SeqCst);
}

#[stage(reads = [a], writes = [c])]
async fn fails_once_charging(_a: &u64, gate: Res<SyncGate>) -> Result<u64, StageError> {
    gate.entered.notified().await;
    Err(StageError::msg("declined"))
}

/// A sync stage whose body is running on the blocking pool when a sibling fails cannot be
/// stopped: the run waits for it before any rollback, and — as it succeeded, its charge
/// went through — rolls it back too, first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stage_still_running_when_a_sibling_fails_is_awaited_and_rolled_back() {
    let (gate, release_tx) = SyncGate::new();
    let log = Log::default();
    let pipe = pipeline! { first, parallel { charge_sync, fails_once_charging } }
        .with_shared_resource(gate.clone())
        .with_callback(log.clone());
    let run = tokio::spawn({
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { n: 1 }).await }
    });
    // The sibling has failed and the charge was dropped (reported cancelled), its body
    // still inside the charge: the run waits, no rollback runs yet.
    while !log.lines().iter().any(|l| l == "cancelled charge_sync") {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!run.is_finished(), "{:#?}", log.lines());
    assert_eq!(gate.refunded.load(Ordering::SeqCst), 0);
    release_tx.send(()).unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("declined"), "{err}");
    let lines = log.lines();
    assert_eq!(
        gate.charged.load(Ordering::SeqCst),
        1,
        "the charge went through"
    );
    assert!(
        !gate.rollback_saw_charge_running.load(Ordering::SeqCst),
        "`first` was rolled back while `charge_sync` still ran: {lines:#?}"
    );
    assert_eq!(
        gate.refunded.load(Ordering::SeqCst),
        1,
        "the charge that went through was refunded: {lines:#?}"
    );
    log.check_invariants();
}

/// The same when no stage had finished yet: the run has nothing to undo when the sibling
/// fails, until the sync stage's body returns.
#[stage(reads = [n], writes = [b], rollback = refund_sync)]
fn charge_sync_first(n: &u64, gate: Res<SyncGate>) -> u64 {
    charge_sync_body(n, &gate)
}

fn charge_sync_body(a: &u64, gate: &SyncGate) -> u64 {
    gate.in_charge.store(true, Ordering::SeqCst);
    gate.entered.notify_one();
    gate.release.lock().unwrap().recv().unwrap();
    gate.charged.fetch_add(1, Ordering::SeqCst);
    gate.in_charge.store(false, Ordering::SeqCst);
    *a
}

#[stage(reads = [n], writes = [c])]
async fn fails_at_once_charging(_n: &u64, gate: Res<SyncGate>) -> Result<u64, StageError> {
    gate.entered.notified().await;
    Err(StageError::msg("declined"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stage_still_running_is_rolled_back_when_nothing_else_had_finished() {
    let (gate, release_tx) = SyncGate::new();
    let log = Log::default();
    let pipe = pipeline! { parallel { charge_sync_first, fails_at_once_charging } }
        .with_shared_resource(gate.clone())
        .with_callback(log.clone());
    let run = tokio::spawn({
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { n: 1 }).await }
    });
    while !gate.in_charge.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !run.is_finished(),
        "the run waits for the charge: {:#?}",
        log.lines()
    );
    release_tx.send(()).unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("declined"), "{err}");
    assert_eq!(gate.charged.load(Ordering::SeqCst), 1);
    assert_eq!(
        gate.refunded.load(Ordering::SeqCst),
        1,
        "{:#?}",
        log.lines()
    );
    log.check_invariants();
}

// ---------------------------------------------------------------------------------------
// A nested pipeline rolling back when an independent outer stage fails the run.

/// What the nested refund did, per test.
#[derive(Default)]
struct Refunds(Mutex<Vec<&'static str>>);

impl Refunds {
    fn seen(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().clone()
    }
}

#[stage(reads = [n], writes = [a], rollback = nested_refund)]
async fn nested_charge(n: &u64, _refunds: Res<Refunds>) -> u64 {
    *n
}
async fn nested_refund(_n: &u64, refunds: Res<Refunds>) {
    refunds.0.lock().unwrap().push("refund started");
    sleep_ms(100).await;
    refunds.0.lock().unwrap().push("refund done");
}

#[stage(reads = [a], writes = [b])]
async fn nested_fail(_a: &u64) -> Result<u64, StageError> {
    sleep_ms(10).await;
    Err(StageError::msg("nested broke"))
}

#[stage(reads = [n], writes = [c])]
async fn outer_fail(_n: &u64) -> Result<u64, StageError> {
    sleep_ms(50).await;
    Err(StageError::msg("outer broke"))
}

/// A nested pipeline rolling back when an independent outer stage fails the run: its
/// rollbacks finish before the outer run ends.
#[tokio::test(start_paused = true)]
async fn a_nested_pipeline_rolling_back_is_not_cut_off_by_an_outer_failure() {
    let refunds = Arc::new(Refunds::default());
    let sub = pipeline! { nested_charge, nested_fail }.named("sub");
    let log = Log::default();
    let pipe = pipeline! { sub.clone(), outer_fail }
        .with_shared_resource(refunds.clone())
        .with_callback(log.clone());
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    let lines = log.lines();
    // Done by the time the run ends.
    assert_eq!(
        refunds.seen(),
        ["refund started", "refund done"],
        "the nested pipeline's rollback was cut off: {err}\n{lines:#?}"
    );
    assert!(err.to_string().contains("outer broke"), "{err}");
    log.check_invariants();
}

/// The same in a durable run: the outer run has nothing of its own to undo, so after
/// waiting for the nested rollbacks it fails as a run without rollbacks does — resumable,
/// not rolled back.
#[tokio::test(start_paused = true)]
async fn a_durable_run_waiting_for_a_nested_rollback_stays_resumable() {
    let refunds = Arc::new(Refunds::default());
    let store = InMemoryStore::new();
    let sub = pipeline! { nested_charge, nested_fail }.named("sub");
    let pipe = pipeline! { sub.clone(), outer_fail }
        .with_shared_resource(refunds.clone())
        .with_store(store.clone());
    let err = pipe
        .invoke(input! { n: 1 })
        .run_id("nested-durable")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outer broke"), "{err}");
    assert_eq!(refunds.seen(), ["refund started", "refund done"]);
    let record = pipe.inspect("nested-durable").await.unwrap();
    assert_eq!(
        record.status,
        fluxio::store::RunStatus::Failed,
        "{record:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A stream polled outside tokio.

#[stage(reads = [n])]
fn many(n: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    futures::stream::iter((0..*n).map(Ok).collect::<Vec<_>>())
}

/// A minimal executor: no tokio runtime around.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[test]
fn a_stream_polled_outside_tokio_delivers_every_chunk() {
    let log = Log::default();
    let pipe = pipeline! { many, seed_a }.with_callback(log.clone());
    let mut s = pipe.stream::<u64>(input! { n: 100 });
    let got: Vec<u64> = block_on(async { (&mut s).map(|c| c.unwrap().data).collect().await });
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    let out = block_on(s.finish()).unwrap();
    assert_eq!(out[a], 100);
    log.check_invariants();
}

// ---------------------------------------------------------------------------------------
// Durable streams: a parallel block of stream stages, one failing; and a dropped finish().

static DS_GOOD_CALLS: AtomicU32 = AtomicU32::new(0);
static DS_BAD_FAIL: AtomicU32 = AtomicU32::new(1);

#[stage(reads = [n])]
fn ds_good(n: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    DS_GOOD_CALLS.fetch_add(1, Ordering::SeqCst);
    futures::stream::iter((0..*n).map(Ok).collect::<Vec<_>>())
}

#[stage(reads = [n])]
fn ds_bad(n: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    let n = *n;
    futures::stream::unfold(0u64, move |i| async move {
        sleep_ms(10).await;
        if i < n {
            Some((Ok(100 + i), i + 1))
        } else if i == n && DS_BAD_FAIL.load(Ordering::SeqCst) == 1 {
            Some((Err(StageError::msg("bad stream")), i + 1))
        } else {
            None
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_durable_parallel_stream_resumes_only_the_failed_stream() {
    DS_GOOD_CALLS.store(0, Ordering::SeqCst);
    DS_BAD_FAIL.store(1, Ordering::SeqCst);
    let store = InMemoryStore::new();
    let pipe = pipeline! { parallel { ds_good, ds_bad } }.with_store(store);
    let mut s = pipe.stream::<u64>(input! { n: 3 }).run_id("ds-1");
    let mut got = Vec::new();
    let mut errs = 0;
    while let Some(item) = s.next().await {
        match item {
            Ok(c) => got.push(c.data),
            Err(_) => errs += 1,
        }
    }
    assert_eq!(errs, 1);
    got.sort();
    assert_eq!(got, [0, 1, 2, 100, 101, 102]);
    DS_BAD_FAIL.store(0, Ordering::SeqCst);
    let mut s = pipe.stream::<u64>(Ctx::new()).run_id("ds-1").resume();
    let mut again = Vec::new();
    while let Some(item) = s.next().await {
        again.push(item.unwrap().data);
    }
    s.finish().await.unwrap();
    assert_eq!(again, [100, 101, 102]);
    assert_eq!(DS_GOOD_CALLS.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_finish_future_cancels_the_streamed_run() {
    let flag = Arc::new(Dropped(AtomicU32::new(0)));
    let log = Log::default();
    let pipe = pipeline! { seed_a, ticker }
        .with_shared_resource(flag.clone())
        .with_callback(log.clone());
    let s = pipe.stream::<u64>(input! { n: 2 });
    let r = tokio::time::timeout(Duration::from_millis(100), s.finish()).await;
    assert!(r.is_err());
    sleep_ms(1).await;
    assert_eq!(flag.0.load(Ordering::SeqCst), 1);
    log.check_invariants();
    assert_eq!(log.lines().last().unwrap(), "run_cancelled");
}
