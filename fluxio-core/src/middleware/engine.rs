//! The middleware engine: a pipeline's chain of built-in middleware run as one state
//! machine beside the stage's future.
//!
//! Written as nested futures, each middleware would box its own future on every stage call
//! and the stage's future would be boxed too. Here the built-ins are steps instead: going
//! in, each one either answers at once (a cache hit, an open circuit), waits (a rate
//! limit) or leaves a [`Frame`] recording what it must do on the way out (store the result,
//! count a failure, retry). The stage's future lives in the driver's own slot.
//!
//! A call first runs on the fast path ([`Call::fast`]): one loop in and one out, with the
//! frames on the machine stack, for calls that finish within one poll — no allocation, no
//! state kept. Only when something must wait (the stage, a rate limit, a retry's backoff, a
//! user's middleware) are the frames written into a [`Call`] on the heap, which the general
//! loop ([`Call::poll`]) then drives. A user's middleware, met on the way in, takes the
//! rest of the chain as boxed futures ([`call_through`](super::call_through)).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::cache::Keys;
use super::retry::attempt_span;
use super::{CircuitBreaker, Clock, Layer, RateLimit, StageCall};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::run::poll_caught;
use crate::stage::{
    DynStage, StageEnv, StageError, StageKind, StageMeta, StageOutput, Writes, poll_deadline,
};
use crate::store::BoxFuture;

type StageResult = Result<StageOutput, StageError>;

/// What the engine works on, handed in on every poll (the driver owns it all).
pub(crate) struct Site<'a> {
    pub(crate) layers: &'a Arc<[Layer]>,
    pub(crate) meta: &'a StageMeta,
    /// The stage as a trait object, for a user's middleware to call.
    pub(crate) stage: &'a Arc<dyn DynStage>,
    pub(crate) ctx: &'a Ctx,
    pub(crate) env: &'a StageEnv,
    pub(crate) clock: Clock<'a>,
    /// Where a call that `Retry` repeated leaves its last attempt (for the callbacks).
    pub(crate) attempt: &'a std::cell::Cell<u32>,
}

/// What an entered middleware does on the way out (plain data: entering and leaving cost
/// a copy).
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// Nothing.
    Pass,
    /// Retry a failure of attempt `attempt`, or give up.
    Retry { attempt: u32 },
    /// Store a success under the innermost of `Call::keys`.
    Cache,
    /// Tell the breaker how the call ended.
    Circuit,
    /// Nothing; meanwhile, everything inside must end by `deadline` — on the run's own
    /// clock (see [`own_time`]).
    Timeout { deadline: Instant },
}

/// What entering a middleware gives.
enum Enter {
    /// Go on inward; on the way out, do what the frame says.
    Frame(Frame),
    /// The middleware answers without going further in.
    Answer(StageResult),
    /// The call must wait this long before the middleware lets it through (rate limit).
    Wait(Duration),
    /// A user's middleware: it and the rest of the chain go as boxed futures.
    Delegate,
}

/// How the fast path ended.
enum Fast {
    Done(StageResult),
    /// Something must wait: the call's state, frames and all, to be driven by
    /// [`Call::poll`].
    Suspended(Box<Call>),
}

