//! The executor: runs a plan's nodes as soon as their dependencies finish.
//!
//! A run is one future, polled on the caller's task: no task is spawned per stage. The
//! bookkeeping (what is ready, what runs, what a finished stage releases) lives in
//! [`Scheduler`]; the stage futures live in *slots* that a driver owns. `pipeline!`
//! generates a driver whose slots are typed `Option<F>` values pinned inside the run's
//! future, so a stage call costs no allocation; pipelines built at run time use
//! [`drive_dyn`], whose slots are boxed futures. Both go through [`drive`].
//!
//! A stage that becomes ready is polled at once, so a chain of stages that never wait
//! runs straight through. Sync stages move to tokio's blocking pool inside their future.

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

// tokio's clock, so that durations reported to callbacks follow a paused test clock too.
use tokio::time::Instant;

use smallvec::SmallVec;

use super::Pipeline;
use crate::callback::{Callback, StageEvent, notify_all};
use crate::ctx::Ctx;
use crate::error::{Error, FallbackFailed, Result};
use crate::middleware::engine::{Engine, Site};
use crate::middleware::{Clock, Layer};
use crate::plan::{Exec, Plan};
use crate::stage::{
    ChunkSink, ConsumerClock, RawChunk, StageEnv, StageError, StageFuture, StageOutput, Writes,
    poll_deadline,
};
use crate::store::{BoxFuture, CheckpointStore, RunStatus, Save, StoreResult, format};

/// The future of a whole run.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<Ctx>> + Send>>;

/// How a run was asked for.
#[derive(Debug, Default, Clone)]
pub(crate) struct RunOptions {
    pub(crate) run_id: Option<String>,
    pub(crate) resume: bool,
    pub(crate) allow_version_change: bool,
}

/// Starts a run of `pipe` on `input`; chunks go to `chunks` when someone streams them
/// (with the clock of the time the consumer holds the run up).
///
/// Without callbacks or a store the run is exactly the driver's future: one allocation per
/// run (two when the caller names the run: the second names it in a stage's failure).
pub(crate) fn start_run(
    pipe: &Pipeline,
    input: Ctx,
    opts: RunOptions,
    chunks: Option<(tokio::sync::mpsc::Sender<RawChunk>, Arc<ConsumerClock>)>,
) -> RunFuture {
    let (tx, consumer) = chunks.unzip();
    let mut env = StageEnv {
        resources: pipe.resources.clone(),
        chunks: ChunkSink::new(tx).with_consumer(consumer),
        run_id: None,
        callbacks: None,
        seq: 0,
        scope: None,
    };
    if let Some(reason) = run_id_problem(&opts) {
        return Box::pin(std::future::ready(Err(Error::BadRunId { reason })));
    }
    let traced = tracing::dispatcher::has_been_set();
    if pipe.callbacks.is_empty() && pipe.store.is_none() {
        let run_id: Option<Arc<str>> = opts.run_id.map(Into::into);
        if run_id.is_none() {
            // Named only if a stage asks (`RunInfo`): a number now, a string then.
            env.seq = next_seq();
        }
        env.run_id = run_id.clone();
        if opts.resume {
            return Box::pin(std::future::ready(Err(Error::NoStore {
                operation: "resume",
            })));
        }
        let run = match Scheduler::new(pipe.plan.clone(), input, env, None) {
            Ok(sched) => pipe.start(sched),
            Err(e) => return Box::pin(std::future::ready(Err(e.in_run(run_id.as_deref())))),
        };
        // A stage's failure names the run the caller named.
        let run = match run_id.clone() {
            Some(id) => Box::pin(async move { run.await.map_err(|e| e.in_run(Some(&id))) }),
            None => run,
        };
        // With no subscriber ever installed, the run stays a single allocation.
        return if traced {
            instrument_run(run, &pipe.plan.version, run_id.as_deref())
        } else {
            run
        };
    }
    let span = if traced {
        run_span(&pipe.plan.version)
    } else {
        tracing::Span::none()
    };
    let pipe = pipe.clone();
    let run = async move {
        let run_id: Arc<str> = opts.run_id.clone().unwrap_or_else(fresh_run_id).into();
        tracing::Span::current().record("run_id", &*run_id);
        env.run_id = Some(run_id.clone());
        let callbacks = pipe.callbacks.clone();
        if !callbacks.is_empty() {
            env.callbacks = Some(callbacks.clone());
            let hooks = Arc::new(crate::stage::ChunkHooks {
                callbacks: callbacks.clone(),
                run_id: run_id.clone(),
            });
            env.chunks = env.chunks.with_hooks(Some(hooks));
        }
        let obs = (!callbacks.is_empty()).then(|| Observers {
            callbacks: callbacks.clone(),
            run_id: run_id.clone(),
            started_at: Vec::new(),
        });
        let started = Instant::now();
        // Callbacks hear of every run that starts or fails, not of a durable call that is
        // no run: its id held by a live run, nothing stored to resume, or a resume of a
        // completed run (answered with the stored result). The caller has the error or
        // the result.
        let began = AtomicBool::new(false);
        let begin = || {
            if !began.swap(true, Ordering::Relaxed) {
                notify_all(&callbacks, |c| c.on_run_start(&run_id));
            }
        };
        let mut cancelled = CancelGuard {
            callbacks: callbacks.clone(),
            run_id: run_id.clone(),
            armed: true,
            began: &began,
        };
        let result = match &pipe.store {
            Some(store) => {
                let (store, id) = (store.clone(), run_id.clone());
                super::durable::run(&pipe, store, id, input, &opts, env, obs, &begin).await
            }
            None if opts.resume => {
                begin();
                Err(Error::NoStore {
                    operation: "resume",
                })
            }
            None => {
                begin();
                match Scheduler::new(pipe.plan.clone(), input, env, obs) {
                    Ok(sched) => pipe.start(sched).await,
                    Err(e) => Err(e),
                }
            }
        };
        cancelled.armed = false;
        if began.load(Ordering::Relaxed) {
            notify_all(&callbacks, |c| {
                c.on_run_end(&run_id, result.as_ref(), started.elapsed())
            });
        }
        // A stage's failure names the run when it has an id of its own: one the caller gave,
        // or a stored run's (needed to resume it); a made-up id of a run with callbacks only
        // is left out. Callbacks (told above) and the stored error text have the id apart.
        if opts.run_id.is_some() || pipe.store.is_some() {
            result.map_err(|e| e.in_run(Some(&run_id)))
        } else {
            result
        }
    };
    Box::pin(tracing::Instrument::instrument(run, span))
}

/// Why an empty run id is refused.
pub(crate) const EMPTY_RUN_ID: &str = "a run id cannot be empty";

/// What is wrong with the run id of a call, if anything.
fn run_id_problem(opts: &RunOptions) -> Option<&'static str> {
    match opts.run_id.as_deref() {
        Some("") => Some(EMPTY_RUN_ID),
        None if opts.resume => Some(
            "`resume` continues a stored run and needs its id: add `.run_id(id)` (or call `pipe.resume(id)`)",
        ),
        // Ignored, it would start the run afresh: its finished stages again, its checkpoint
        // replaced — what the caller meant to avoid.
        _ if opts.allow_version_change && !opts.resume => Some(
            "`allow_version_change` applies to a resume: add `.resume()` (or call `pipe.resume(id)`); \
             without it the run would start afresh and run its finished stages again",
        ),
        _ => None,
    }
}

#[cold]
#[inline(never)]
fn run_span(version: &str) -> tracing::Span {
    tracing::info_span!("fluxio.run", run_id = tracing::field::Empty, version = %version)
}

#[cold]
#[inline(never)]
fn instrument_run(run: RunFuture, version: &str, run_id: Option<&str>) -> RunFuture {
    let span = run_span(version);
    if let Some(run_id) = run_id {
        span.record("run_id", run_id);
    }
    if span.is_disabled() {
        run
    } else {
        Box::pin(tracing::Instrument::instrument(run, span))
    }
}

/// Tells the callbacks when a run is dropped before it ends.
struct CancelGuard<'a> {
    callbacks: Arc<[Arc<dyn Callback>]>,
    run_id: Arc<str>,
    armed: bool,
    /// Whether the run started (callbacks heard nothing of a call refused before).
    began: &'a AtomicBool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.began.load(Ordering::Relaxed) {
            notify_all(&self.callbacks, |c| c.on_run_cancelled(&self.run_id));
        }
    }
}

/// A token unique across processes and time: this process's tag (the process id alone
/// repeats — every container's main process is pid 1, and pids are reused — so the time it
/// first needed one is part of it) and a counter.
pub(crate) fn unique_token() -> String {
    token_of(next_seq())
}

/// A number no other token of this process uses.
pub(crate) fn next_seq() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The token of sequence number `seq` (from [`next_seq`]).
pub(crate) fn token_of(seq: u64) -> String {
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let process = PROCESS.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{:x}{:x}", std::process::id(), nanos)
    });
    format!("{process}-{seq}")
}

/// The id of a run the caller did not name.
pub(crate) fn fresh_run_id() -> String {
    run_id_of(next_seq())
}

/// The generated run id of sequence number `seq` (from [`next_seq`]).
pub(crate) fn run_id_of(seq: u64) -> String {
    format!("run-{}", token_of(seq))
}

pub(crate) struct Observers {
    callbacks: Arc<[Arc<dyn Callback>]>,
    run_id: Arc<str>,
    started_at: Vec<Option<Instant>>,
}

impl Observers {
    pub(crate) fn each(&self, f: impl Fn(&dyn Callback)) {
        notify_all(&self.callbacks, f);
    }

