//! `Retry`: call a failing stage again, with backoff.

use std::sync::Arc;
use std::time::Duration;

use super::{Middleware, Next, StageCall};
use crate::stage::{StageError, StageKind, StageOutput};
use crate::store::BoxFuture;

type Predicate = Arc<dyn Fn(&StageError) -> bool + Send + Sync>;

/// Retries failing stage calls: at most `max_attempts` calls in all, the first included
/// (`Retry::exponential(3)` calls a stage at most 3 times), waiting between them.
///
/// Exponential backoff doubles the delay from `base` (100 ms by default) up to `max`
/// (10 s), with full jitter: each wait is random in `[delay / 2, delay]`. A predicate
/// ([`when`](Retry::when)) chooses which errors to retry; without one, every error is
/// retried except a refusal — an open circuit ([`Error::CircuitOpen`], from a
/// [`CircuitBreaker`] inside the retry) or a rate limit set to refuse
/// ([`Error::RateLimited`]): it stands until its `retry_in`, so it is returned at once —
/// and a panic (a bug, which calling again would only repeat).
/// The final error says how many attempts ran. Stream stages are never retried.
///
/// [`CircuitBreaker`]: super::CircuitBreaker
/// [`Error::CircuitOpen`]: crate::Error::CircuitOpen
/// [`Error::RateLimited`]: crate::Error::RateLimited
///
/// ```
/// # use fluxio_core::middleware::Retry;
/// # use std::time::Duration;
/// let retry = Retry::exponential(5)
///     .base_delay(Duration::from_millis(50))
///     .when(|e| !e.to_string().contains("invalid"));
/// # let _ = retry;
/// ```
#[derive(Clone)]
pub struct Retry {
    max_attempts: u32,
    base: Duration,
    max: Duration,
    exponential: bool,
    jitter: bool,
    when: Option<Predicate>,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.max_attempts)
            .field("base", &self.base)
            .field("max", &self.max)
            .field("exponential", &self.exponential)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

impl Retry {
    /// At most `max_attempts` calls, with exponential backoff from 100 ms and jitter.
    pub fn exponential(max_attempts: u32) -> Self {
        Retry {
            max_attempts: max_attempts.max(1),
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            exponential: true,
            jitter: true,
            when: None,
        }
    }

    /// At most `max_attempts` calls, `delay` apart (no jitter).
    pub fn constant(max_attempts: u32, delay: Duration) -> Self {
        Retry {
            base: delay,
            max: delay,
            exponential: false,
            jitter: false,
            ..Self::exponential(max_attempts)
        }
    }

