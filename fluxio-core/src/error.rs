//! The error type of fluxio runs.

use std::sync::Arc;
use std::time::Duration;

/// A type-erased error shared between clones of [`Error`].
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with fluxio's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make a pipeline run fail. Every variant names what failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A stage returned an error or panicked.
    Stage {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own: given with `.run_id(..)` (or
        /// `resume`), or made for a run with a store (what resumes it). Set on the error the
        /// run returns; callbacks, events and the checkpoint's error text get the error
        /// without it (they carry the run id apart).
        run_id: Option<String>,
        /// What the stage reported.
        source: SharedError,
    },
    /// A stage ran longer than its timeout.
    Timeout {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one.
        run_id: Option<String>,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// A key the pipeline reads before any stage writes it was not in the input.
    MissingInput {
        /// The key's name.
        key: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
    },
    /// A key the pipeline reads before any stage writes it was not in the input — and a
    /// stage declared after its first reader writes it (most likely declared too late).
    InputWrittenLater {
        /// The key's name.
        key: &'static str,
        /// The first stage that reads it.
        reader: &'static str,
        /// The later stage that writes it.
        writer: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
    },
    /// A stage needs a `Res<T>` that was not registered with `.with_resource(..)`.
    MissingResource {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// The resource's type name.
        type_name: &'static str,
    },
    /// A route stage chose a label that has no branch.
    UnknownRoute {
        /// The route stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// The label it returned.
        label: String,
        /// The labels of its branches, in the pipeline's order.
        branches: Vec<&'static str>,
    },
    /// A ctx-style stage wrote a key it did not declare in `writes`.
    UndeclaredWrite {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// The key written.
        key: &'static str,
    },
    /// Two branches of a fork wrote the same key; or a resume's input sets a key the run
    /// already holds (a resume input only adds keys): then `stages` is the stage that
    /// wrote it (or [`Error::CHECKPOINT`]) and [`Error::RESUME_INPUT`].
    MergeConflict {
        /// The key both wrote.
        key: &'static str,
        /// The two writers.
        stages: [String; 2],
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
    },
    /// A stage's read is not in the context: in a pipeline, because the stages that write
    /// it did not run (a route took another branch, or a middleware skipped them) or did
    /// not write it; on its own (`StepHarness`), because the input lacks it. `reason` says
    /// which.
    MissingKey {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// The key's name.
        key: &'static str,
        /// Why nothing wrote it: in a pipeline run, what became of each stage that writes
        /// it (`` `apply_discount` is in branch `premium` of route `tier`, which was not
        /// taken``).
        reason: String,
    },
    /// The context holds a value under the key's name, but of another type: two keys
    /// (declared in different `keys!`) share a name.
    KeyType {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// The key's name.
        key: &'static str,
        /// The type the stage reads it as.
        expected: &'static str,
    },
    /// Two different keys of one pipeline have the same name (and different types); the
    /// pipeline refuses to run.
    KeyClash {
        /// The shared name.
        key: &'static str,
        /// The value types of the two keys.
        types: [&'static str; 2],
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
    },
    /// Two nodes of one pipeline that can both run in a run have the same name, and one of
    /// them is a nested pipeline (named with [`Pipeline::named`](crate::Pipeline::named),
    /// or `pipeline` when it was not): their stages would share idempotency keys, events
    /// and callbacks could not tell them apart. The pipeline refuses to run. (Two stages of
    /// one name are a compile error.)
    NameClash {
        /// The shared name.
        name: &'static str,
        /// Where the two nodes are, when not in the pipeline run itself: the nested
        /// pipeline holding them (`"outer"`, `"outer/inner"`).
        nested_in: Option<String>,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
    },
    /// A stream stage produced chunks of another type than the one asked of `stream::<C>()`.
    ChunkType {
        /// The stream stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// The chunk type asked for.
        expected: &'static str,
        /// The chunk type the stage produces.
        actual: &'static str,
    },
    /// The run's task was cancelled or aborted before it finished (its runtime shut down,
    /// say), or a blocking stage's task was.
    Cancelled {
        /// The run, when it has an id.
        run_id: Option<String>,
    },
    /// The run is polled outside a tokio runtime, and something in it needs one: a durable
    /// run (its store and its lease's timer), a sync stage (tokio's blocking pool), a
    /// `Retry` backoff, a `RateLimit` wait or the timeout of a stage that waits (tokio's
    /// timer). A pipeline of async stages alone runs under any executor.
    NoRuntime {
        /// What needs the runtime: ``sync stage `resize` (it runs on tokio's blocking
        /// pool)``, `a durable run (its store and its lease timer)`.
        needed_by: String,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
    },
    /// `resume`, `replay` or `diff` found no checkpoint for the run.
    NoCheckpoint {
        /// The run.
        run_id: String,
    },
    /// The checkpoint was written by another version of the pipeline.
    CheckpointVersion {
        /// The run.
        run_id: String,
        /// The version in the checkpoint.
        stored: String,
        /// This pipeline's version.
        current: String,
    },
    /// Another invoke holds the run id (in this process or another sharing the store). Its
    /// lock goes when that run ends — or, if its process died, when the lease runs out
    /// (`with_lease`, 30 s by default).
    RunIdInUse {
        /// The run.
        run_id: String,
    },
    /// This run lost its lock: its lease ran out before it was renewed — this process
    /// stalled (a paused process, a long stop) or the store did (unreachable, paused or slow
    /// past the lease) — and another process may have taken the run over. It stopped at
    /// its next write or lease renewal, writing nothing more and starting no further
    /// rollback (one lost while rolling back may have run some: the run stays
    /// `rolling_back`, and a resume runs them all again); resume it (here or elsewhere)
    /// once no one holds it, if no one has.
    LockLost {
        /// The run.
        run_id: String,
    },
    /// A run checkpointed by another pipeline version does not fit this one, so
    /// `allow_version_change` cannot resume it without running a finished stage again or
    /// marking the wrong one done. Nothing was written.
    IncompatibleCheckpoint {
        /// The run.
        run_id: String,
        /// What does not fit.
        reason: String,
    },
    /// The checkpoint's bytes do not decode, or do not fit the pipeline version they claim.
    CorruptCheckpoint {
        /// The run.
        run_id: String,
        /// What did not decode.
        reason: String,
    },
    /// A value could not be encoded for a checkpoint.
    Encode {
        /// The run.
        run_id: String,
        /// The stage that wrote the value; `None` for a value of the run's input (or of a
        /// resume's), or a whole record (`key` `<entry>`, `<input>`).
        stage: Option<&'static str>,
        /// The key; `<entry>` or `<input>` when a whole record failed (a stage's, the
        /// input's).
        key: &'static str,
        /// The serializer's message.
        reason: String,
    },
    /// The checkpoint store failed.
    Store {
        /// The run.
        run_id: String,
        /// What the store was doing.
        operation: &'static str,
        /// The store's error — for a run that failed and whose store could not record that
        /// it is rolling back, an error whose message also gives that failure and whose
        /// own source is the store's error (reach the store's type with
        /// [`Error::find`]).
        source: SharedError,
    },
    /// A `CircuitBreaker` is open for the stage: it failed too often and is not called
    /// until the breaker's reset timeout has passed.
    CircuitOpen {
        /// The stage.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// How long until the breaker lets a trial call through (when no other call has
        /// taken that trial first).
        retry_in: Duration,
    },
    /// A `RateLimit` set to refuse (`.refuse_when_limited()`) had no token for the stage:
    /// it was not called.
    RateLimited {
        /// The stage.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// How long until the limit has a token again (when no other call takes it first).
        retry_in: Duration,
    },
    /// A finished stage's rollback failed (an error or a panic), when a later failure
    /// rolled the run back: what [`Callback::on_rollback`](crate::Callback::on_rollback)
    /// hears. The run goes on with the other rollbacks, then fails with its own error.
    RollbackFailed {
        /// The stage whose rollback failed.
        stage: &'static str,
        /// The rollback's error.
        source: SharedError,
    },
    /// The run failed and its rollbacks ran: it cannot be resumed.
    RolledBack {
        /// The run.
        run_id: String,
    },
    /// A fresh `invoke` (or a `replay`) under the id of a run that stopped while rolling
    /// back (status `rolling_back`): starting it afresh would drop the rollbacks still to
    /// run — a refund never made, say. Nothing was written. `resume` it first: it finishes
    /// them (and the run ends `rolled_back`, which a fresh start may replace). To drop the
    /// rollbacks on purpose, `delete` the run from the store first.
    RollbackPending {
        /// The run.
        run_id: String,
    },
    /// A checkpoint store could not be set up (opened, connected, migrated): the store's
    /// own error, so that `SqliteStore::open(..).await?` and `RedisStore::connect(..).await?`
    /// work in a function returning `fluxio::Result`.
    StoreSetup {
        /// The store's error (`fluxio::store::SqliteError`, `fluxio::store::RedisError`).
        source: SharedError,
    },
    /// A durable operation was asked of a pipeline without a store.
    NoStore {
        /// The operation.
        operation: &'static str,
    },
    /// A run id is missing where one is needed (`.resume()` without `.run_id(..)`), or
    /// empty; or a streamed run was given one (or `.resume()`) after it had started; or
    /// `.allow_version_change()` was asked without `.resume()` (the run would have started
    /// afresh).
    BadRunId {
        /// What is wrong, and what to do.
        reason: &'static str,
    },
}

impl std::fmt::Display for Error {
    #[allow(unused_variables)]
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Stage {
                stage,
                run_id,
                source,
            } => {
                // `Retry` gave up: say it once, and say the stage once (its last error is
                // often about the same stage, a timeout say).
                if let Some(gave_up) = source.downcast_ref::<crate::middleware::RetriesExhausted>()
                {
                    write!(
                        f,
                        "{}stage `{stage}` failed after {} attempts: ",
                        run_prefix(run_id),
                        gave_up.attempts
                    )?;
                    return match gave_up.last.downcast_ref::<Error>() {
                        Some(last) if last.stage_called() == Some(*stage) => {
                            last.fmt_without_stage(f)
                        }
                        _ => write!(f, "{}", gave_up.last),
                    };
                }
                write!(f, "{}stage `{stage}` failed: {source}", run_prefix(run_id))
            }
            Error::Timeout {
                stage,
                run_id,
                after,
            } => write!(
                f,
                "{}stage `{stage}` timed out after {after:?}",
                run_prefix(run_id)
            ),
            Error::MissingInput { key, run_id } => write!(
                f,
                "{}missing input `{key}`: the pipeline reads it and no stage writes it before",
                run_prefix(run_id)
            ),
            Error::InputWrittenLater {
                key,
                reader,
                writer,
                run_id,
            } => write!(
                f,
                "{}missing input `{key}`: stage `{reader}` reads it, and `{writer}`, which writes it, \
                comes after `{reader}` in `pipeline!`; declare `{writer}` first, or pass `{key}` in \
                the input",
                run_prefix(run_id)
            ),
            Error::MissingResource {
                stage,
                type_name,
                run_id,
            } => write!(
                f,
                "{}stage `{stage}` needs resource `{}`: register it with `.with_resource(value)`, or \
                `.with_shared_resource(arc)` for one behind an `Arc` (`.with_resource(arc)` \
                registers the `Arc` itself)",
                run_prefix(run_id),
                short_type(type_name)
            ),
            Error::UnknownRoute {
                stage,
                run_id,
                label,
                branches,
            } => write!(
                f,
                "{}route stage `{stage}` chose `{label}`, which is not one of its branches ({})",
                run_prefix(run_id),
                quoted_list(branches)
            ),
            Error::UndeclaredWrite { stage, run_id, key } => write!(
                f,
                "{}stage `{stage}` wrote `{key}`, which is not in its `writes`",
                run_prefix(run_id)
            ),
            Error::MergeConflict {
                key,
                stages: [holder, resume],
                run_id,
            } if resume == Error::RESUME_INPUT => write!(
                f,
                "{}the resume input sets `{key}`, which the run already holds ({}); a resume \
                input may only add keys",
                run_prefix(run_id),
                if holder == Error::CHECKPOINT {
                    "in its checkpoint".to_string()
                } else {
                    format!("written by `{holder}`")
                }
            ),
            Error::MergeConflict {
                key,
                stages,
                run_id,
            } => write!(
                f,
                "{}`{}` and `{}` both wrote `{key}`",
                run_prefix(run_id),
                stages[0],
                stages[1]
            ),
            Error::MissingKey {
                stage,
                run_id,
                key,
                reason,
            } => write!(
                f,
                "{}stage `{stage}` reads `{key}`, but nothing wrote it: {reason}",
                run_prefix(run_id)
            ),
            Error::KeyType {
                stage,
                key,
                expected,
                run_id,
            } => write!(
                f,
                "{}stage `{stage}` reads `{key}` as `{}`, but the context holds another type \
                under that name: are two keys named `{key}`? Key names must be unique in a pipeline",
                run_prefix(run_id),
                short_type(expected)
            ),
            Error::KeyClash { key, types, run_id } => write!(
                f,
                "{}two keys of the pipeline are named `{key}`, one holding `{}` and one `{}`: key names \
                must be unique in a pipeline",
                run_prefix(run_id),
                distinct_types(types)[0],
                distinct_types(types)[1]
            ),
            Error::NameClash {
                name,
                nested_in,
                run_id,
            } => write!(
                f,
                "{}two nodes of {} are named `{name}`, a nested pipeline among them{}: \
                 a name identifies a node in events and idempotency keys; give each nested \
                 pipeline a name of its own with `Pipeline::named`",
                run_prefix(run_id),
                match nested_in {
                    Some(path) => format!("nested pipeline `{path}`"),
                    None => "the pipeline".to_string(),
                },
                if *name == crate::plan::UNNAMED_PIPELINE {
                    " (`pipeline` is the name of a nested pipeline not given one)"
                } else {
                    ""
                }
            ),
            Error::ChunkType {
                stage,
                expected,
                actual,
                run_id,
            } => write!(
                f,
                "{}stage `{stage}` streams `{}` chunks, not `{}`",
                run_prefix(run_id),
                short_type(actual),
                short_type(expected)
            ),
            Error::Cancelled { run_id } => match run_id {
                Some(id) => write!(f, "run `{id}` cancelled"),
                None => write!(f, "run cancelled"),
            },
            Error::NoRuntime { needed_by, run_id } => write!(
                f,
                "{}{needed_by} needs a tokio runtime, and the run is polled outside one: \
                await it inside one (`#[tokio::main]`, `Runtime::block_on`)",
                run_prefix(run_id)
            ),
            Error::NoCheckpoint { run_id } => write!(f, "no checkpoint for run `{run_id}`"),
            Error::CheckpointVersion {
                run_id,
                stored,
                current,
            } => write!(
                f,
                "run `{run_id}` was checkpointed by pipeline version {stored}, this pipeline is version {current}; \
                start it fresh, or resume with `.allow_version_change()` if the change is compatible"
            ),
            Error::RunIdInUse { run_id } => write!(
                f,
                "run id `{run_id}` is in use by another invoke (its lock is held until that run ends, \
                or until its lease runs out if its process died)"
            ),
            Error::LockLost { run_id } => write!(
                f,
                "run `{run_id}` lost its lock: its lease ran out before it was renewed (this \
                process or the checkpoint store stalled past it), and another owner may have \
                taken it; it stopped without writing more or running further rollbacks"
            ),
            Error::IncompatibleCheckpoint { run_id, reason } => write!(
                f,
                "run `{run_id}` cannot resume under this pipeline version (allow_version_change): \
                {reason}; start it fresh, or resume it with the version that wrote it"
            ),
            Error::CorruptCheckpoint { run_id, reason } => {
                write!(f, "checkpoint of run `{run_id}` is corrupt: {reason}")
            }
            Error::Encode {
                run_id,
                stage: Some(stage),
                key,
                reason,
            } => write!(
                f,
                "run `{run_id}`: stage `{stage}`: `{key}` does not encode for the checkpoint: \
                {reason}"
            ),
            Error::Encode {
                run_id,
                stage: None,
                key,
                reason,
            } if key.starts_with('<') => write!(
                f,
                "run `{run_id}`: a checkpoint record ({key}) does not encode: {reason}"
            ),
            Error::Encode {
                run_id,
                stage: None,
                key,
                reason,
            } => write!(
                f,
                "run `{run_id}`: input `{key}` does not encode for the checkpoint: {reason}"
            ),
            Error::Store {
                run_id,
                operation,
                source,
            } => write!(
                f,
                "run `{run_id}`: checkpoint store {operation} failed: {source}"
            ),
            Error::RateLimited {
                stage,
                run_id,
                retry_in,
            } => write!(
                f,
                "{}stage `{stage}` was not called: its rate limit has no token left; the next \
                comes in {}",
                run_prefix(run_id),
                round_duration(*retry_in)
            ),
            Error::CircuitOpen {
                stage,
                run_id,
                retry_in,
            } => write!(
                f,
                "{}circuit open for stage `{stage}`: it failed too often; the breaker lets a trial \
                call through in {}",
                run_prefix(run_id),
                round_duration(*retry_in)
            ),
            Error::RollbackFailed { stage, source } => {
                write!(f, "rollback of stage `{stage}` failed: {source}")
            }
            Error::RolledBack { run_id } => write!(
                f,
                "run `{run_id}` was rolled back after it failed; start it fresh"
            ),
            Error::RollbackPending { run_id } => write!(
                f,
                "run `{run_id}` stopped while rolling back: starting or replaying it afresh \
                would drop the rollbacks still to run; resume it first, which finishes them"
            ),
            Error::StoreSetup { source } => {
                write!(f, "setting up the checkpoint store failed: {source}")
            }
            Error::NoStore { operation } => write!(
                f,
                "`{operation}` needs a checkpoint store: add `.with_store(..)` to the pipeline"
            ),
            Error::BadRunId { reason } => write!(f, "bad run id: {reason}"),
        }
    }
}

