//! Callbacks: observe a run's lifecycle without touching stage code.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::ctx::Ctx;
use crate::error::Error;
use crate::stage::{StageError, StageKind};

/// What a stage event is about.
#[derive(Debug, Clone, Copy)]
pub struct StageEvent<'a> {
    /// The run's id.
    pub run_id: &'a str,
    /// The stage's name.
    pub stage: &'static str,
    /// How the stage runs.
    pub kind: StageKind,
    /// The attempt number, from 1.
    pub attempt: u32,
}

/// Calls `f` on each of `callbacks`. A panic in one is logged and goes no further — not into
/// the run, which would otherwise blame the stage being reported on.
pub(crate) fn notify_all(callbacks: &[Arc<dyn Callback>], f: impl Fn(&dyn Callback)) {
    for c in callbacks {
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| f(&**c))) {
            tracing::error!(
                panic = %crate::run::panic_text(&*payload),
                "a callback panicked; the run goes on"
            );
        }
    }
}

/// Observer of pipeline runs, registered with `Pipeline::with_callback`.
///
/// Every method has a no-op default, so an implementation overrides only what it needs.
/// Callbacks run inline on the run's task: keep them quick and never block. A callback
/// that panics is logged (a `tracing` error) and the run goes on: callbacks observe runs,
/// they do not fail them.
///
/// ```
/// # use fluxio_core::{Callback, StageEvent};
/// # use std::sync::atomic::{AtomicUsize, Ordering};
/// #[derive(Default)]
/// struct CountStages(AtomicUsize);
///
/// impl Callback for CountStages {
///     fn on_stage_start(&self, _event: &StageEvent<'_>) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// let counter = CountStages::default();
/// counter.on_stage_start(&StageEvent {
///     run_id: "r1", stage: "s", kind: fluxio_core::StageKind::Async, attempt: 1,
/// });
/// assert_eq!(counter.0.load(Ordering::Relaxed), 1);
/// ```
#[allow(
    unused_variables,
    reason = "the defaults ignore their arguments by design"
)]
pub trait Callback: Send + Sync + 'static {
    /// A run starts.
    fn on_run_start(&self, run_id: &str) {}
    /// A run ended, successfully or not.
    fn on_run_end(&self, run_id: &str, outcome: Result<&Ctx, &Error>, elapsed: Duration) {}
    /// A stage starts.
    fn on_stage_start(&self, event: &StageEvent<'_>) {}
    /// A stage finished successfully.
    fn on_stage_end(&self, event: &StageEvent<'_>, elapsed: Duration) {}
    /// A stage failed.
    fn on_stage_error(&self, event: &StageEvent<'_>, error: &Error, elapsed: Duration) {}
    /// A stage will not run (a branch its route did not take, or a middleware skipped it).
    fn on_stage_skip(&self, event: &StageEvent<'_>, reason: &str) {}
    /// A stage failed and `Retry` will call it again after `delay`; `event.attempt` is the
    /// attempt that failed.
    fn on_retry(&self, event: &StageEvent<'_>, error: &StageError, delay: Duration) {}
    /// A stream stage produced a chunk.
    fn on_chunk(&self, event: &StageEvent<'_>) {}
    /// A durable run stored a stage's entry (`bytes` long); `event.attempt` is the attempt
    /// whose writes it holds (the last, after `Retry`).
    fn on_checkpoint(&self, event: &StageEvent<'_>, bytes: usize) {}
    /// A run was dropped (cancelled) before it ended.
    fn on_run_cancelled(&self, run_id: &str) {}
    /// A stage that had started was dropped before it ended: another stage failed the run
    /// while it ran (heard before the run's end), or the run itself was dropped (before
    /// `on_run_cancelled`). Every `on_stage_start` is followed by exactly one of
    /// `on_stage_end`, `on_stage_error` or this.
    fn on_stage_cancelled(&self, event: &StageEvent<'_>, elapsed: Duration) {}
    /// A stage failed and its fallback is producing its writes instead.
    fn on_fallback(&self, event: &StageEvent<'_>, error: &Error) {}
    /// The run failed and a finished stage's rollback ran (`error` if the rollback failed).
    fn on_rollback(&self, event: &StageEvent<'_>, error: Option<&Error>) {}
    /// A durable run is a resume of a stored one (after `on_run_start`, before any stage):
    /// `finished` names the stages its checkpoint holds as done, which do not run again.
    fn on_run_resumed(&self, run_id: &str, finished: &[&'static str]) {}
}

/// A callback shared behind an `Arc`: register a clone with `with_callback` and keep the
/// other to read what it gathered (counters, metrics).
///
/// ```
/// # use std::sync::Arc;
/// # use std::sync::atomic::{AtomicU64, Ordering};
/// # use fluxio_core::{Callback, StageEvent};
/// #[derive(Default)]
/// struct Started(AtomicU64);
/// impl Callback for Started {
///     fn on_stage_start(&self, _: &StageEvent<'_>) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// let started = Arc::new(Started::default());
/// let registered: Box<dyn Callback> = Box::new(started.clone()); // as `with_callback` keeps it
/// registered.on_stage_start(&StageEvent {
///     run_id: "r1", stage: "s", kind: fluxio_core::StageKind::Async, attempt: 1,
/// });
/// assert_eq!(started.0.load(Ordering::Relaxed), 1);
/// ```
impl<C: Callback + ?Sized> Callback for Arc<C> {
    fn on_run_start(&self, run_id: &str) {
        (**self).on_run_start(run_id);
    }
    fn on_run_end(&self, run_id: &str, outcome: Result<&Ctx, &Error>, elapsed: Duration) {
        (**self).on_run_end(run_id, outcome, elapsed);
    }
    fn on_stage_start(&self, event: &StageEvent<'_>) {
        (**self).on_stage_start(event);
    }
    fn on_stage_end(&self, event: &StageEvent<'_>, elapsed: Duration) {
        (**self).on_stage_end(event, elapsed);
    }
    fn on_stage_error(&self, event: &StageEvent<'_>, error: &Error, elapsed: Duration) {
        (**self).on_stage_error(event, error, elapsed);
    }
    fn on_stage_skip(&self, event: &StageEvent<'_>, reason: &str) {
        (**self).on_stage_skip(event, reason);
    }
    fn on_retry(&self, event: &StageEvent<'_>, error: &StageError, delay: Duration) {
        (**self).on_retry(event, error, delay);
    }
    fn on_chunk(&self, event: &StageEvent<'_>) {
        (**self).on_chunk(event);
    }
    fn on_checkpoint(&self, event: &StageEvent<'_>, bytes: usize) {
        (**self).on_checkpoint(event, bytes);
    }
    fn on_run_cancelled(&self, run_id: &str) {
        (**self).on_run_cancelled(run_id);
    }
    fn on_stage_cancelled(&self, event: &StageEvent<'_>, elapsed: Duration) {
        (**self).on_stage_cancelled(event, elapsed);
    }
    fn on_fallback(&self, event: &StageEvent<'_>, error: &Error) {
        (**self).on_fallback(event, error);
    }
    fn on_rollback(&self, event: &StageEvent<'_>, error: Option<&Error>) {
        (**self).on_rollback(event, error);
    }
    fn on_run_resumed(&self, run_id: &str, finished: &[&'static str]) {
        (**self).on_run_resumed(run_id, finished);
    }
}

/// Logs every run and stage through `tracing`: run start, resume, end and cancellation, stage end,
/// skip, retry and rollback at `info`; stage start and stored checkpoints at `debug`;
/// failures at `warn`. Chunks are not logged. Fallbacks and failed rollbacks are logged at
/// `warn` by the runtime itself, with or without this callback. Install a subscriber (for example
/// `tracing_subscriber::fmt::init()`) to see them.
///
/// ```
/// # use fluxio_core::LoggingCallback;
/// let quiet = LoggingCallback::default().stage_starts(false);
/// # let _ = quiet;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LoggingCallback {
    stage_starts: bool,
}

impl Default for LoggingCallback {
    fn default() -> Self {
        LoggingCallback { stage_starts: true }
    }
}

impl LoggingCallback {
    /// Whether stage starts are logged (at `debug`); on by default.
    #[must_use]
    pub fn stage_starts(mut self, on: bool) -> Self {
        self.stage_starts = on;
        self
    }
}

impl Callback for LoggingCallback {
    fn on_run_start(&self, run_id: &str) {
        tracing::info!(run_id, "run started");
    }
    fn on_run_end(&self, run_id: &str, outcome: Result<&Ctx, &Error>, elapsed: Duration) {
        match outcome {
            Ok(ctx) => tracing::info!(
                run_id,
                elapsed_ms = elapsed.as_millis() as u64,
                keys = ctx.len(),
                "run completed"
            ),
            Err(e) => {
                tracing::warn!(run_id, elapsed_ms = elapsed.as_millis() as u64, error = %e, "run failed")
            }
        }
    }
    fn on_stage_start(&self, event: &StageEvent<'_>) {
        if !self.stage_starts {
            return;
        }
        tracing::debug!(
            run_id = event.run_id,
            stage = event.stage,
            kind = event.kind.as_str(),
            "stage started"
        );
    }
    fn on_stage_end(&self, event: &StageEvent<'_>, elapsed: Duration) {
        tracing::info!(
            run_id = event.run_id,
            stage = event.stage,
            attempt = event.attempt,
            elapsed_ms = elapsed.as_millis() as u64,
            "stage completed"
        );
    }
    fn on_stage_error(&self, event: &StageEvent<'_>, error: &Error, elapsed: Duration) {
        tracing::warn!(run_id = event.run_id, stage = event.stage, attempt = event.attempt, elapsed_ms = elapsed.as_millis() as u64, error = %error, "stage failed");
    }
    fn on_stage_skip(&self, event: &StageEvent<'_>, reason: &str) {
        tracing::info!(
            run_id = event.run_id,
            stage = event.stage,
            reason,
            "stage skipped"
        );
    }
    fn on_retry(&self, event: &StageEvent<'_>, error: &StageError, delay: Duration) {
        tracing::info!(run_id = event.run_id, stage = event.stage, attempt = event.attempt, delay_ms = delay.as_millis() as u64, error = %error, "stage will be retried");
    }
    // A fallback starting and a rollback failing are logged by the runtime itself (as
    // warnings, with or without this callback): not twice.
    fn on_rollback(&self, event: &StageEvent<'_>, error: Option<&Error>) {
        if error.is_none() {
            tracing::info!(
                run_id = event.run_id,
                stage = event.stage,
                "stage rolled back"
            );
        }
    }
    fn on_run_resumed(&self, run_id: &str, finished: &[&'static str]) {
        tracing::info!(run_id, finished = ?finished, "run resumed");
    }
    fn on_stage_cancelled(&self, event: &StageEvent<'_>, elapsed: Duration) {
        tracing::info!(
            run_id = event.run_id,
            stage = event.stage,
            elapsed_ms = elapsed.as_millis() as u64,
            "stage cancelled"
        );
    }
    fn on_run_cancelled(&self, run_id: &str) {
        tracing::info!(run_id, "run cancelled");
    }
    fn on_checkpoint(&self, event: &StageEvent<'_>, bytes: usize) {
        tracing::debug!(
            run_id = event.run_id,
            stage = event.stage,
            bytes,
            "checkpoint stored"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the name of every method called on it.
    #[derive(Default)]
    struct Heard(Mutex<Vec<&'static str>>);

    impl Heard {
        fn heard(&self, name: &'static str) {
            self.0.lock().unwrap().push(name);
        }
    }

    impl Callback for Heard {
        fn on_run_start(&self, _: &str) {
            self.heard("run_start");
        }
        fn on_run_end(&self, _: &str, _: Result<&Ctx, &Error>, _: Duration) {
            self.heard("run_end");
        }
        fn on_stage_start(&self, _: &StageEvent<'_>) {
            self.heard("stage_start");
        }
        fn on_stage_end(&self, _: &StageEvent<'_>, _: Duration) {
            self.heard("stage_end");
        }
        fn on_stage_error(&self, _: &StageEvent<'_>, _: &Error, _: Duration) {
            self.heard("stage_error");
        }
        fn on_stage_skip(&self, _: &StageEvent<'_>, _: &str) {
            self.heard("stage_skip");
        }
        fn on_retry(&self, _: &StageEvent<'_>, _: &StageError, _: Duration) {
            self.heard("retry");
        }
        fn on_chunk(&self, _: &StageEvent<'_>) {
            self.heard("chunk");
        }
        fn on_checkpoint(&self, _: &StageEvent<'_>, _: usize) {
            self.heard("checkpoint");
        }
        fn on_run_cancelled(&self, _: &str) {
            self.heard("run_cancelled");
        }
        fn on_stage_cancelled(&self, _: &StageEvent<'_>, _: Duration) {
            self.heard("stage_cancelled");
        }
        fn on_fallback(&self, _: &StageEvent<'_>, _: &Error) {
            self.heard("fallback");
        }
        fn on_rollback(&self, _: &StageEvent<'_>, _: Option<&Error>) {
            self.heard("rollback");
        }
        fn on_run_resumed(&self, _: &str, _: &[&'static str]) {
            self.heard("run_resumed");
        }
    }

    /// Calls every method of `c` once, in the trait's order.
    fn call_every_method(c: &dyn Callback) {
        let ev = StageEvent {
            run_id: "r",
            stage: "s",
            kind: StageKind::Async,
            attempt: 1,
        };
        let err = Error::Cancelled { run_id: None };
        let d = Duration::ZERO;
        c.on_run_start("r");
        c.on_run_end("r", Err(&err), d);
        c.on_stage_start(&ev);
        c.on_stage_end(&ev, d);
        c.on_stage_error(&ev, &err, d);
        c.on_stage_skip(&ev, "why");
        c.on_retry(&ev, &StageError::msg("x"), d);
        c.on_chunk(&ev);
        c.on_checkpoint(&ev, 1);
        c.on_run_cancelled("r");
        c.on_stage_cancelled(&ev, d);
        c.on_fallback(&ev, &err);
        c.on_rollback(&ev, None);
        c.on_run_resumed("r", &["s"]);
    }

    #[test]
    fn an_arc_hands_every_event_to_the_callback_it_holds() {
        let direct = Heard::default();
        call_every_method(&direct);
        let inner = Arc::new(Heard::default());
        call_every_method(&inner.clone());
        let direct = direct.0.into_inner().unwrap();
        assert_eq!(direct.len(), 14, "every method is called: {direct:?}");
        assert_eq!(*inner.0.lock().unwrap(), direct);
    }
}