    fn event<'a>(&'a self, plan: &Plan, i: usize) -> StageEvent<'a> {
        let meta = &plan.nodes[i].meta;
        StageEvent {
            run_id: &self.run_id,
            stage: meta.name,
            kind: meta.kind,
            attempt: 1,
        }
    }

    fn elapsed(&self, i: usize) -> Duration {
        self.started_at
            .get(i)
            .copied()
            .flatten()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}

/// Checks what must hold before any stage runs: inputs present, resources registered.
pub(crate) fn preflight(plan: &Plan, input: &Ctx, env: &StageEnv) -> Result<()> {
    if let Some((key, types)) = plan.key_clash {
        return Err(Error::KeyClash {
            key,
            types,
            run_id: None,
        });
    }
    if let Some((name, nested_in)) = &plan.name_clash {
        return Err(Error::NameClash {
            name,
            nested_in: nested_in.clone(),
            run_id: None,
        });
    }
    for (i, key) in plan.input_descs.iter().enumerate() {
        if let Some(value) = input.slot(key.name) {
            // A value of another type under the key's name (a same-named key of another
            // `keys!`): refused now, not when its reader gets to it.
            if (**value).type_id() != (key.type_id)() {
                return Err(Error::KeyType {
                    stage: plan.input_readers[i],
                    key: key.name,
                    expected: (key.type_name)(),
                    run_id: None,
                });
            }
        } else {
            return Err(match plan.inputs_written_later[i] {
                Some((reader, writer)) => Error::InputWrittenLater {
                    key: key.name,
                    reader,
                    writer,
                    run_id: None,
                },
                None => Error::MissingInput {
                    key: key.name,
                    run_id: None,
                },
            });
        }
    }
    missing_resource(plan, &[&env.resources]).map_or(Ok(()), Err)
}

/// The first resource a stage of `plan` needs that all of `layers` lack — nested
/// pipelines' stages included, their own resources one more layer (as they run). Layers,
/// not a merged map: nothing is copied on every invoke.
fn missing_resource(plan: &Plan, layers: &[&crate::stage::Resources]) -> Option<Error> {
    for &i in &plan.needs_resources {
        let node = &plan.nodes[i as usize];
        if let Exec::Pipeline(sub) = &node.exec {
            let mut inner: SmallVec<[&crate::stage::Resources; 4]> = layers.into();
            inner.push(&sub.resources);
            if let Some(missing) = missing_resource(&sub.plan, &inner) {
                return Some(missing);
            }
            continue;
        }
        for res in node.meta.resources {
            let id = (res.type_id)();
            if !layers.iter().any(|r| r.contains(id)) {
                return Some(Error::MissingResource {
                    stage: node.meta.name,
                    type_name: (res.type_name)(),
                    run_id: None,
                });
            }
        }
    }
    None
}

pub(crate) fn panic_error(stage: &'static str, payload: Box<dyn std::any::Any + Send>) -> Error {
    panic_message(payload).into_run_error(stage)
}

/// Polls a stage's future inside the middleware, a panic becoming the call's error: the
/// middleware outside sees the call fail — a `CircuitBreaker` counts it, a `Retry` does not
/// retry it, a `Cache` does not keep it — and the run gets the error as it would the panic
/// (the stage's fallback, if any, runs).
pub(crate) fn poll_caught<F>(
    fut: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<std::result::Result<StageOutput, StageError>>
where
    F: Future<Output = std::result::Result<StageOutput, StageError>> + ?Sized,
{
    std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx)))
        .unwrap_or_else(|payload| Poll::Ready(Err(panic_message(payload))))
}

/// A panic as the error of what panicked.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> StageError {
    StageError::new(Panicked(panic_text(&*payload).to_string()))
}

/// The error of a stage (or fallback, rollback, middleware) that panicked: its panic's
/// message.
#[derive(Debug)]
pub(crate) struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

/// Whether `err` is, or was caused by, a panic.
pub(crate) fn is_panic(err: &StageError) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err.as_error());
    while let Some(cause) = e {
        if cause.is::<Panicked>() {
            return true;
        }
        e = cause.source();
    }
    false
}

/// A fallback's failure (an error or a panic) after its stage failed with `stage`: the
/// run's error says both.
fn fallback_failed(stage: Error, fallback: StageError) -> StageError {
    StageError::new(FallbackFailed {
        fallback: fallback.into_inner(),
        stage,
    })
}

/// How many attempts a stage's failure took: `Retry`'s count when it gave up, else 1.
fn attempts_of(e: &Error) -> u32 {
    match e {
        Error::Stage { source, .. } => source
            .downcast_ref::<crate::middleware::RetriesExhausted>()
            .map_or(1, |r| r.attempts),
        _ => 1,
    }
}

/// A panic's message.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-string panic payload")
}

/// The route choice of a route stage that was skipped: it takes no branch.
pub(crate) const NO_BRANCH: u32 = u32::MAX;

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const SKIPPED: u8 = 3;
/// Finished, its entry being written: dependents wait until it is durable.
const PERSISTING: u8 = 4;
/// Failed; its fallback is running.
const FALLBACK: u8 = 5;

/// A stage's own timeout while it (or its fallback) runs.
struct Deadline {
    node: u32,
    /// `None` outside a tokio runtime: no timer can be armed, and the stage fails with
    /// `Error::NoRuntime` when the deadlines are next checked.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When it ends, leaving out the consumer's time (of a stream stage) from here on…
    due: Instant,
    /// …which stood at this when it was set.
    consumer: Duration,
}

/// An entry being written: (node, chosen route label, size in bytes, the write).
type PendingEntry = (u32, Option<u32>, usize, BoxFuture<'static, StoreResult<()>>);

/// A durable run's connection to its store.
pub(crate) struct Durability {
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) run_id: Arc<str>,
    pub(crate) owner: Arc<str>,
    pub(crate) lease: Duration,
    /// Entries being written: (node, chosen route label, the write).
    pending: Vec<PendingEntry>,
    /// The `seq` of the next entry: the order the run applies its stages' writes in,
    /// which the store may not keep for entries saved at the same time.
    pub(crate) next_seq: u64,
    renew_at: Pin<Box<tokio::time::Sleep>>,
    renewing: Option<BoxFuture<'static, StoreResult<bool>>>,
    /// Set when the run's rollbacks ran (the run's end is then `rolled_back`).
    pub(crate) rolled_back: Arc<std::sync::atomic::AtomicBool>,
    /// Set once the store recorded that the run is rolling back: unless its rollbacks all
    /// ran, its end is left as that (a resume runs them again).
    pub(crate) rolling_back: Arc<std::sync::atomic::AtomicBool>,
    /// The rollbacks that failed, as the run's stored error lists them.
    pub(crate) failed_rollbacks: Arc<std::sync::Mutex<Vec<String>>>,
    /// A finished stage's entry could not be stored: a resume would not know it ran, so no
    /// rollback may run (it could not be run again after a crash).
    entry_lost: bool,
}

impl Durability {
    /// Keeps the lease while the run lives (rolling back included): renews it every third
    /// of it. `Err(LockLost)` when another owner holds the run now.
    /// A failed renewal is tried again a third of the lease later, if the run goes on.
    fn poll_lease(&mut self, cx: &mut Context<'_>) -> Result<()> {
        if self.renewing.is_none() && self.renew_at.as_mut().poll(cx).is_ready() {
            self.renewing = Some(self.store.renew(&self.run_id, &self.owner, self.lease));
        }
        let Some(renewing) = &mut self.renewing else {
            return Ok(());
        };
        let Poll::Ready(renewed) = renewing.as_mut().poll(cx) else {
            return Ok(());
        };
        self.renewing = None;
        if !matches!(renewed, Ok(false)) {
            let next = tokio::time::Instant::now() + self.lease / 3;
            self.renew_at.as_mut().reset(next);
            // Register the new deadline with this task.
            let _ = self.renew_at.as_mut().poll(cx);
        }
        match renewed {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::LockLost {
                run_id: self.run_id.to_string(),
            }),
            Err(e) => Err(Error::from_store(&self.run_id, "renew", e)),
        }
    }

    pub(crate) fn new(
        store: Arc<dyn CheckpointStore>,
        run_id: Arc<str>,
        owner: Arc<str>,
        lease: Duration,
    ) -> Self {
        Durability {
            store,
            run_id,
            owner,
            lease,
            pending: Vec::new(),
            next_seq: 0,
            renew_at: Box::pin(tokio::time::sleep(lease / 3)),
            renewing: None,
            rolled_back: Arc::default(),
            rolling_back: Arc::default(),
            failed_rollbacks: Arc::default(),
            entry_lost: false,
        }
    }
}

/// What a resumed run already did: finished nodes, with the label a route node chose.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    /// The finished nodes: `(node, route's branch, skipped by a middleware or a route)`.
    pub(crate) done: Vec<(u32, Option<u32>, bool)>,
    /// The run was rolling back when it stopped: the resume runs the rollbacks of its
    /// finished stages (again), then ends with this error.
    pub(crate) rolling_back: Option<Error>,
    /// The `seq` of the resumed run's next checkpoint entry.
    pub(crate) next_seq: u64,
}

/// The bookkeeping of one run: the context so far, which nodes wait, run, or are done.
///
/// Boxed, so the run's future stays small (and cheap to allocate) however it moves.
pub struct Scheduler(Box<SchedState>);

