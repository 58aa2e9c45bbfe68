//! Adversarial review (2): a failing run waits for the sync bodies it cannot stop and for
//! nested rollbacks (`533cd41`), and `Invoke` as a `Future` (`612924d`).
//!
//! Sync bodies are held on the blocking pool with channels; a real clock is used only
//! where a blocking body must be held while a timer fires (a paused clock does not
//! advance while a blocking task runs).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::RunStatus;

fluxio::keys! {
    pub n: u64;
    pub a: u64;
    pub b: u64;
    pub c: u64;
}

/// Every callback, as a line of text.
use fluxio_tests::LifecycleLog as Log;

/// A sync body held on the blocking pool until released.
struct Gate {
    entered: AtomicBool,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
    /// What the held body returns: `Ok`, an error, or a panic.
    outcome: Mutex<&'static str>,
    charged: AtomicU32,
    refunded: AtomicU32,
    undone_first: AtomicU32,
}

impl Gate {
    fn new() -> (Arc<Gate>, std::sync::mpsc::Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = Arc::new(Gate {
            entered: AtomicBool::new(false),
            release: Mutex::new(rx),
            outcome: Mutex::new("ok"),
            charged: AtomicU32::new(0),
            refunded: AtomicU32::new(0),
            undone_first: AtomicU32::new(0),
        });
        (gate, tx)
    }

    /// The held body: enters, waits for a release, then ends as told.
    fn hold(&self, v: u64) -> Result<u64, StageError> {
        self.entered.store(true, Ordering::SeqCst);
        let _ = self.release.lock().unwrap().recv();
        match *self.outcome.lock().unwrap() {
            "ok" => {
                self.charged.fetch_add(1, Ordering::SeqCst);
                Ok(v)
            }
            "err" => Err(StageError::msg("charge declined")),
            _ => panic!("charge panicked"),
        }
    }

    async fn wait_entered(&self) {
        while !self.entered.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    }
}

/// Lets the gate's held body go once it has entered and `pause` has passed: whether `run`
/// was still running just before, and the error it ended with.
async fn release_held(
    gate: &Gate,
    release: std::sync::mpsc::Sender<()>,
    pause: Duration,
    run: tokio::task::JoinHandle<Result<Ctx, Error>>,
) -> (bool, Error) {
    gate.wait_entered().await;
    tokio::time::sleep(pause).await;
    let running = !run.is_finished();
    release.send(()).unwrap();
    (running, run.await.unwrap().unwrap_err())
}

#[stage(reads = [n], writes = [a], rollback = undo_first)]
async fn first(n: &u64, _gate: Res<Gate>) -> u64 {
    *n
}
async fn undo_first(_n: &u64, gate: Res<Gate>) {
    gate.undone_first.fetch_add(1, Ordering::SeqCst);
}

/// A sync stage with its own timeout, whose body is held.
#[stage(reads = [a], writes = [b], timeout = "100ms")]
fn held_with_timeout(a: &u64, gate: Res<Gate>) -> Result<u64, StageError> {
    gate.hold(*a)
}

/// Promise (middleware.md): "A sync stage dropped by a `Timeout` or by its own timeout is
/// not waited for." The stage's own timeout fails the run; `first` is rolled back and the
/// run ends while the body is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stage_past_its_own_timeout_is_not_waited_for() {
    let (gate, release) = Gate::new();
    let log = Log::default();
    let pipe = pipeline! { first, held_with_timeout }
        .with_shared_resource(gate.clone())
        .with_callback(log.clone());
    let ended = tokio::time::timeout(Duration::from_secs(3), pipe.invoke(input! { n: 1 })).await;
    let still_held = gate.charged.load(Ordering::SeqCst) == 0;
    // Let the body go, whatever happened.
    release.send(()).unwrap();
    let err = match ended {
        Ok(out) => out.unwrap_err(),
        Err(_) => {
            panic!(
                "the run waited for the body of a stage that timed out: {:#?}",
                log.lines()
            )
        }
    };
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(still_held);
    assert_eq!(gate.undone_first.load(Ordering::SeqCst), 1);
    log.check_invariants();
}

