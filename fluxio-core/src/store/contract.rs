//! The contract every [`CheckpointStore`] keeps, as checks a store's own tests run.
//!
//! The runtime relies on these properties for durable runs: records come back as they were
//! saved and in order, a `Start` replaces what was there, nothing is written without the
//! lock, and an owner whose lease ran out is fenced off. [`InMemoryStore`](super::InMemoryStore),
//! `SqliteStore` and `RedisStore` all pass every check; a store of your own should too:
//!
//! ```no_run
//! use std::sync::Arc;
//! use fluxio_core::store::{CheckpointStore, InMemoryStore, contract};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // In a test: a store for each check (the checks use their own run ids, so one shared
//! // store works too).
//! contract::check_store(|_check| async {
//!     Arc::new(InMemoryStore::new()) as Arc<dyn CheckpointStore>
//! })
//! .await;
//! # }
//! ```
//!
//! The checks use real time (lease expiry is waited for: about ten seconds in all), so
//! run them on a runtime whose clock is not paused. Run ids start with `contract-`. What
//! they check is what [`CheckpointStore`]'s documentation promises.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    BoxFuture, CheckpointStore, RunListing, RunStatus, Save, StoreError, StoreResult, StoredRun,
};

/// One property of the contract.
pub struct Check {
    /// What the check is called (a test name, in snake case).
    pub name: &'static str,
    run: fn(Arc<dyn CheckpointStore>) -> BoxFuture<'static, Outcome>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("name", &self.name).finish()
    }
}

impl Check {
    /// Runs the check on `store`: `Err` says what the store did differently.
    ///
    /// Its run ids get a suffix unique to this call, so a check can run again on a store
    /// that keeps its data (and beside other checks); afterwards the runs it wrote are
    /// deleted and its locks released.
    pub async fn run(&self, store: Arc<dyn CheckpointStore>) -> Result<(), String> {
        let scoped = Arc::new(Scoped {
            inner: store,
            suffix: format!(".{}", crate::run::unique_token()),
            held: Mutex::new(Vec::new()),
        });
        let outcome = (self.run)(scoped.clone()).await;
        scoped.clean_up().await;
        outcome
    }
}

/// A store as one run of a check sees it: run ids with a suffix of their own, and a note of
/// every lock taken, to clean up after.
struct Scoped {
    inner: Arc<dyn CheckpointStore>,
    suffix: String,
    held: Mutex<Vec<(String, String)>>,
}

impl Scoped {
    fn id(&self, run_id: &str) -> String {
        format!("{run_id}{}", self.suffix)
    }

    async fn clean_up(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        // Locks first: a store refuses to delete a locked run.
        for (run_id, owner) in &held {
            let _ = self.inner.release(run_id, owner).await;
        }
        for (run_id, _) in &held {
            let _ = self.inner.delete(run_id).await;
        }
    }
}

impl CheckpointStore for Scoped {
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        self.forward(self.inner.save(&self.id(run_id), owner, save))
    }
    fn load(&self, run_id: &str) -> BoxFuture<'static, StoreResult<Option<StoredRun>>> {
        self.forward(self.inner.load(&self.id(run_id)))
    }
    fn delete(&self, run_id: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.forward(self.inner.delete(&self.id(run_id)))
    }
    fn exists(&self, run_id: &str) -> BoxFuture<'static, StoreResult<bool>> {
        self.forward(self.inner.exists(&self.id(run_id)))
    }
    fn acquire(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        let id = self.id(run_id);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id.clone(), owner.to_string()));
        self.forward(self.inner.acquire(&id, owner, lease))
    }
    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        self.forward(self.inner.renew(&self.id(run_id), owner, lease))
    }
    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
        self.forward(self.inner.release(&self.id(run_id), owner))
    }
    /// Only this check's runs (the store may hold others'), under the ids the check used.
    fn list_runs(
        &self,
        statuses: &[RunStatus],
    ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
        let suffix = self.suffix.clone();
        let listed = self.forward(self.inner.list_runs(statuses));
        Box::pin(async move {
            Ok(listed
                .await?
                .into_iter()
                .filter_map(|mut run| {
                    run.run_id = run.run_id.strip_suffix(&suffix)?.to_string();
                    Some(run)
                })
                .collect())
        })
    }
}

impl Scoped {
    /// `fut`, with a `LockLost` naming the run id the check used.
    fn forward<T: Send + 'static>(
        &self,
        fut: BoxFuture<'static, StoreResult<T>>,
    ) -> BoxFuture<'static, StoreResult<T>> {
        let suffix = self.suffix.clone();
        Box::pin(async move {
            fut.await.map_err(|e| match e {
                StoreError::LockLost { run_id } => StoreError::LockLost {
                    run_id: unscoped(&run_id, &suffix),
                },
                StoreError::RollbackPending { run_id } => StoreError::RollbackPending {
                    run_id: unscoped(&run_id, &suffix),
                },
                StoreError::RunLocked { run_id } => StoreError::RunLocked {
                    run_id: unscoped(&run_id, &suffix),
                },
                other => other,
            })
        })
    }
}

/// `run_id` without the suffix a check's store added to it.
fn unscoped(run_id: &str, suffix: &str) -> String {
    run_id.strip_suffix(suffix).unwrap_or(run_id).to_string()
}

/// Every check of the contract.
pub fn checks() -> &'static [Check] {
    CHECKS
}

/// The check called `name`, if there is one.
pub fn check(name: &str) -> Option<&'static Check> {
    CHECKS.iter().find(|c| c.name == name)
}

