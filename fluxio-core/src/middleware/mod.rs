//! Middleware: code that wraps every stage call.
//!
//! `pipe.with_middleware(m)` adds `m` to the pipeline's chain; the first added is the
//! outermost. Each middleware receives the call ([`StageCall`]: the stage's metadata, the
//! run id, the attempt, the context) and [`Next`], the rest of the chain ending in the stage.
//! It may call `next.run(call)` once (observe), several times (retry), or not at all
//! (short-circuit) — and then it must return an explicit result or error: there is no
//! silent success with empty writes.
//!
//! Built-ins: [`Retry`], [`Cache`], [`CircuitBreaker`], [`RateLimit`], [`Timeout`]. Any
//! middleware applies to every stage unless scoped with [`MiddlewareExt::only`] or
//! [`MiddlewareExt::except`]. Stream
//! stages bypass `Retry` and `Cache` (a re-run would repeat chunks already delivered; cached
//! chunks would never reach the consumer).
//!
//! A pipeline runs the built-ins itself, as steps of a small state machine next to each
//! stage's future, rather than through [`Middleware::handle`]: a call that does not wait
//! allocates nothing. Your own middleware is called through `handle`, with everything
//! inside it as boxed futures — add it last (innermost) to keep the built-ins outside it on
//! the fast path. The behaviour is the same either way.

mod cache;
mod circuit;
pub(crate) mod engine;
mod rate_limit;
mod retry;
mod scoped;
mod timeout;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub use cache::{Cache, CacheStats};
pub use circuit::CircuitBreaker;
#[doc(hidden)]
pub use engine::Engine;
pub use rate_limit::RateLimit;
pub use retry::{RetriesExhausted, Retry};
use scoped::Scope;
pub use scoped::{MiddlewareExt, Scoped};
pub use timeout::Timeout;

use crate::callback::{Callback, StageEvent};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::stage::{DynStage, StageEnv, StageError, StageMeta, StageOutput};
use crate::store::BoxFuture;

/// One stage call, as middleware sees it.
#[derive(Clone, Copy)]
pub struct StageCall<'a> {
    /// The stage's metadata: name, kind, reads, writes, timeout.
    pub meta: &'a StageMeta,
    /// The run's id, when it has one.
    pub run_id: Option<&'a str>,
    /// The attempt, from 1 (`Retry` raises it for the calls it repeats).
    pub attempt: u32,
    /// The context the stage reads from.
    pub ctx: &'a Ctx,
    /// The pipeline's callbacks, for middleware that report events (as `Retry` reports
    /// retries).
    pub callbacks: &'a [Arc<dyn Callback>],
}

impl std::fmt::Debug for StageCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageCall")
            .field("stage", &self.meta.name)
            .field("run_id", &self.run_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl StageCall<'_> {
    /// The callback event describing this call.
    pub fn event(&self) -> StageEvent<'_> {
        StageEvent {
            run_id: self.run_id.unwrap_or(""),
            stage: self.meta.name,
            kind: self.meta.kind,
            attempt: self.attempt,
        }
    }
}

/// The rest of the chain after a middleware, ending in the stage itself.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Layer],
    stage: &'a dyn DynStage,
    env: &'a StageEnv,
    /// Set when a call through this `Next` succeeded (the answer may be the stage's own).
    reached: &'a AtomicBool,
    /// The attempt of the last call that went in (for the callbacks: `Retry` raises it).
    attempt: &'a AtomicU32,
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("middleware_left", &self.rest.len())
            .finish()
    }
}

impl<'a> Next<'a> {
    /// Calls the rest of the chain (and so, eventually, the stage). Can be called again for
    /// another attempt. A stage that panics ends the call with an error (`panicked:
    /// <message>`), not with an unwind through the middleware.
    pub fn run(&self, call: StageCall<'a>) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        let this = *self;
        this.attempt.store(call.attempt, Ordering::Relaxed);
        Box::pin(async move {
            let out = match this.rest.split_first() {
                // A user's middleware: its answer is held to the stage's contract.
                Some((Layer::Custom(m), rest)) => {
                    let reached = AtomicBool::new(false);
                    let next = Next {
                        rest,
                        reached: &reached,
                        ..this
                    };
                    let out = m.handle(call, next).await;
                    checked_answer(call.meta, out, reached.load(Ordering::Relaxed))
                }
                Some((first, rest)) => first.handle(call, Next { rest, ..this }).await,
                None => {
                    // A panic is the call's failure, seen by the middleware outside.
                    let mut fut = this.stage.call(call.ctx, this.env);
                    std::future::poll_fn(|cx| crate::run::poll_caught(fut.as_mut(), cx)).await
                }
            };
            if out.is_ok() {
                this.reached.store(true, Ordering::Relaxed);
            }
            out
        })
    }
}