/// The cause of a `Stage`, `Store` or `StoreSetup` error is the error it carries — not the
/// `Arc` it is shared in, which `std`'s blanket impl would make a link of its own, hiding
/// the cause's type from code that walks `source()` and downcasts.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Stage { source, .. }
            | Error::RollbackFailed { source, .. }
            | Error::Store { source, .. }
            | Error::StoreSetup { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// The source of an [`Error::Store`] that ended a failed run before its rollbacks: the
/// store could not record that the run is rolling back. It keeps the failure that started
/// it, which the run no longer returns — so the error says both.
#[derive(Debug)]
struct StoreFailedWhileFailing {
    /// The store's error.
    store: SharedError,
    /// Why the run was failing.
    failure: Error,
}

impl std::fmt::Display for StoreFailedWhileFailing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (recording that the run is rolling back, after: {}; no rollback ran)",
            self.store, self.failure
        )
    }
}

impl std::error::Error for StoreFailedWhileFailing {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.store)
    }
}

/// Why a stage with a fallback failed anyway: its fallback failed too. The source of the
/// run's [`Error::Stage`]; its own [`source()`](std::error::Error::source) is the
/// fallback's error, and it keeps the stage's.
///
/// ```text
/// stage `price` failed: its fallback failed too: no cached price (the stage had failed: pricing service down)
/// ```
#[derive(Debug)]
pub struct FallbackFailed {
    /// The fallback's error.
    pub fallback: Box<dyn std::error::Error + Send + Sync + 'static>,
    /// The stage's own failure, which the fallback answered.
    pub stage: Error,
}

