//! The error type of fluxio runs.

use std::sync::Arc;
use std::time::Duration;

/// A type-erased error shared between clones of [`Error`].
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with fluxio's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make a pipeline run fail. Every variant names what failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stage returned an error or panicked.
    #[error("{}stage `{stage}` failed: {source}", run_prefix(run_id))]
    Stage {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own: given with `.run_id(..)` (or
        /// `resume`), or made for a run with a store (what resumes it). Set on the error the
        /// run returns; callbacks, events and the checkpoint's error text get the error
        /// without it (they carry the run id apart).
        run_id: Option<String>,
        /// What the stage reported.
        #[source]
        source: SharedError,
    },
    /// A stage ran longer than its timeout.
    #[error("{}stage `{stage}` timed out after {after:?}", run_prefix(run_id))]
    Timeout {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one.
        run_id: Option<String>,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// A key the pipeline reads before any stage writes it was not in the input.
    #[error("missing input `{key}`: the pipeline reads it and no stage writes it before")]
    MissingInput {
        /// The key's name.
        key: &'static str,
    },
    /// A key the pipeline reads before any stage writes it was not in the input — and a
    /// stage declared after its first reader writes it (most likely declared too late).
    #[error(
        "missing input `{key}`: stage `{reader}` reads it, and `{writer}`, which writes it, \
         comes after `{reader}` in `pipeline!`; declare `{writer}` first, or pass `{key}` in \
         the input"
    )]
    InputWrittenLater {
        /// The key's name.
        key: &'static str,
        /// The first stage that reads it.
        reader: &'static str,
        /// The later stage that writes it.
        writer: &'static str,
    },
    /// A stage needs a `Res<T>` that was not registered with `.with_resource(..)`.
    #[error(
        "stage `{stage}` needs resource `{}`: register it with `.with_resource(..)`",
        short_type(type_name)
    )]
    MissingResource {
        /// The stage's name.
        stage: &'static str,
        /// The resource's type name.
        type_name: &'static str,
    },
    /// A route stage chose a label that has no branch.
    #[error(
        "{}route stage `{stage}` chose `{label}`, which is not one of its branches ({})",
        run_prefix(run_id),
        quoted_list(branches)
    )]
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
    #[error(
        "{}stage `{stage}` wrote `{key}`, which is not in its `writes`",
        run_prefix(run_id)
    )]
    UndeclaredWrite {
        /// The stage's name.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// The key written.
        key: &'static str,
    },
    /// Two branches of a fork wrote the same key.
    #[error("`{}` and `{}` both wrote `{key}`", stages[0], stages[1])]
    MergeConflict {
        /// The key both wrote.
        key: &'static str,
        /// The two writers.
        stages: [String; 2],
    },
    /// A resume's input sets a key the run already holds (a resume input only adds keys).
    #[error(
        "the resume input of run `{run_id}` sets `{key}`, which the run already holds; a \
         resume input may only add keys"
    )]
    ResumeInputClash {
        /// The run.
        run_id: String,
        /// The key.
        key: &'static str,
    },
    /// A stage's read is not in the context: in a pipeline, because the stages that write
    /// it did not run (a route took another branch, or a middleware skipped them) or did
    /// not write it; on its own (`StepHarness`), because the input lacks it. `reason` says
    /// which.
    #[error(
        "{}stage `{stage}` reads `{key}`, but nothing wrote it: {reason}",
        run_prefix(run_id)
    )]
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
    #[error(
        "stage `{stage}` reads `{key}` as `{}`, but the context holds another type \
         under that name: are two keys named `{key}`? Key names must be unique in a pipeline",
        short_type(expected)
    )]
    KeyType {
        /// The stage's name.
        stage: &'static str,
        /// The key's name.
        key: &'static str,
        /// The type the stage reads it as.
        expected: &'static str,
    },
    /// Two different keys of one pipeline have the same name (and different types); the
    /// pipeline refuses to run.
    #[error(
        "two keys of the pipeline are named `{key}`, one holding `{}` and one `{}`: key names \
         must be unique in a pipeline",
        distinct_types(types)[0],
        distinct_types(types)[1]
    )]
    KeyClash {
        /// The shared name.
        key: &'static str,
        /// The value types of the two keys.
        types: [&'static str; 2],
    },
    /// A stream stage produced chunks of another type than the one asked of `stream::<C>()`.
    #[error(
        "stage `{stage}` streams `{}` chunks, not `{}`",
        short_type(actual),
        short_type(expected)
    )]
    ChunkType {
        /// The stream stage's name.
        stage: &'static str,
        /// The chunk type asked for.
        expected: &'static str,
        /// The chunk type the stage produces.
        actual: &'static str,
    },
    /// The run's task was cancelled or aborted before it finished.
    #[error("run cancelled")]
    Cancelled,
    /// `resume`, `replay` or `diff` found no checkpoint for the run.
    #[error("no checkpoint for run `{run_id}`")]
    NoCheckpoint {
        /// The run.
        run_id: String,
    },
    /// The checkpoint was written by another version of the pipeline.
    #[error(
        "run `{run_id}` was checkpointed by pipeline version {stored}, this pipeline is version {current}; \
         start it fresh, or resume with `.allow_version_change()` if the change is compatible"
    )]
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
    #[error(
        "run id `{run_id}` is in use by another invoke (its lock is held until that run ends, \
         or until its lease runs out if its process died)"
    )]
    RunIdInUse {
        /// The run.
        run_id: String,
    },
    /// A run checkpointed by another pipeline version does not fit this one, so
    /// `allow_version_change` cannot resume it without running a finished stage again or
    /// marking the wrong one done. Nothing was written.
    #[error(
        "run `{run_id}` cannot resume under this pipeline version (allow_version_change): \
         {reason}; start it fresh, or resume it with the version that wrote it"
    )]
    IncompatibleCheckpoint {
        /// The run.
        run_id: String,
        /// What does not fit.
        reason: String,
    },
    /// The checkpoint's bytes do not decode, or do not fit the pipeline version they claim.
    #[error("checkpoint of run `{run_id}` is corrupt: {reason}")]
    CorruptCheckpoint {
        /// The run.
        run_id: String,
        /// What did not decode.
        reason: String,
    },
    /// A value could not be encoded for a checkpoint.
    #[error("run `{run_id}`: the value of `{key}` does not encode: {reason}")]
    Encode {
        /// The run.
        run_id: String,
        /// The key.
        key: &'static str,
        /// The serializer's message.
        reason: String,
    },
    /// The checkpoint store failed.
    #[error("run `{run_id}`: checkpoint store {operation} failed: {source}")]
    Store {
        /// The run.
        run_id: String,
        /// What the store was doing.
        operation: &'static str,
        /// The store's error.
        #[source]
        source: SharedError,
    },
    /// A `CircuitBreaker` is open for the stage: it failed too often and is not called
    /// until the breaker's reset timeout has passed.
    #[error(
        "{}circuit open for stage `{stage}`: it failed too often; the breaker lets a trial \
         call through in {}",
        run_prefix(run_id),
        round_duration(*retry_in)
    )]
    CircuitOpen {
        /// The stage.
        stage: &'static str,
        /// The run's id, when it has one of its own (as for [`Error::Stage`]).
        run_id: Option<String>,
        /// How long until the breaker lets a trial call through (when no other call has
        /// taken that trial first).
        retry_in: Duration,
    },
    /// The run failed and its rollbacks ran: it cannot be resumed.
    #[error("run `{run_id}` was rolled back after it failed; start it fresh")]
    RolledBack {
        /// The run.
        run_id: String,
    },
    /// A checkpoint store could not be set up (opened, connected, migrated): the store's
    /// own error, so that `SqliteStore::open(..).await?` and `RedisStore::connect(..).await?`
    /// work in a function returning `fluxio::Result`.
    #[error("setting up the checkpoint store failed: {source}")]
    StoreSetup {
        /// The store's error (`fluxio::store::SqliteError`, `fluxio::store::RedisError`).
        #[source]
        source: SharedError,
    },
    /// A durable operation was asked of a pipeline without a store.
    #[error("`{operation}` needs a checkpoint store: add `.with_store(..)` to the pipeline")]
    NoStore {
        /// The operation.
        operation: &'static str,
    },
    /// A run id is missing where one is needed (`.resume()` without `.run_id(..)`), or
    /// empty.
    #[error("bad run id: {reason}")]
    BadRunId {
        /// What is wrong, and what to do.
        reason: &'static str,
    },
}

impl Error {
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
            | Error::CircuitOpen { run_id, .. },
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
            crate::store::StoreError::LockLost { .. } => Error::RunIdInUse {
                run_id: run_id.to_string(),
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
