//! `InMemoryStore`: checkpoints in this process's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{
    BoxFuture, CheckpointStore, RunListing, RunStatus, Save, StoreError, StoreResult, StoredRun,
};

#[derive(Default)]
struct Inner {
    runs: HashMap<String, StoredRun>,
    /// When each run's status was last written (start, rewrite, finish).
    updated: HashMap<String, SystemTime>,
    locks: HashMap<String, (String, Instant)>,
}

/// A checkpoint store in this process's memory: for tests, and for services that want
/// resume-after-failure within one process. Checkpoints are lost when the process exits.
///
/// Cloning gives another handle to the same store.
#[derive(Clone, Default)]
pub struct InMemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runs = self.inner.lock().map(|i| i.runs.len()).unwrap_or(0);
        f.debug_struct("InMemoryStore")
            .field("runs", &runs)
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-operation; every
        // operation leaves the maps consistent, so go on.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn holds(inner: &Inner, run_id: &str, owner: &str) -> bool {
        matches!(inner.locks.get(run_id), Some((o, until)) if o == owner && *until > Instant::now())
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

/// When a lock taken at `now` for `lease` runs out (a lease past the clock's range: in a
/// century, or a year).
fn expiry(now: Instant, lease: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(86_400 * 365);
    [lease, YEAR * 100, YEAR]
        .into_iter()
        .find_map(|d| now.checked_add(d))
        .unwrap_or(now)
}

/// The refusal of an entry or finish for a run without a start record.
fn no_checkpoint(run_id: &str) -> StoreError {
    StoreError::backend(
        "save",
        format!("run `{run_id}` has no checkpoint (never started, or deleted since)"),
    )
}

/// A run as a start record leaves it.
fn started(version: String, header: Vec<u8>, entries: Vec<Vec<u8>>) -> StoredRun {
    StoredRun {
        version,
        status: RunStatus::Running,
        error: None,
        header,
        entries,
    }
}

impl CheckpointStore for InMemoryStore {
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        ready(self.with(|inner| {
            if !Self::holds(inner, run_id, owner) {
                return Err(StoreError::LockLost {
                    run_id: run_id.to_string(),
                });
            }
            match save {
                Save::Start { version, header } => {
                    if inner
                        .runs
                        .get(run_id)
                        .is_some_and(|run| run.status == RunStatus::RollingBack)
                    {
                        return Err(StoreError::RollbackPending {
                            run_id: run_id.to_string(),
                        });
                    }
                    inner
                        .runs
                        .insert(run_id.to_string(), started(version, header, Vec::new()));
                    inner.updated.insert(run_id.to_string(), SystemTime::now());
                }
                Save::Rewrite {
                    version,
                    header,
                    entries,
                } => {
                    inner
                        .runs
                        .insert(run_id.to_string(), started(version, header, entries));
                    inner.updated.insert(run_id.to_string(), SystemTime::now());
                }
                Save::Entry(bytes) => match inner.runs.get_mut(run_id) {
                    Some(run) => run.entries.push(bytes),
                    None => {
                        return Err(no_checkpoint(run_id));
                    }
                },
                Save::Finish { status, error } => match inner.runs.get_mut(run_id) {
                    Some(run) => {
                        run.status = status;
                        run.error = error;
                        inner.updated.insert(run_id.to_string(), SystemTime::now());
                    }
                    None => {
                        return Err(no_checkpoint(run_id));
                    }
                },
            }
            Ok(())
        }))
    }

    fn load(&self, run_id: &str) -> BoxFuture<'static, StoreResult<Option<StoredRun>>> {
        ready(Ok(self.with(|inner| inner.runs.get(run_id).cloned())))
    }

    fn delete(&self, run_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        ready(self.with(|inner| match inner.locks.get(run_id) {
            Some((_, until)) if *until > Instant::now() => Err(StoreError::RunLocked {
                run_id: run_id.to_string(),
            }),
            _ => {
                inner.runs.remove(run_id);
                inner.updated.remove(run_id);
                Ok(())
            }
        }))
    }

    fn exists(&self, run_id: &str) -> BoxFuture<'static, StoreResult<bool>> {
        ready(Ok(self.with(|inner| inner.runs.contains_key(run_id))))
    }

    fn acquire(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        ready(Ok(self.with(|inner| {
            let now = Instant::now();
            match inner.locks.get(run_id) {
                Some((o, until)) if *until > now && o != owner => false,
                _ => {
                    inner
                        .locks
                        .insert(run_id.to_string(), (owner.to_string(), expiry(now, lease)));
                    true
                }
            }
        })))
    }

    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        ready(Ok(self.with(|inner| {
            if Self::holds(inner, run_id, owner) {
                inner.locks.insert(
                    run_id.to_string(),
                    (owner.to_string(), expiry(Instant::now(), lease)),
                );
                true
            } else {
                false
            }
        })))
    }

    fn list_runs(
        &self,
        statuses: &[RunStatus],
    ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
        ready(Ok(self.with(|inner| {
            let now = Instant::now();
            inner
                .runs
                .iter()
                .filter(|(_, run)| statuses.is_empty() || statuses.contains(&run.status))
                .map(|(id, run)| {
                    let left = inner
                        .locks
                        .get(id)
                        .and_then(|(_, until)| until.checked_duration_since(now))
                        .filter(|left| !left.is_zero());
                    let mut listing =
                        RunListing::new(id.clone(), run.version.clone(), run.status, left);
                    listing.updated_at = inner.updated.get(id).copied();
                    listing.error.clone_from(&run.error);
                    listing
                })
                .collect()
        })))
    }

    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.with(|inner| {
            if matches!(inner.locks.get(run_id), Some((o, _)) if o == owner) {
                inner.locks.remove(run_id);
            }
        });
        ready(Ok(()))
    }
}