impl std::fmt::Display for FallbackFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The stage's error without the "stage `x` failed: " its run error adds.
        let stage: &dyn std::fmt::Display = match &self.stage {
            Error::Stage { source, .. } => source,
            other => other,
        };
        write!(
            f,
            "its fallback failed too: {} (the stage had failed: {stage})",
            self.fallback
        )
    }
}

impl std::error::Error for FallbackFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.fallback)
    }
}

impl Error {
    /// The innermost error of type `E` in this error's chain: itself, its
    /// [`source()`](std::error::Error::source), that error's source, and so on.
    ///
    /// Your own error, however the middleware wrapped it: `err.find::<MyError>()` looks
    /// through `Error::Stage`, `Retry`'s
    /// [`RetriesExhausted`](crate::middleware::RetriesExhausted) and boxes. With `E =
    /// Error` it gives the most specific fluxio error: a stage that timed out on its last
    /// attempt under `Retry` is an `Error::Stage` whose innermost fluxio error is the
    /// `Error::Timeout`.
    ///
    /// ```
    /// # use fluxio_core::Error;
    /// # use std::time::Duration;
    /// fn timed_out(err: &Error) -> bool {
    ///     matches!(err.find::<Error>(), Some(Error::Timeout { .. }))
    /// }
    /// let timeout = Error::Timeout { stage: "fetch", run_id: None, after: Duration::from_secs(1) };
    /// assert!(timed_out(&timeout));
    /// let wrapped = Error::Stage { stage: "fetch", run_id: None, source: std::sync::Arc::new(timeout) };
    /// assert!(timed_out(&wrapped));
    /// ```
    pub fn find<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut found = None;
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = next {
            if let Some(hit) = e.downcast_ref::<E>() {
                found = Some(hit);
            }
            next = e.source();
        }
        found
    }

    /// Whether the error is about a run as a whole — its id, lock, checkpoint or store —
    /// rather than about one of its stages.
    pub(crate) fn is_about_a_run(&self) -> bool {
        matches!(
            self,
            Error::RunIdInUse { .. }
                | Error::LockLost { .. }
                | Error::NoCheckpoint { .. }
                | Error::CheckpointVersion { .. }
                | Error::IncompatibleCheckpoint { .. }
                | Error::CorruptCheckpoint { .. }
                | Error::Encode { .. }
                | Error::Store { .. }
                | Error::StoreSetup { .. }
                | Error::NoStore { .. }
                | Error::RolledBack { .. }
                | Error::RollbackPending { .. }
                | Error::BadRunId { .. }
        ) || matches!(self, Error::MergeConflict { stages: [_, input], .. }
            if input == Error::RESUME_INPUT)
    }

    /// This store error, met while the run was failing with `failure` (recording that it
    /// is rolling back), carrying that failure in its source ([`StoreFailedWhileFailing`]);
    /// any other error as it is.
    pub(crate) fn while_failing(self, failure: Error) -> Self {
        match self {
            Error::Store {
                run_id,
                operation,
                source,
            } => Error::Store {
                run_id,
                operation,
                source: Arc::new(StoreFailedWhileFailing {
                    store: source,
                    failure,
                }),
            },
            other => other,
        }
    }

    /// `self` naming run `id`, if it is an error of a stage in the run that does not name
    /// one yet (they are made where the run is not known).
    pub(crate) fn in_run(mut self, id: Option<&str>) -> Self {
        if let (
            Some(id),
            Error::Stage { run_id, .. }
            | Error::Timeout { run_id, .. }
            | Error::MissingKey { run_id, .. }
            | Error::UnknownRoute { run_id, .. }
            | Error::UndeclaredWrite { run_id, .. }
            | Error::CircuitOpen { run_id, .. }
            | Error::RateLimited { run_id, .. }
            | Error::MissingInput { run_id, .. }
            | Error::InputWrittenLater { run_id, .. }
            | Error::MissingResource { run_id, .. }
            | Error::MergeConflict { run_id, .. }
            | Error::KeyType { run_id, .. }
            | Error::KeyClash { run_id, .. }
            | Error::NameClash { run_id, .. }
            | Error::ChunkType { run_id, .. }
            | Error::NoRuntime { run_id, .. }
            | Error::Cancelled { run_id },
        ) = (id, &mut self)
        {
            if run_id.is_none() {
                *run_id = Some(id.to_string());
            }
        }
        self
    }

    /// Maps a store error for run `run_id` during `operation`.
    pub(crate) fn from_store(
        run_id: &str,
        operation: &'static str,
        e: crate::store::StoreError,
    ) -> Error {
        match e {
            crate::store::StoreError::LockLost { .. } => Error::LockLost {
                run_id: run_id.to_string(),
            },
            crate::store::StoreError::Corrupt { run_id, reason } => {
                Error::CorruptCheckpoint { run_id, reason }
            }
            crate::store::StoreError::RollbackPending { .. } => Error::RollbackPending {
                run_id: run_id.to_string(),
            },
            e @ crate::store::StoreError::RunLocked { .. } => Error::Store {
                run_id: run_id.to_string(),
                operation,
                source: Arc::new(e),
            },
            crate::store::StoreError::Backend {
                operation: op,
                source,
            } => Error::Store {
                run_id: run_id.to_string(),
                operation: if op.is_empty() { operation } else { op },
                source: Arc::from(source),
            },
        }
    }
}

