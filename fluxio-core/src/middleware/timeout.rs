//! `Timeout`: a default time limit for stages without their own.

use std::task::Poll;
use std::time::Duration;

use super::{Middleware, Next, StageCall};
use crate::error::Error;
use crate::stage::{StageError, StageOutput, poll_deadline};
use crate::store::BoxFuture;

/// Gives stages without `timeout = ".."` a time limit; a call past it fails with
/// [`Error::Timeout`]. Inside a [`Retry`](super::Retry) it limits each attempt; outside, all
/// of them together. A stage's own timeout always applies to the whole call.
///
/// ```
/// # use fluxio_core::middleware::Timeout;
/// # use std::time::Duration;
/// let t = Timeout::new(Duration::from_secs(10));
/// # let _ = t;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    pub(crate) after: Duration,
}

impl Timeout {
    /// A limit of `after` for stages without their own.
    pub fn new(after: Duration) -> Self {
        Timeout { after }
    }
}

impl Middleware for Timeout {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        if call.meta.timeout.is_some() {
            return next.run(call);
        }
        Box::pin(async move {
            // For a stream stage, the time the consumer holds it up is not counted (as on the
            // engine's path): the limit's end moves on with it.
            let chunks = &next.env.chunks;
            let before = chunks.consumer_time(call.meta);
            let Some(deadline) = tokio::time::Instant::now().checked_add(self.after) else {
                return next.run(call).await; // past the clock's range: no limit
            };
            let due =
                || deadline.checked_add(chunks.consumer_time(call.meta).saturating_sub(before));
            let mut inner = next.run(call);
            // Armed once the call waits (outside a tokio runtime, there is no timer).
            let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(out) = inner.as_mut().poll(cx) {
                    return Poll::Ready(out);
                }
                if timer.is_none() {
                    if let Some(e) = Error::without_runtime(|| {
                        format!(
                            "the `Timeout` of stage `{}` (tokio's timer)",
                            call.meta.name
                        )
                    }) {
                        return Poll::Ready(Err(StageError::new(e)));
                    }
                    timer.set(Some(tokio::time::sleep_until(deadline)));
                }
                let Some(timer) = timer.as_mut().as_pin_mut() else {
                    return Poll::Pending;
                };
                poll_deadline(timer, cx, due).map(|()| {
                    Err(StageError::new(Error::Timeout {
                        stage: call.meta.name,
                        run_id: None,
                        after: self.after,
                    }))
                })
            })
            .await
        })
    }
}
