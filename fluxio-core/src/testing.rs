//! Test one stage at a time.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::stage::{ChunkSink, Resources, Route, Stage, StageEnv, StageFuture, StageOutput};

/// Runs a single stage by its contract, without middleware: its reads are checked in the
/// input, its writes are returned in the output context.
///
/// ```
/// # use fluxio_core::{Ctx, Key, Stage, StageMeta, StageKind, StageEnv, StageOutput, Writes, access::Access};
/// # use fluxio_core::testing::StepHarness;
/// # #[allow(non_camel_case_types)] #[derive(Clone, Copy)] struct n {}
/// # impl Key for n { type Value = u64; const NAME: &'static str = "n"; }
/// # fn n() -> n { n {} }
/// # #[allow(non_camel_case_types)] #[derive(Clone, Copy)] struct double;
/// # impl Stage for double {
/// #     const META: StageMeta = StageMeta { name: "double", id: std::any::TypeId::of::<double>, kind: StageKind::Async,
/// #         access: Access::new(&[n::DESC], &[n::DESC]), timeout: None, resources: &[] };
/// #     fn call(&self, ctx: &Ctx, _: &StageEnv)
/// #         -> impl std::future::Future<Output = Result<StageOutput, fluxio_core::StageError>> + Send + 'static + use<> {
/// #         let v = ctx[n];
/// #         async move { let mut w = Writes::none(); w.push::<n>(v * 2); Ok(StageOutput::Writes(w)) }
/// #     }
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let out = StepHarness::new(double).run(Ctx::new().with(n, 21)).await?;
/// assert_eq!(out[n], 42);
/// # Ok::<(), fluxio_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct StepHarness<S> {
    stage: S,
    resources: Resources,
}

impl<S: Stage> StepHarness<S> {
    /// A harness for `stage`.
    pub fn new(stage: S) -> Self {
        StepHarness {
            stage,
            resources: Resources::default(),
        }
    }

    /// Registers a resource the stage receives as `Res<T>`.
    #[must_use]
    pub fn with_resource<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.resources.insert(value);
        self
    }

    async fn call(&self, input: &Ctx, chunks: ChunkSink) -> Result<StageOutput> {
        let meta = S::META;
        for key in meta.access.reads {
            if !input.contains_name(key.name) {
                return Err(Error::MissingKey {
                    stage: meta.name,
                    run_id: None,
                    key: key.name,
                    reason: "the harness's input lacks it".into(),
                });
            }
        }
        for res in meta.resources {
            if !self.resources.contains((res.type_id)()) {
                return Err(Error::MissingResource {
                    stage: meta.name,
                    type_name: (res.type_name)(),
                    run_id: None,
                });
            }
        }
        let env = StageEnv {
            resources: Arc::new(self.resources.clone()),
            chunks,
            run_id: Some("step-harness".into()),
            callbacks: None,
            seq: 0,
            scope: None,
        };
        guarded(
            meta.name,
            Box::pin(self.stage.call(input, &env)),
            meta.timeout,
        )
        .await
    }

    /// Runs the stage on `input` and returns `input` plus the stage's writes (a write of a
    /// `#[merge]` key it does not read added to the input's value, as in a pipeline).
    ///
    /// # Errors
    ///
    /// [`Error::MissingKey`] when a read is missing from `input`, [`Error::MissingResource`],
    /// or the stage's own error.
    pub async fn run(&self, input: Ctx) -> Result<Ctx> {
        let mut ctx = input.clone();
        match self.call(&input, ChunkSink::new(None)).await? {
            // As in a pipeline: a write of a `#[merge]` key the stage does not read adds to
            // the input's value.
            StageOutput::Writes(w) => w.apply_merging(&mut ctx, |name| {
                let access = &S::META.access;
                crate::key::merge_in(access.reads, access.writes, name)
            }),
            StageOutput::Route(_) | StageOutput::Skip(_) => {}
        }
        Ok(ctx)
    }

    /// Runs a stream stage on `input` and collects its chunks.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run); also [`Error::ChunkType`] when the chunks are not `C`s.
    pub async fn chunks<C: Send + 'static>(&self, input: Ctx) -> Result<Vec<C>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(32);
        let collect = async move {
            let mut out = Vec::new();
            while let Some(raw) = rx.recv().await {
                out.push(crate::run::StreamHandle::<C>::convert(raw, None)?.data);
            }
            Ok::<_, Error>(out)
        };
        let (ran, collected) =
            futures_util::future::join(self.call(&input, ChunkSink::new(Some(tx))), collect).await;
        ran?;
        collected
    }

    /// Runs a route stage on `input` and returns the branch it chose.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run); also when the stage is not a route stage.
    pub async fn route(&self, input: Ctx) -> Result<Route> {
        match self.call(&input, ChunkSink::new(None)).await? {
            StageOutput::Route(r) => Ok(r),
            StageOutput::Writes(_) | StageOutput::Skip(_) => Err(Error::Stage {
                stage: S::META.name,
                run_id: None,
                source: Arc::from(crate::StageError::msg("not a route stage").into_inner()),
            }),
        }
    }
}

/// Runs one stage future on its own as a pipeline would: a panic becomes the stage's
/// error, and the stage's own timeout applies.
async fn guarded(
    stage: &'static str,
    mut fut: StageFuture,
    timeout: Option<Duration>,
) -> Result<StageOutput> {
    let caught = std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(out.map_err(|e| e.into_run_error(stage))),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(crate::run::panic_error(stage, payload))),
        }
    });
    match timeout {
        None => caught.await,
        Some(after) => tokio::time::timeout(after, caught)
            .await
            .unwrap_or(Err(Error::Timeout {
                stage,
                run_id: None,
                after,
            })),
    }
}