/// The same stage with a rollback of its own, alone: nothing had finished.
#[stage(reads = [n], writes = [b], timeout = "100ms", rollback = refund)]
fn held_with_timeout_and_refund(n: &u64, gate: Res<Gate>) -> Result<u64, StageError> {
    gate.hold(*n)
}
/// The rollback of the charging stages here: counts the refund.
fn refund(_n: &u64, gate: Res<Gate>) {
    gate.refunded.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stage_with_a_rollback_past_its_own_timeout_is_not_waited_for() {
    let (gate, release) = Gate::new();
    let pipe = pipeline! { held_with_timeout_and_refund }.with_shared_resource(gate.clone());
    let ended = tokio::time::timeout(Duration::from_secs(3), pipe.invoke(input! { n: 1 })).await;
    release.send(()).unwrap();
    let err = ended
        .expect("the run waited for the body of a stage that timed out")
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

/// Promise: the same for a `Timeout` middleware.
#[stage(reads = [a], writes = [b])]
fn held_plain(a: &u64, gate: Res<Gate>) -> Result<u64, StageError> {
    gate.hold(*a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_stage_dropped_by_a_timeout_middleware_is_not_waited_for() {
    let (gate, release) = Gate::new();
    let pipe = pipeline! { first, held_plain }
        .with_shared_resource(gate.clone())
        .with_middleware(fluxio::middleware::Timeout::new(Duration::from_millis(100)));
    let ended = tokio::time::timeout(Duration::from_secs(3), pipe.invoke(input! { n: 1 })).await;
    release.send(()).unwrap();
    let err = ended
        .expect("the run waited for a body its Timeout dropped")
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(gate.undone_first.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// A sync stage with a rollback, held while a sibling fails the run.

#[stage(reads = [n], writes = [b], rollback = refund)]
fn charge(n: &u64, gate: Res<Gate>) -> Result<u64, StageError> {
    gate.hold(*n)
}

/// Fails once the held body has entered.
#[stage(reads = [n], writes = [c])]
async fn declines(_n: &u64, gate: Res<Gate>) -> Result<u64, StageError> {
    gate.wait_entered().await;
    Err(StageError::msg("declined"))
}

/// On a current_thread runtime: the run waits for the body, then refunds the charge.
#[tokio::test]
async fn current_thread_runtime_waits_for_the_body_and_refunds() {
    let (gate, release) = Gate::new();
    let log = Log::default();
    let pipe = pipeline! { charge, declines }
        .with_shared_resource(gate.clone())
        .with_callback(log.clone());
    let mut run = std::pin::pin!(pipe.invoke(input! { n: 1 }));
    // The sibling fails once the body has entered; the run then waits for the body.
    let mut polls = 0;
    while !log.lines().iter().any(|l| l == "cancelled charge") {
        assert!(futures::poll!(run.as_mut()).is_pending());
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(1));
        polls += 1;
        assert!(polls < 5000, "{:#?}", log.lines());
    }
    for _ in 0..20 {
        assert!(futures::poll!(run.as_mut()).is_pending());
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    let err = run.await.unwrap_err();
    assert!(err.to_string().contains("declined"), "{err}");
    assert_eq!(
        gate.refunded.load(Ordering::SeqCst),
        1,
        "{:#?}",
        log.lines()
    );
    log.check_invariants();
}

/// A body that fails, or panics, after its stage was dropped is not rolled back, and the
/// run's error is the sibling's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_body_that_fails_or_panics_is_not_rolled_back() {
    for outcome in ["err", "panic"] {
        let (gate, release) = Gate::new();
        *gate.outcome.lock().unwrap() = outcome;
        let log = Log::default();
        let pipe = pipeline! { first, charge, declines }
            .with_shared_resource(gate.clone())
            .with_callback(log.clone());
        let run = tokio::spawn(async move { pipe.invoke(input! { n: 1 }).await });
        let (running, err) = release_held(&gate, release, Duration::from_millis(50), run).await;
        assert!(running);
        assert!(err.to_string().contains("declined"), "{outcome}: {err}");
        assert_eq!(gate.refunded.load(Ordering::SeqCst), 0, "{outcome}");
        assert_eq!(gate.undone_first.load(Ordering::SeqCst), 1, "{outcome}");
        log.check_invariants();
    }
}

/// Durable, nothing else finished: a body that succeeds makes the run `RolledBack`; one
/// that fails leaves it `Failed`, and a resume runs the stage again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_statuses_after_waiting_for_a_body() {
    for (outcome, want) in [("ok", RunStatus::RolledBack), ("err", RunStatus::Failed)] {
        let (gate, release) = Gate::new();
        *gate.outcome.lock().unwrap() = outcome;
        let store = InMemoryStore::new();
        let pipe = pipeline! { charge, declines }
            .with_shared_resource(gate.clone())
            .with_store(store.clone());
        let run = tokio::spawn({
            let pipe = pipe.clone();
            async move { pipe.invoke(input! { n: 1 }).run_id("held").await }
        });
        let (running, err) = release_held(&gate, release, Duration::from_millis(50), run).await;
        assert!(running);
        assert!(err.to_string().contains("declined"), "{outcome}: {err}");
        let record = pipe.inspect("held").await.unwrap();
        assert_eq!(record.status, want, "{outcome}: {record:?}");
        let refunds = if outcome == "ok" { 1 } else { 0 };
        assert_eq!(gate.refunded.load(Ordering::SeqCst), refunds, "{outcome}");
    }
}

/// Durable: the lease is renewed while the run waits for a body, longer than the lease:
/// nobody else can take the run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_kept_while_waiting_for_a_body() {
    let (gate, release) = Gate::new();
    let store = InMemoryStore::new();
    let pipe = pipeline! { first, charge, declines }
        .with_shared_resource(gate.clone())
        .with_store(store.clone())
        .with_lease(Duration::from_millis(300));
    let run = tokio::spawn({
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { n: 1 }).run_id("leased").await }
    });
    gate.wait_entered().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!run.is_finished());
    let other = pipe.resume("leased").await;
    assert!(
        matches!(other, Err(Error::RunIdInUse { .. })),
        "another run took it over: {other:?}"
    );
    release.send(()).unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("declined"), "{err}");
    let record = pipe.inspect("leased").await.unwrap();
    assert_eq!(record.status, RunStatus::RolledBack, "{record:?}");
    assert_eq!(gate.refunded.load(Ordering::SeqCst), 1);
    assert_eq!(gate.undone_first.load(Ordering::SeqCst), 1);
}