struct SchedState {
    plan: Arc<Plan>,
    env: StageEnv,
    ctx: Ctx,
    // Per-run state lives inline for pipelines of up to 16 nodes.
    remaining: SmallVec<[u32; 16]>,
    state: SmallVec<[u8; 16]>,
    ready: SmallVec<[u32; 16]>,
    running: SmallVec<[u32; 16]>,
    /// Timers of parked stages with a timeout (and of fallbacks, which have what is left).
    deadlines: Vec<Deadline>,
    /// The timer of the last stage with a fallback that ended while parked: if its fallback
    /// runs, the rest of the stage's time is the fallback's.
    ended_deadline: Option<Deadline>,
    /// The node with a timeout being started, and when (before its first poll): should it
    /// fail on that poll, its fallback has what is left of its time.
    first_poll: Option<(u32, Instant)>,
    obs: Option<Observers>,
    durable: Option<Box<Durability>>,
    /// One `fluxio.stage` span per node, made only when a `tracing` subscriber wants them.
    spans: Option<Vec<tracing::Span>>,
    /// Whether a `tracing` subscriber was ever installed when the run started.
    traced: bool,
    /// The pipeline's middleware, when it has some (the driver runs stages through it).
    layers: Option<Layered>,
    /// The time, read at most once per wake-up of the run, for middleware that need it
    /// (cache expiry, timeouts): a clock read costs more than a trivial stage's bookkeeping.
    clock: std::cell::Cell<Option<tokio::time::Instant>>,
    /// Fallbacks running in place of failed stages, with the stages' errors.
    fallbacks: Vec<(u32, StageFuture, Error)>,
    /// Finished nodes that have a rollback, in the order they finished.
    rollback_order: Vec<u32>,
    /// Nodes a middleware skipped, until they are done: they did not run, so they report
    /// no end and have nothing to roll back.
    skipped: Vec<u32>,
    /// Set once the run failed and its rollbacks run.
    rolling_back: Option<Box<RollingBack>>,
    /// A nested pipeline's run: set when it starts rolling back, so that the outer run,
    /// failing meanwhile, lets its rollbacks finish rather than cut them off.
    rollback_watch: Option<Arc<AtomicBool>>,
}

impl Drop for SchedState {
    /// A run that failed, or was dropped, with stages in flight: they are cancelled.
    fn drop(&mut self) {
        self.cancel_in_flight();
    }
}

/// A failed run undoing its finished stages, last finished first.
struct RollingBack {
    error: Option<Error>,
    current: Option<(u32, StageFuture)>,
    /// The entries of finished stages still being stored when the run failed: stored
    /// before the run records that it is rolling back, so a resume knows to roll them back.
    /// With each, its node and the entry's size (for the callbacks, once it is stored).
    saving: Vec<(u32, usize, BoxFuture<'static, StoreResult<()>>)>,
    /// A durable run's record that it is rolling back, being written: no rollback runs
    /// before it is stored (`Durability::rolling_back`), so a resume never completes a run
    /// whose stages were undone.
    recording: Option<BoxFuture<'static, StoreResult<()>>>,
    /// The bodies of sync stages still running on the blocking pool when their futures
    /// were dropped: awaited before any rollback (they may hold what a rollback needs);
    /// those that succeeded are rolled back too, first.
    finishing: Vec<crate::support::Finishing>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("running", &self.0.running)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Runs every stage call through `layers`.
    pub(crate) fn set_layers(&mut self, layers: Arc<[Layer]>) {
        let n = self.0.plan.nodes.len();
        let attempts = self
            .0
            .obs
            .is_some()
            .then(|| (0..n).map(|_| std::cell::Cell::new(1)).collect());
        self.0.layers = (!layers.is_empty()).then_some(Layered { layers, attempts });
    }

    fn new(plan: Arc<Plan>, input: Ctx, env: StageEnv, obs: Option<Observers>) -> Result<Self> {
        Self::with_state(plan, input, env, obs, None, None)
    }

    pub(crate) fn with_state(
        plan: Arc<Plan>,
        input: Ctx,
        env: StageEnv,
        mut obs: Option<Observers>,
        durable: Option<Durability>,
        restored: Option<Restored>,
    ) -> Result<Self> {
        // A durable run checked its input in `prepare`, before its first write.
        if durable.is_none() {
            preflight(&plan, &input, &env)?;
        }
        let n = plan.nodes.len();
        if let Some(obs) = &mut obs {
            obs.started_at = vec![None; n];
        }
        let mut sched = SchedState {
            remaining: SmallVec::from_slice(&plan.dep_counts),
            state: SmallVec::from_elem(PENDING, n),
            ready: SmallVec::new(),
            running: SmallVec::new(),
            deadlines: Vec::new(),
            ended_deadline: None,
            first_poll: None,
            ctx: input,
            env,
            obs,
            durable: durable.map(Box::new),
            spans: None,
            traced: tracing::dispatcher::has_been_set(),
            layers: None,
            clock: std::cell::Cell::new(None),
            fallbacks: Vec::new(),
            rollback_order: Vec::new(),
            skipped: Vec::new(),
            rolling_back: None,
            rollback_watch: None,
            plan,
        };
        match restored {
            None => sched.ready = sched.plan.roots.iter().rev().copied().collect(),
            Some(mut restored) => {
                // The finished stages' rollbacks, in the order they finished (a skipped
                // stage did not run: there is nothing to roll back).
                for &(i, _, skipped) in &restored.done {
                    if sched.plan.nodes[i as usize].has_rollback && !skipped {
                        sched.rollback_order.push(i);
                    }
                }
                if let Some(error) = restored.rolling_back.take() {
                    // Its status says so already.
                    if let Some(d) = &sched.durable {
                        d.rolling_back.store(true, Ordering::SeqCst);
                    }
                    sched.rolling_back = Some(Box::new(RollingBack {
                        error: Some(error),
                        current: None,
                        saving: Vec::new(),
                        recording: None,
                        finishing: Vec::new(),
                    }));
                    return Ok(Scheduler(Box::new(sched)));
                }
                // Replay the finished nodes' releases; whatever is left at zero is the
                // frontier, including unfinished members of a half-done parallel block.
                for &(i, route, _) in &restored.done {
                    sched.state[i as usize] = DONE;
                    if let Some(l) = route {
                        sched.mark_skipped(i as usize, l);
                    }
                }
                for &(i, route, _) in &restored.done {
                    sched.release(i as usize);
                    if let Some(l) = route {
                        sched.release_skipped(i as usize, l, false);
                    }
                }
                sched.ready = (0..n as u32)
                    .rev()
                    .filter(|&i| {
                        sched.state[i as usize] == PENDING && sched.remaining[i as usize] == 0
                    })
                    .collect();
            }
        }
        Ok(Scheduler(Box::new(sched)))
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.0.plan
    }
}

impl SchedState {
    /// Takes the next ready node and marks it running.
    fn pop_ready(&mut self) -> Option<usize> {
        while let Some(i) = self.ready.pop() {
            let i = i as usize;
            if self.state[i] != PENDING {
                continue;
            }
            self.state[i] = RUNNING;
            if self.traced || self.obs.is_some() {
                self.announce_start(i);
            }
            return Some(i);
        }
        None
    }

    /// Opens the stage's span and tells the callbacks; kept out of line so the plain path
    /// of `pop_ready` stays small.
    #[cold]
    #[inline(never)]
    fn announce_start(&mut self, i: usize) {
        // Spans only when a subscriber was ever installed: without one, making a disabled
        // span still costs (through tracing's `log` fallback) more than a trivial stage.
        if self.traced {
            let meta = &self.plan.nodes[i].meta;
            let span = tracing::info_span!(
                "fluxio.stage",
                stage = meta.name,
                kind = meta.kind.as_str(),
                run_id = self.env.run_id.as_deref().unwrap_or(""),
            );
            if !span.is_disabled() {
                let n = self.plan.nodes.len();
                self.spans
                    .get_or_insert_with(|| vec![tracing::Span::none(); n])[i] = span;
            }
        }
        if let Some(obs) = &mut self.obs {
            obs.started_at[i] = Some(Instant::now());
        }
        self.notify(i, |c, ev| c.on_stage_start(ev));
    }

    /// Node `i` did not finish on its first poll: it waits in `running` (with its timeout).
    /// A stage that finishes on its first poll never needs its timer.
    fn park(&mut self, i: usize) {
        self.running.push(i as u32);
        if let Some(after) = self.plan.nodes[i].meta.timeout {
            let deadline = self.own_deadline(i, after);
            self.deadlines.push(deadline);
        }
    }

    /// Node `i` is about to be polled for the first time: with a timeout, the time is kept
    /// (`first_poll`), as its timeout counts from here — work a stage does before its first
    /// await is spent from it. Without one, the clock is not read: a read is dear next to a
    /// trivial stage.
    #[inline]
    fn note_start(&mut self, i: usize) {
        if self.plan.has_timeout[i] {
            self.first_poll = Some((i as u32, Instant::now()));
        }
    }

    /// Node `i`'s own timeout of `after`: counted from before its first poll when that is
    /// what just happened (`first_poll`), else from now; leaving out, for a stream stage,
    /// the consumer's time from here on.
    fn own_deadline(&self, i: usize, after: Duration) -> Deadline {
        let start = match self.first_poll {
            Some((n, at)) if n as usize == i => at,
            _ => Instant::now(),
        };
        let due = start
            .checked_add(after)
            .unwrap_or_else(|| start + crate::middleware::FOREVER);
        Deadline {
            node: i as u32,
            timer: tokio::runtime::Handle::try_current()
                .is_ok()
                .then(|| Box::pin(tokio::time::sleep_until(due))),
            due,
            consumer: self.env.chunks.consumer_time(&self.plan.nodes[i].meta),
        }
    }

