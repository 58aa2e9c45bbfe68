//! Redis checkpoint store for fluxio durable pipelines.
//!
//! [`RedisStore`] implements [`CheckpointStore`](fluxio_core::store::CheckpointStore) on
//! a Redis server, so that durable runs survive the process that started them and can be
//! resumed by any process connected to the same Redis. Every write is one atomic Lua script
//! that checks the run's lock before writing (fencing a process that lost its lease), a
//! stage's checkpoint costs one round trip, and finished runs can expire after a TTL.
//!
//! ```no_run
//! # async fn example() -> Result<(), fluxio_store_redis::Error> {
//! use std::time::Duration;
//!
//! let store = fluxio_store_redis::RedisStore::connect("redis://127.0.0.1:6379")
//!     .await?
//!     .ttl(Duration::from_secs(24 * 3600));
//! // pipe.with_store(store) makes a pipeline's runs durable in Redis.
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! See [`keys`] for the key layout and `README.md` for leases and TTLs.

mod error;
pub mod keys;
mod scripts;
mod store;

pub use error::{Error, Result};
pub use keys::{DEFAULT_KEY_PREFIX, RunKeys};
pub use store::{
    DEFAULT_CONNECTION_RETRIES, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, RedisStore,
};

/// The connection settings [`RedisStore::connect_with_config`] takes (the `redis` crate's
/// `ConnectionManagerConfig`), so they can be named without depending on `redis` directly.
pub use redis::aio::ConnectionManagerConfig;