/// Enters `layer`, at `depth`, for a call of `site`. A cache that must store the result
/// on the way out leaves its key in `keys`.
#[inline(always)]
fn enter(layer: &Layer, site: &Site<'_>, depth: usize, keys: &mut Keys) -> Enter {
    let meta = site.meta;
    let frame = match layer {
        Layer::Scoped(inner, scope) => {
            return if scope.admits(meta) {
                enter(inner, site, depth, keys)
            } else {
                Enter::Frame(Frame::Pass)
            };
        }
        Layer::Retry(_) if meta.kind == StageKind::Stream => Frame::Pass,
        Layer::Retry(_) => Frame::Retry { attempt: 1 },
        Layer::Cache(cache) => {
            if !cache.push_key(meta, &**site.stage, site.ctx, depth, keys) {
                Frame::Pass
            } else {
                let hit = keys
                    .last()
                    .and_then(|(_, key)| cache.lookup(key, site.clock));
                if let Some(hit) = hit {
                    drop(keys.pop());
                    return Enter::Answer(Ok(hit));
                }
                Frame::Cache
            }
        }
        Layer::Circuit(breaker) => {
            if let Err(retry_in) = breaker.admit(meta) {
                return Enter::Answer(Err(CircuitBreaker::refusal(meta.name, retry_in)));
            }
            Frame::Circuit
        }
        Layer::RateLimit(limit) => match limit.take(meta) {
            None => Frame::Pass,
            Some(wait) if limit.refuse => {
                return Enter::Answer(Err(RateLimit::refusal(meta.name, wait)));
            }
            Some(wait) => {
                return match RateLimit::no_timer(meta.name) {
                    Some(e) => Enter::Answer(Err(e)),
                    None => Enter::Wait(wait),
                };
            }
        },
        Layer::Timeout(_) if meta.timeout.is_some() => Frame::Pass,
        // The deadline on the stage's own clock: for a stream stage, the consumer's time is
        // added back when the timer is set, so a slow reader does not use the time up.
        // (A limit past the clock's range is no limit.)
        Layer::Timeout(t) => match own_time(site.clock.now(), site).checked_add(t.after) {
            Some(deadline) => Frame::Timeout { deadline },
            None => Frame::Pass,
        },
        Layer::Custom(_) => return Enter::Delegate,
    };
    Enter::Frame(frame)
}

/// For a stream stage, `now` less the time the consumer of the streamed run has held it up:
/// the clock its timeouts count on (the same as `now` for a run nobody streams, and for
/// other stages — a stage hung beside a stream must not be kept alive by a slow reader).
/// Out of line: `enter` is on every stage call's path, a `Timeout` layer is not.
#[inline(never)]
fn own_time(now: Instant, site: &Site<'_>) -> Instant {
    now.checked_sub(consumer_time(site)).unwrap_or(now)
}

/// The consumer's time the stage's timeouts leave out.
fn consumer_time(site: &Site<'_>) -> Duration {
    site.env.chunks.consumer_time(site.meta)
}

/// Leaves the middleware at `depth` with `out` (changed in place), doing what its `frame`
/// says. `Some((attempt, delay))` when a retry goes back in for `attempt` after `delay`
/// (`out` then holds nothing of use).
#[inline(always)]
fn leave(
    frame: Frame,
    depth: usize,
    keys: &mut Keys,
    site: &Site<'_>,
    out: &mut StageResult,
) -> Option<(u32, Duration)> {
    match frame {
        Frame::Pass | Frame::Timeout { .. } => None,
        Frame::Retry { attempt } => {
            site.attempt.set(attempt);
            let Layer::Retry(retry) = site.layers[depth].unscoped() else {
                return None;
            };
            if out.is_ok() {
                return None;
            }
            let err = std::mem::replace(out, Ok(StageOutput::Writes(Writes::none()))).err()?;
            match retry.after_failure(&stage_call(site, attempt), attempt, err) {
                Ok(delay) => Some((attempt + 1, delay)),
                Err(e) => {
                    *out = Err(e);
                    None
                }
            }
        }
        Frame::Cache => {
            // The key is taken whatever the outcome (an outer cache's key is under it), and
            // moved once: straight from the list into the insert.
            if !matches!(keys.last(), Some((at, _)) if *at == depth) {
                return None;
            }
            match (&*out, site.layers[depth].unscoped()) {
                (Ok(done), Layer::Cache(cache)) => {
                    let done = done.clone();
                    if let Some((_, key)) = keys.pop() {
                        cache.insert(key, done, site.clock);
                    }
                }
                _ => missed(site.layers, keys.pop()),
            }
            None
        }
        Frame::Circuit => {
            if let Layer::Circuit(breaker) = site.layers[depth].unscoped() {
                breaker.record_outcome(site.meta, out);
            }
            None
        }
    }
}