    /// Takes the `k`th running node out of `running`.
    fn unpark(&mut self, k: usize) -> usize {
        let i = self.running.swap_remove(k) as usize;
        if let Some(k) = self.deadlines.iter().position(|d| d.node as usize == i) {
            let deadline = self.deadlines.swap_remove(k);
            if self.plan.nodes[i].has_fallback {
                self.ended_deadline = Some(deadline);
            }
        }
        i
    }

    /// Takes node `i` out of the running stages and fallbacks: it ended (failed) without
    /// completing there. The stage's own error when it was running its fallback.
    fn forget(&mut self, i: usize) -> Option<Error> {
        if let Some(k) = self.running.iter().position(|&n| n as usize == i) {
            self.unpark(k);
        }
        let k = self.fallbacks.iter().position(|(n, ..)| *n as usize == i)?;
        Some(self.fallbacks.swap_remove(k).2)
    }

    /// Tells the callbacks that the stages still running (or running their fallback) are
    /// dropped, and forgets them: the run failed or was dropped.
    fn cancel_in_flight(&mut self) {
        if self.obs.is_none() {
            self.running.clear();
            self.fallbacks.clear();
            if let Some(d) = &mut self.durable {
                d.pending.clear();
            }
            return;
        }
        let running = std::mem::take(&mut self.running);
        // A finished stage whose entry is still being stored has not completed either (its
        // save is not polled again).
        let mut persisting: SmallVec<[u32; 4]> = self
            .durable
            .as_mut()
            .map(|d| d.pending.drain(..).map(|(i, ..)| i).collect())
            .unwrap_or_default();
        // So has one whose entry was being stored as the run failed (dropped meanwhile).
        if let Some(rb) = self.rolling_back.as_mut() {
            persisting.extend(rb.saving.drain(..).map(|(i, ..)| i));
        }
        for i in running
            .iter()
            .chain(self.fallbacks.iter().map(|(i, ..)| i))
            .chain(&persisting)
        {
            self.report_cancelled(*i as usize);
        }
        self.fallbacks.clear();
    }

    /// Tells the callbacks node `i` was dropped before it ended — unless a middleware
    /// skipped it (reported as such: its entry was being stored).
    fn report_cancelled(&self, i: usize) {
        if self.obs.is_none() || self.skipped.contains(&(i as u32)) {
            return;
        }
        let attempt = self.attempt_of(i, None);
        self.notify_timed(i, |c, ev, elapsed| {
            c.on_stage_cancelled(&StageEvent { attempt, ..*ev }, elapsed);
        });
    }

    /// Tells every callback about node `i`: `f` gets the callback and the node's event.
    fn notify(&self, i: usize, f: impl Fn(&dyn Callback, &StageEvent<'_>)) {
        if let Some(obs) = &self.obs {
            let ev = obs.event(&self.plan, i);
            obs.each(|c| f(c, &ev));
        }
    }

    /// Like [`notify`](Self::notify), with how long ago the node started (a clock read,
    /// so only for the events that report it).
    fn notify_timed(&self, i: usize, f: impl Fn(&dyn Callback, &StageEvent<'_>, Duration)) {
        if let Some(obs) = &self.obs {
            let elapsed = obs.elapsed(i);
            self.notify(i, |c, ev| f(c, ev, elapsed));
        }
    }

    /// The attempt node `i`'s last call ended on: what `Retry` counted (from the engine,
    /// or from the error it gave up with).
    fn attempt_of(&self, i: usize, error: Option<&Error>) -> u32 {
        let counted = self
            .layers
            .as_ref()
            .and_then(|l| l.attempts.as_ref())
            .map_or(1, |a| a[i].get());
        counted.max(error.map_or(1, attempts_of))
    }

    fn report_error(&self, i: usize, e: &Error) {
        let attempt = self.attempt_of(i, Some(e));
        self.notify_timed(i, |c, ev, elapsed| {
            c.on_stage_error(&StageEvent { attempt, ..*ev }, e, elapsed)
        });
    }

    /// Applies node `i`'s writes to the context, merging those of `#[merge]` keys.
    fn apply(&mut self, i: usize, writes: Writes) {
        if self.plan.merges[i] {
            let plan = &self.plan;
            writes.apply_merging(&mut self.ctx, |name| plan.merge_of(i, name));
        } else {
            writes.apply(&mut self.ctx);
        }
    }

    fn run_id(&self) -> &str {
        self.durable.as_ref().map_or("", |d| &d.run_id)
    }

    /// Records the outcome of running node `i`. The common case — a stage's writes, no
    /// store — is kept short; everything else goes to `complete_slow`.
    #[inline(always)]
    fn complete(
        &mut self,
        i: usize,
        out: std::result::Result<StageOutput, StageError>,
    ) -> Result<()> {
        match out {
            Ok(StageOutput::Writes(w)) if self.durable.is_none() && !self.plan.merges[i] => {
                w.apply(&mut self.ctx);
                self.ran(i);
                self.finish_node(i, None);
                Ok(())
            }
            other => self.complete_slow(i, other),
        }
    }

    fn complete_slow(
        &mut self,
        i: usize,
        out: std::result::Result<StageOutput, StageError>,
    ) -> Result<()> {
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                // A stage whose parameters could not be had (a read missing or of another
                // type, a resource missing) never ran, and its fallback takes the same
                // parameters: the run fails with that reason, not the fallback's copy of it.
                let not_called = e.was_not_called();
                let mut e = e.into_run_error(self.plan.nodes[i].meta.name);
                // (A nested pipeline's own run already said why, from inside.)
                if let Error::MissingKey { key, reason, .. } = &mut e
                    && !matches!(self.plan.nodes[i].exec, Exec::Pipeline(_))
                {
                    if let Some(why) = self.why_not_written(key) {
                        *reason = why;
                    }
                }
                if self.state[i] == RUNNING && !not_called {
                    if let Some(stage) = self.plan.nodes[i]
                        .has_fallback
                        .then(|| self.stage_of(i))
                        .flatten()
                    {
                        // The stage failed (after its retries): its fallback writes instead.
                        let attempt = self.attempt_of(i, Some(&e));
                        self.notify(i, |c, ev| c.on_fallback(&StageEvent { attempt, ..*ev }, &e));
                        tracing::warn!(stage = self.plan.nodes[i].meta.name, error = %e, "stage failed; running its fallback");
                        let fut = stage.fallback(&self.ctx, &self.env);
                        self.state[i] = FALLBACK;
                        self.fallbacks.push((i as u32, fut, e));
                        // The stage's timeout is its whole budget, fallback included.
                        // (A stage that failed on its first poll: from before it.)
                        let deadline = match self.ended_deadline.take() {
                            Some(d) if d.node as usize == i => Some(d),
                            _ => (self.plan.nodes[i].meta.timeout)
                                .map(|after| self.own_deadline(i, after)),
                        };
                        self.deadlines.extend(deadline);
                        return Ok(());
                    }
                }
                self.report_error(i, &e);
                return Err(e);
            }
        };
        let skipped = matches!(out, StageOutput::Skip(_));
        let (writes, route) = match out {
            StageOutput::Writes(w) => (w, None),
            StageOutput::Skip(reason) => {
                self.notify(i, |c, ev| c.on_stage_skip(ev, &reason));
                if self.obs.is_some() {
                    self.skipped.push(i as u32);
                }
                // A skipped route stage takes no branch.
                let route = (!self.plan.nodes[i].labels.is_empty()).then_some(NO_BRANCH);
                (Writes::none(), route)
            }
            StageOutput::Route(route) => {
                let node = &self.plan.nodes[i];
                let Some(chosen) = node.labels.iter().position(|l| *l == route.label()) else {
                    let e = Error::UnknownRoute {
                        stage: node.meta.name,
                        run_id: None,
                        label: route.label().to_string(),
                        branches: node.labels.clone(),
                    };
                    self.report_error(i, &e);
                    return Err(e);
                };
                (Writes::none(), Some(chosen as u32))
            }
        };
        if !skipped {
            self.ran(i);
        }
        if let Some(d) = &self.durable {
            let seq = d.next_seq;
            let entry = match self.entry(i, &writes, route, skipped, seq) {
                Ok(entry) => entry,
                Err(e) => {
                    self.report_error(i, &e);
                    return Err(e);
                }
            };
            self.apply(i, writes);
            if let Some(l) = route {
                self.mark_skipped(i, l);
            }
            self.state[i] = PERSISTING;
            let d = self.durable.as_mut().expect("checked above");
            d.next_seq = seq + 1;
            let size = entry.len();
            let save = d.store.save(&d.run_id, &d.owner, Save::Entry(entry));
            d.pending.push((i as u32, route, size, save));
            return Ok(());
        }
        self.apply(i, writes);
        if let Some(l) = route {
            self.mark_skipped(i, l);
        }
        self.finish_node(i, route);
        Ok(())
    }