/// A run dropped while it waits for a body: one run end (cancelled), one end per stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_dropped_while_waiting_for_a_body_ends_once() {
    let (gate, release) = Gate::new();
    let log = Log::default();
    let pipe = pipeline! { first, charge, declines }
        .with_shared_resource(gate.clone())
        .with_callback(log.clone());
    let run = tokio::spawn(async move { pipe.invoke(input! { n: 1 }).await });
    gate.wait_entered().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.check_invariants();
}

/// Under `Retry`: the attempt running when the sibling fails is waited for and refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_sync_stage_is_waited_for_and_refunded() {
    let (gate, release) = Gate::new();
    let log = Log::default();
    let pipe = pipeline! { charge, declines }
        .with_shared_resource(gate.clone())
        .with_callback(log.clone())
        .with_middleware(Retry::constant(2, Duration::from_millis(10)));
    let run = tokio::spawn(async move { pipe.invoke(input! { n: 1 }).await });
    let (running, err) = release_held(&gate, release, Duration::from_millis(200), run).await;
    assert!(running, "{:#?}", log.lines());
    assert!(err.to_string().contains("declined"), "{err}");
    assert_eq!(
        gate.refunded.load(Ordering::SeqCst),
        1,
        "{:#?}",
        log.lines()
    );
    log.check_invariants();
}

// ---------------------------------------------------------------------------------------
// Work of another run, dropped inside a stage's future.

/// A pipeline a stage runs inside itself.
struct Inner(fluxio::Pipeline, AtomicU32);

#[stage(reads = [n], writes = [b], rollback = undo_calls_inner)]
async fn calls_inner(n: &u64, inner: Res<Inner>) -> Result<u64, StageError> {
    let out = inner
        .0
        .invoke(input! { n: *n })
        .await
        .map_err(|e| StageError::msg(e.to_string()))?;
    Ok(out.get(b).copied().unwrap_or(0))
}
async fn undo_calls_inner(_n: &u64, inner: Res<Inner>) {
    inner.1.fetch_add(1, Ordering::SeqCst);
}

/// An async stage whose future holds another pipeline's run, whose sync body is running:
/// the stage never finished, so its rollback must not run (rollbacks are for finished
/// stages) — whatever became of the other run's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_stage_is_not_rolled_back_for_another_runs_body() {
    let (gate, release) = Gate::new();
    let inner = pipeline! { charge }.with_shared_resource(gate.clone());
    let log = Log::default();
    let inner = Arc::new(Inner(inner, AtomicU32::new(0)));
    let pipe = pipeline! { calls_inner, declines }
        .with_shared_resource(gate.clone())
        .with_shared_resource(inner.clone())
        .with_callback(log.clone());
    let run = tokio::spawn(async move { pipe.invoke(input! { n: 1 }).await });
    let (_, err) = release_held(&gate, release, Duration::from_millis(50), run).await;
    assert!(err.to_string().contains("declined"), "{err}");
    // The other run's body goes through (its run was dropped: nobody waits for it).
    for _ in 0..200 {
        if gate.charged.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gate.charged.load(Ordering::SeqCst), 1);
    assert_eq!(
        inner.1.load(Ordering::SeqCst),
        0,
        "`calls_inner` never finished, yet was rolled back: {:#?}",
        log.lines()
    );
    log.check_invariants();
}