/// Runs every check, each on a store `make` returns for it (given the check's name), and
/// panics listing every check that failed.
///
/// # Panics
///
/// When the store fails one or more checks.
pub async fn check_store<F, Fut>(mut make: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: Future<Output = Arc<dyn CheckpointStore>>,
{
    let mut failures = Vec::new();
    for check in CHECKS {
        let store = make(check.name).await;
        if let Err(e) = check.run(store).await {
            failures.push(format!("  {}: {e}", check.name));
        }
    }
    assert!(
        failures.is_empty(),
        "the store fails {} of {} contract checks:\n{}",
        failures.len(),
        CHECKS.len(),
        failures.join("\n")
    );
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        const CHECKS: &[Check] = &[$(Check {
            name: stringify!($name),
            run: |store| Box::pin(async move { $name(&*store).await }),
        }),*];
    };
}

checks!(
    round_trip,
    empty_header_and_entries,
    load_of_a_missing_run_is_none,
    start_replaces_an_old_run,
    rewrite_replaces_a_run_with_its_entries,
    start_of_a_run_rolling_back_is_refused,
    entries_keep_their_order_and_bytes,
    runs_do_not_mix_their_entries,
    concurrent_entries_are_all_kept,
    entry_or_finish_before_start_fails_without_writing,
    finish_sets_and_clears_the_error,
    save_without_the_lock_is_lock_lost,
    save_by_another_owner_is_lock_lost_and_writes_nothing,
    expired_lease_fences_the_old_owner,
    acquire_takes_a_free_expired_or_own_lock_only,
    renew_extends_only_the_owners_unexpired_lock,
    release_frees_only_the_owners_lock,
    delete_removes_an_unlocked_runs_checkpoint_only,
    run_ids_are_independent,
    a_release_applies_after_an_acquire_whose_future_was_dropped,
    list_runs_finds_runs_by_status_with_their_lock,
    updated_at_is_the_last_status_write,
);

/// A lease no check outlives.
const LONG: Duration = Duration::from_secs(60);
/// A lease a check waits out: long enough for a few store calls on a loaded machine.
const SHORT: Duration = Duration::from_millis(800);
/// Comfortably longer than `SHORT`.
const PAST_SHORT: Duration = Duration::from_millis(1600);

type Outcome = Result<(), String>;

/// Fails the check with a message unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Fails the check unless `got == want`, showing both.
macro_rules! same {
    ($got:expr, $want:expr, $($what:tt)+) => {
        // A `match` keeps temporaries in `$got` alive for the comparison.
        match (&$got, &$want) {
            (got, want) => {
                if got != want {
                    return Err(format!("{}: expected {}, got {}", format!($($what)+), short(want), short(got)));
                }
            }
        }
    };
}

/// A store call that must succeed.
fn ok<T>(result: StoreResult<T>, what: &str) -> Result<T, String> {
    result.map_err(|e| match &e {
        // The store's error already says what failed.
        StoreError::Backend { operation, .. } if *operation == what => e.to_string(),
        _ => format!("{what} failed: {e}"),
    })
}

/// A save that must be refused with `LockLost` for `run_id`.
fn lock_lost(result: StoreResult<()>, run_id: &str, what: &str) -> Outcome {
    match result {
        Err(StoreError::LockLost { run_id: r }) if r == run_id => Ok(()),
        other => Err(format!(
            "{what}: expected LockLost for `{run_id}`, got {other:?}"
        )),
    }
}

/// One save of each kind, named, for checks that every kind is refused alike.
fn every_kind_of_save(version: &str, bytes: &[u8]) -> [(Save, &'static str); 4] {
    [
        (Save::start(version, bytes), "start"),
        (
            Save::Rewrite {
                version: version.into(),
                header: bytes.to_vec(),
                entries: vec![bytes.to_vec()],
            },
            "rewrite",
        ),
        (Save::Entry(bytes.to_vec()), "entry"),
        (Save::finish(RunStatus::Failed, Some("x")), "finish"),
    ]
}

/// A save that must fail as a backend error of `save` (not `LockLost`).
fn refused(result: StoreResult<()>, what: &str) -> Outcome {
    match result {
        Err(StoreError::Backend {
            operation: "save", ..
        }) => Ok(()),
        other => Err(format!(
            "{what}: expected a backend error of `save`, got {other:?}"
        )),
    }
}

async fn load(s: &dyn CheckpointStore, run: &str) -> Result<StoredRun, String> {
    ok(s.load(run).await, "load")?.ok_or_else(|| format!("load of `{run}` found no run"))
}

async fn acquire(s: &dyn CheckpointStore, run: &str, owner: &str, lease: Duration) -> Outcome {
    ensure!(
        ok(s.acquire(run, owner, lease).await, "acquire")?,
        "`{owner}` could not acquire the free lock of `{run}`"
    );
    Ok(())
}

async fn round_trip(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-round-trip";
    acquire(s, r, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("v1", b"header")).await, "start")?;
    ok(s.save(r, "a", Save::Entry(b"one".to_vec())).await, "entry")?;
    same!(
        load(s, r).await?,
        StoredRun {
            version: "v1".into(),
            status: RunStatus::Running,
            error: None,
            header: b"header".to_vec(),
            entries: vec![b"one".to_vec()],
        },
        "after a start and an entry"
    );
    ok(s.save(r, "a", Save::Entry(b"two".to_vec())).await, "entry")?;
    ok(
        s.save(r, "a", Save::finish(RunStatus::Failed, Some("boom")))
            .await,
        "finish",
    )?;
    let failed = load(s, r).await?;
    same!(failed.status, RunStatus::Failed, "status after a failure");
    same!(
        failed.error.as_deref(),
        Some("boom"),
        "error after a failure"
    );
    ok(
        s.save(r, "a", Save::finish(RunStatus::Completed, None))
            .await,
        "finish",
    )?;
    ok(s.release(r, "a").await, "release")?;
    same!(
        load(s, r).await?,
        StoredRun {
            version: "v1".into(),
            status: RunStatus::Completed,
            error: None,
            header: b"header".to_vec(),
            entries: vec![b"one".to_vec(), b"two".to_vec()],
        },
        "after the finish and release"
    );
    Ok(())
}