/// Counts a miss for each of `keys` (with the depth of its cache in `layers`): their calls
/// ended without a result to store (failed, skipped, timed out or dropped).
fn missed(layers: &[Layer], keys: impl IntoIterator<Item = (usize, super::cache::CacheKey)>) {
    for (at, key) in keys {
        if let Some(Layer::Cache(cache)) = layers.get(at).map(Layer::unscoped) {
            cache.missed(&key);
        }
    }
}

/// Leaves the entered middleware, innermost first, with `out` (changed in place).
/// `Some((attempt, delay))` when a retry goes back in for `attempt` after `delay`: `frames`
/// and `keys` then hold what is outside it.
#[inline(always)]
fn ascend(
    frames: &mut Frames,
    keys: &mut Keys,
    site: &Site<'_>,
    out: &mut StageResult,
) -> Option<(u32, Duration)> {
    while let Some(frame) = frames.pop() {
        let depth = frames.len();
        if let Some(again) = leave(frame, depth, keys, site, out) {
            return Some(again);
        }
    }
    None
}

/// The rest of the chain, handed to boxed futures, and the attempt of the last call that
/// went in (kept up to date while they run).
struct Delegated {
    fut: BoxFuture<'static, StageResult>,
    attempt: Arc<AtomicU32>,
}

impl Delegated {
    fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Relaxed)
    }
}

/// The rest of the chain from `depth`, as boxed futures.
fn delegated(site: &Site<'_>, depth: usize, attempt: u32) -> Delegated {
    let (fut, attempt) = super::call_through(
        site.layers.clone(),
        depth,
        site.stage.clone(),
        *site.meta,
        attempt,
        site.ctx.clone(),
        site.env.clone(),
    );
    Delegated { fut, attempt }
}

fn stage_call<'a>(site: &Site<'a>, attempt: u32) -> StageCall<'a> {
    StageCall {
        meta: site.meta,
        run_id: site.env.run_id.as_deref(),
        attempt,
        ctx: site.ctx,
        callbacks: site.env.callbacks.as_deref().unwrap_or(&[]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Entering the middleware from the current depth on.
    #[default]
    Descend,
    /// Waiting for a token of the rate limit at the current depth.
    Limited,
    /// The stage's future runs.
    Stage,
    /// A user's middleware runs, with the rest of the chain inside it.
    Delegated,
    /// Waiting before the next attempt.
    Backoff,
}

/// The middleware state of one stage's calls. A driver keeps one per stage, next to the
/// slot of the stage's future. It holds nothing while no call waits: a call that finishes
/// within one poll (the usual case for a cache hit, or a stage that does not wait) keeps
/// its state on the stack, and only one that must wait moves it to the heap — so the run's
/// future stays small.
#[doc(hidden)]
#[derive(Default)]
pub struct Engine(Option<Box<Call>>);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Engine").field(&self.0).finish()
    }
}

impl Engine {
    /// An engine with no call in flight.
    pub const fn new() -> Self {
        Engine(None)
    }

    /// How many attempts the call in flight has made (the innermost `Retry`'s count; one
    /// waiting to start is not counted), if one is in flight.
    pub(crate) fn attempts_made(&self) -> Option<u32> {
        Some(self.0.as_deref()?.attempts_made())
    }