    /// The checkpoint entry of node `i`, the `seq`-th the run applies: its writes, encoded
    /// (and which of them add to a `#[merge]` key), and its route choice.
    fn entry(
        &self,
        i: usize,
        writes: &Writes,
        route: Option<u32>,
        skipped: bool,
        seq: u64,
    ) -> Result<Vec<u8>> {
        let node = &self.plan.nodes[i];
        let mut encoded = Vec::new();
        let mut added = Vec::new();
        for (name, value) in writes.iter() {
            let desc = node.writes.iter().find(|k| k.name == name).ok_or_else(|| {
                Error::UndeclaredWrite {
                    stage: node.meta.name,
                    run_id: None,
                    key: name,
                }
            })?;
            encoded.push(super::durable::encode_slot(
                desc,
                value,
                self.run_id(),
                Some(node.meta.name),
            )?);
            // As `apply` merges it.
            if self.plan.merge_of(i, name).is_some() {
                added.push(name.to_string());
            }
        }
        let entry = format::Entry {
            node: i as u32,
            stage: node.meta.name.to_string(),
            route: route
                .and_then(|l| node.labels.get(l as usize))
                .map(|l| l.to_string()),
            skipped,
            writes: encoded,
            seq: Some(seq),
            added: Some(added),
        };
        super::durable::encoded(
            format::encode_entry(&entry),
            self.run_id(),
            Some(node.meta.name),
            "<entry>",
        )
    }

    /// Node `i` is done (and durable, in a durable run): its dependents may start.
    #[inline]
    fn finish_node(&mut self, i: usize, route: Option<u32>) {
        self.state[i] = DONE;
        if let Some(spans) = &mut self.spans {
            // The stage's span closes as it ends, not with the run.
            spans[i] = tracing::Span::none();
        }
        if self.obs.is_some() {
            self.note_finished(i);
        }
        self.release(i);
        if let Some(l) = route {
            self.release_skipped(i, l, true);
        }
    }

    /// Node `i`'s function returned (it was not skipped): its effects happened, so a failure
    /// from now on rolls it back — in a durable run whether or not its entry gets stored.
    #[inline(always)]
    fn ran(&mut self, i: usize) {
        if self.plan.has_rollback[i] {
            self.remember_rollback(i);
        }
    }

    /// Out of line: few stages have a rollback.
    #[cold]
    #[inline(never)]
    fn remember_rollback(&mut self, i: usize) {
        // Once: a stage whose completion panicked (its entry did not encode, say) is
        // treated as having panicked, and its fallback then completes it again.
        if !self.rollback_order.contains(&(i as u32)) {
            self.rollback_order.push(i as u32);
        }
    }

    /// Tells the callbacks a stage finished; out of line.
    #[cold]
    #[inline(never)]
    fn note_finished(&mut self, i: usize) {
        if let Some(at) = self.skipped.iter().position(|&k| k as usize == i) {
            // Skipped (reported as such): it did not run, so it did not end either.
            self.skipped.swap_remove(at);
            return;
        }
        let attempt = self.attempt_of(i, None);
        self.notify_timed(i, |c, ev, elapsed| {
            c.on_stage_end(&StageEvent { attempt, ..*ev }, elapsed)
        });
    }

    /// What became of the stages that write `key` (for [`Error::MissingKey`]); `None` when
    /// no stage writes it.
    #[cold]
    fn why_not_written(&self, key: &str) -> Option<String> {
        let plan = &self.plan;
        let writers = (0..plan.nodes.len())
            .filter(|&k| plan.nodes[k].writes.iter().any(|d| d.name == key))
            .map(|k| {
                let node = &plan.nodes[k];
                let name = node.meta.name;
                match (self.state[k], node.branch) {
                    (SKIPPED, Some((r, l))) => {
                        let route = &plan.nodes[r as usize];
                        let what = if self.state[r as usize] == SKIPPED {
                            "which did not run"
                        } else if self.took_no_branch(r as usize) {
                            "which was skipped by a middleware and took no branch"
                        } else {
                            "which was not taken"
                        };
                        format!(
                            "`{name}` is in branch `{}` of route `{}`, {what}",
                            route.labels[l as usize], route.meta.name
                        )
                    }
                    (DONE, _) if matches!(node.exec, crate::plan::Exec::Pipeline(_)) => {
                        format!("`{name}` (a nested pipeline) did not write it")
                    }
                    (DONE, _) if node.meta.access.writes_all => {
                        format!("`{name}` was skipped by a middleware")
                    }
                    (DONE, _) => format!(
                        "`{name}` did not write it (a ctx-style stage writes only what it \
                         changes), or a middleware skipped it"
                    ),
                    _ => format!("`{name}` has not run"),
                }
            })
            .collect::<Vec<_>>();
        (!writers.is_empty()).then(|| writers.join("; "))
    }

    /// Whether route `r`, finished, took no branch (a middleware skipped it): every branch
    /// is skipped whole. (A branch of no stages cannot tell: it counts as taken.)
    fn took_no_branch(&self, r: usize) -> bool {
        self.plan.branch_members[r].iter().all(|members| {
            !members.is_empty() && members.iter().all(|&k| self.state[k as usize] == SKIPPED)
        })
    }

    /// Marks every node of route `i`'s other branches skipped.
    fn mark_skipped(&mut self, i: usize, chosen: u32) {
        let plan = self.plan.clone();
        for k in plan.not_chosen(i, chosen) {
            self.state[k as usize] = SKIPPED;
        }
    }

    /// Releases the dependents of route `i`'s skipped nodes, reporting them skipped.
    fn release_skipped(&mut self, i: usize, chosen: u32, report: bool) {
        let plan = self.plan.clone();
        let node = &plan.nodes[i];
        let reason =
            (report && self.obs.is_some()).then(|| match node.labels.get(chosen as usize) {
                Some(label) => format!("route `{}` chose `{label}`", node.meta.name),
                None => format!("route `{}` was skipped", node.meta.name),
            });
        if let Some(reason) = &reason {
            for k in plan.reported_not_chosen(i, chosen) {
                self.notify(k as usize, |c, ev| c.on_stage_skip(ev, reason));
            }
        }
        for k in plan.not_chosen(i, chosen) {
            self.release(k as usize);
        }
    }

    #[inline]
    fn release(&mut self, i: usize) {
        let (from, to) = (
            self.plan.dep_offsets[i] as usize,
            self.plan.dep_offsets[i + 1] as usize,
        );
        for &d in &self.plan.dependents[from..to] {
            let r = &mut self.remaining[d as usize];
            *r -= 1;
            if *r == 0 && self.state[d as usize] == PENDING {
                self.ready.push(d);
            }
        }
    }

    /// Advances entry writes and the lease; returns whether a node became durable.
    fn poll_durable(&mut self, cx: &mut Context<'_>) -> Result<bool> {
        let Some(d) = self.durable.as_mut() else {
            return Ok(false);
        };
        let mut finished: SmallVec<[(u32, Option<u32>, usize); 8]> = SmallVec::new();
        let mut lost = None;
        let mut k = 0;
        while k < d.pending.len() {
            match d.pending[k].3.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => {
                    let (i, route, size, _) = d.pending.swap_remove(k);
                    finished.push((i, route, size));
                }
                Poll::Ready(Err(e)) => {
                    // The stage's end could not be recorded: the run fails with the store's
                    // error (and no rollback runs: see `poll_rollback_record`). The stage
                    // itself did not fail — it runs again on resume — so it is reported
                    // cancelled, as a stage whose save fails while the run fails is (not
                    // as a failure a stage's metrics would count).
                    let (i, ..) = d.pending.swap_remove(k);
                    d.entry_lost = true;
                    lost = Some((i, Error::from_store(&d.run_id, "save", e)));
                    break;
                }
                Poll::Pending => k += 1,
            }
        }
        // A lease that could not be kept ends the run — after the stages stored above are
        // reported: they ended.
        let lease = if lost.is_none() {
            d.poll_lease(cx)
        } else {
            Ok(())
        };
        let progressed = !finished.is_empty();
        // Stored, even beside a save that failed: they ended.
        for (i, route, size) in finished {
            self.note_checkpoint(i as usize, size);
            self.finish_node(i as usize, route);
        }
        if let Some((i, e)) = lost {
            self.report_cancelled(i as usize);
            return Err(e);
        }
        lease?;
        Ok(progressed)
    }

    fn stage_of(&self, i: usize) -> Option<Arc<dyn crate::stage::DynStage>> {
        match &self.plan.nodes[i].exec {
            Exec::Stage(stage) => Some(stage.clone()),
            Exec::Pipeline(_) => None,
        }
    }

    /// Polls the fallbacks running in place of failed stages.
    fn poll_fallbacks(&mut self, cx: &mut Context<'_>, current: &mut usize) -> Result<bool> {
        let mut progressed = false;
        let mut k = 0;
        while k < self.fallbacks.len() {
            *current = self.fallbacks[k].0 as usize;
            match self.fallbacks[k].1.as_mut().poll(cx) {
                Poll::Ready(out) => {
                    let (i, _, stage) = self.fallbacks.swap_remove(k);
                    self.deadlines.retain(|d| d.node != i);
                    let out = out.map_err(|e| fallback_failed(stage, e));
                    self.complete(i as usize, out)?;
                    progressed = true;
                }
                Poll::Pending => k += 1,
            }
        }
        *current = usize::MAX;
        Ok(progressed)
    }

    fn start_rollback(&mut self, error: Error, finishing: Vec<crate::support::Finishing>) {
        if let Some(watch) = &self.rollback_watch {
            watch.store(true, Ordering::SeqCst);
        }
        if !self.rollback_order.is_empty() {
            tracing::warn!(error = %error, stages = self.rollback_order.len(), "run failed; rolling back finished stages");
        }
        // Entries still being stored are finished first (their stages are in
        // `rollback_order`: a resume must know to roll them back). Their stages are
        // reported when each save ends: completed once stored (a resume does not run them
        // again), cancelled if it failed.
        let saving = self
            .durable
            .as_mut()
            .map(|d| std::mem::take(&mut d.pending))
            .unwrap_or_default()
            .into_iter()
            .map(|(i, _, size, save)| (i, size, save))
            .collect();
        self.cancel_in_flight();
        self.deadlines.clear();
        // The stages' spans end here (the rollbacks are the run's).
        self.spans = None;
        self.rolling_back = Some(Box::new(RollingBack {
            error: Some(error),
            current: None,
            saving,
            recording: None,
            finishing,
        }));
    }

