//! Pipelines and their executor.

mod durable;
mod exec;
mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::callback::Callback;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::middleware::{Layer, Middleware};
use crate::plan::{Graph, NodeSpec, Plan};
use crate::stage::Resources;
use crate::store::CheckpointStore;

pub use durable::{CtxDiff, FinishedStage, RunRecord};
use exec::RunOptions;
pub use exec::{Op, RunFuture, Scheduler, drive};
pub(crate) use exec::{is_panic, panic_error, panic_text, poll_caught, run_id_of, unique_token};

/// How a pipeline runs a scheduler: `pipeline!` generates one that keeps every stage
/// future in place; pipelines built at run time box them.
type Driver = Arc<dyn Fn(Scheduler) -> RunFuture + Send + Sync>;
pub use stream::StreamHandle;

/// A compiled pipeline, built by `pipeline! { ... }`.
///
/// Cloning is cheap (the plan is shared). Configure it with the `with_*` builders, then run
/// it any number of times, concurrently, with [`invoke`](Pipeline::invoke) or
/// [`stream`](Pipeline::stream).
#[derive(Clone)]
#[must_use = "a `Pipeline` does nothing until it is run (`pipe.invoke(input).await`), and its `with_*` builders return a new one rather than change it"]
pub struct Pipeline {
    plan: Arc<Plan>,
    resources: Arc<Resources>,
    callbacks: Arc<[Arc<dyn Callback>]>,
    driver: Option<Driver>,
    store: Option<Arc<dyn CheckpointStore>>,
    lease: std::time::Duration,
    middleware: Arc<[Layer]>,
    /// The driver for runs through middleware (`pipeline!` generates one).
    layered_driver: Option<Driver>,
    /// Its name as a node of another pipeline.
    name: Option<&'static str>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("version", &self.plan.version)
            .field(
                "stages",
                &self
                    .plan
                    .graph
                    .nodes
                    .iter()
                    .map(|n| n.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    fn from_plan(plan: Plan) -> Self {
        Pipeline {
            plan: Arc::new(plan),
            resources: Arc::new(Resources::default()),
            callbacks: Arc::from(Vec::new()),
            driver: None,
            store: None,
            lease: durable::DEFAULT_LEASE,
            middleware: Arc::from(Vec::new()),
            layered_driver: None,
            name: None,
        }
    }

    /// Names the pipeline for when it is nested in another (`pipeline! { checkout.clone(),
    /// notify }`): its node is reported to callbacks and in errors, checkpointed, and keyed
    /// for idempotency under `name` instead of `pipeline` — and a resume under another
    /// version can find it by that name. Give each nested pipeline of one graph its own.
    ///
    /// # Panics
    ///
    /// When `name` is empty or holds a `/`, which separates nested pipelines in
    /// idempotency keys (`"<run id>:<nested pipeline>/<stage>"`): a configuration mistake,
    /// caught where it is made.
    ///
    /// ```
    /// # use fluxio_core::Pipeline;
    /// fn for_nesting(checkout: Pipeline) -> Pipeline {
    ///     let checkout = checkout.named("checkout");
    ///     assert_eq!(checkout.name(), Some("checkout"));
    ///     checkout
    /// }
    /// # let _ = for_nesting;
    /// ```
    pub fn named(mut self, name: &'static str) -> Self {
        assert!(
            crate::support::name_problem(name).is_none(),
            "`Pipeline::named({name:?})`: a nested pipeline's name must be non-empty and hold \
             no `/` (it separates nested pipelines in idempotency keys)"
        );
        self.name = Some(name);
        self
    }

    /// Adds a middleware around every stage call. The first added is the outermost:
    /// `.with_middleware(CircuitBreaker::new(5)).with_middleware(Retry::exponential(3))`
    /// retries inside the breaker.
    pub fn with_middleware(mut self, middleware: impl Middleware) -> Self {
        let only = middleware.__fluxio_only();
        if !only.is_empty()
            && !self.plan.nodes.iter().any(|n| {
                matches!(n.exec, crate::plan::Exec::Stage(_))
                    && only.iter().any(|(id, _)| *id == (n.meta.id)())
            })
        {
            let named: Vec<&str> = only.iter().map(|(_, name)| *name).collect();
            tracing::warn!(
                only = ?named,
                "a middleware scoped with .only(..) names no stage of this pipeline (nor can it \
                 name a nested pipeline's stage): it applies to none"
            );
        }
        self.middleware = appended(&self.middleware, Layer::of(middleware));
        self
    }

    /// How long a durable run's lock on its id lasts without renewal (default 30 s; it is
    /// renewed every third of that while the run lives). After a process dies, another
    /// may take its runs over once the lease has run out: a shorter lease fails over
    /// sooner, at the price of more renewals. A lease over 30 years (`Duration::MAX`, say)
    /// is cut to that.
    ///
    /// # Panics
    ///
    /// When `lease` is under 300 ms, too short to be renewed reliably.
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        assert!(
            lease >= std::time::Duration::from_millis(300),
            "a lease under 300 ms cannot be renewed reliably"
        );
        self.lease = lease.min(crate::middleware::FOREVER);
        self
    }

    /// Makes the pipeline durable: every run checkpoints into `store` (see the durability
    /// guide). Runs are fresh by default; `.resume()` continues a stored run.
    pub fn with_store(mut self, store: impl CheckpointStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// [`with_store`](Self::with_store) for a store already shared behind an `Arc`.
    pub fn with_shared_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Continues run `run_id` from its checkpoint: same as
    /// `invoke(Ctx::new()).run_id(run_id).resume()`.
    pub fn resume(&self, run_id: impl Into<String>) -> Invoke<'_> {
        self.invoke(Ctx::new()).run_id(run_id).resume()
    }

    /// Runs `run_id` again from its stored input, as a fresh run under the same id (its
    /// checkpoint is replaced).
    ///
    /// # Errors
    ///
    /// [`Error::NoStore`](crate::Error::NoStore), [`Error::NoCheckpoint`](crate::Error::NoCheckpoint),
    /// [`Error::CorruptCheckpoint`](crate::Error::CorruptCheckpoint),
    /// [`Error::RollbackPending`](crate::Error::RollbackPending) for a run stopped while
    /// rolling back (resume it first), [`Error::BadRunId`](crate::Error::BadRunId) for an
    /// empty id, or the run's own error.
    pub async fn replay(&self, run_id: impl AsRef<str>) -> Result<Ctx> {
        let run_id = run_id.as_ref();
        let store = self.store.clone().ok_or(crate::Error::NoStore {
            operation: "replay",
        })?;
        not_empty(run_id)?;
        let input = durable::stored_input(&self.plan, &*store, run_id).await?;
        self.invoke(input).run_id(run_id).await
    }

    /// Reads stored run `run_id` without running anything: its status, version and error,
    /// its context (input and finished stages' writes, decoded with this pipeline's key
    /// types), and the stages it finished — to look at a failed run before resuming it, or
    /// at what a completed one produced. The run's lock is not taken: a run another process
    /// is running may be read between two of its checkpoints. A run written by another
    /// version (compare [`RunRecord::version`] with [`version`](Self::version)) is decoded
    /// with this pipeline's key types too: a key whose type changed fails with
    /// `CorruptCheckpoint`, or, if its bytes happen to decode as the new type, reads wrong —
    /// inspect a run with the build that wrote it when you can.
    ///
    /// # Errors
    ///
    /// [`Error::NoStore`](crate::Error::NoStore), [`Error::NoCheckpoint`](crate::Error::NoCheckpoint),
    /// [`Error::CorruptCheckpoint`](crate::Error::CorruptCheckpoint) (a value that does not
    /// decode as this pipeline's type of its key), [`Error::BadRunId`](crate::Error::BadRunId)
    /// for an empty id, or [`Error::Store`](crate::Error::Store).
    pub async fn inspect(&self, run_id: impl AsRef<str>) -> Result<RunRecord> {
        let run_id = run_id.as_ref();
        let store = self.store.clone().ok_or(crate::Error::NoStore {
            operation: "inspect",
        })?;
        not_empty(run_id)?;
        durable::inspect(&self.plan, &*store, run_id).await
    }

    /// Compares the contexts of two stored runs key by key (values compared by their
    /// encoded bytes).
    ///
    /// # Errors
    ///
    /// [`Error::NoStore`](crate::Error::NoStore), [`Error::NoCheckpoint`](crate::Error::NoCheckpoint),
    /// [`Error::CorruptCheckpoint`](crate::Error::CorruptCheckpoint), or
    /// [`Error::BadRunId`](crate::Error::BadRunId) for an empty id.
    pub async fn diff(&self, a: impl AsRef<str>, b: impl AsRef<str>) -> Result<CtxDiff> {
        let (a, b) = (a.as_ref(), b.as_ref());
        let store = self
            .store
            .clone()
            .ok_or(crate::Error::NoStore { operation: "diff" })?;
        not_empty(a)?;
        not_empty(b)?;
        durable::diff(&self.plan, &*store, a, b).await
    }

    /// Sets the driver generated by `pipeline!`. (Not `#[must_use]` itself: an unused
    /// `pipeline! { .. }` is reported as an unused `Pipeline`, not by this hidden name.)
    #[doc(hidden)]
    pub fn with_driver(
        mut self,
        driver: impl Fn(Scheduler) -> RunFuture + Send + Sync + 'static,
    ) -> Self {
        self.driver = Some(Arc::new(driver));
        self
    }

    /// Sets the driver `pipeline!` generates for runs through middleware: like the one of
    /// [`with_driver`](Self::with_driver), with an engine per stage
    /// ([`Op::run_layered`]).
    #[doc(hidden)]
    pub fn with_layered_driver(
        mut self,
        driver: impl Fn(Scheduler) -> RunFuture + Send + Sync + 'static,
    ) -> Self {
        self.layered_driver = Some(Arc::new(driver));
        self
    }

    pub(crate) fn start(&self, mut sched: Scheduler) -> RunFuture {
        if !self.middleware.is_empty() {
            sched.set_layers(self.middleware.clone());
            return match &self.layered_driver {
                Some(driver) => driver(sched),
                None => exec::drive_dyn(sched),
            };
        }
        match &self.driver {
            Some(driver) => driver(sched),
            None => exec::drive_dyn(sched),
        }
    }

    /// Builds a pipeline from flattened nodes and the dependency matrix evaluated at
    /// compile time (`deps[j][i]`: node `j` waits for node `i`). Used by `pipeline!`.
    #[doc(hidden)]
    pub fn from_const<const N: usize>(nodes: Vec<NodeSpec>, deps: &[[bool; N]; N]) -> Self {
        assert_eq!(
            nodes.len(),
            N,
            "pipeline! emitted a node list and matrix of different sizes"
        );
        Self::from_plan(Plan::build(nodes, &|i, j| deps[j][i]))
    }

    /// Builds a pipeline from flattened nodes, computing dependencies now (used when the
    /// pipeline nests another pipeline, whose access is known only at run time).
    #[doc(hidden)]
    pub fn from_nodes(nodes: Vec<NodeSpec>) -> Self {
        Self::from_plan(Plan::build_dynamic(nodes))
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Registers a shared resource that stages receive as `Res<T>`.
    ///
    /// Registering a second value of the same type replaces the first.
    pub fn with_resource<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.resources).insert(value);
        self
    }

