//! `CircuitBreaker`: stop calling a stage that keeps failing.

use std::any::TypeId;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

use super::{Middleware, Next, StageCall};
use crate::error::Error;
use crate::stage::{StageError, StageMeta, StageOutput};
use crate::store::BoxFuture;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A trial call is in flight; others are refused until it ends, or until another reset
    /// timeout has passed (a trial that was cancelled never reports).
    HalfOpen {
        since: Instant,
    },
}

impl State {
    const CLEAN: State = State::Closed { failures: 0 };
}

#[derive(Debug, Default)]
struct Shared {
    /// How many stages are not cleanly closed. While it is zero (the usual case) a call
    /// needs no lock: every circuit is closed, and a success changes nothing.
    troubled: AtomicUsize,
    /// Per stage type: stages of different modules may share a name, and one breaker may
    /// serve several pipelines. (Type ids are compile-time constants, so a fast non-keyed
    /// hash is fine.)
    states: Mutex<FxHashMap<TypeId, State>>,
}

/// A circuit breaker per stage: after `threshold` consecutive failures the stage's circuit
/// opens and calls fail at once with [`Error::CircuitOpen`] without calling the stage. After
/// the reset timeout (30 s by default) one trial call passes (half-open): success closes
/// the circuit, failure opens it again.
///
/// Put it outside [`Retry`](super::Retry) to count a call that failed after all its retries
/// as one failure.
///
/// Clones share their circuits: one breaker added to several pipelines (one per downstream
/// service, say) keeps one circuit per stage across them. A stage is its type, not its
/// name: two stages of different modules that share a name have a circuit each.
///
/// ```
/// # use fluxio_core::middleware::CircuitBreaker;
/// # use std::time::Duration;
/// let breaker = CircuitBreaker::new(5).reset_after(Duration::from_secs(10));
/// # let _ = breaker;
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    reset: Duration,
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// Opens a stage's circuit after `threshold` consecutive failures.
    pub fn new(threshold: u32) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            reset: Duration::from_secs(30),
            shared: Default::default(),
        }
    }

    /// How long an open circuit stays open before a trial call (at most 30 years: a longer
    /// one is cut to that).
    #[must_use]
    pub fn reset_after(mut self, reset: Duration) -> Self {
        self.reset = reset.min(super::FOREVER);
        self
    }

    /// Runs `f` on `stage`'s state under the lock, keeping the count of troubled stages.
    fn update<T>(&self, stage: &StageMeta, f: impl FnOnce(&mut State) -> T) -> T {
        let mut states = self.shared.states.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry((stage.id)()).or_insert(State::CLEAN);
        let was_clean = *state == State::CLEAN;
        let out = f(state);
        match (was_clean, *state == State::CLEAN) {
            (true, false) => {
                self.shared.troubled.fetch_add(1, Ordering::Release);
            }
            (false, true) => {
                self.shared.troubled.fetch_sub(1, Ordering::Release);
            }
            _ => {}
        }
        out
    }

    /// Whether a call of `stage` may go through now (and, if it is the half-open trial,
    /// marks it); refused, how long until a trial call may go through.
    /// (Inlined: while no stage is in trouble, the usual case, it is one atomic load.)
    #[inline]
    pub(crate) fn admit(&self, stage: &StageMeta) -> Result<(), Duration> {
        if self.shared.troubled.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        self.admit_troubled(stage)
    }

    /// [`admit`](Self::admit) while some stage's circuit is not clean.
    #[inline(never)]
    fn admit_troubled(&self, stage: &StageMeta) -> Result<(), Duration> {
        let reset = self.reset;
        self.update(stage, |state| {
            let now = Instant::now();
            let trial_at = match *state {
                State::Closed { .. } => return Ok(()),
                State::Open { until } => until,
                // A trial is in flight: another one goes through if it never reports.
                State::HalfOpen { since } => since + reset,
            };
            if now < trial_at {
                return Err(trial_at - now);
            }
            *state = State::HalfOpen { since: now };
            Ok(())
        })
    }

    /// The error for a call of `stage` refused for `retry_in`.
    pub(crate) fn refusal(stage: &'static str, retry_in: Duration) -> StageError {
        StageError::new(Error::CircuitOpen {
            stage,
            run_id: None,
            retry_in,
        })
    }

    /// Tells the breaker how a call ended. A refusal from inside (a rate limit without a
    /// token, another breaker) says nothing about the stage: it is not counted, and a trial
    /// refused that way stays in flight until the reset timeout lets another through.
    /// (Inlined: a success while no stage is in trouble, the usual case, is one atomic
    /// load.)
    #[inline]
    pub(crate) fn record_outcome(&self, stage: &StageMeta, out: &Result<StageOutput, StageError>) {
        if out.is_ok() && self.shared.troubled.load(Ordering::Acquire) == 0 {
            return;
        }
        self.record_outcome_troubled(stage, out);
    }

    /// [`record_outcome`](Self::record_outcome) of a failure, or of a success while some
    /// stage's circuit is not clean.
    #[inline(never)]
    fn record_outcome_troubled(&self, stage: &StageMeta, out: &Result<StageOutput, StageError>) {
        let ok = match out {
            Err(e) if super::is_refusal(e) => return,
            out => out.is_ok(),
        };
        let (threshold, reset) = (self.threshold, self.reset);
        self.update(stage, |state| {
            *state = match (*state, ok) {
                (_, true) => State::CLEAN,
                (State::HalfOpen { .. }, false) => State::Open {
                    until: Instant::now() + reset,
                },
                (State::Closed { failures }, false) if failures + 1 >= threshold => {
                    tracing::warn!(
                        stage = stage.name,
                        failures = failures + 1,
                        "circuit opened"
                    );
                    State::Open {
                        until: Instant::now() + reset,
                    }
                }
                (State::Closed { failures }, false) => State::Closed {
                    failures: failures + 1,
                },
                (open @ State::Open { .. }, false) => open,
            };
        });
    }
}

impl Middleware for CircuitBreaker {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        let stage = call.meta;
        if let Err(retry_in) = self.admit(stage) {
            return Box::pin(std::future::ready(Err(Self::refusal(stage.name, retry_in))));
        }
        Box::pin(async move {
            let out = next.run(call).await;
            self.record_outcome(stage, &out);
            out
        })
    }
}
