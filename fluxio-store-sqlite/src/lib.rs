//! A SQLite checkpoint store for fluxio durable pipelines.
//!
//! [`SqliteStore`] implements [`fluxio_core::store::CheckpointStore`] in one SQLite file
//! (through sqlx): durable runs survive the process, and several processes can share the
//! file, each run written only by the holder of its lock.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fluxio_store_sqlite::Error> {
//! use fluxio_store_sqlite::{SqliteOptions, SqliteStore, Synchronous};
//!
//! // WAL journal, `synchronous = NORMAL`: a crash of the process loses nothing committed.
//! let store = SqliteStore::open("fluxio.db").await?;
//!
//! // `synchronous = FULL`: a power loss loses nothing committed either, at an fsync per
//! // commit.
//! let store = SqliteStore::open_with(
//!     "fluxio.db",
//!     SqliteOptions::new().synchronous(Synchronous::Full),
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! See [`SqliteStore`] for the design (group commit, fencing) and [`Synchronous`] for the
//! durability trade-off.

mod error;
mod options;
mod schema;
mod store;
mod writer;

pub use error::Error;
pub use options::{SqliteOptions, Synchronous};
pub use store::{SqliteStore, StoreStats};

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