    /// Registers a resource already shared behind an `Arc`: stages taking `Res<T>` receive
    /// this same `Arc`, and you keep your handle to it (no `Res<Arc<T>>` needed).
    pub fn with_shared_resource<T: std::any::Any + Send + Sync>(mut self, value: Arc<T>) -> Self {
        Arc::make_mut(&mut self.resources).insert_arc(value);
        self
    }

    /// Adds a callback that observes every run of this pipeline.
    pub fn with_callback(mut self, callback: impl Callback) -> Self {
        self.callbacks = appended(&self.callbacks, Arc::new(callback));
        self
    }

    /// The keys the pipeline reads before any of its stages writes them, in order of first
    /// use. `invoke` checks they are all in the input before running anything.
    pub fn inputs(&self) -> Vec<&'static str> {
        self.plan.input_descs.iter().map(|k| k.name).collect()
    }

    /// The dependency graph the scheduler runs.
    pub fn graph(&self) -> &Graph {
        &self.plan.graph
    }

    /// The graph as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        self.plan.graph.to_mermaid()
    }

    /// A short sha256 hex digest of the pipeline's structure: stage names and kinds, their
    /// reads and writes with their keys' types (as `std::any::type_name` names them) and the
    /// `#[merge]` keys they add to, the edges and the route labels. Middleware, callbacks, resources
    /// and timeouts do not change it. The same flow gives the same version in every process
    /// and build (by one compiler).
    pub fn version(&self) -> &str {
        &self.plan.version
    }

    /// The name given with [`named`](Self::named).
    pub fn name(&self) -> Option<&'static str> {
        self.name
    }

    /// Starts building a run on `input`; `.await` it to run.
    ///
    /// # Errors
    ///
    /// The awaited run fails with [`Error::MissingInput`](crate::Error::MissingInput) or
    /// [`Error::MissingResource`](crate::Error::MissingResource) before any stage runs, or
    /// with the first error a stage produced.
    pub fn invoke(&self, input: Ctx) -> Invoke<'_> {
        Invoke {
            pipe: self,
            input: Some(input),
            opts: RunOptions::default(),
            running: None,
        }
    }

    /// Runs on `input` and streams every chunk of every stream stage, tagged with its
    /// stage; after the last chunk, [`StreamHandle::finish`] returns the final context.
    pub fn stream<C: Send + 'static>(&self, input: Ctx) -> StreamHandle<C> {
        StreamHandle::start(self.clone(), input)
    }
}

