//! `Pipeline::stream`: chunks as they are produced, then the final context.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::Pipeline;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::stage::{Chunk, ConsumerClock, RawChunk};

/// How many chunks may wait for the consumer before stream stages are slowed down.
const CHUNK_BUFFER: usize = 32;

type RunFuture = Pin<Box<dyn Future<Output = Result<Ctx>> + Send>>;

/// A streaming run: a [`Stream`] of every chunk of every stream stage, in order, each
/// tagged with its stage; then [`finish`](StreamHandle::finish) gives the final context.
///
/// The run starts when the handle is first polled, on a task of its own (spawned on the
/// current tokio runtime; outside one, it advances only while the handle is polled): its
/// other stages and a durable run's lease do not wait for the consumer. The consumer sets
/// the pace of the stream stages: one waits when the consumer is more than 32 chunks
/// behind. If the run fails, the stream yields the error as its last item.
///
/// [`cancel`](StreamHandle::cancel) cancels the run and waits until it has stopped.
/// Dropping the handle cancels it too (aborts its task), without waiting: the
/// cancellation, and a durable run's lock release, complete when the runtime next runs
/// the task.
///
/// Before it is first polled, `.run_id(..)`, `.resume()` and `.allow_version_change()`
/// configure the run as they do an invoke: a durable streaming run under your own id, and
/// its continuation after a crash (stream stages that finished before are not run again,
/// so their chunks are not streamed again). Called once the handle was polled, they cancel
/// the run, which ends with [`Error::BadRunId`]: it had started under a generated id.
/// That end ([`finish`](StreamHandle::finish), or the stream's last item) comes once the
/// run's task has stopped.
#[must_use = "a stream does nothing unless polled"]
pub struct StreamHandle<C> {
    /// What the run starts from, until the handle is first polled.
    start: Option<Box<(Pipeline, Ctx, super::exec::RunOptions, Sender)>>,
    /// The run, until it has ended. One cancelled on its task (configured late) stays
    /// here, aborted, until the task has stopped — its stages dropped, their cancellation
    /// reported, a durable run's lock given back — so the run's id is free once the handle
    /// says it ended; `result` already holds why it ended.
    run: Option<RunFuture>,
    /// The run's task, when it was spawned.
    task: Option<tokio::task::AbortHandle>,
    rx: Option<tokio::sync::mpsc::Receiver<RawChunk>>,
    result: Option<Result<Ctx>>,
    error_yielded: bool,
    /// The time the consumer has held the stream stages up (see [`ConsumerClock`]).
    consumer: Arc<ConsumerClock>,
    /// The id the run was given, for the errors the handle makes itself.
    run_id: Option<String>,
    _chunk: PhantomData<fn() -> C>,
}

/// Why a streamed run configured once it had started was cancelled.
const LATE: &str = "`.run_id(..)`, `.resume()` and `.allow_version_change()` configure a \
    streamed run before its handle is first polled; this run had already started (a \
    durable one under the id callbacks and `RunInfo` see), so it was cancelled";

impl<C> std::fmt::Debug for StreamHandle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle")
            .field("running", &self.run.is_some())
            .finish_non_exhaustive()
    }
}

type Sender = tokio::sync::mpsc::Sender<RawChunk>;