    /// A durable run's steps before its rollbacks: the entries being stored, then the record
    /// that it is rolling back, all while keeping its lease. `Some` when the run ends here.
    fn poll_rollback_record(&mut self, cx: &mut Context<'_>) -> Option<Poll<Result<Ctx>>> {
        if let Some(d) = self.durable.as_mut() {
            match d.poll_lease(cx) {
                // Lost, the run stops where it is: its status says `rolling_back` (or
                // `running`, if not recorded yet), and whoever resumes it takes it from there.
                Err(e @ Error::LockLost { .. }) => return Some(Poll::Ready(Err(e))),
                // A passing failure: tried again later; the rollbacks go on.
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the lease while rolling back");
                }
                Ok(()) => {}
            }
        }
        // Entries first: a sibling's entry is stored (and its stage reported) while a sync
        // stage's body still runs on the blocking pool, not only once it returns.
        if let Some(lost) = self.poll_saving(cx) {
            return Some(Poll::Ready(Err(lost)));
        }
        if self.poll_finishing(cx).is_pending() {
            return Some(Poll::Pending);
        }
        let d = self.durable.as_mut()?;
        let rb = self.rolling_back.as_mut().expect("rolling back");
        if !rb.saving.is_empty() {
            return Some(Poll::Pending);
        }
        if self.rollback_order.is_empty() && !d.rolling_back.load(Ordering::SeqCst) {
            // It waited for stages it could not stop (a sync stage's body, a nested
            // pipeline's rollbacks), or for finished stages' entries to be stored, none of
            // which left anything to undo: the run fails as one without rollbacks does,
            // resumable.
            let failure = rb.error.take().unwrap_or(Error::Cancelled { run_id: None });
            return Some(Poll::Ready(Err(failure)));
        }
        if d.rolling_back.load(Ordering::SeqCst) {
            return None;
        }
        if d.entry_lost {
            // A stage ran that the checkpoint does not hold: were it rolled back here and
            // the process stopped, no resume would roll it back again. Nothing is undone;
            // the run stays resumable (a resume runs that stage again, as any stage whose
            // end was not recorded).
            let failure = rb.error.take().unwrap_or(Error::Cancelled { run_id: None });
            tracing::warn!(error = %failure, "run failed, and a finished stage's checkpoint entry could not be stored: no rollback ran");
            return Some(Poll::Ready(Err(failure)));
        }
        // First, the record that it is rolling back (with the error that made it).
        let record = rb.recording.get_or_insert_with(|| {
            let error = rb.error.as_ref().map(ToString::to_string);
            let save = Save::finish(RunStatus::RollingBack, error.as_deref());
            d.store.save(&d.run_id, &d.owner, save)
        });
        match record.as_mut().poll(cx) {
            Poll::Pending => Some(Poll::Pending),
            Poll::Ready(Ok(())) => {
                rb.recording = None;
                d.rolling_back.store(true, Ordering::SeqCst);
                None
            }
            Poll::Ready(Err(e)) => {
                // Nothing was undone: the run stays resumable as it was (a resume runs the
                // failed stage again), rather than undone without a trace.
                let failure = rb.error.take().unwrap_or(Error::Cancelled { run_id: None });
                let e = Error::from_store(&d.run_id, "save", e);
                tracing::warn!(error = %failure, store_error = %e, "run failed, and its store could not record that it is rolling back: no rollback ran");
                // The store's error is the run's (no rollback ran), carrying the failure
                // that started it: an operator sees why the run was failing too.
                Some(Poll::Ready(Err(e.while_failing(failure))))
            }
        }
    }

    /// Tells the callbacks node `i`'s entry (`size` bytes) is stored, under the attempt whose
    /// writes it holds (the last, after `Retry`).
    fn note_checkpoint(&self, i: usize, size: usize) {
        let attempt = self.attempt_of(i, None);
        self.notify(i, |c, ev| {
            c.on_checkpoint(&StageEvent { attempt, ..*ev }, size);
        });
    }

    /// Advances the saves of the entries that were being stored when the run failed, telling
    /// the callbacks how each stage ended: completed once its entry is stored (after
    /// `on_checkpoint`), cancelled if the store failed. `Some` when the run lost its lock.
    fn poll_saving(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        let mut lock_lost = None;
        let mut k = 0;
        loop {
            // Each save that ended is reported before the next is polled: a store whose
            // poll panics leaves the stages not yet reported in `saving`, for
            // `cancel_in_flight` to report.
            let (i, stored) = {
                let (Some(d), Some(rb)) = (self.durable.as_mut(), self.rolling_back.as_mut())
                else {
                    return None;
                };
                let Some(save) = rb.saving.get_mut(k) else {
                    break;
                };
                let Poll::Ready(r) = save.2.as_mut().poll(cx) else {
                    k += 1;
                    continue;
                };
                let (i, size, _) = rb.saving.swap_remove(k);
                match r {
                    Ok(()) => (i as usize, Some(size)),
                    Err(e) => {
                        let e = Error::from_store(&d.run_id, "save", e);
                        if matches!(e, Error::LockLost { .. }) {
                            lock_lost = Some(e);
                        } else {
                            tracing::warn!(error = %e, "could not store a finished stage's entry as the run failed");
                            d.entry_lost = true;
                        }
                        (i as usize, None)
                    }
                }
            };
            match stored {
                Some(size) => {
                    self.note_checkpoint(i, size);
                    self.state[i] = DONE;
                    if self.obs.is_some() {
                        self.note_finished(i);
                    }
                }
                None => self.report_cancelled(i),
            }
            if lock_lost.is_some() {
                break;
            }
        }
        if lock_lost.is_some() {
            // The saves left are not polled again: their stages did not end either.
            let left = self
                .rolling_back
                .as_mut()
                .map(|rb| std::mem::take(&mut rb.saving))
                .unwrap_or_default();
            for (i, ..) in left {
                self.report_cancelled(i as usize);
            }
        }
        lock_lost
    }

    /// Waits for the bodies of sync stages still running on the blocking pool when the run
    /// failed: a body that succeeded had its effects, so its stage is rolled back too — first,
    /// as the last to finish. (Its stage was reported cancelled: its result is discarded.
    /// In a durable run its entry is not stored, so if the process stops before its
    /// rollback ran, a resume does not know to run it.)
    fn poll_finishing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let rb = self.rolling_back.as_mut().expect("rolling back");
        let mut k = 0;
        let mut succeeded: SmallVec<[usize; 2]> = SmallVec::new();
        while k < rb.finishing.len() {
            match rb.finishing[k].1.as_mut().poll(cx) {
                Poll::Pending => k += 1,
                Poll::Ready(ok) => {
                    let (i, _) = rb.finishing.swap_remove(k);
                    if ok {
                        succeeded.push(i);
                    }
                }
            }
        }
        let pending = !rb.finishing.is_empty();
        for i in succeeded {
            tracing::warn!(
                stage = self.plan.nodes[i].meta.name,
                "a sync stage dropped as the run failed had been running, and succeeded: it is rolled back too"
            );
            self.ran(i);
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Runs the rollbacks one at a time, last finished first; then fails the run. A durable
    /// run keeps its lease meanwhile, and runs no rollback before its store records that it
    /// is rolling back.
    fn poll_rollback(&mut self, cx: &mut Context<'_>, current: &mut usize) -> Poll<Result<Ctx>> {
        if let Some(ended) = self.poll_rollback_record(cx) {
            return ended;
        }
        loop {
            let rb = self.rolling_back.as_mut().expect("rolling back");
            if rb.current.is_none() {
                let Some(i) = self.rollback_order.pop() else {
                    if let Some(d) = &self.durable {
                        d.rolled_back.store(true, Ordering::SeqCst);
                    }
                    let error = rb.error.take().unwrap_or(Error::Cancelled { run_id: None });
                    return Poll::Ready(Err(error));
                };
                let stage = self
                    .stage_of(i as usize)
                    .expect("only stages have rollbacks");
                *current = i as usize;
                let fut = stage.rollback(&self.ctx, &self.env);
                self.rolling_back.as_mut().expect("rolling back").current = Some((i, fut));
                continue;
            }
            let (i, fut) = rb.current.as_mut().expect("checked above");
            *current = *i as usize;
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(out) => {
                    let i = *i as usize;
                    rb.current = None;
                    let name = self.plan.nodes[i].meta.name;
                    self.rollback_ended(i, out.err().map(|e| e.into_run_error(name)));
                }
            }
        }
    }

    /// Node `i`'s rollback ended: reports how (`error` when it failed or panicked). The
    /// next rollback goes on either way.
    fn rollback_ended(&self, i: usize, error: Option<Error>) {
        // Its stage did not fail: say that its rollback did.
        let error = error.map(|e| match e {
            Error::Stage { stage, source, .. } => Error::RollbackFailed { stage, source },
            other => other,
        });
        if let Some(e) = &error {
            tracing::warn!(stage = self.plan.nodes[i].meta.name, error = %e, "rollback failed");
            if let Some(d) = &self.durable {
                // Kept for the checkpoint: a refund that failed must be found afterwards,
                // not only in the logs.
                d.failed_rollbacks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(e.to_string());
            }
        }
        self.notify(i, |c, ev| c.on_rollback(ev, error.as_ref()));
    }

    fn persisting(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| !d.pending.is_empty())
    }

    /// Checks the stages' own timeouts: `Err` names the node that timed out, with its error.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> std::result::Result<(), (usize, Error)> {
        for k in 0..self.deadlines.len() {
            let d = &mut self.deadlines[k];
            let (i, due, before) = (d.node as usize, d.due, d.consumer);
            let node = &self.plan.nodes[i];
            // A stream stage's end moves on with the time the consumer held it up since.
            let chunks = &self.env.chunks;
            let end = || due.checked_add(chunks.consumer_time(&node.meta).saturating_sub(before));
            let name = node.meta.name;
            let e = match &mut d.timer {
                Some(timer) => {
                    if poll_deadline(timer.as_mut(), cx, end).is_pending() {
                        continue;
                    }
                    Error::Timeout {
                        stage: name,
                        run_id: None,
                        after: node.meta.timeout.unwrap_or_default(),
                    }
                }
                None => Error::NoRuntime {
                    needed_by: format!("the timeout of stage `{name}` (tokio's timer)"),
                    run_id: None,
                },
            };
            self.forget(i);
            self.report_error(i, &e);
            return Err((i, e));
        }
        Ok(())
    }
}