/// A nested pipeline still running (not rolling back) when the outer run fails: its
/// stages are not rolled back (documented), and a durable outer run with nothing of its
/// own to undo ends `Failed`, resumable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_nested_pipeline_with_a_held_body_leaves_the_outer_run_failed() {
    let (gate, release) = Gate::new();
    let sub = pipeline! { charge }.named("sub");
    let store = InMemoryStore::new();
    let log = Log::default();
    let pipe = pipeline! { sub.clone(), declines }
        .with_shared_resource(gate.clone())
        .with_store(store.clone())
        .with_callback(log.clone());
    let run = tokio::spawn({
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { n: 1 }).run_id("nested-held").await }
    });
    let (_, err) = release_held(&gate, release, Duration::from_millis(50), run).await;
    assert!(err.to_string().contains("declined"), "{err}");
    let record = pipe.inspect("nested-held").await.unwrap();
    assert_eq!(record.status, RunStatus::Failed, "{record:?}");
    log.check_invariants();
}

// ---------------------------------------------------------------------------------------
// `Invoke` as a `Future`.

#[stage(reads = [n], writes = [a])]
async fn slow_a(n: &u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    *n
}

/// Once polled, the run has started with the options it had: naming it afterwards cannot
/// take effect, and must not be silently ignored.
#[tokio::test(start_paused = true)]
async fn naming_a_run_after_its_first_poll_is_not_silently_ignored() {
    let store = InMemoryStore::new();
    let pipe = pipeline! { slow_a }.with_store(store.clone());
    let mut run = pipe.invoke(input! { n: 1 });
    assert!(futures::poll!(&mut run).is_pending());
    let out = run.run_id("named-late").await;
    // Honoured, or refused: not run under another id as if it had been.
    let refused = matches!(out, Err(Error::BadRunId { .. }));
    assert!(
        refused || pipe.inspect("named-late").await.is_ok(),
        "the run was stored under another id: `.run_id(..)` after the first poll was ignored \
         ({out:?})"
    );
}

/// `Invoke` was `Send + Sync + Unpin` before it became a `Future`.
#[test]
fn invoke_keeps_its_auto_traits() {
    fn send_sync_unpin<T: Send + Sync + Unpin>() {}
    // What it is made of (a `&Pipeline`, a `Ctx`, options) is all `Sync`.
    send_sync_unpin::<Ctx>();
    send_sync_unpin::<fluxio::Pipeline>();
    send_sync_unpin::<fluxio::Invoke<'static>>();
}

// ---------------------------------------------------------------------------------------
// A sync stage answered by its sync fallback, held while a sibling fails the run.

#[stage(reads = [n], writes = [b], fallback = charge_backup, rollback = refund)]
fn charge_primary(_n: &u64, _gate: Res<Gate>) -> Result<u64, StageError> {
    Err(StageError::msg("primary provider down"))
}
fn charge_backup(n: &u64, gate: Res<Gate>) -> Result<u64, StageError> {
    gate.hold(*n)
}

/// The fallback's body is a sync body on the blocking pool like the stage's own: when it
/// succeeds, the stage completed (and a failure afterwards rolls it back). Running when a
/// sibling fails, it cannot be stopped either: the run waits for it, and rolls the stage
/// back when it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_fallback_still_running_when_a_sibling_fails_is_awaited_and_rolled_back() {
    for with_first in [false, true] {
        let (gate, release) = Gate::new();
        let log = Log::default();
        let pipe = if with_first {
            pipeline! { first, charge_primary, declines }
        } else {
            pipeline! { charge_primary, declines }
        }
        .with_shared_resource(gate.clone())
        .with_callback(log.clone());
        let run = tokio::spawn(async move { pipe.invoke(input! { n: 1 }).await });
        let (waited, err) = release_held(&gate, release, Duration::from_millis(50), run).await;
        assert!(err.to_string().contains("declined"), "{err}");
        for _ in 0..100 {
            if gate.charged.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            gate.charged.load(Ordering::SeqCst),
            1,
            "the backup charge went through"
        );
        assert!(
            waited,
            "with_first={with_first}: the run did not wait for the fallback's body: {:#?}",
            log.lines()
        );
        assert_eq!(
            gate.refunded.load(Ordering::SeqCst),
            1,
            "with_first={with_first}: the backup charge was not refunded: {:#?}",
            log.lines()
        );
        log.check_invariants();
    }
}