/// A type's name as `std::any::type_name` gives it, without module paths, for messages:
/// `alloc::sync::Arc<my_app::Client>` reads `Arc<Client>`. (Error fields keep the full
/// name.)
pub(crate) fn short_type(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        out.push_str(token.rsplit("::").next().unwrap_or(token));
        token.clear();
    };
    for c in name.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

impl Error {
    /// In [`Error::MergeConflict`]'s `stages`: the input of a resume that sets a key the
    /// run already holds (the second of the two).
    pub const RESUME_INPUT: &'static str = "<resume input>";

    /// In [`Error::MergeConflict`]'s `stages`: what holds the key a resume's input sets
    /// again, when no stage of the pipeline wrote it — the run's own input (or, in a
    /// checkpoint of another version, a stage this one no longer has).
    pub const CHECKPOINT: &'static str = "<checkpoint>";

    /// `needed_by` needs a tokio runtime, and none is current: the error saying so.
    pub(crate) fn without_runtime(needed_by: impl FnOnce() -> String) -> Option<Error> {
        tokio::runtime::Handle::try_current()
            .is_err()
            .then(|| Error::NoRuntime {
                needed_by: needed_by(),
                run_id: None,
            })
    }

    /// The stage a timeout or a middleware's refusal is about: the errors that read well
    /// without the stage's name after the stage was named (see
    /// [`fmt_without_stage`](Self::fmt_without_stage)).
    fn stage_called(&self) -> Option<&'static str> {
        match self {
            Error::Timeout { stage, .. }
            | Error::CircuitOpen { stage, .. }
            | Error::RateLimited { stage, .. } => Some(stage),
            _ => None,
        }
    }

    /// This error for a sentence that has named its stage already.
    fn fmt_without_stage(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Timeout { after, .. } => write!(f, "timed out after {after:?}"),
            Error::CircuitOpen { retry_in, .. } => write!(
                f,
                "its circuit is open: it failed too often; the breaker lets a trial call \
                through in {}",
                round_duration(*retry_in)
            ),
            Error::RateLimited { retry_in, .. } => write!(
                f,
                "its rate limit has no token left; the next comes in {}",
                round_duration(*retry_in)
            ),
            other => std::fmt::Display::fmt(other, f),
        }
    }
}

