//! Pipelines and their executor.

mod exec;
mod stream;

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use crate::callback::Callback;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::plan::{Graph, NodeSpec, Plan};
use crate::stage::Resources;

pub(crate) use exec::{Task, panic_error};
pub use stream::StreamHandle;

/// A compiled pipeline, built by `pipeline! { ... }`.
///
/// Cloning is cheap (the plan is shared). Configure it with the `with_*` builders, then run
/// it any number of times, concurrently, with [`invoke`](Pipeline::invoke) or
/// [`stream`](Pipeline::stream).
#[derive(Clone)]
pub struct Pipeline {
    plan: Arc<Plan>,
    resources: Arc<Resources>,
    callbacks: Arc<[Arc<dyn Callback>]>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
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
    #[must_use]
    pub fn with_resource<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.resources).insert(value);
        self
    }

    /// Adds a callback that observes every run of this pipeline.
    #[must_use]
    pub fn with_callback(mut self, callback: impl Callback) -> Self {
        let mut all: Vec<Arc<dyn Callback>> = self.callbacks.iter().cloned().collect();
        all.push(Arc::new(callback));
        self.callbacks = Arc::from(all);
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
    /// reads and writes, the edges and the route labels. Middleware, callbacks, resources
    /// and timeouts do not change it. The same flow gives the same version in every build
    /// and process.
    pub fn version(&self) -> &str {
        &self.plan.version
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
            input,
            run_id: None,
        }
    }

    /// Runs on `input` and streams every chunk of every stream stage, tagged with its
    /// stage; after the last chunk, [`StreamHandle::finish`] returns the final context.
    pub fn stream<C: Send + 'static>(&self, input: Ctx) -> StreamHandle<C> {
        StreamHandle::start(self.clone(), input)
    }
}

/// A run being configured: `.run_id(..)`, then `.await`.
#[must_use = "an invoke does nothing until it is awaited"]
pub struct Invoke<'p> {
    pipe: &'p Pipeline,
    input: Ctx,
    run_id: Option<String>,
}

impl std::fmt::Debug for Invoke<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoke")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl<'p> Invoke<'p> {
    /// Names the run; callbacks and errors report it.
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }
}

impl<'p> IntoFuture for Invoke<'p> {
    type Output = Result<Ctx>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Ctx>> + Send + 'p>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(exec::run(self.pipe, self.input, self.run_id, None))
    }
}
