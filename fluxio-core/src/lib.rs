//! The runtime of [fluxio](https://docs.rs/fluxio): typed keys, the immutable context,
//! stages, the compiled pipeline plan and its executor.
//!
//! Users depend on the `fluxio` facade, which re-exports this crate together with the
//! `#[stage]`, `pipeline!` and `keys!` macros. Store crates depend on this crate directly.

#![doc(test(attr(deny(warnings))))]

pub mod access;
mod callback;
mod ctx;
mod error;
pub mod events;
mod key;
pub mod middleware;
pub mod plan;
#[doc(hidden)]
pub mod run;
mod stage;
pub mod store;
#[doc(hidden)]
pub mod support;
pub mod testing;

pub use callback::{Callback, LoggingCallback, StageEvent};
pub use ctx::Ctx;
pub use error::{Error, FallbackFailed, Result, SharedError};
pub use key::{AsKey, Key, KeyDesc, Merge};
pub use plan::{Graph, GraphNode};
pub use run::{CtxDiff, FinishedStage, Invoke, Pipeline, RunRecord, StreamHandle};
#[doc(hidden)]
pub use stage::ctx_view;
pub use stage::{
    Chunk, ChunkSink, Res, ResourceDesc, Resources, Route, RunInfo, Stage, StageEnv, StageError,
    StageFuture, StageKind, StageMeta, StageOutput, Writes, read_key,
};
pub use store::{CheckpointStore, InMemoryStore};