async fn empty_header_and_entries(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-empty";
    acquire(s, r, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("", Vec::new())).await, "start")?;
    ok(s.save(r, "a", Save::Entry(Vec::new())).await, "entry")?;
    let run = load(s, r).await?;
    same!(run.version, "", "version");
    same!(run.header, Vec::<u8>::new(), "header");
    same!(run.entries, vec![Vec::<u8>::new()], "entries");
    Ok(())
}

async fn load_of_a_missing_run_is_none(s: &dyn CheckpointStore) -> Outcome {
    same!(
        ok(s.load("contract-nobody").await, "load")?,
        None,
        "load of a run never saved"
    );
    ensure!(
        !ok(s.exists("contract-nobody").await, "exists")?,
        "a run never saved exists"
    );
    Ok(())
}

/// Run `r`, owned by `a`: started (`v1`, header `old`), one entry `e1`, failed with `x`.
async fn failed_run(s: &dyn CheckpointStore, r: &str) -> Outcome {
    acquire(s, r, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("v1", b"old")).await, "start")?;
    ok(s.save(r, "a", Save::Entry(b"e1".to_vec())).await, "entry")?;
    ok(
        s.save(r, "a", Save::finish(RunStatus::Failed, Some("x")))
            .await,
        "finish",
    )
}

async fn start_replaces_an_old_run(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-replace";
    failed_run(s, r).await?;
    ok(
        s.save(r, "a", Save::start("v2", b"new")).await,
        "second start",
    )?;
    same!(
        load(s, r).await?,
        StoredRun {
            version: "v2".into(),
            status: RunStatus::Running,
            error: None,
            header: b"new".to_vec(),
            entries: vec![],
        },
        "after a second start"
    );
    ok(s.save(r, "a", Save::Entry(b"e2".to_vec())).await, "entry")?;
    same!(
        load(s, r).await?.entries,
        vec![b"e2".to_vec()],
        "entries after the second start"
    );
    Ok(())
}

async fn start_of_a_run_rolling_back_is_refused(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-rolling-back";
    failed_run(s, r).await?;
    ok(
        s.save(r, "a", Save::finish(RunStatus::RollingBack, Some("x")))
            .await,
        "finish as rolling back",
    )?;
    let before = load(s, r).await?;
    match s.save(r, "a", Save::start("v2", b"new")).await {
        Err(StoreError::RollbackPending { run_id }) if run_id == r => {}
        other => {
            return Err(format!(
                "a start of a run rolling back: expected RollbackPending for `{r}`, got {other:?}"
            ));
        }
    }
    same!(
        load(s, r).await?,
        before,
        "a run rolling back after a refused start"
    );
    // Once its rollbacks ended, a start replaces it as any other.
    ok(
        s.save(r, "a", Save::finish(RunStatus::RolledBack, Some("x")))
            .await,
        "finish as rolled back",
    )?;
    ok(s.save(r, "a", Save::start("v2", b"new")).await, "start")?;
    same!(
        (load(s, r).await?.status, load(s, r).await?.entries.len()),
        (RunStatus::Running, 0),
        "a rolled-back run after a start"
    );
    Ok(())
}

async fn rewrite_replaces_a_run_with_its_entries(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-rewrite";
    failed_run(s, r).await?;
    // Enough entries to need more than one command on a store that batches them.
    let entries: Vec<Vec<u8>> = (0..1200u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let rewrite = Save::Rewrite {
        version: "v2".into(),
        header: b"new".to_vec(),
        entries: entries.clone(),
    };
    ok(s.save(r, "a", rewrite).await, "rewrite")?;
    let run = load(s, r).await?;
    same!(
        (&run.version, run.status, &run.error, &run.header),
        (
            &"v2".to_string(),
            RunStatus::Running,
            &None,
            &b"new".to_vec()
        ),
        "version, status, error and header after a rewrite"
    );
    // Compared without printing 1,200 entries.
    if run.entries != entries {
        let at = run
            .entries
            .iter()
            .zip(&entries)
            .take_while(|(a, b)| a == b)
            .count();
        return Err(format!(
            "after a rewrite: {} entries where {} were written, the first difference at #{at}",
            run.entries.len(),
            entries.len()
        ));
    }
    ok(s.save(r, "a", Save::Entry(b"next".to_vec())).await, "entry")?;
    let after = load(s, r).await?.entries;
    same!(
        (after.len(), after.last().cloned()),
        (1201, Some(b"next".to_vec())),
        "entries after an entry appended to a rewrite"
    );
    // A rewrite of a run never started creates it, as a start does.
    let fresh = "contract-rewrite-fresh";
    acquire(s, fresh, "a", LONG).await?;
    let rewrite = Save::Rewrite {
        version: "v1".into(),
        header: Vec::new(),
        entries: vec![b"only".to_vec()],
    };
    ok(s.save(fresh, "a", rewrite).await, "rewrite")?;
    same!(
        load(s, fresh).await?.entries,
        vec![b"only".to_vec()],
        "entries of a rewrite of a run never started"
    );
    Ok(())
}

async fn entries_keep_their_order_and_bytes(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-order";
    acquire(s, r, "a", LONG).await?;
    let header: Vec<u8> = (0..=255u8).rev().collect();
    ok(
        s.save(r, "a", Save::start("v1", header.clone())).await,
        "start",
    )?;
    let mut expected = Vec::new();
    for i in 0..100u32 {
        let entry = match i {
            0 => Vec::new(),
            1 => vec![0; 1 << 20],
            // Protocol-looking bytes (RESP, SQL) are data like any other.
            2 => b"\r\n$-1\r\n*0\r\n'); --".to_vec(),
            _ => i.to_le_bytes().repeat(i as usize),
        };
        ok(s.save(r, "a", Save::Entry(entry.clone())).await, "entry")?;
        expected.push(entry);
    }
    let stored = load(s, r).await?;
    ensure!(stored.header == header, "the header came back changed");
    same!(stored.entries.len(), expected.len(), "number of entries");
    for (i, (got, want)) in stored.entries.iter().zip(&expected).enumerate() {
        if got == want {
            continue;
        }
        // Say which: an entry in another place, or bytes changed.
        return Err(match expected.iter().position(|e| e == got) {
            Some(saved) => format!(
                "entries came back in another order than saved: entry {i} is the one saved \
                 {}",
                ordinal(saved)
            ),
            None => format!(
                "entry {i} came back changed ({} bytes, {} saved)",
                got.len(),
                want.len()
            ),
        });
    }
    Ok(())
}

/// `0` → "first", `1` → "second", then "#n" (1-based).
fn ordinal(i: usize) -> String {
    match i {
        0 => "first".into(),
        1 => "second".into(),
        2 => "third".into(),
        _ => format!("#{}", i + 1),
    }
}

async fn runs_do_not_mix_their_entries(s: &dyn CheckpointStore) -> Outcome {
    let (r, other) = ("contract-mix-1", "contract-mix-2");
    acquire(s, r, "a", LONG).await?;
    acquire(s, other, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("v", Vec::new())).await, "start")?;
    ok(
        s.save(other, "a", Save::start("v", Vec::new())).await,
        "start",
    )?;
    let expected: Vec<Vec<u8>> = (0u32..200).map(|i| i.to_le_bytes().to_vec()).collect();
    for (i, e) in expected.iter().enumerate() {
        ok(s.save(r, "a", Save::Entry(e.clone())).await, "entry")?;
        if i % 10 == 0 {
            ok(s.save(other, "a", Save::Entry(vec![0xff])).await, "entry")?;
        }
    }
    same!(load(s, r).await?.entries, expected, "entries of `{r}`");
    same!(
        load(s, other).await?.entries.len(),
        20,
        "number of entries of `{other}`"
    );
    Ok(())
}