    /// Starts (when `start`) or advances the stage's call. `stage` is the slot of the
    /// stage's future, `make` creates it (once per attempt).
    pub(crate) fn poll<F>(
        &mut self,
        start: bool,
        stage: Pin<&mut Option<F>>,
        cx: &mut Context<'_>,
        site: &Site<'_>,
        make: &impl Fn(&Ctx, &StageEnv) -> F,
    ) -> Poll<StageResult>
    where
        F: Future<Output = StageResult>,
    {
        if !start {
            let Some(call) = self.0.as_mut() else {
                return Poll::Pending;
            };
            let polled = call.poll(stage, cx, site, make, false);
            if polled.is_ready() {
                self.0 = None;
            }
            return polled;
        }
        let mut stage = stage;
        match Call::fast(stage.as_mut(), cx, site, make) {
            Fast::Done(out) => Poll::Ready(out),
            Fast::Suspended(mut call) => {
                // Arm what the suspended call waits on: its timers and waits (the stage or
                // user middleware it waits for was just polled).
                let polled = call.poll(stage, cx, site, make, true);
                if polled.is_pending() {
                    self.0 = Some(call);
                }
                polled
            }
        }
    }
}

/// How many middleware the engine enters itself; deeper chains go on as boxed futures.
const MAX_DEPTH: usize = 8;

/// The frames of the entered middleware, outermost first: a fixed stack of plain data.
#[derive(Debug, Clone, Copy)]
struct Frames {
    items: [Frame; MAX_DEPTH],
    len: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            items: [Frame::Pass; MAX_DEPTH],
            len: 0,
        }
    }
}

impl Frames {
    fn len(&self) -> usize {
        self.len
    }
    fn is_full(&self) -> bool {
        self.len == MAX_DEPTH
    }
    /// Callers check `is_full` first.
    fn push(&mut self, frame: Frame) {
        self.items[self.len] = frame;
        self.len += 1;
    }
    fn pop(&mut self) -> Option<Frame> {
        self.len = self.len.checked_sub(1)?;
        Some(self.items[self.len])
    }
    fn last(&self) -> Option<&Frame> {
        self.as_slice().last()
    }
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    fn as_slice(&self) -> &[Frame] {
        &self.items[..self.len]
    }
}

/// The state of one stage call through the middleware.
#[derive(Default)]
struct Call {
    /// One per entered middleware: `frames.len()` is the depth, and the next middleware to
    /// enter is the one at that index.
    frames: Frames,
    /// The keys of the entered caches.
    keys: Keys,
    /// The span of the innermost retry's current attempt (none without a subscriber).
    span: Option<tracing::Span>,
    phase: Phase,
    delegated: Option<Delegated>,
    /// A rate-limit wait or a retry's backoff.
    wait: Option<Pin<Box<Sleep>>>,
    /// Armed at the earliest deadline of the entered `Timeout`s, once the call waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// The chain, for the caches of `keys` to count a miss if the call is dropped first.
    layers: Option<Arc<[Layer]>>,
}

