//! Streamable, durable pipelines for Rust backend services.
//!
//! Annotate async functions with [`#[stage]`](macro@stage), declare the flow with
//! [`pipeline!`], and fluxio computes the dependency graph at compile time, runs
//! independent stages concurrently, rejects read/write conflicts at compile time and
//! streams chunks as they are produced.
//!
//! ```
//! use fluxio::prelude::*;
//!
//! fluxio::keys! {
//!     pub user_id: u64;
//!     pub name: String;
//!     pub orders: Vec<u64>;
//! }
//!
//! #[stage(reads = [user_id], writes = [name])]
//! async fn fetch_name(user_id: &u64) -> Result<String, StageError> {
//!     Ok(format!("user-{user_id}"))
//! }
//!
//! #[stage(reads = [user_id], writes = [orders])]
//! async fn fetch_orders(user_id: &u64) -> Vec<u64> {
//!     vec![*user_id * 10]
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), fluxio::Error> {
//! // Both stages only read `user_id`: they run concurrently.
//! let pipe = pipeline! { fetch_name, fetch_orders };
//! let out = pipe.invoke(input! { user_id: 42 }).await?;
//! assert_eq!(out[name], "user-42");
//! assert_eq!(out[orders], vec![420]);
//! # Ok(()) }
//! ```
//!
//! # Keys and the context
//!
//! [`keys!`] declares typed keys; [`Ctx`] is the immutable context that maps them to
//! values. `ctx.set(k, v)` returns a new context; clones are O(1).
//!
//! # Stages
//!
//! [`#[stage]`](macro@stage) works on `async fn`, plain `fn` (run on the blocking pool) and
//! `fn` returning `impl Stream` (streamed chunk by chunk). Parameters are the keys it reads;
//! the return value is what it writes.
//!
//! # Pipelines
//!
//! [`pipeline!`] declares sequences, `parallel { .. }` blocks, routes
//! (`route => { "label" => [..] }`) and nested pipelines. Run one with
//! [`Pipeline::invoke`] or [`Pipeline::stream`]; inspect it with [`Pipeline::graph`],
//! [`Pipeline::to_mermaid`], [`Pipeline::inputs`] and [`Pipeline::version`].
//!
//! # Durability
//!
//! [`Pipeline::with_store`] makes a pipeline durable: each stage's writes and its done mark
//! are checkpointed in one atomic step, and [`Pipeline::resume`] continues a crashed run in
//! any process without re-running finished stages. Stores: [`store::InMemoryStore`],
//! `store::SqliteStore` (feature `sqlite`), `store::RedisStore` (feature `redis`).
//!
//! ```
//! use fluxio::prelude::*;
//!
//! fluxio::keys! { pub n: u64; pub doubled: u64; }
//!
//! #[stage(reads = [n], writes = [doubled])]
//! async fn double(n: &u64) -> u64 { n * 2 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), fluxio::Error> {
//! let store = InMemoryStore::new();
//! let pipe = pipeline! { double }.with_store(store.clone());
//! pipe.invoke(input! { n: 21 }).run_id("job-1").await?;
//! // Resuming a completed run returns its result without running anything.
//! assert_eq!(pipe.resume("job-1").await?[doubled], 42);
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `macros` | `keys!`, `#[stage]` and `pipeline!` | yes |
//! | `sqlite` | `store::SqliteStore`: durable runs in one SQLite file | no |
//! | `redis` | `store::RedisStore`: durable runs shared by many processes | no |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

#[doc(hidden)]
pub mod __private;

// The README's example is compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub use fluxio_core::events;
pub use fluxio_core::middleware;
pub use fluxio_core::{
    AsKey, Callback, Chunk, Ctx, CtxDiff, Error, FallbackFailed, FinishedStage, Graph, GraphNode,
    Invoke, Key, KeyDesc, LoggingCallback, Merge, Pipeline, Res, Resources, Result, Route, RunInfo,
    RunRecord, Stage, StageError, StageEvent, StageKind, StageMeta, StageOutput, StreamHandle,
    Writes,
};

#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use fluxio_macros::{keys, pipeline, stage};

/// Checkpoint stores: where durable pipelines keep their runs.
///
/// [`InMemoryStore`](store::InMemoryStore) is always here; `SqliteStore` (feature `sqlite`)
/// and `RedisStore` (feature `redis`) join it when their feature is on.
pub mod store {
    pub use fluxio_core::store::{
        BoxError, BoxFuture, CheckpointStore, ForwardStore, InMemoryStore, RunListing, RunStatus,
        Save, StoreError, StoreResult, StoredRun, contract, format,
    };

    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub use fluxio_store_sqlite::{
        Error as SqliteError, SqliteOptions, SqliteStore, StoreStats, Synchronous,
    };

    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub use fluxio_store_redis::{
        ConnectionManagerConfig as RedisConnectionConfig,
        DEFAULT_KEY_PREFIX as REDIS_DEFAULT_KEY_PREFIX, Error as RedisError, RedisStore,
        RunKeys as RedisRunKeys,
    };
}

/// Test one stage at a time.
pub mod testing {
    pub use fluxio_core::testing::StepHarness;
}

/// Builds a [`Ctx`] from `key: value` pairs. A key given twice fails the build (`cargo
/// build`; `cargo check` does not evaluate the constant that says so).
///
/// ```
/// fluxio::keys! { pub user_id: u64; pub prompt: String; }
///
/// let ctx = fluxio::input! { user_id: 42, prompt: "hi there".into() };
/// assert_eq!(ctx[user_id], 42);
/// assert_eq!(ctx[prompt], "hi there");
/// assert_eq!(fluxio::input! {}.len(), 0);
/// ```
#[macro_export]
macro_rules! input {
    () => { $crate::Ctx::new() };
    ($($key:path : $value:expr),+ $(,)?) => {{
        $crate::__input_distinct!($($key),+);
        $crate::Ctx::new() $(.with_typed::<$key>($value))+
    }};
}

/// `input!`'s check that its keys are distinct: each against every later one, at compile
/// time.
#[doc(hidden)]
#[macro_export]
macro_rules! __input_distinct {
    ($first:path $(, $rest:path)*) => {
        $(
            const {
                $crate::__private::check_input_keys(
                    <$first as $crate::Key>::NAME,
                    <$rest as $crate::Key>::NAME,
                )
            };
        )*
        $crate::__input_distinct!($($rest),*);
    };
    () => {};
}

/// Everything a pipeline author needs: `use fluxio::prelude::*;`.
pub mod prelude {
    pub use crate::input;
    pub use fluxio_core::middleware::{
        Cache, CircuitBreaker, Middleware, MiddlewareExt, RateLimit, Retry, Timeout,
    };
    pub use fluxio_core::{
        Callback, CheckpointStore, Chunk, Ctx, InMemoryStore, Key, LoggingCallback, Pipeline, Res,
        Route, RunInfo, StageError,
    };
    #[cfg(feature = "macros")]
    pub use fluxio_macros::{keys, pipeline, stage};
    pub use futures_core::Stream;
    pub use std::time::Duration;
}