async fn concurrent_entries_are_all_kept(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-concurrent";
    acquire(s, r, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("v1", b"")).await, "start")?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50u8 {
        tasks.spawn(s.save(r, "a", Save::Entry(vec![i])));
    }
    while let Some(done) = tasks.join_next().await {
        ok(done.map_err(|e| format!("a save panicked: {e}"))?, "entry")?;
    }
    let mut entries = load(s, r).await?.entries;
    entries.sort();
    let expected: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i]).collect();
    if entries != expected {
        let missing: Vec<_> = expected.iter().filter(|e| !entries.contains(e)).collect();
        let extra: Vec<_> = entries.iter().filter(|e| !expected.contains(e)).collect();
        return Err(format!(
            "of 50 entries saved at once, {} came back: missing {}, never saved {}",
            entries.len(),
            short(&missing),
            short(&extra)
        ));
    }
    Ok(())
}

/// `value`'s debug form, cut to a readable length.
fn short(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}… ({} characters in all)", &text[..at], text.len()),
        None => text,
    }
}

async fn entry_or_finish_before_start_fails_without_writing(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-not-started";
    acquire(s, r, "a", LONG).await?;
    refused(
        s.save(r, "a", Save::Entry(b"x".to_vec())).await,
        "an entry before any start",
    )?;
    refused(
        s.save(r, "a", Save::finish(RunStatus::Completed, None))
            .await,
        "a finish before any start",
    )?;
    ensure!(
        !ok(s.exists(r).await, "exists")?,
        "a refused save created the run"
    );
    same!(
        ok(s.load(r).await, "load")?,
        None,
        "load after refused saves"
    );
    // The lock is checked first.
    lock_lost(
        s.save(r, "b", Save::Entry(b"x".to_vec())).await,
        r,
        "an entry by another owner before any start",
    )
}

async fn finish_sets_and_clears_the_error(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-error";
    acquire(s, r, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("v1", b"h")).await, "start")?;
    // Every status is kept as saved.
    for status in [
        RunStatus::RollingBack,
        RunStatus::RolledBack,
        RunStatus::Completed,
        RunStatus::Running,
    ] {
        ok(
            s.save(r, "a", Save::finish(status, Some("why"))).await,
            status.as_str(),
        )?;
        same!(load(s, r).await?.status, status, "status as saved");
    }
    let text = "stage `b` failed: ünïcödé \u{1F4A5}\nsecond line";
    ok(
        s.save(r, "a", Save::finish(RunStatus::Failed, Some(text)))
            .await,
        "finish",
    )?;
    let failed = load(s, r).await?;
    same!(failed.status, RunStatus::Failed, "status");
    same!(failed.error.as_deref(), Some(text), "error text");
    ok(
        s.save(r, "a", Save::finish(RunStatus::Failed, Some("")))
            .await,
        "finish",
    )?;
    same!(
        load(s, r).await?.error.as_deref(),
        Some(""),
        "an empty error text"
    );
    ok(s.save(r, "a", Save::Entry(b"e".to_vec())).await, "entry")?;
    same!(
        load(s, r).await?.status,
        RunStatus::Failed,
        "status after an entry (an entry does not change it)"
    );
    ok(
        s.save(r, "a", Save::finish(RunStatus::Completed, None))
            .await,
        "finish",
    )?;
    let done = load(s, r).await?;
    same!(done.status, RunStatus::Completed, "status");
    same!(done.error, None, "error after completing");
    same!(done.entries, vec![b"e".to_vec()], "entries");
    Ok(())
}

