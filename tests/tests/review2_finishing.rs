//! Adversarial review (2): a failing run waits for the sync bodies it cannot stop and for
//! nested rollbacks (`533cd41`), and `Invoke` as a `Future` (`612924d`).
//!
//! Sync bodies are held on the blocking pool with channels; a real clock is used only
//! where a blocking body must be held while a timer fires (a paused clock does not
//! advance while a blocking task runs).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxio::prelude::*;
use fluxio::store::RunStatus;
use fluxio::{Error, StageEvent};

fluxio::keys! {
    pub n: u64;
    pub a: u64;
    pub b: u64;
    pub c: u64;
}

/// Every callback, as a line of text.
#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    /// Every started stage has exactly one end; the run has exactly one end.
    fn check_invariants(&self) {
        let lines = self.lines();
        for s in lines.iter().filter(|l| l.starts_with("start ")) {
            let stage = s.trim_start_matches("start ");
            let ends = lines
                .iter()
                .filter(|l| {
                    ["end ", "error ", "cancelled ", "skip "]
                        .iter()
                        .any(|p| **l == format!("{p}{stage}"))
                })
                .count();
            assert_eq!(ends, 1, "stage {stage} has {ends} ends: {lines:#?}");
        }
        let run_ends = lines
            .iter()
            .filter(|l| l.starts_with("run_end") || *l == "run_cancelled")
            .count();
        assert_eq!(run_ends, 1, "{lines:#?}");
    }
}

impl fluxio::Callback for Log {
    fn on_run_start(&self, _run_id: &str) {
        self.push("run_start".into());
    }
    fn on_run_end(&self, _run_id: &str, outcome: Result<&Ctx, &Error>, _e: Duration) {
        self.push(format!(
            "run_end {}",
            if outcome.is_ok() { "ok" } else { "err" }
        ));
    }
    fn on_run_cancelled(&self, _run_id: &str) {
        self.push("run_cancelled".into());
    }
    fn on_stage_start(&self, e: &StageEvent<'_>) {
        self.push(format!("start {}", e.stage));
    }
    fn on_stage_end(&self, e: &StageEvent<'_>, _: Duration) {
        self.push(format!("end {}", e.stage));
    }
    fn on_stage_error(&self, e: &StageEvent<'_>, _err: &Error, _: Duration) {
        self.push(format!("error {}", e.stage));
    }
    fn on_stage_skip(&self, e: &StageEvent<'_>, _r: &str) {
        self.push(format!("skip {}", e.stage));
    }
    fn on_stage_cancelled(&self, e: &StageEvent<'_>, _: Duration) {
        self.push(format!("cancelled {}", e.stage));
    }
    fn on_rollback(&self, e: &StageEvent<'_>, err: Option<&Error>) {
        self.push(format!(
            "rollback {}{}",
            e.stage,
            if err.is_some() { " failed" } else { "" }
        ));
    }
}

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
#[stage(reads = [n], writes = [b], timeout = "100ms", rollback = refund_held)]
fn held_with_timeout_and_refund(n: &u64, gate: Res<Gate>) -> Result<u64, StageError> {
    gate.hold(*n)
}
fn refund_held(_n: &u64, gate: Res<Gate>) {
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