/// ``run `id`: `` before a message, or nothing for a run without an id.
fn run_prefix(run_id: &Option<String>) -> String {
    run_id
        .as_deref()
        .map_or_else(String::new, |id| format!("run `{id}`: "))
}

/// `d` to the millisecond (at least 1 ms): a wait shown to a person.
fn round_duration(d: Duration) -> String {
    format!("{:?}", Duration::from_millis((d.as_millis() as u64).max(1)))
}

/// `a`, `b`, `c` — each name in backquotes.
fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Two type names as short as they can be while still different (two versions of one
/// crate give the same path twice: then the full names, which differ in nothing else
/// either, at least show the paths).
fn distinct_types(types: &[&str; 2]) -> [String; 2] {
    let short = [short_type(types[0]), short_type(types[1])];
    if short[0] == short[1] {
        [types[0].to_string(), types[1].to_string()]
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::short_type;

    #[test]
    fn type_names_lose_their_module_paths() {
        assert_eq!(short_type("u64"), "u64");
        assert_eq!(short_type("alloc::string::String"), "String");
        assert_eq!(
            short_type("alloc::sync::Arc<my_app::db::Client>"),
            "Arc<Client>"
        );
        assert_eq!(
            short_type("core::result::Result<(u8, alloc::vec::Vec<x::Y>), e::E>"),
            "Result<(u8, Vec<Y>), E>"
        );
        assert_eq!(short_type("&[alloc::string::String; 3]"), "&[String; 3]");
        assert_eq!(
            short_type("dyn core::any::Any + core::marker::Send"),
            "dyn Any + Send"
        );
    }
}