    /// The first delay of exponential backoff.
    #[must_use]
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The longest delay.
    #[must_use]
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Turns jitter on or off.
    #[must_use]
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Retries only the errors for which `pred` returns true. It replaces the default
    /// (every error but [`Error::CircuitOpen`] and [`Error::RateLimited`]): accept them here
    /// to retry refusals too, e.g. with delays longer than their `retry_in`. A panic is
    /// never retried, whatever `pred` says.
    ///
    /// [`Error::CircuitOpen`]: crate::Error::CircuitOpen
    /// [`Error::RateLimited`]: crate::Error::RateLimited
    #[must_use]
    pub fn when(mut self, pred: impl Fn(&StageError) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(pred));
        self
    }

    /// The wait after failed attempt `attempt` (from 1), before jitter.
    pub fn delay_before_jitter(&self, attempt: u32) -> Duration {
        if !self.exponential {
            return self.base;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait after failed attempt `attempt`, jitter included: within
    /// `[delay / 2, delay]` of [`delay_before_jitter`](Self::delay_before_jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.delay_before_jitter(attempt);
        if !self.jitter || d.is_zero() {
            return d;
        }
        let half = d / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A cheap random number in [0, 1): jitter needs spread, not cryptography.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The error of a stage that failed on every attempt.
#[derive(Debug, thiserror::Error)]
#[error("failed after {attempts} attempts: {last}")]
pub struct RetriesExhausted {
    /// How many calls ran.
    pub attempts: u32,
    /// The last error.
    #[source]
    pub last: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl Retry {
    /// After attempt `attempt` of `call` failed with `err`: `Ok(delay)` to try again after
    /// `delay` (the retry is logged and reported to the callbacks), or the error to return.
    pub(crate) fn after_failure(
        &self,
        call: &StageCall<'_>,
        attempt: u32,
        err: StageError,
    ) -> Result<Duration, StageError> {
        // An error not to retry is returned as it is (a `CircuitOpen` stays one; the
        // callbacks learn the attempt from the engine).
        // A panic is a bug, not a passing failure: never called again (an async stage's
        // panic does not even get here).
        if super::is_final(&err) {
            return Err(err);
        }
        let retry = !crate::run::is_panic(&err)
            && match &self.when {
                Some(accepts) => accepts(&err),
                // Calling again would only use the attempts up and bury the refusal under
                // `RetriesExhausted`.
                None => !super::is_refusal(&err),
            };
        if !retry {
            return Err(err);
        }
        if attempt >= self.max_attempts {
            if attempt == 1 {
                return Err(err);
            }
            return Err(StageError::new(RetriesExhausted {
                attempts: attempt,
                last: err.into_inner(),
            }));
        }
        // The wait before the next attempt is tokio's timer.
        if let Some(e) = crate::Error::without_runtime(|| {
            format!(
                "`Retry`, to wait before calling stage `{}` again after attempt {attempt} \
                 failed ({err}),",
                call.meta.name
            )
        }) {
            return Err(StageError::new(e));
        }
        let delay = self.delay(attempt);
        tracing::debug!(stage = call.meta.name, attempt, error = %err, ?delay, "stage failed; retrying");
        let this = StageCall { attempt, ..*call };
        let event = this.event();
        crate::callback::notify_all(call.callbacks, |c| c.on_retry(&event, &err, delay));
        Ok(delay)
    }
}

/// The span of one attempt, when a subscriber exists (see the executor).
/// (Inlined: without a subscriber, the usual case in a benchmark, it is one load.)
#[inline]
pub(crate) fn attempt_span(stage: &'static str, attempt: u32) -> Option<tracing::Span> {
    if !tracing::dispatcher::has_been_set() {
        return None;
    }
    new_attempt_span(stage, attempt)
}

#[inline(never)]
fn new_attempt_span(stage: &'static str, attempt: u32) -> Option<tracing::Span> {
    Some(tracing::info_span!("fluxio.attempt", stage, attempt))
}

impl Middleware for Retry {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        if call.meta.kind == StageKind::Stream {
            return next.run(call);
        }
        Box::pin(async move {
            let mut attempt = 1;
            loop {
                let this = StageCall { attempt, ..call };
                let span =
                    attempt_span(call.meta.name, attempt).unwrap_or_else(tracing::Span::none);
                let err = match tracing::Instrument::instrument(next.run(this), span).await {
                    Ok(out) => return Ok(out),
                    Err(e) => e,
                };
                let delay = self.after_failure(&call, attempt, err)?;
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_delays_double_up_to_the_max_and_jitter_stays_in_bounds() {
        let r = Retry::exponential(10)
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        let expected = [100, 200, 400, 800, 1000, 1000];
        for (attempt, ms) in (1..).zip(expected) {
            assert_eq!(r.delay_before_jitter(attempt), Duration::from_millis(ms));
            for _ in 0..50 {
                let d = r.delay(attempt);
                assert!(
                    d >= Duration::from_millis(ms) / 2 && d <= Duration::from_millis(ms),
                    "{d:?} for {ms} ms"
                );
            }
        }
        let c = Retry::constant(3, Duration::from_millis(40));
        assert_eq!(
            (c.delay(1), c.delay(5)),
            (Duration::from_millis(40), Duration::from_millis(40))
        );
        assert_eq!(Retry::exponential(0).max_attempts, 1, "at least one call");
    }
}
