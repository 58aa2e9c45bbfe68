//! [`ForwardStore`]: a store that hands its calls to another one.

use std::time::Duration;

use super::{BoxFuture, CheckpointStore, RunListing, RunStatus, Save, StoreResult, StoredRun};

/// A store that hands every call to another store ([`target`](Self::target)) except the
/// ones it overrides: the base for a decorator around a store — metrics, logging, or a
/// fault a test injects — without writing out every forwarding method.
///
/// Every type implementing `ForwardStore` is a [`CheckpointStore`]. Both traits name their
/// methods alike: call them through `CheckpointStore` (or a `dyn CheckpointStore`, as the
/// runtime does) when both are in scope.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use fluxio_core::store::{
///     BoxFuture, CheckpointStore, ForwardStore, InMemoryStore, Save, StoreResult,
/// };
///
/// /// Counts the checkpoint writes of the store it wraps.
/// struct Counted {
///     inner: InMemoryStore,
///     saves: Arc<AtomicUsize>,
/// }
///
/// impl ForwardStore for Counted {
///     fn target(&self) -> &dyn CheckpointStore {
///         &self.inner
///     }
///     fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
///         self.saves.fetch_add(1, Ordering::Relaxed);
///         self.inner.save(run_id, owner, save)
///     }
/// }
///
/// let store: Arc<dyn CheckpointStore> =
///     Arc::new(Counted { inner: InMemoryStore::new(), saves: Arc::default() });
/// # let _ = store;
/// ```
pub trait ForwardStore: Send + Sync + 'static {
    /// The store that calls not overridden go to.
    fn target(&self) -> &dyn CheckpointStore;

    /// [`CheckpointStore::save`]; forwarded unless overridden.
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        self.target().save(run_id, owner, save)
    }

    /// [`CheckpointStore::load`]; forwarded unless overridden.
    fn load(&self, run_id: &str) -> BoxFuture<'static, StoreResult<Option<StoredRun>>> {
        self.target().load(run_id)
    }

    /// [`CheckpointStore::delete`]; forwarded unless overridden.
    fn delete(&self, run_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.target().delete(run_id)
    }

    /// [`CheckpointStore::exists`]; forwarded unless overridden.
    fn exists(&self, run_id: &str) -> BoxFuture<'static, StoreResult<bool>> {
        self.target().exists(run_id)
    }

    /// [`CheckpointStore::acquire`]; forwarded unless overridden.
    fn acquire(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        self.target().acquire(run_id, owner, lease)
    }

    /// [`CheckpointStore::renew`]; forwarded unless overridden.
    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        self.target().renew(run_id, owner, lease)
    }

    /// [`CheckpointStore::release`]; forwarded unless overridden.
    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.target().release(run_id, owner)
    }
    /// [`CheckpointStore::list_runs`]; forwarded unless overridden.
    fn list_runs(
        &self,
        statuses: &[RunStatus],
    ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
        self.target().list_runs(statuses)
    }
}

impl<T: ForwardStore> CheckpointStore for T {
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        ForwardStore::save(self, run_id, owner, save)
    }

    fn load(&self, run_id: &str) -> BoxFuture<'static, StoreResult<Option<StoredRun>>> {
        ForwardStore::load(self, run_id)
    }

    fn delete(&self, run_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        ForwardStore::delete(self, run_id)
    }

    fn exists(&self, run_id: &str) -> BoxFuture<'static, StoreResult<bool>> {
        ForwardStore::exists(self, run_id)
    }

    fn acquire(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        ForwardStore::acquire(self, run_id, owner, lease)
    }

    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        ForwardStore::renew(self, run_id, owner, lease)
    }

    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
        ForwardStore::release(self, run_id, owner)
    }
    fn list_runs(
        &self,
        statuses: &[RunStatus],
    ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
        ForwardStore::list_runs(self, statuses)
    }
}