/// Whether `err` is a refusal to call the stage (an open circuit, a rate limit without a
/// token, a middleware's [`StageError::refusal`]), a call outside a tokio runtime (`NoRuntime`), or a stage that could not be
/// called (a read or resource missing): it stands until its `retry_in` (or for good),
/// usually longer than a backoff, and says nothing about the stage's health — `Retry` does
/// not retry it by default and a `CircuitBreaker` does not count it.
pub(crate) fn is_refusal(err: &StageError) -> bool {
    is_final(err) || err.is_refusal()
}

/// The refusals no `Retry` repeats, whatever its predicate: a stage that could not be
/// called (calling again finds the same context) and a call outside a tokio runtime (the
/// wait needs one).
pub(crate) fn is_final(err: &StageError) -> bool {
    err.was_not_called()
        || matches!(
            err.as_error().downcast_ref::<Error>(),
            Some(Error::NoRuntime { .. })
        )
}

/// The longest duration the built-ins count with: longer TTLs, reset timeouts and waits are
/// cut to it (30 years, as tokio's own "far future"), so adding one to the clock's time
/// cannot overflow.
pub(crate) const FOREVER: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);

/// Where the built-ins read the time.
#[derive(Clone, Copy)]
pub(crate) enum Clock<'a> {
    /// The run's clock: read once per wake-up of the run and shared by the stages polled
    /// in it. A time read this way is at most the run's current poll behind (microseconds
    /// for a run that does not block its thread), and always earlier, never later: a TTL
    /// or a deadline counted from it ends a little early, never late.
    Run(&'a std::cell::Cell<Option<tokio::time::Instant>>),
    /// tokio's clock, read each time.
    Direct,
}

impl Clock<'_> {
    pub(crate) fn now(self) -> tokio::time::Instant {
        match self {
            Clock::Run(cell) => cell.get().unwrap_or_else(|| {
                let now = tokio::time::Instant::now();
                cell.set(Some(now));
                now
            }),
            Clock::Direct => tokio::time::Instant::now(),
        }
    }
}

/// One middleware of a pipeline's chain. The built-ins are kept by type, so that a chain
/// of built-ins runs as one state machine beside the stage's future ([`engine`]) instead
/// of a boxed future per middleware per call; anything else is a user's middleware, called
/// through its trait object.
#[derive(Clone)]
pub(crate) enum Layer {
    Retry(Retry),
    Cache(Cache),
    Circuit(CircuitBreaker),
    RateLimit(RateLimit),
    Timeout(Timeout),
    Custom(Arc<dyn Middleware>),
    /// A built-in for some stages only (never another `Scoped`; a user's middleware
    /// scoped is a `Custom` that checks its scope itself).
    Scoped(Box<Layer>, Scope),
}

impl Layer {
    /// Wraps `m`, recognising the built-ins, alone or scoped.
    pub(crate) fn of<M: Middleware>(m: M) -> Layer {
        let any: Box<dyn std::any::Any> = Box::new(m);
        built_in(any, Layer::Retry)
            .or_else(|any| built_in(any, Layer::Cache))
            .or_else(|any| built_in(any, Layer::Circuit))
            .or_else(|any| built_in(any, Layer::RateLimit))
            .or_else(|any| built_in(any, Layer::Timeout))
            .unwrap_or_else(|any| match any.downcast::<M>() {
                Ok(m) => Layer::Custom(Arc::new(*m)),
                Err(_) => unreachable!("a box made from an `M` holds an `M`"),
            })
    }

    /// The middleware itself, scoped or not.
    pub(crate) fn unscoped(&self) -> &Layer {
        match self {
            Layer::Scoped(inner, _) => inner,
            layer => layer,
        }
    }

    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        match self {
            Layer::Retry(m) => m.handle(call, next),
            Layer::Cache(m) => m.handle(call, next),
            Layer::Circuit(m) => m.handle(call, next),
            Layer::RateLimit(m) => m.handle(call, next),
            Layer::Timeout(m) => m.handle(call, next),
            Layer::Custom(m) => m.handle(call, next),
            Layer::Scoped(m, scope) if scope.admits(call.meta) => m.handle(call, next),
            Layer::Scoped(..) => next.run(call),
        }
    }
}

/// `any` as the layer of built-in `B` (made by `wrap`), alone or scoped; or `any` back.
fn built_in<B: 'static>(
    any: Box<dyn std::any::Any>,
    wrap: fn(B) -> Layer,
) -> Result<Layer, Box<dyn std::any::Any>> {
    let any = match any.downcast::<B>() {
        Ok(b) => return Ok(wrap(*b)),
        Err(any) => any,
    };
    match any.downcast::<Scoped<B>>() {
        Ok(s) => {
            let Scoped { inner, scope } = *s;
            Ok(Layer::Scoped(Box::new(wrap(inner)), scope))
        }
        Err(any) => Err(any),
    }
}