/// A pipeline's middleware, as a run holds it.
struct Layered {
    layers: Arc<[Layer]>,
    /// With callbacks: per node, the attempt its last call ended on.
    attempts: Option<Box<[std::cell::Cell<u32>]>>,
}

/// What an [`Op`] asks of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Create the stage's future and poll it.
    Start,
    /// Poll the future in the slot.
    Poll,
    /// Drop the future in the slot (the run failed): what it holds is given back before
    /// the rollbacks run.
    Cancel,
}

/// What the driver asks of a slot: start node `i`'s stage, poll it, or drop it.
pub struct Op<'a> {
    layers: Option<&'a Layered>,
    clock: &'a std::cell::Cell<Option<tokio::time::Instant>>,
    node: usize,
    mode: Mode,
    ctx: &'a Ctx,
    env: &'a StageEnv,
    plan: &'a Plan,
}

impl std::fmt::Debug for Op<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op")
            .field("node", &self.node)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Op<'_> {
    /// The node this operation is about.
    pub fn node(&self) -> usize {
        self.node
    }

    /// Starts (when asked) and polls the stage future held in `slot`; `make` creates it
    /// from the context and environment.
    #[inline(always)]
    pub fn run<F>(
        self,
        mut slot: Pin<&mut Option<F>>,
        cx: &mut Context<'_>,
        make: impl FnOnce(&Ctx, &StageEnv) -> F,
    ) -> Poll<std::result::Result<StageOutput, StageError>>
    where
        F: Future<Output = std::result::Result<StageOutput, StageError>>,
    {
        match self.mode {
            Mode::Start => slot.set(Some(make(self.ctx, self.env))),
            Mode::Poll => {}
            Mode::Cancel => {
                slot.set(None);
                return Poll::Pending;
            }
        }
        let Some(fut) = slot.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        match fut.poll(cx) {
            Poll::Ready(out) => {
                slot.set(None);
                Poll::Ready(out)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Like [`run`](Self::run), through the pipeline's middleware: `engine` keeps the
    /// state of the call, and `make` is called again for each attempt. Without middleware
    /// it is [`run`](Self::run).
    #[inline]
    pub fn run_layered<F>(
        self,
        slot: Pin<&mut Option<F>>,
        engine: &mut Engine,
        cx: &mut Context<'_>,
        make: impl Fn(&Ctx, &StageEnv) -> F,
    ) -> Poll<std::result::Result<StageOutput, StageError>>
    where
        F: Future<Output = std::result::Result<StageOutput, StageError>>,
    {
        let Some(Layered { layers, attempts }) = self.layers else {
            return self.run(slot, cx, make);
        };
        if self.mode == Mode::Cancel {
            // What the middleware holds for the call (a user's middleware with the stage
            // inside it, say) goes with the stage's future.
            *engine = Engine::new();
            return self.run(slot, cx, make);
        }
        let node = &self.plan.nodes[self.node];
        let Exec::Stage(stage) = &node.exec else {
            return self.run(slot, cx, make);
        };
        let attempt = std::cell::Cell::new(1);
        let site = Site {
            layers,
            meta: &node.meta,
            stage,
            ctx: self.ctx,
            env: self.env,
            clock: Clock::Run(self.clock),
            attempt: &attempt,
        };
        let polled = engine.poll(self.mode == Mode::Start, slot, cx, &site, &make);
        if let Some(attempts) = attempts {
            // While the call waits, the attempt so far: the stage's own timeout may end it.
            let so_far = match polled {
                Poll::Ready(_) => Some(attempt.get()),
                Poll::Pending => engine.attempts_made(),
            };
            if let Some(n) = so_far {
                attempts[self.node].set(n);
            }
        }
        polled
    }

    /// Like [`run`](Self::run) for a node the plan holds as a value (a nested pipeline).
    pub fn run_dyn(
        self,
        slot: Pin<&mut Option<StageFuture>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<StageOutput, StageError>> {
        let plan = self.plan;
        let node = self.node;
        self.run(slot, cx, |ctx, env| start_dyn(plan, node, ctx, env))
    }
}

/// Creates node `i`'s future through the plan's type-erased view of it.
fn start_dyn(plan: &Plan, i: usize, ctx: &Ctx, env: &StageEnv) -> StageFuture {
    match &plan.nodes[i].exec {
        Exec::Stage(stage) => stage.call(ctx, env),
        Exec::Pipeline(sub) => {
            let sub = sub.clone();
            let input = ctx.clone();
            let mut env = env.clone();
            let name = plan.nodes[i].meta.name;
            env.scope = Some(match &env.scope {
                Some(outer) => format!("{outer}/{name}").into(),
                None => name.into(),
            });
            if !sub.resources.is_empty() {
                // The nested pipeline keeps its own resources; the outer run's fill in.
                env.resources = Arc::new(sub.resources.over(&env.resources));
            }
            let writes = plan.nodes[i].writes.clone();
            Box::pin(async move {
                let mut sched = Scheduler::new(sub.plan.clone(), input.clone(), env, None)
                    .map_err(StageError::new)?;
                let watch = Arc::new(AtomicBool::new(false));
                sched.0.rollback_watch = Some(watch.clone());
                let run = NestedRun {
                    run: Some(sub.start(sched)),
                    rolling_back: watch,
                };
                let out = run.await.map_err(StageError::new)?;
                let mut w = Writes::with_capacity(writes.len());
                for name in out.written_since(&input) {
                    if writes.iter().any(|k| k.name == name) {
                        w.push_slot(
                            name,
                            out.slot(name).cloned().expect("written key is present"),
                        );
                    }
                }
                Ok(StageOutput::Writes(w))
            })
        }
    }
}

/// A nested pipeline's run, as its node's future polls it. Dropped while the nested run
/// is rolling back — the outer run failing meanwhile — it hands the rest of the nested run
/// to the outer one, which lets its rollbacks finish before its own (see
/// [`crate::support::finishing`]); dropped with the whole run, it is cut off.
struct NestedRun {
    run: Option<RunFuture>,
    rolling_back: Arc<AtomicBool>,
}

impl Future for NestedRun {
    type Output = Result<Ctx>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let run = self.run.as_mut().expect("polled after it ended");
        let out = std::task::ready!(run.as_mut().poll(cx));
        self.run = None;
        Poll::Ready(out)
    }
}

impl Drop for NestedRun {
    fn drop(&mut self) {
        if let Some(run) = self.run.take()
            && self.rolling_back.load(Ordering::SeqCst)
        {
            // Nothing of the outer run's to undo: the nested node never finished.
            crate::support::hand_over(|| {
                Box::pin(async move {
                    let _ = run.await;
                    false
                })
            });
        }
    }
}

/// Runs a scheduler to the end. `slots(op, cx)` starts or polls the stage future of node
/// `op.node()`; it is how a driver keeps the futures wherever it likes.
///
/// # Errors
///
/// The first error of a stage (its siblings are dropped, which cancels them), a timeout,
/// or an unknown route label.
pub fn drive<S>(sched: Scheduler, mut slots: S) -> impl Future<Output = Result<Ctx>> + Send
where
    S: FnMut(Op<'_>, &mut Context<'_>) -> Poll<std::result::Result<StageOutput, StageError>> + Send,
{
    let mut sched = sched.0;
    poll_fn(move |cx| {
        sched.clock.set(None);
        // One unwind guard per wake-up, not per stage call; `current` names the stage a
        // panic came from.
        loop {
            let mut current = usize::MAX;
            let advanced = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if sched.rolling_back.is_none() {
                    match step(&mut sched, &mut slots, cx, &mut current) {
                        // A run that lost its lock stops as it is: another owner may carry
                        // it on, and its stages' effects with it.
                        Poll::Ready(Err(e)) => {
                            if let Some(ended) = fail(&mut sched, &mut slots, cx, e) {
                                return ended;
                            }
                        }
                        other => return other,
                    }
                }
                // From here on, `current` names a rollback only while one is polled.
                current = usize::MAX;
                sched.poll_rollback(cx, &mut current)
            }));
            match advanced {
                Ok(poll) => return poll,
                Err(payload) => {
                    let stage = sched
                        .plan
                        .nodes
                        .get(current)
                        .map_or("<fluxio runtime>", |n| n.meta.name);
                    if let Some(rb) = &mut sched.rolling_back {
                        if current == usize::MAX {
                            // Not a rollback: the store's code, polled while rolling back. It
                            // would panic again: the run ends (a durable one stays
                            // `rolling_back` if recorded, for a resume to finish).
                            return Poll::Ready(Err(panic_error(stage, payload)));
                        }
                        // A rollback panicked: it failed (its stage had not); go on with
                        // the others.
                        rb.current = None;
                        sched.rollback_ended(current, Some(panic_error(stage, payload)));
                        continue;
                    }
                    let running = sched.state.get(current) == Some(&RUNNING);
                    let fallback_of = (current != usize::MAX)
                        .then(|| sched.forget(current))
                        .flatten();
                    let panic = panic_message(payload);
                    if running && sched.plan.nodes[current].has_fallback {
                        // The stage panicked: it failed, and its fallback writes instead (as
                        // for a sync stage, whose panic is its error). Its future goes first.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            slot_op(&sched, &mut slots, current, Mode::Cancel, cx)
                        }));
                        match sched.complete(current, Err(panic)) {
                            Ok(()) => continue,
                            Err(e) => match fail(&mut sched, &mut slots, cx, e) {
                                Some(ended) => return ended,
                                None => continue,
                            },
                        }
                    }
                    let e = match fallback_of {
                        Some(stage_error) => fallback_failed(stage_error, panic),
                        None => panic,
                    }
                    .into_run_error(stage);
                    if current != usize::MAX {
                        sched.report_error(current, &e);
                    }
                    // Undo what finished, then report the panic.
                    match fail(&mut sched, &mut slots, cx, e) {
                        Some(ended) => return ended,
                        None => continue,
                    }
                }
            }
        }
    })
}