impl Drop for Call {
    /// A call dropped with keys left (cancelled, or cut off by the stage's own timeout) is
    /// a miss for each of their caches.
    fn drop(&mut self) {
        if let Some(layers) = &self.layers {
            missed(layers, self.keys.drain(..));
        }
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("depth", &self.frames.len())
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Call {
    /// Advances the call. `just_polled`: the future the call waits on (the stage's, or a
    /// user middleware's) returned `Pending` a moment ago, so only its timers need polling.
    fn poll<F>(
        &mut self,
        mut stage: Pin<&mut Option<F>>,
        cx: &mut Context<'_>,
        site: &Site<'_>,
        make: &impl Fn(&Ctx, &StageEnv) -> F,
        just_polled: bool,
    ) -> Poll<StageResult>
    where
        F: Future<Output = StageResult>,
    {
        let mut skip_poll = just_polled && matches!(self.phase, Phase::Stage | Phase::Delegated);
        loop {
            // The result at depth `frames.len()`, to be carried out.
            let out = match self.phase {
                Phase::Descend => match self.descend(site) {
                    Some(out) => out,
                    None => {
                        if self.phase == Phase::Descend {
                            stage.set(Some(make(site.ctx, site.env)));
                            self.phase = Phase::Stage;
                        }
                        continue;
                    }
                },
                Phase::Stage => {
                    let Some(fut) = stage.as_mut().as_pin_mut() else {
                        return Poll::Pending;
                    };
                    let polled = if std::mem::take(&mut skip_poll) {
                        Poll::Pending
                    } else {
                        let _attempt = self.span.as_ref().map(tracing::Span::enter);
                        poll_caught(fut, cx)
                    };
                    let out = match polled {
                        Poll::Ready(out) => out,
                        Poll::Pending => match self.poll_timeouts(cx, site) {
                            Some(out) => out,
                            None => return Poll::Pending,
                        },
                    };
                    stage.set(None);
                    out
                }
                Phase::Delegated => {
                    let Some(delegated) = self.delegated.as_mut() else {
                        return Poll::Pending;
                    };
                    let polled = if std::mem::take(&mut skip_poll) {
                        Poll::Pending
                    } else {
                        delegated.fut.as_mut().poll(cx)
                    };
                    match polled {
                        Poll::Ready(out) => {
                            site.attempt.set(delegated.attempt());
                            self.delegated = None;
                            out
                        }
                        Poll::Pending => match self.poll_timeouts(cx, site) {
                            Some(out) => out,
                            None => return Poll::Pending,
                        },
                    }
                }
                Phase::Limited | Phase::Backoff => {
                    let Some(wait) = self.wait.as_mut() else {
                        return Poll::Pending;
                    };
                    if wait.as_mut().poll(cx).is_pending() {
                        match self.poll_timeouts(cx, site) {
                            Some(out) => out,
                            None => return Poll::Pending,
                        }
                    } else {
                        self.wait = None;
                        self.waited(site);
                        continue;
                    }
                }
            };
            if let Some(out) = self.ascend(site, out) {
                return Poll::Ready(out);
            }
        }
    }

    /// Enters the middleware from the current depth on. `Some(out)` when one answers without going
    /// further in; `None` when the phase changed (to a wait or a user's middleware) or,
    /// the phase still `Descend`, when the stage itself is next.
    fn descend(&mut self, site: &Site<'_>) -> Option<StageResult> {
        while let Some(layer) = site.layers.get(self.frames.len()) {
            if self.frames.is_full() {
                self.delegate(site);
                return None;
            }
            match enter(layer, site, self.frames.len(), &mut self.keys) {
                Enter::Frame(frame) => {
                    match frame {
                        Frame::Retry { attempt } => {
                            self.span = attempt_span(site.meta.name, attempt);
                        }
                        // A key to count if the call is dropped (see `Drop for Call`).
                        Frame::Cache if self.layers.is_none() => {
                            self.layers = Some(site.layers.clone());
                        }
                        _ => {}
                    }
                    self.frames.push(frame);
                }
                Enter::Answer(out) => return Some(out),
                Enter::Wait(wait) => {
                    self.wait = Some(Box::pin(tokio::time::sleep(wait)));
                    self.phase = Phase::Limited;
                    return None;
                }
                Enter::Delegate => {
                    self.delegate(site);
                    return None;
                }
            }
        }
        None
    }

    /// Hands the rest of the chain, from the current depth, to boxed futures.
    fn delegate(&mut self, site: &Site<'_>) {
        self.delegated = Some(delegated(site, self.frames.len(), self.attempt()));
        self.phase = Phase::Delegated;
    }

    /// A wait ended: take the rate-limit token, or start the next attempt.
    fn waited(&mut self, site: &Site<'_>) {
        if self.phase == Phase::Limited {
            if let Some(Layer::RateLimit(limit)) =
                site.layers.get(self.frames.len()).map(Layer::unscoped)
            {
                if let Some(wait) = limit.take(site.meta) {
                    // Another caller took the token first.
                    self.wait = Some(Box::pin(tokio::time::sleep(wait)));
                    return;
                }
            }
            self.frames.push(Frame::Pass);
        } else if let Some(Frame::Retry { attempt }) = self.frames.last() {
            self.span = attempt_span(site.meta.name, *attempt);
        }
        self.phase = Phase::Descend;
    }

    /// Carries `out` out through the entered middleware, innermost first. `None` when a
    /// retry goes back in.
    fn ascend(&mut self, site: &Site<'_>, mut out: StageResult) -> Option<StageResult> {
        match ascend(&mut self.frames, &mut self.keys, site, &mut out) {
            Some((attempt, delay)) => {
                self.backoff(attempt, delay);
                None
            }
            None => Some(out),
        }
    }

    /// Waits `delay`, then goes back in (from the retry at the top) for `attempt`.
    fn backoff(&mut self, attempt: u32, delay: Duration) {
        self.frames.push(Frame::Retry { attempt });
        self.span = None;
        self.wait = Some(Box::pin(tokio::time::sleep(delay)));
        self.phase = Phase::Backoff;
    }

    /// The fast path's state, moved to the heap to wait in `phase`.
    fn suspended(
        site: &Site<'_>,
        frames: Frames,
        keys: Keys,
        span: Option<tracing::Span>,
        phase: Phase,
    ) -> Box<Call> {
        let keys_empty = keys.is_empty();
        Box::new(Call {
            frames,
            keys,
            span,
            phase,
            delegated: None,
            wait: None,
            timer: None,
            // Only a call with a cache's key needs the chain when it is dropped.
            layers: (!keys_empty).then(|| site.layers.clone()),
        })
    }

    /// Runs the call inward and back within this poll, with its state on the machine stack:
    /// one loop in, entering each middleware, and one out, leaving them innermost first.
    fn fast<F>(
        mut stage: Pin<&mut Option<F>>,
        cx: &mut Context<'_>,
        site: &Site<'_>,
        make: &impl Fn(&Ctx, &StageEnv) -> F,
    ) -> Fast
    where
        F: Future<Output = StageResult>,
    {
        let mut frames = Frames::default();
        let mut keys = Keys::new();
        // The attempt span of the innermost retry entered, and those of the retries
        // outside it (kept open until the call leaves them, as nested calls would).
        let mut span: Option<tracing::Span> = None;
        // (An `Option`: an empty `Vec` still costs a call to drop, on every stage call.)
        let mut outer_spans: Option<Vec<tracing::Span>> = None;
        let mut out = loop {
            let depth = frames.len();
            let Some(layer) = site.layers.get(depth) else {
                stage.set(Some(make(site.ctx, site.env)));
                let polled = match stage.as_mut().as_pin_mut() {
                    Some(fut) => {
                        let _attempt = span.as_ref().map(tracing::Span::enter);
                        poll_caught(fut, cx)
                    }
                    None => Poll::Pending,
                };
                match polled {
                    Poll::Ready(out) => {
                        stage.set(None);
                        break out;
                    }
                    Poll::Pending => {
                        return Fast::Suspended(Call::suspended(
                            site,
                            frames,
                            keys,
                            span,
                            Phase::Stage,
                        ));
                    }
                }
            };
            let entered = if frames.is_full() {
                Enter::Delegate
            } else {
                enter(layer, site, depth, &mut keys)
            };
            match entered {
                Enter::Frame(frame) => {
                    if let Frame::Retry { attempt } = frame {
                        if let Some(own) = attempt_span(site.meta.name, attempt) {
                            if let Some(outer) = span.replace(own) {
                                outer_spans.get_or_insert_with(Vec::new).push(outer);
                            }
                        }
                    }
                    frames.push(frame);
                }
                Enter::Answer(out) => break out,
                Enter::Wait(wait) => {
                    let mut call = Call::suspended(site, frames, keys, span, Phase::Limited);
                    call.wait = Some(Box::pin(tokio::time::sleep(wait)));
                    return Fast::Suspended(call);
                }
                Enter::Delegate => {
                    // The fast path makes first attempts only: retries go through `Call::poll`.
                    let mut rest = delegated(site, depth, 1);
                    if let Poll::Ready(out) = rest.fut.as_mut().poll(cx) {
                        site.attempt.set(rest.attempt());
                        break out;
                    }
                    let mut call = Call::suspended(site, frames, keys, span, Phase::Delegated);
                    call.delegated = Some(rest);
                    return Fast::Suspended(call);
                }
            }
        };
        if let Some((attempt, delay)) = ascend(&mut frames, &mut keys, site, &mut out) {
            let mut call = Call::suspended(site, frames, keys, None, Phase::Descend);
            call.backoff(attempt, delay);
            return Fast::Suspended(call);
        }
        if keys.is_empty() && !keys.spilled() {
            // Nothing to drop: skip the out-of-line drop of an empty `SmallVec`.
            std::mem::forget(keys);
        }
        Fast::Done(out)
    }

    /// Checks the deadlines of the entered `Timeout`s while the call waits. `Some(error)`
    /// when one passed: what ran inside that `Timeout` is dropped (cancelled) and the
    /// error is its answer.
    fn poll_timeouts(&mut self, cx: &mut Context<'_>, site: &Site<'_>) -> Option<StageResult> {
        // The earliest deadline; of equal ones the innermost, as nested timers would fire.
        let mut earliest: Option<(usize, Instant)> = None;
        for (depth, frame) in self.frames.as_slice().iter().enumerate() {
            if let Frame::Timeout { deadline } = *frame {
                if earliest.is_none_or(|(_, d)| deadline <= d) {
                    earliest = Some((depth, deadline));
                }
            }
        }
        let (depth, deadline) = earliest?;
        let after = match site.layers.get(depth).map(Layer::unscoped) {
            Some(Layer::Timeout(t)) => t.after,
            _ => Duration::ZERO,
        };
        // Outside a tokio runtime there is no timer to arm: the `Timeout` answers that.
        let no_runtime = match self.timer {
            Some(_) => None,
            None => Error::without_runtime(|| {
                format!(
                    "the `Timeout` of stage `{}` (tokio's timer)",
                    site.meta.name
                )
            }),
        };
        if no_runtime.is_none() {
            // The deadline on the real clock, as the consumer's time stands when it is read.
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if poll_deadline(timer.as_mut(), cx, || {
                deadline.checked_add(consumer_time(site))
            })
            .is_pending()
            {
                return None;
            }
        }
        // The attempts a `Retry` inside made: its frame is dropped with the rest.
        let inner_retry = self.frames.as_slice()[depth..]
            .iter()
            .any(|f| matches!(f, Frame::Retry { .. }));
        if inner_retry || self.phase == Phase::Delegated {
            site.attempt.set(self.attempts_made());
        }
        self.timer = None;
        self.delegated = None;
        self.wait = None;
        // The caches inside are left without a result: a miss each. (Keys are kept
        // outermost first.)
        let inside = self.keys.iter().position(|(at, _)| *at >= depth);
        missed(
            site.layers,
            self.keys.drain(inside.unwrap_or(self.keys.len())..),
        );
        self.frames.truncate(depth);
        Some(Err(StageError::new(no_runtime.unwrap_or(Error::Timeout {
            stage: site.meta.name,
            run_id: None,
            after,
        }))))
    }

    /// How many attempts the call has made (the innermost `Retry`'s count, or the delegated
    /// chain's; one waiting to start is not counted).
    fn attempts_made(&self) -> u32 {
        if let (Phase::Delegated, Some(rest)) = (self.phase, &self.delegated) {
            return rest.attempt();
        }
        let next = self.attempt();
        // Waiting for a backoff or a rate-limit token: the attempt has not started.
        match self.phase {
            Phase::Backoff | Phase::Limited => next.saturating_sub(1).max(1),
            _ => next,
        }
    }

    /// The attempt of the innermost `Retry` (1 without one).
    fn attempt(&self) -> u32 {
        self.frames
            .as_slice()
            .iter()
            .rev()
            .find_map(|f| match f {
                Frame::Retry { attempt } => Some(*attempt),
                _ => None,
            })
            .unwrap_or(1)
    }
}
