//! `CircuitBreaker`: stop calling a stage that keeps failing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Middleware, Next, StageCall};
use crate::error::Error;
use crate::stage::{StageError, StageOutput};
use crate::store::BoxFuture;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is in flight; others are refused until it ends.
    HalfOpen,
}

/// A circuit breaker per stage: after `threshold` consecutive failures the stage's circuit
/// opens and calls fail at once with [`Error::CircuitOpen`] without calling the stage. After
/// the reset timeout (30 s by default) one trial call passes (half-open): success closes
/// the circuit, failure opens it again.
///
/// Put it outside [`Retry`](super::Retry) to count a call that failed after all its retries
/// as one failure.
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
    states: Arc<Mutex<HashMap<&'static str, State>>>,
}

impl CircuitBreaker {
    /// Opens a stage's circuit after `threshold` consecutive failures.
    pub fn new(threshold: u32) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            reset: Duration::from_secs(30),
            states: Default::default(),
        }
    }

    /// How long an open circuit stays open before a trial call.
    #[must_use]
    pub fn reset_after(mut self, reset: Duration) -> Self {
        self.reset = reset;
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<&'static str, State>) -> T) -> T {
        let mut guard = self.states.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Whether a call may go through now (and, if it is the half-open trial, marks it).
    fn admit(&self, stage: &'static str) -> bool {
        self.with(|states| {
            let state = states.entry(stage).or_insert(State::Closed { failures: 0 });
            match *state {
                State::Closed { .. } => true,
                State::Open { until } if Instant::now() >= until => {
                    *state = State::HalfOpen;
                    true
                }
                State::Open { .. } | State::HalfOpen => false,
            }
        })
    }

    fn record(&self, stage: &'static str, ok: bool) {
        let (threshold, reset) = (self.threshold, self.reset);
        self.with(|states| {
            let state = states.entry(stage).or_insert(State::Closed { failures: 0 });
            *state = match (*state, ok) {
                (_, true) => State::Closed { failures: 0 },
                (State::HalfOpen, false) => State::Open {
                    until: Instant::now() + reset,
                },
                (State::Closed { failures }, false) if failures + 1 >= threshold => {
                    tracing::warn!(stage, failures = failures + 1, "circuit opened");
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
        let stage = call.meta.name;
        if !self.admit(stage) {
            return Box::pin(std::future::ready(Err(StageError::new(
                Error::CircuitOpen { stage },
            ))));
        }
        Box::pin(async move {
            let out = next.run(call).await;
            self.record(stage, out.is_ok());
            out
        })
    }
}