async fn save_without_the_lock_is_lock_lost(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-no-lock";
    lock_lost(
        s.save(r, "a", Save::start("v1", b"h")).await,
        r,
        "a start without the lock",
    )?;
    ensure!(
        !ok(s.exists(r).await, "exists")?,
        "a refused start created the run"
    );
    Ok(())
}

async fn save_by_another_owner_is_lock_lost_and_writes_nothing(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-intruder";
    acquire(s, r, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("v1", b"h")).await, "start")?;
    ok(s.save(r, "a", Save::Entry(b"1".to_vec())).await, "entry")?;
    let before = load(s, r).await?;
    for (save, kind) in every_kind_of_save("v9", b"x") {
        lock_lost(
            s.save(r, "b", save).await,
            r,
            &format!("a {kind} by another owner"),
        )?;
    }
    same!(load(s, r).await?, before, "the run after refused saves");
    Ok(())
}

async fn expired_lease_fences_the_old_owner(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-takeover";
    acquire(s, r, "old", SHORT).await?;
    ok(s.save(r, "old", Save::start("v1", b"h")).await, "start")?;
    ok(s.save(r, "old", Save::Entry(b"1".to_vec())).await, "entry")?;
    tokio::time::sleep(PAST_SHORT).await;
    lock_lost(
        s.save(r, "old", Save::Entry(b"late".to_vec())).await,
        r,
        "an entry after the lease ran out, before anyone took over",
    )?;
    ensure!(
        !ok(s.renew(r, "old", LONG).await, "renew")?,
        "an expired lease was renewed"
    );
    acquire(s, r, "new", LONG).await?;
    for (save, kind) in every_kind_of_save("v0", b"stale") {
        lock_lost(s.save(r, "old", save).await, r, &format!("a stale {kind}"))?;
    }
    // The old owner's release does not free the new owner's lock.
    ok(s.release(r, "old").await, "release")?;
    ensure!(
        !ok(s.acquire(r, "old", LONG).await, "acquire")?,
        "the old owner took the lock back from the new one"
    );
    ok(s.save(r, "new", Save::Entry(b"2".to_vec())).await, "entry")?;
    let run = load(s, r).await?;
    same!(run.version, "v1", "version");
    same!(run.status, RunStatus::Running, "status");
    same!(
        run.entries,
        vec![b"1".to_vec(), b"2".to_vec()],
        "entries (the old owner's stale writes must be absent)"
    );
    Ok(())
}

async fn acquire_takes_a_free_expired_or_own_lock_only(s: &dyn CheckpointStore) -> Outcome {
    let (r, r2) = ("contract-acquire-1", "contract-acquire-2");
    acquire(s, r, "a", LONG).await?;
    ensure!(
        !ok(s.acquire(r, "b", LONG).await, "acquire")?,
        "another owner took a held lock"
    );
    ensure!(
        ok(s.acquire(r, "a", LONG).await, "acquire")?,
        "the holder could not take its own lock again"
    );
    acquire(s, r2, "b", LONG).await?;
    // Taking it again sets the new lease, even a shorter one.
    acquire(s, r, "a", SHORT).await?;
    tokio::time::sleep(PAST_SHORT).await;
    ensure!(
        ok(s.acquire(r, "b", LONG).await, "acquire")?,
        "an expired lock (re-taken with a shorter lease) could not be taken"
    );
    ensure!(
        !ok(s.acquire(r, "a", LONG).await, "acquire")?,
        "the previous owner took the lock back"
    );
    ensure!(
        !ok(s.acquire(r2, "a", LONG).await, "acquire")?,
        "locks of different runs interfered"
    );
    Ok(())
}

async fn renew_extends_only_the_owners_unexpired_lock(s: &dyn CheckpointStore) -> Outcome {
    let (r, r2) = ("contract-renew-1", "contract-renew-2");
    acquire(s, r, "a", SHORT).await?;
    ensure!(
        ok(s.renew(r, "a", LONG).await, "renew")?,
        "the owner could not renew"
    );
    ensure!(
        !ok(s.renew(r, "b", LONG).await, "renew")?,
        "another owner renewed"
    );
    tokio::time::sleep(PAST_SHORT).await;
    ensure!(
        !ok(s.acquire(r, "b", LONG).await, "acquire")?,
        "the renewed lease ended with the first one"
    );
    ok(s.save(r, "a", Save::start("v", Vec::new())).await, "start")?;
    acquire(s, r2, "a", SHORT).await?;
    tokio::time::sleep(PAST_SHORT).await;
    ensure!(
        !ok(s.renew(r2, "a", LONG).await, "renew")?,
        "an expired lock was renewed"
    );
    ensure!(
        !ok(s.renew("contract-renew-never", "a", LONG).await, "renew")?,
        "a lock never taken was renewed"
    );
    ok(s.release(r, "a").await, "release")?;
    ensure!(
        !ok(s.renew(r, "a", LONG).await, "renew")?,
        "a released lock was renewed"
    );
    Ok(())
}

async fn release_frees_only_the_owners_lock(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-release";
    acquire(s, r, "a", LONG).await?;
    ok(s.release(r, "b").await, "release by another owner")?;
    ensure!(
        !ok(s.acquire(r, "b", LONG).await, "acquire")?,
        "a release by another owner freed the lock"
    );
    ok(s.save(r, "a", Save::start("v", Vec::new())).await, "start")?;
    ok(s.release(r, "a").await, "release")?;
    lock_lost(
        s.save(r, "a", Save::Entry(vec![1])).await,
        r,
        "an entry after the release",
    )?;
    acquire(s, r, "b", LONG).await?;
    ok(s.release(r, "b").await, "release")?;
    ok(s.release(r, "b").await, "a second release")?;
    ok(
        s.release("contract-release-never", "a").await,
        "a release of a lock nobody holds",
    )?;
    ensure!(
        ok(s.exists(r).await, "exists")?,
        "the checkpoint went with the lock"
    );
    Ok(())
}