/// `list` with `item` added at the end (the pipeline's lists are shared, so a builder call
/// makes a new one).
fn appended<T: Clone>(list: &Arc<[T]>, item: T) -> Arc<[T]> {
    list.iter().cloned().chain(std::iter::once(item)).collect()
}

/// A run being configured: `.run_id(..)`, then `.await`.
///
/// It is a [`Future`] itself, so it goes wherever one does — `join_all`, `select!`,
/// `FuturesUnordered`, `block_on` — and the run starts on its first poll. (To spawn a run,
/// move a clone of the pipeline into the task: `tokio::spawn(async move {
/// pipe.invoke(input).await })`.)
///
/// ```
/// # use fluxio_core::{Ctx, Error, Pipeline};
/// /// Runs `pipe` on every input at once, on the caller's task.
/// async fn run_all(pipe: &Pipeline, inputs: Vec<Ctx>) -> Vec<Result<Ctx, Error>> {
///     futures_util::future::join_all(inputs.into_iter().map(|input| pipe.invoke(input))).await
/// }
/// # let _ = run_all;
/// ```
#[must_use = "an invoke does nothing until it is awaited"]
pub struct Invoke<'p> {
    pipe: &'p Pipeline,
    /// Taken when the run starts (an `Option`: an empty `Ctx` to leave behind would be an
    /// allocation per run).
    input: Option<Ctx>,
    opts: RunOptions,
    /// The run, once polled. In a `Mutex` only to keep the invoke `Sync` (the run future is
    /// not): it is reached through `&mut self`, with `get_mut`, never locked.
    running: Option<std::sync::Mutex<InvokeRun<'p>>>,
}

