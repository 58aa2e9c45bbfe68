//! Helpers shared by fluxio's integration tests (in `tests/`).

use std::sync::{Arc, Mutex};

use fluxio::middleware::{Middleware, Next, StageCall};
use fluxio::store::BoxFuture;
use fluxio::{StageError, StageOutput};

/// A user's middleware that records, in a shared log, each call it wraps: `"{tag} before
/// {stage} (attempt {n})"` on the way in, `"{tag} after {stage}: {ok}"` on the way out.
#[derive(Debug, Clone)]
pub struct Tag {
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tag {
    /// A middleware called `tag`, writing to `log`.
    pub fn new(tag: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Self {
        Tag {
            tag,
            log: log.clone(),
        }
    }
}

impl Middleware for Tag {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        let stage = call.meta.name;
        Box::pin(async move {
            self.log.lock().unwrap().push(format!(
                "{} before {stage} (attempt {})",
                self.tag, call.attempt
            ));
            let out = next.run(call).await;
            self.log
                .lock()
                .unwrap()
                .push(format!("{} after {stage}: {}", self.tag, out.is_ok()));
            out
        })
    }
}