/// A run dropped while taking its lock (a caller's timeout around `invoke`) drops the
/// `acquire` future after it reached the store, and asks for the release at once: the
/// release must apply after the acquire, or the lock stays held for the whole lease.
async fn a_release_applies_after_an_acquire_whose_future_was_dropped(
    s: &dyn CheckpointStore,
) -> Outcome {
    for round in 0..10 {
        let r = format!("contract-dropped-acquire-{round}");
        let r = r.as_str();
        // Polled once (a store may start its work on the first poll), then dropped.
        let answered = {
            let mut taking = s.acquire(r, "a", LONG);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            taking.as_mut().poll(&mut cx).is_ready()
        };
        ok(s.release(r, "a").await, "release")?;
        // Time for an acquire still in flight to land.
        tokio::time::sleep(Duration::from_millis(if answered { 0 } else { 50 })).await;
        ensure!(
            ok(s.acquire(r, "b", LONG).await, "acquire")?,
            "a release asked for after an acquire whose future was dropped applied before \
             it (round {round}): the acquire then took the lock, held for its whole lease \
             (see `CheckpointStore::release`)"
        );
        ok(s.release(r, "b").await, "release")?;
    }
    Ok(())
}

/// `RunListing::updated_at`, when a store gives it, is the time of the run's last status
/// write: a finish moves it on from the start.
async fn updated_at_is_the_last_status_write(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-updated-at";
    let at = |listing: Vec<RunListing>| {
        listing
            .into_iter()
            .find(|l| l.run_id == r)
            .map(|l| l.updated_at)
            .ok_or_else(|| format!("`{r}` is not listed"))
    };
    acquire(s, r, "a", LONG).await?;
    ok(s.save(r, "a", Save::start("v", Vec::new())).await, "start")?;
    let Some(started) = at(ok(s.list_runs(&[]).await, "list_runs")?)? else {
        // The store does not give the time.
        return Ok(());
    };
    let pause = Duration::from_millis(60);
    tokio::time::sleep(pause).await;
    ok(
        s.save(r, "a", Save::finish(RunStatus::Completed, None))
            .await,
        "finish",
    )?;
    let finished = at(ok(s.list_runs(&[]).await, "list_runs")?)?;
    let moved = |finished: Option<std::time::SystemTime>| {
        finished.and_then(|f| f.duration_since(started).ok())
    };
    if moved(finished).is_some_and(|d| d >= pause / 2) {
        return Ok(());
    }
    // A store whose clock counts whole seconds (which `updated_at` allows) may read the same
    // time twice `pause` apart: one more status write, past the next second, must move it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ok(
        s.save(r, "a", Save::finish(RunStatus::Completed, None))
            .await,
        "a second finish",
    )?;
    let again = at(ok(s.list_runs(&[]).await, "list_runs")?)?;
    ensure!(
        moved(again).is_some_and(|d| d > Duration::ZERO),
        "`updated_at` is {again:?} after a finish, {finished:?} after another 1.1 s earlier, \
         {started:?} after the start: it must be the time of the last status write"
    );
    Ok(())
}

async fn delete_removes_an_unlocked_runs_checkpoint_only(s: &dyn CheckpointStore) -> Outcome {
    let r = "contract-delete";
    ok(
        s.delete("contract-delete-never").await,
        "delete of a run that never existed",
    )?;
    acquire(s, r, "a", LONG).await?;
    ensure!(
        !ok(s.exists(r).await, "exists")?,
        "a lock is not a checkpoint"
    );
    ok(s.save(r, "a", Save::start("v1", b"h")).await, "start")?;
    ok(s.save(r, "a", Save::Entry(b"e".to_vec())).await, "entry")?;
    ensure!(
        ok(s.exists(r).await, "exists")?,
        "a started run does not exist"
    );
    // A live run is not deleted under its owner.
    match s.delete(r).await {
        Err(StoreError::RunLocked { run_id }) if run_id == r => {}
        other => {
            return Err(format!(
                "delete of a locked run: expected RunLocked for `{r}`, got {other:?}"
            ));
        }
    }
    same!(
        load(s, r).await?.entries,
        vec![b"e".to_vec()],
        "entries after a refused delete"
    );
    ok(s.release(r, "a").await, "release")?;
    ok(s.delete(r).await, "delete")?;
    ensure!(!ok(s.exists(r).await, "exists")?, "a deleted run exists");
    same!(ok(s.load(r).await, "load")?, None, "load after a delete");
    acquire(s, r, "a", LONG).await?;
    refused(
        s.save(r, "a", Save::Entry(b"e".to_vec())).await,
        "an entry after the delete",
    )?;
    ok(
        s.save(r, "a", Save::start("v2", b"h2")).await,
        "start after the delete",
    )?;
    same!(
        load(s, r).await?.entries,
        Vec::<Vec<u8>>::new(),
        "entries of a run started again after a delete"
    );
    Ok(())
}

