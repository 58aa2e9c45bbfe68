//! `Timeout`: a default time limit for stages without their own.

use std::time::Duration;

use super::{Middleware, Next, StageCall};
use crate::error::Error;
use crate::stage::{StageError, StageOutput};
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
            match tokio::time::timeout(self.after, next.run(call)).await {
                Ok(out) => out,
                Err(_) => Err(StageError::new(Error::Timeout {
                    stage: call.meta.name,
                    run_id: None,
                    after: self.after,
                })),
            }
        })
    }
}
