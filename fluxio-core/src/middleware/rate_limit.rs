//! `RateLimit`: a token bucket in front of stage calls.

use std::any::TypeId;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

use super::{Middleware, Next, StageCall};
use crate::error::Error;
use crate::stage::{StageError, StageMeta, StageOutput};
use crate::store::BoxFuture;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Limits how often stages are called: a token bucket refilled at `rate` calls per second,
/// holding at most `burst` tokens. A call without a token waits for one by default; with
/// [`refuse_when_limited`](RateLimit::refuse_when_limited) it fails at once with
/// [`Error::RateLimited`] instead (the stage is not called).
/// One bucket for the whole pipeline by default, or one per stage with
/// [`per_stage`](RateLimit::per_stage). Clones share their buckets: one limit added to
/// several pipelines limits their calls together.
///
/// By default a burst is as large as the rate (`per_second(20.0)` lets 20 calls go at once
/// after a quiet second); set it with [`burst`](RateLimit::burst).
///
/// The clock is tokio's, so tests can drive it with `tokio::time::pause()`.
///
/// ```
/// # use fluxio_core::middleware::RateLimit;
/// let limit = RateLimit::per_second(20.0).burst(5).per_stage();
/// # let _ = limit;
/// ```
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    per_stage: bool,
    pub(crate) refuse: bool,
    /// Per stage type (`None`: the one bucket of a limit that is not per stage). Stages
    /// of different modules may share a name; they are other stages.
    buckets: Arc<Mutex<FxHashMap<Option<TypeId>, Bucket>>>,
}

impl RateLimit {
    /// At most `rate` calls per second on average, bursts of up to `rate` (at least 1).
    ///
    /// # Panics
    ///
    /// When `rate` is not a finite number above zero (`f64::INFINITY` is no limit: leave
    /// the middleware out instead).
    pub fn per_second(rate: f64) -> Self {
        assert!(
            rate.is_finite() && rate > 0.0,
            "a rate limit needs a finite rate above zero (calls per second), got {rate}"
        );
        RateLimit {
            rate,
            burst: rate.max(1.0),
            per_stage: false,
            refuse: false,
            buckets: Default::default(),
        }
    }

    /// How many calls may go at once after a quiet period.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = f64::from(burst.max(1));
        self
    }

    /// One bucket per stage instead of one for the pipeline (per stage *type*: two stages
    /// of different modules that share a name have a bucket each).
    #[must_use]
    pub fn per_stage(mut self) -> Self {
        self.per_stage = true;
        self
    }

    /// A call without a token fails at once with [`Error::RateLimited`] (saying when the
    /// next token comes) instead of waiting for one: for callers that would rather shed
    /// load than queue it.
    #[must_use]
    pub fn refuse_when_limited(mut self) -> Self {
        self.refuse = true;
        self
    }

    /// The error of a call refused for `retry_in`.
    pub(crate) fn refusal(stage: &'static str, retry_in: Duration) -> StageError {
        StageError::new(Error::RateLimited {
            stage,
            run_id: None,
            retry_in,
        })
    }

    /// Takes a token, or says how long to wait for one.
    pub(crate) fn take(&self, stage: &StageMeta) -> Option<Duration> {
        let key = self.per_stage.then(|| (stage.id)());
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            // A rate so low that the wait overflows a `Duration` waits "forever".
            let wait = (1.0 - bucket.tokens) / self.rate;
            Some(
                Duration::try_from_secs_f64(wait).map_or(super::FOREVER, |d| d.min(super::FOREVER)),
            )
        }
    }
}

impl RateLimit {
    /// Outside a tokio runtime, the error a call that must wait for a token gets: the wait
    /// is tokio's timer.
    #[cold]
    pub(crate) fn no_timer(stage: &'static str) -> Option<StageError> {
        crate::Error::without_runtime(|| {
            format!("`RateLimit`, to wait for a token for stage `{stage}`,")
        })
        .map(StageError::new)
    }
}

impl Middleware for RateLimit {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        Box::pin(async move {
            while let Some(wait) = self.take(call.meta) {
                if self.refuse {
                    return Err(Self::refusal(call.meta.name, wait));
                }
                if let Some(e) = Self::no_timer(call.meta.name) {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
            }
            next.run(call).await
        })
    }
}