async fn run_ids_are_independent(s: &dyn CheckpointStore) -> Outcome {
    // Ids that look like key syntax, escapes or separators in some backend.
    let ids = [
        "contract-id",
        "contract-id{b}",
        "contract-id%7Bb%7D",
        "contract-{",
        "contract-}",
        "contract-}{",
        "contract-",
        "contract-%",
        "contract-x:y",
        "contract-'; DROP TABLE runs; --",
        "contract-naïve run \u{1F680}",
    ];
    for (i, id) in ids.iter().enumerate() {
        acquire(s, id, "a", LONG).await?;
        ok(
            s.save(id, "a", Save::start(format!("v{i}"), id.as_bytes()))
                .await,
            "start",
        )?;
        ok(s.save(id, "a", Save::Entry(vec![i as u8])).await, "entry")?;
    }
    for (i, id) in ids.iter().enumerate() {
        let run = load(s, id).await?;
        same!(run.version, format!("v{i}"), "version of {id:?}");
        same!(run.header, id.as_bytes(), "header of {id:?}");
        same!(run.entries, vec![vec![i as u8]], "entries of {id:?}");
        ensure!(
            !ok(s.acquire(id, "b", LONG).await, "acquire")?,
            "another owner took the lock of {id:?}"
        );
    }
    ok(s.release("contract-id{b}", "a").await, "release")?;
    ok(s.delete("contract-id{b}").await, "delete")?;
    ensure!(
        !ok(s.exists("contract-id{b}").await, "exists")?,
        "a deleted run exists"
    );
    ensure!(
        ok(s.exists("contract-id%7Bb%7D").await, "exists")?
            && ok(s.exists("contract-id").await, "exists")?,
        "deleting `contract-id{{b}}` deleted another run"
    );
    Ok(())
}