/// The run failed with `e`: it ends with it — after its rollbacks, when finished stages have
/// some (`None`: they start, the stage futures dropped first). A run that lost its lock stops
/// as it is: another owner may carry it on, and its stages' effects with it.
fn fail<S>(
    sched: &mut SchedState,
    slots: &mut S,
    cx: &mut Context<'_>,
    e: Error,
) -> Option<Poll<Result<Ctx>>>
where
    S: FnMut(Op<'_>, &mut Context<'_>) -> Poll<std::result::Result<StageOutput, StageError>>,
{
    if matches!(e, Error::LockLost { .. }) {
        return Some(Poll::Ready(Err(e)));
    }
    // With something to undo already, the run waits for every stage it cannot stop (they
    // may hold what a rollback needs). With nothing yet, only for those that may leave
    // something to undo: a sync stage with a rollback still running on the blocking pool
    // (if it succeeds, it must be undone), a nested pipeline running its own rollbacks.
    let nothing_yet = sched.rollback_order.is_empty();
    let wait_for = |i: usize| {
        !nothing_yet
            || sched.plan.has_rollback[i]
            || matches!(sched.plan.nodes[i].exec, Exec::Pipeline(_))
    };
    // Entries of finished stages still being stored are stored before the run ends (the
    // stages finished: a resume must not run them again), with or without rollbacks.
    let saving = sched
        .durable
        .as_ref()
        .is_some_and(|d| !d.pending.is_empty());
    if !saving && !(0..sched.plan.nodes.len()).any(wait_for) {
        return Some(Poll::Ready(Err(e)));
    }
    // The fallbacks first: `start_rollback` forgets them.
    let mut finishing = drop_fallbacks(&mut sched.fallbacks);
    finishing.append(&mut cancel_slots_guarded(sched, slots, cx));
    finishing.retain(|(i, _)| wait_for(*i));
    if nothing_yet && finishing.is_empty() && !saving {
        return Some(Poll::Ready(Err(e)));
    }
    sched.start_rollback(e, finishing);
    None
}

/// Drops the futures of the fallbacks running in place of failed stages (their entries
/// stay, for the callbacks to hear them cancelled), collecting — as
/// [`cancel_slots_guarded`] does for the stages — the sync bodies still running on the
/// blocking pool: a fallback that succeeds completes its stage, whose effects then
/// happened, so the run waits for it and rolls it back too.
fn drop_fallbacks(fallbacks: &mut [(u32, StageFuture, Error)]) -> Vec<crate::support::Finishing> {
    if fallbacks.is_empty() {
        return Vec::new();
    }
    crate::support::finishing(|at| {
        for (i, fut, _) in fallbacks.iter_mut() {
            at(*i as usize);
            let old = std::mem::replace(fut, Box::pin(std::future::pending()));
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(old)));
        }
    })
}

/// Drops every stage future the driver still holds — those running beside the failure, a
/// stage that timed out, one that panicked — before the rollbacks run: a rollback may need
/// what they hold (a pool's connection, a lock). A future that panics as it is dropped is
/// dropped all the same (the unwind drops it), and the others after it: its panic is the
/// run's no more.
///
/// Returns the work those futures held that cannot be stopped — sync stages' bodies running
/// on the blocking pool, nested pipelines rolling back — for the run to wait for.
fn cancel_slots_guarded<S>(
    sched: &SchedState,
    slots: &mut S,
    cx: &mut Context<'_>,
) -> Vec<crate::support::Finishing>
where
    S: FnMut(Op<'_>, &mut Context<'_>) -> Poll<std::result::Result<StageOutput, StageError>>,
{
    crate::support::finishing(|at| {
        for i in 0..sched.plan.nodes.len() {
            at(i);
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                slot_op(sched, slots, i, Mode::Cancel, cx)
            }));
        }
    })
}

/// Starts, polls or drops node `i`'s future through the driver's slots, inside the stage's
/// span when there is one.
#[inline(always)]
fn slot_op<S>(
    sched: &SchedState,
    slots: &mut S,
    i: usize,
    mode: Mode,
    cx: &mut Context<'_>,
) -> Poll<std::result::Result<StageOutput, StageError>>
where
    S: FnMut(Op<'_>, &mut Context<'_>) -> Poll<std::result::Result<StageOutput, StageError>>,
{
    let op = Op {
        layers: sched.layers.as_ref(),
        clock: &sched.clock,
        node: i,
        mode,
        ctx: &sched.ctx,
        env: &sched.env,
        plan: &sched.plan,
    };
    let _entered = if sched.traced {
        sched.spans.as_ref().map(|s| s[i].enter())
    } else {
        None
    };
    slots(op, cx)
}

/// Advances a run as far as it goes without waiting.
fn step<S>(
    sched: &mut SchedState,
    slots: &mut S,
    cx: &mut Context<'_>,
    current: &mut usize,
) -> Poll<Result<Ctx>>
where
    S: FnMut(Op<'_>, &mut Context<'_>) -> Poll<std::result::Result<StageOutput, StageError>>,
{
    // The stages that were waiting: each is polled once per wake-up (the run was woken for
    // one of them, or for a timer). Stages started below were just polled: polling them
    // again before they wake the run would be wasted work.
    let mut k = 0;
    while k < sched.running.len() {
        let i = sched.running[k] as usize;
        *current = i;
        match slot_op(sched, slots, i, Mode::Poll, cx) {
            Poll::Ready(out) => {
                sched.unpark(k);
                sched.complete(i, out)?;
            }
            Poll::Pending => k += 1,
        }
    }
    *current = usize::MAX;
    loop {
        // Start everything that is ready, polling each once right away.
        while let Some(i) = sched.pop_ready() {
            *current = i;
            sched.note_start(i);
            match slot_op(sched, slots, i, Mode::Start, cx) {
                Poll::Ready(out) => sched.complete(i, out)?,
                Poll::Pending => sched.park(i),
            }
        }
        *current = usize::MAX;
        if sched.durable.is_some() && sched.poll_durable(cx)? {
            continue;
        }
        if !sched.fallbacks.is_empty() && sched.poll_fallbacks(cx, current)? {
            continue;
        }
        if sched.running.is_empty()
            && sched.fallbacks.is_empty()
            && !sched.persisting()
            && sched.ready.is_empty()
        {
            // A clone is an atomic increment; the scheduler is dropped right after.
            return Poll::Ready(Ok(sched.ctx.clone()));
        }
        if let Err((i, e)) = sched.poll_deadlines(cx) {
            // Dropped by its own timeout, the stage is not waited for: its future goes now,
            // before the run fails — a sync body still running on the blocking pool runs on,
            // its result discarded, rather than being collected by `fail` as one the run
            // must wait for (the body that timed out may never return).
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                slot_op(sched, slots, i, Mode::Cancel, cx)
            }));
            return Poll::Ready(Err(e));
        }
        if sched.ready.is_empty() {
            return Poll::Pending;
        }
    }
}

/// The driver of pipelines built at run time: each node's future is boxed.
pub(crate) fn drive_dyn(sched: Scheduler) -> RunFuture {
    let n = sched.plan().nodes.len();
    Box::pin(async move {
        let mut slots: Vec<Option<StageFuture>> = (0..n).map(|_| None).collect();
        let layered = sched.0.layers.is_some();
        let mut engines: Vec<Engine> = (0..n).filter(|_| layered).map(|_| Engine::new()).collect();
        drive(sched, |op, cx| {
            let i = op.node();
            let plan = op.plan;
            match &plan.nodes[i].exec {
                Exec::Stage(stage) if layered => {
                    op.run_layered(Pin::new(&mut slots[i]), &mut engines[i], cx, |c, e| {
                        stage.call(c, e)
                    })
                }
                _ => op.run_dyn(Pin::new(&mut slots[i]), cx),
            }
        })
        .await
    })
}