/// Wraps every stage call of a pipeline. See the [module docs](self).
///
/// ```
/// use fluxio_core::middleware::{Middleware, Next, StageCall};
/// use fluxio_core::store::BoxFuture;
/// use fluxio_core::{StageError, StageOutput};
///
/// /// Logs each call and how long it took.
/// struct Timing;
///
/// impl Middleware for Timing {
///     fn handle<'a>(&'a self, call: StageCall<'a>, next: Next<'a>)
///         -> BoxFuture<'a, Result<StageOutput, StageError>>
///     {
///         Box::pin(async move {
///             let started = std::time::Instant::now();
///             let out = next.run(call).await;
///             println!("{} took {:?}", call.meta.name, started.elapsed());
///             out
///         })
///     }
/// }
/// let chain: Vec<Box<dyn Middleware>> = vec![Box::new(Timing)];
/// assert_eq!(chain.len(), 1);
/// ```
///
/// An `Arc<M>` or a `Box<M>` of a middleware is one too (`Box<dyn Middleware>` included),
/// so you can keep a handle on your middleware (to read what it recorded) or build the
/// chain from configuration. The built-ins are best passed as they are: they are cheap
/// handles already (clones share their state), and only then do they run on the fast path
/// described in the middleware guide — behind an `Arc` or a `Box` they are called like
/// your own.
pub trait Middleware: Send + Sync + 'static {
    /// Handles one stage call; `next.run(call)` continues down the chain.
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>>;

    /// The stages a middleware scoped with [`only`](MiddlewareExt::only) applies to (how
    /// `with_middleware` warns when none is in the pipeline). Not for you to implement.
    #[doc(hidden)]
    fn __fluxio_only(&self) -> &[(std::any::TypeId, &'static str)] {
        &[]
    }
}

/// A middleware behind a pointer (`Arc<M>`, `Box<M>`) is the middleware.
macro_rules! forward_middleware {
    ($($pointer:ident),*) => {$(
        impl<M: Middleware + ?Sized> Middleware for $pointer<M> {
            fn handle<'a>(
                &'a self,
                call: StageCall<'a>,
                next: Next<'a>,
            ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
                (**self).handle(call, next)
            }

            fn __fluxio_only(&self) -> &[(std::any::TypeId, &'static str)] {
                (**self).__fluxio_only()
            }
        }
    )*};
}

forward_middleware!(Arc, Box);

/// Runs `stage` through `chain[from..]` as boxed futures (owned, so the future is
/// `'static`): how the engine hands a call over to a user's middleware. With the future,
/// the attempt of the last call that went in, kept up to date while it runs.
pub(crate) fn call_through(
    chain: Arc<[Layer]>,
    from: usize,
    stage: Arc<dyn DynStage>,
    meta: StageMeta,
    attempt: u32,
    ctx: Ctx,
    env: StageEnv,
) -> (
    BoxFuture<'static, Result<StageOutput, StageError>>,
    Arc<AtomicU32>,
) {
    let last_attempt = Arc::new(AtomicU32::new(attempt));
    let seen = last_attempt.clone();
    let fut = Box::pin(async move {
        let call = StageCall {
            meta: &meta,
            run_id: env.run_id.as_deref(),
            attempt,
            ctx: &ctx,
            callbacks: env.callbacks.as_deref().unwrap_or(&[]),
        };
        Next {
            rest: &chain[from..],
            stage: &*stage,
            env: &env,
            reached: &AtomicBool::new(false),
            attempt: &seen,
        }
        .run(call)
        .await
    });
    (fut, last_attempt)
}

/// What a user's middleware returned, held to the stage's contract: a route stage answers
/// with a route, and writes hold only keys the stage declares in `writes` — and all of them,
/// unless the stage is ctx-style (it writes what it changes) and the answer may be its own
/// (a call through `next` succeeded). A middleware that answers for a stage writes what the
/// stage would have, or skips it explicitly with [`StageOutput::Skip`].
fn checked_answer(
    meta: &StageMeta,
    out: Result<StageOutput, StageError>,
    reached: bool,
) -> Result<StageOutput, StageError> {
    let is_route = meta.kind == crate::stage::StageKind::Route;
    if let (Ok(StageOutput::Route(_)), false) = (&out, is_route) {
        return Err(StageError::msg(
            "a middleware answered with a route choice for a stage that is not a route: \
             return the stage's writes (`StageOutput::Writes`), or `StageOutput::Skip(reason)`",
        ));
    }
    let Ok(StageOutput::Writes(writes)) = &out else {
        return out;
    };
    if is_route {
        return Err(StageError::msg(
            "a middleware answered for a route stage with writes: return the stage's \
             `StageOutput::Route`, or `StageOutput::Skip(reason)` (no branch runs)",
        ));
    }
    let declared = meta.access.writes;
    if let Some((key, _)) = writes
        .iter()
        .find(|(key, _)| !declared.iter().any(|k| k.name == *key))
    {
        return Err(StageError::new(Error::UndeclaredWrite {
            stage: meta.name,
            run_id: None,
            key,
        }));
    }
    if meta.access.writes_all || !reached {
        if let Some(missing) = declared
            .iter()
            .find(|k| !writes.iter().any(|(key, _)| key == k.name))
        {
            return Err(StageError::msg(format!(
                "a middleware's answer for the stage does not write `{}`: return every key \
                 in its `writes`, or `StageOutput::Skip(reason)`",
                missing.name
            )));
        }
    }
    out
}