async fn list_runs_finds_runs_by_status_with_their_lock(s: &dyn CheckpointStore) -> Outcome {
    // The store's clock may be another machine's (Redis): its times are checked loosely.
    let slack = Duration::from_secs(300);
    let since = std::time::SystemTime::now() - slack;
    // Listings sorted by id, each lock's lease checked (what is left of one acquired for
    // LONG), then compared as "locked" (shown as LONG) or not. The time and the error, which
    // a store may leave out (`None`), are checked when given, then left out of the
    // comparison.
    let listed = |statuses: &'static [RunStatus]| async move {
        let mut runs = ok(s.list_runs(statuses).await, "list_runs")?;
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        for run in &mut runs {
            let left = run.lease_left;
            ensure!(
                left.is_none_or(|l| l <= LONG),
                "`{}`: {left:?} of its lease left, more than it was given",
                run.run_id
            );
            run.lease_left = left.map(|_| LONG);
            let at = run.updated_at.take();
            ensure!(
                at.is_none_or(|at| at >= since && at <= std::time::SystemTime::now() + slack),
                "`{}`: updated at {at:?}, not while the check ran",
                run.run_id
            );
            let error = run.error.take();
            let failed = matches!(run.status, RunStatus::Failed | RunStatus::RollingBack);
            ensure!(
                error.is_none() || (failed && error.as_deref() == Some("x")),
                "`{}` ({:?}) listed with error {error:?}",
                run.run_id,
                run.status
            );
        }
        Ok::<_, String>(runs)
    };
    same!(listed(&[]).await?, vec![], "a listing before any run");
    // `live`: running, locked. `left`: running, its lock released. `failed`: failed,
    // locked. `undoing`: rolling back, its lease run out. Ids with braces and a percent
    // sign, as keys that escape them must give them back.
    let (live, left, failed, undoing) = (
        "contract-list-live",
        "contract-list-{left}",
        "contract-list-failed%",
        "contract-list-undoing",
    );
    for (r, version) in [(live, "v1"), (left, "v2"), (failed, "v1"), (undoing, "v1")] {
        let lease = if r == undoing { SHORT } else { LONG };
        acquire(s, r, "a", lease).await?;
        ok(s.save(r, "a", Save::start(version, b"in")).await, "start")?;
    }
    ok(
        s.save(failed, "a", Save::finish(RunStatus::Failed, Some("x")))
            .await,
        "finish",
    )?;
    ok(
        s.save(
            undoing,
            "a",
            Save::finish(RunStatus::RollingBack, Some("x")),
        )
        .await,
        "finish",
    )?;
    ok(s.release(left, "a").await, "release")?;
    tokio::time::sleep(SHORT + Duration::from_millis(50)).await;

    let run = |id: &str, version: &str, status, locked: bool| {
        RunListing::new(id, version, status, locked.then_some(LONG))
    };
    same!(
        listed(&[RunStatus::Running, RunStatus::RollingBack]).await?,
        vec![
            run(failed, "v1", RunStatus::Failed, true),
            run(live, "v1", RunStatus::Running, true),
            run(undoing, "v1", RunStatus::RollingBack, false),
            run(left, "v2", RunStatus::Running, false),
        ]
        .into_iter()
        .filter(|r| r.status != RunStatus::Failed)
        .collect::<Vec<_>>(),
        "the running and rolling-back runs"
    );
    same!(
        listed(&[RunStatus::Failed]).await?,
        vec![run(failed, "v1", RunStatus::Failed, true)],
        "the failed runs"
    );
    same!(
        listed(&[]).await?.len(),
        4,
        "runs listed with no status given (all of them)"
    );
    same!(
        listed(&[RunStatus::Completed]).await?,
        vec![],
        "the completed runs"
    );
    let abandoned: Vec<String> = listed(&[])
        .await?
        .into_iter()
        .filter(RunListing::is_abandoned)
        .map(|r| r.run_id)
        .collect();
    same!(
        abandoned,
        vec![undoing.to_string(), left.to_string()],
        "the abandoned runs"
    );
    // A deleted run is not listed.
    ok(s.delete(left).await, "delete")?;
    same!(
        listed(&[RunStatus::Running]).await?.len(),
        1,
        "running runs after one was deleted"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ForwardStore, InMemoryStore};

    #[tokio::test]
    async fn the_in_memory_store_keeps_the_contract() {
        check_store(|_| async { Arc::new(InMemoryStore::new()) as Arc<dyn CheckpointStore> }).await;
    }

    #[tokio::test]
    async fn the_checks_run_again_on_a_store_that_keeps_their_data_and_clean_up() {
        /// Counts the runs that have a checkpoint or a lock.
        #[derive(Clone, Default)]
        struct Counting(InMemoryStore, Arc<Mutex<std::collections::HashSet<String>>>);
        impl ForwardStore for Counting {
            fn target(&self) -> &dyn CheckpointStore {
                &self.0
            }
            fn acquire(
                &self,
                run_id: &str,
                owner: &str,
                lease: Duration,
            ) -> BoxFuture<'static, StoreResult<bool>> {
                self.1.lock().unwrap().insert(run_id.to_string());
                self.0.acquire(run_id, owner, lease)
            }
        }
        let store = Counting::default();
        for _ in 0..2 {
            let store = store.clone();
            check_store(move |_| {
                let store = store.clone();
                async move { Arc::new(store) as Arc<dyn CheckpointStore> }
            })
            .await;
        }
        // Nothing is left: no checkpoint, and every lock free again.
        let runs: Vec<String> = store.1.lock().unwrap().iter().cloned().collect();
        assert!(!runs.is_empty());
        for run in runs {
            assert_eq!(store.0.load(&run).await.unwrap(), None, "{run}");
            assert!(
                store.0.acquire(&run, "anyone", LONG).await.unwrap(),
                "{run} is still locked"
            );
        }
    }

    #[tokio::test]
    async fn a_forwarding_store_keeps_the_contract_of_its_target() {
        struct Plain(InMemoryStore);
        impl ForwardStore for Plain {
            fn target(&self) -> &dyn CheckpointStore {
                &self.0
            }
        }
        check_store(|_| async {
            Arc::new(Plain(InMemoryStore::new())) as Arc<dyn CheckpointStore>
        })
        .await;
    }

    #[tokio::test]
    async fn a_store_that_breaks_the_contract_is_named_with_what_it_broke() {
        /// Forgets every entry.
        struct Forgetful(InMemoryStore);
        impl ForwardStore for Forgetful {
            fn target(&self) -> &dyn CheckpointStore {
                &self.0
            }
            fn save(
                &self,
                run_id: &str,
                owner: &str,
                save: Save,
            ) -> BoxFuture<'static, StoreResult<()>> {
                match save {
                    Save::Entry(_) => Box::pin(async { Ok(()) }),
                    other => self.0.save(run_id, owner, other),
                }
            }
        }
        let store: Arc<dyn CheckpointStore> = Arc::new(Forgetful(InMemoryStore::new()));
        let err = check("round_trip")
            .unwrap()
            .run(store.clone())
            .await
            .unwrap_err();
        assert!(err.contains("after a start and an entry"), "{err}");
        assert!(
            check("load_of_a_missing_run_is_none")
                .unwrap()
                .run(store)
                .await
                .is_ok()
        );
        assert_eq!(checks().len(), 22);
    }

    /// A store whose acquire reaches the backend a little after it is asked for (a pooled
    /// query whose future was dropped in flight): a release asked for at once applies
    /// first, and the lock stays held.
    #[tokio::test]
    async fn a_release_overtaking_a_dropped_acquire_is_caught() {
        struct LateAcquire(InMemoryStore);
        impl ForwardStore for LateAcquire {
            fn target(&self) -> &dyn CheckpointStore {
                &self.0
            }
            fn acquire(
                &self,
                run_id: &str,
                owner: &str,
                lease: Duration,
            ) -> BoxFuture<'static, StoreResult<bool>> {
                let (store, run_id, owner) =
                    (self.0.clone(), run_id.to_string(), owner.to_string());
                let landing = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    store.acquire(&run_id, &owner, lease).await
                });
                Box::pin(async move { landing.await.expect("the acquire's task") })
            }
        }
        let late: Arc<dyn CheckpointStore> = Arc::new(LateAcquire(InMemoryStore::new()));
        let name = "a_release_applies_after_an_acquire_whose_future_was_dropped";
        let err = check(name).unwrap().run(late).await.unwrap_err();
        assert!(err.contains("applied before it"), "{err}");
    }

    /// The in-memory store, its listings' `updated_at` changed by the function.
    struct UpdatedAt(
        InMemoryStore,
        fn(std::time::SystemTime) -> std::time::SystemTime,
    );

    impl ForwardStore for UpdatedAt {
        fn target(&self) -> &dyn CheckpointStore {
            &self.0
        }
        fn list_runs(
            &self,
            statuses: &[RunStatus],
        ) -> BoxFuture<'static, StoreResult<Vec<RunListing>>> {
            let (listed, change) = (self.0.list_runs(statuses), self.1);
            Box::pin(async move {
                Ok(listed
                    .await?
                    .into_iter()
                    .map(|l| match l.updated_at {
                        Some(at) => l.with_updated_at(change(at)),
                        None => l,
                    })
                    .collect())
            })
        }
    }

    /// A store that leaves `updated_at` at one time.
    #[tokio::test]
    async fn an_updated_at_frozen_at_the_start_is_caught() {
        let frozen = |_| std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let frozen: Arc<dyn CheckpointStore> = Arc::new(UpdatedAt(InMemoryStore::new(), frozen));
        let err = check("updated_at_is_the_last_status_write")
            .unwrap()
            .run(frozen)
            .await
            .unwrap_err();
        assert!(err.contains("time of the last status write"), "{err}");
    }

    /// A store whose `updated_at` counts whole seconds keeps the contract.
    #[tokio::test]
    async fn an_updated_at_in_whole_seconds_passes() {
        let whole = |at: std::time::SystemTime| {
            let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
            std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs())
        };
        let seconds: Arc<dyn CheckpointStore> = Arc::new(UpdatedAt(InMemoryStore::new(), whole));
        check("updated_at_is_the_last_status_write")
            .unwrap()
            .run(seconds)
            .await
            .unwrap();
    }
}