/// An invoke's run, once started.
type InvokeRun<'p> = Pin<Box<dyn Future<Output = Result<Ctx>> + Send + 'p>>;

/// Why an invoke configured once it had started was cancelled.
const LATE: &str = "`.run_id(..)`, `.resume()` and `.allow_version_change()` configure a run \
    before it is first polled; this run had already started (a durable one under the id \
    callbacks and `RunInfo` see), so it was cancelled";

impl std::fmt::Debug for Invoke<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoke")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl<'p> Invoke<'p> {
    /// Names the run. In a durable pipeline the id keys the checkpoint: a run with the id
    /// of a stored run starts fresh (the old checkpoint is replaced) unless `.resume()` —
    /// except a run stopped while rolling back, which is kept and the call refused with
    /// [`Error::RollbackPending`](crate::Error::RollbackPending) (resume it first).
    ///
    /// Only before the invoke is first polled (it is a [`Future`]): called once the run has
    /// started, it cancels the run, which then ends with
    /// [`Error::BadRunId`](crate::Error::BadRunId) — as `.resume()` and
    /// `.allow_version_change()` do.
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.options().run_id = Some(id.into());
        self
    }

    /// Continues the run from its last checkpoint instead of starting fresh: finished stages
    /// are not run again; the input's keys are added to the restored context (a key the
    /// checkpoint already holds is [`Error::MergeConflict`](crate::Error::MergeConflict)).
    /// A run that had completed returns its final context without running anything.
    ///
    /// Fails with [`Error::NoCheckpoint`](crate::Error::NoCheckpoint) when there is none,
    /// and [`Error::CheckpointVersion`](crate::Error::CheckpointVersion) when another version
    /// of the pipeline wrote it.
    pub fn resume(mut self) -> Self {
        self.options().resume = true;
        self
    }

    /// With `.resume()`: accept a checkpoint written by another version of the pipeline.
    /// For operators who know the change is compatible; it is logged (`tracing` warning).
    /// Without `.resume()` the run fails with [`Error::BadRunId`](crate::Error::BadRunId)
    /// before it starts (it would have started afresh, its finished stages again).
    pub fn allow_version_change(mut self) -> Self {
        self.options().allow_version_change = true;
        self
    }
}