impl<C: Send + 'static> StreamHandle<C> {
    pub(crate) fn start(pipe: Pipeline, input: Ctx) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNK_BUFFER);
        StreamHandle {
            start: Some(Box::new((pipe, input, Default::default(), tx))),
            run: None,
            task: None,
            rx: Some(rx),
            result: None,
            error_yielded: false,
            consumer: Arc::default(),
            run_id: None,
            _chunk: PhantomData,
        }
    }

    /// The run's options, before it starts. While it runs, configuring it cancels it (see
    /// [`LATE`]); once it has ended, there is nothing left to configure and its result
    /// stands.
    fn options(&mut self) -> Option<&mut super::exec::RunOptions> {
        // A run that ended on its task (its end not seen yet) is not cancelled: too late
        // to configure, as for one whose end the handle saw.
        let ended = self.task.as_ref().is_some_and(|t| t.is_finished());
        if self.start.is_none() && !ended && self.run.is_some() && self.result.is_none() {
            self.abort();
            self.rx = None;
            self.result = Some(Err(Error::BadRunId { reason: LATE }));
        }
        self.start.as_mut().map(|s| &mut s.2)
    }

    /// Cancels the started run: on its task, aborts it (the abort takes effect when the
    /// runtime next runs the task, so the caller awaits `run` before reporting the end);
    /// polled in place, drops its future, which cancels it now.
    fn abort(&mut self) {
        match &self.task {
            Some(task) => task.abort(),
            None => self.run = None,
        }
    }

    /// Names the run, as [`Invoke::run_id`](super::Invoke::run_id) does: in a durable
    /// pipeline the id keys the checkpoint. Only before the handle is first polled: called
    /// while the run goes on, it cancels the run, which then ends with [`Error::BadRunId`]
    /// (it had started under another id); called once the run has ended, it does nothing.
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        if let Some(opts) = self.options() {
            opts.run_id = Some(id.into());
        }
        self
    }

    /// Continues the run from its last checkpoint, as
    /// [`Invoke::resume`](super::Invoke::resume) does: stages that finished are not run
    /// again, and the chunks of the stream stages that run are streamed. Only before the
    /// handle is first polled.
    pub fn resume(mut self) -> Self {
        if let Some(opts) = self.options() {
            opts.resume = true;
        }
        self
    }

    /// With `.resume()`: accept a checkpoint written by another version of the pipeline,
    /// as [`Invoke::allow_version_change`](super::Invoke::allow_version_change) does.
    pub fn allow_version_change(mut self) -> Self {
        if let Some(opts) = self.options() {
            opts.allow_version_change = true;
        }
        self
    }

    /// Starts the run, the first time the handle is used.
    fn started(&mut self) -> Option<&mut RunFuture> {
        if let Some(start) = self.start.take() {
            let (pipe, input, opts, tx) = *start;
            self.run_id.clone_from(&opts.run_id);
            let chunks = Some((tx, self.consumer.clone()));
            let run = super::exec::start_run(&pipe, input, opts, chunks);
            self.run = Some(match tokio::runtime::Handle::try_current() {
                // The run goes on while the consumer is away (its other stages, its lease),
                // held back only where a stream stage waits for room in the chunk buffer.
                Ok(rt) => {
                    use tracing::Instrument;
                    let task = rt.spawn(run.in_current_span());
                    self.task = Some(task.abort_handle());
                    // Dropped with the handle, the task is aborted (its stages cancelled).
                    let task = crate::support::AbortOnDrop(task);
                    let run_id = self.run_id.clone();
                    Box::pin(async move {
                        match task.await {
                            Ok(out) => out,
                            // The run catches its stages' panics: this one is the runtime's
                            // own. Carried on to the consumer, as it would be had the run
                            // been polled in place.
                            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                            // Cancelled: its runtime shut down.
                            Err(_) => Err(Error::Cancelled { run_id }),
                        }
                    })
                }
                // Outside tokio, the consumer's polls drive it.
                Err(_) => run,
            });
        }
        self.run.as_mut()
    }

    /// Waits for the run to end and returns its final context (chunks not yet consumed are
    /// dropped).
    ///
    /// # Errors
    ///
    /// The error the run failed with.
    pub async fn finish(mut self) -> Result<Ctx> {
        // No one reads chunks any more: stream stages' sends return at once.
        self.rx = None;
        self.started();
        if let Some(run) = self.run.take() {
            // The first answer stands (a cancelled run's own end is `Cancelled`).
            let out = run.await;
            self.result.get_or_insert(out);
        }
        self.result.take().unwrap_or(Err(Error::Cancelled {
            run_id: self.run_id.clone(),
        }))
    }

    /// Cancels the run and waits until it has stopped: its stages are dropped (callbacks
    /// hear `stage.cancelled`, then `pipeline.cancelled`) and a durable run has given its
    /// id's lock back — so a `resume` of the id right after does not meet
    /// [`Error::RunIdInUse`] (with the Redis store, the lock's release is still sent in the
    /// background). A durable run keeps its checkpoint, to be resumed. Dropping the handle
    /// cancels the run too, but does not wait for it.
    ///
    /// # Errors
    ///
    /// [`Error::Cancelled`] naming the run — or, when the run had ended before it could be
    /// cancelled, how it ended (`Ok` with its final context if it completed). A handle never
    /// polled started nothing: `Error::Cancelled`.
    ///
    /// ```
    /// # use fluxio_core::{Ctx, Error, Pipeline};
    /// # async fn demo(pipe: Pipeline, input: Ctx) {
    /// let handle = pipe.stream::<String>(input).run_id("order-42");
    /// // ... read some chunks, then give up on the rest:
    /// if let Err(Error::Cancelled { run_id }) = handle.cancel().await {
    ///     println!("cancelled {run_id:?}");
    /// }
    /// // "order-42" is free: `pipe.resume("order-42")` continues it from its checkpoint.
    /// # }
    /// # let _ = demo;
    /// ```
    pub async fn cancel(mut self) -> Result<Ctx> {
        self.rx = None;
        if let Some(start) = self.start.take() {
            return Err(Error::Cancelled {
                run_id: start.2.run_id,
            });
        }
        if self.result.is_none() {
            // Awaited below, until the task has stopped (one that ended first keeps its
            // result).
            self.abort();
        }
        if let Some(run) = self.run.take() {
            let out = run.await;
            self.result.get_or_insert(out);
        }
        self.result.take().unwrap_or(Err(Error::Cancelled {
            run_id: self.run_id.clone(),
        }))
    }

    /// `raw` as a chunk of `C`s, or [`Error::ChunkType`] naming run `run_id`.
    pub(crate) fn convert(raw: RawChunk, run_id: Option<&str>) -> Result<Chunk<C>> {
        match raw.data.downcast::<C>() {
            Ok(data) => Ok(Chunk {
                stage: raw.stage,
                data: *data,
            }),
            Err(_) => Err(Error::ChunkType {
                stage: raw.stage,
                expected: std::any::type_name::<C>(),
                actual: raw.type_name,
                run_id: run_id.map(str::to_string),
            }),
        }
    }
}

impl<C: Send + 'static> Stream for StreamHandle<C> {
    type Item = Result<Chunk<C>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.started();
        // Whether the run ended (on its task; polled in place outside tokio, where it moves
        // on at every poll, also while chunks wait in the buffer).
        if let Some(run) = &mut this.run {
            if let Poll::Ready(result) = run.as_mut().poll(cx) {
                this.run = None;
                this.result.get_or_insert(result);
            }
        }
        if let Some(rx) = &mut this.rx {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(raw)) => {
                    return Poll::Ready(Some(Self::convert(raw, this.run_id.as_deref())));
                }
                // Every sender is gone: the run ended and all its chunks were delivered.
                Poll::Ready(None) => this.rx = None,
                // The run goes on (polled above), or it is over and a chunk sender outlived
                // it (a task the stage left behind, say): either wakes the consumer.
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.run.is_some() {
            // Polled above: it waits.
            return Poll::Pending;
        }
        if let Some(Err(e)) = &this.result {
            if !this.error_yielded {
                this.error_yielded = true;
                return Poll::Ready(Some(Err(e.clone())));
            }
        }
        Poll::Ready(None)
    }
}