impl Invoke<'_> {
    /// The run's options, before it starts. Once it has started, configuring it cancels it
    /// (see [`LATE`]): the options it runs with are no longer these.
    fn options(&mut self) -> &mut exec::RunOptions {
        if let Some(run) = self.running.take() {
            crate::support::outside_finishing(|| drop(run));
            self.running = Some(std::sync::Mutex::new(Box::pin(std::future::ready(Err(
                crate::Error::BadRunId { reason: LATE },
            )))));
        }
        &mut self.opts
    }
}

impl Future for Invoke<'_> {
    type Output = Result<Ctx>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let run = this.running.get_or_insert_with(|| {
            std::sync::Mutex::new(exec::start_run(
                this.pipe,
                this.input.take().unwrap_or_default(),
                std::mem::take(&mut this.opts),
                None,
            ))
        });
        run.get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .poll(cx)
    }
}

impl Drop for Invoke<'_> {
    fn drop(&mut self) {
        if let Some(run) = self.running.take() {
            // Dropped inside a stage's future while that stage's run fails and collects
            // the sync bodies it must wait for: this run's bodies are its own, not that
            // stage's (which never finished, and must not be rolled back for them).
            crate::support::outside_finishing(|| drop(run));
        }
    }
}

/// An empty run id is refused as it is for a run: no run can have it.
fn not_empty(run_id: &str) -> Result<()> {
    if run_id.is_empty() {
        return Err(crate::Error::BadRunId {
            reason: exec::EMPTY_RUN_ID,
        });
    }
    Ok(())
}
