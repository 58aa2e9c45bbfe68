//! What a failed run gives back before its rollbacks run, and how a durable run records
//! that it is rolling back: never a resume that completes over undone stages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::{BoxFuture, CheckpointStore, ForwardStore, RunStatus, Save, StoreResult};
use tokio::sync::Semaphore;

fluxio::keys! {
    pub seed: u64;
    pub a_out: u64;
    pub b_out: u64;
    pub c_out: u64;
}

/// A store call that fails, as when the store's backend is unreachable.
fn failing<T: Send + 'static>(
    operation: &'static str,
    why: &'static str,
) -> BoxFuture<'static, StoreResult<T>> {
    Box::pin(async move { Err(fluxio::store::StoreError::backend(operation, why)) })
}

/// What a [`Faulty`] store's `save` does instead, if anything.
type SaveFault =
    Box<dyn Fn(&str, &str, &Save) -> Option<BoxFuture<'static, StoreResult<()>>> + Send + Sync>;
/// What a [`Faulty`] store's `renew` does instead, if anything.
type RenewFault = Box<dyn Fn() -> Option<BoxFuture<'static, StoreResult<bool>>> + Send + Sync>;

/// The in-memory store with a fault: its `save` or `renew` answers, for the calls it
/// picks, what the fault gives (a failure, a delay, a panic).
struct Faulty {
    inner: InMemoryStore,
    save: SaveFault,
    renew: RenewFault,
}

impl Faulty {
    fn on_save_call(
        inner: &InMemoryStore,
        fault: impl Fn(&str, &str, &Save) -> Option<BoxFuture<'static, StoreResult<()>>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Faulty {
            inner: inner.clone(),
            save: Box::new(fault),
            renew: Box::new(|| None),
        }
    }

    fn on_save(
        inner: &InMemoryStore,
        fault: impl Fn(&Save) -> Option<BoxFuture<'static, StoreResult<()>>> + Send + Sync + 'static,
    ) -> Self {
        Self::on_save_call(inner, move |_, _, save| fault(save))
    }

    fn on_renew(
        inner: &InMemoryStore,
        fault: impl Fn() -> Option<BoxFuture<'static, StoreResult<bool>>> + Send + Sync + 'static,
    ) -> Self {
        Faulty {
            inner: inner.clone(),
            save: Box::new(|_, _, _| None),
            renew: Box::new(fault),
        }
    }
}

impl ForwardStore for Faulty {
    fn target(&self) -> &dyn CheckpointStore {
        &self.inner
    }
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        (self.save)(run_id, owner, &save).unwrap_or_else(|| self.inner.save(run_id, owner, save))
    }
    fn renew(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> BoxFuture<'static, StoreResult<bool>> {
        (self.renew)().unwrap_or_else(|| self.inner.renew(run_id, owner, lease))
    }
}

// ---- The stages still running when the run fails are dropped before the rollbacks ----

/// A pool of one connection, which stages and rollbacks take from.
type Pool = Semaphore;

#[stage(reads = [seed], writes = [a_out], rollback = refund)]
async fn charge(seed: &u64, pool: Res<Pool>) -> u64 {
    let _ = pool;
    *seed
}

async fn refund(seed: &u64, pool: Res<Pool>) {
    let _ = seed;
    // A rollback needs a connection, as any database call does.
    let _conn = pool.acquire().await.unwrap();
}

#[stage(reads = [a_out], writes = [b_out], timeout = "100ms")]
async fn slow_query(a_out: &u64, pool: Res<Pool>) -> u64 {
    let _conn = pool.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    *a_out
}

#[stage(reads = [a_out], writes = [b_out])]
async fn holder(a_out: &u64, pool: Res<Pool>) -> u64 {
    let _conn = pool.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    *a_out
}

#[stage(reads = [a_out], writes = [c_out])]
async fn failer(a_out: &u64) -> Result<u64, StageError> {
    let _ = a_out;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Err(StageError::msg("boom"))
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_timed_out_gives_back_what_it_holds_before_the_rollbacks() {
    let pipe = pipeline! { charge, slow_query }.with_shared_resource(Arc::new(Pool::new(1)));
    let out = tokio::time::timeout(Duration::from_secs(60), pipe.invoke(input! { seed: 1 })).await;
    let Ok(out) = out else {
        panic!("the rollback waited for the connection of the stage that timed out");
    };
    assert!(
        matches!(
            out,
            Err(Error::Timeout {
                stage: "slow_query",
                ..
            })
        ),
        "{:?}",
        out.map(|_| ())
    );
}

#[tokio::test(start_paused = true)]
async fn siblings_of_a_failure_give_back_what_they_hold_before_the_rollbacks() {
    let pipe = pipeline! { charge, parallel { holder, failer } }
        .with_shared_resource(Arc::new(Pool::new(1)));
    let out = tokio::time::timeout(Duration::from_secs(60), pipe.invoke(input! { seed: 1 })).await;
    let Ok(out) = out else {
        panic!("the rollback waited for the connection of a sibling that was cancelled");
    };
    assert!(
        matches!(
            out,
            Err(Error::Stage {
                stage: "failer",
                ..
            })
        ),
        "{:?}",
        out.map(|_| ())
    );
}

// ---- A durable run keeps its lease while rolling back ----

/// Counts calls: each test has its own.
#[derive(Default)]
struct Count(AtomicU32);

impl Count {
    fn add(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How long a refund takes.
struct RefundTime(Duration);

#[stage(reads = [seed], writes = [a_out], rollback = timed_refund)]
async fn pay(seed: &u64, refunds: Res<Refunds>, time: Res<RefundTime>) -> u64 {
    let _ = (refunds, time);
    *seed
}

async fn timed_refund(seed: &u64, refunds: Res<Refunds>, time: Res<RefundTime>) {
    let _ = seed;
    refunds.0.add();
    tokio::time::sleep(time.0).await;
}

/// Refunds made.
#[derive(Default)]
struct Refunds(Count);

/// Calls of a stage that fails the first time.
#[derive(Default)]
struct Calls(Count);

impl Calls {
    /// Counts a call: the first fails with `why`, the others give `value`.
    fn fail_first(&self, why: &'static str, value: u64) -> Result<u64, StageError> {
        self.0.add();
        if self.0.get() == 1 {
            return Err(StageError::msg(why));
        }
        Ok(value)
    }
}

#[stage(reads = [a_out], writes = [b_out])]
async fn then_fail(a_out: &u64) -> Result<u64, StageError> {
    let _ = a_out;
    Err(StageError::msg("card declined"))
}

#[tokio::test]
async fn a_rollback_longer_than_the_lease_keeps_the_run_and_ends_rolled_back() {
    // Real time: the in-memory store's leases are on the system clock.
    let store = InMemoryStore::new();
    let pipe = pipeline! { pay, then_fail }
        .with_resource(Refunds::default())
        .with_resource(RefundTime(Duration::from_millis(900)))
        .with_store(store.clone())
        .with_lease(Duration::from_millis(300));
    let other = store.clone();
    // Another instance tries to take the run over while it is compensating.
    let taker = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        other
            .acquire("long-rollback", "someone-else", Duration::from_secs(5))
            .await
            .unwrap()
    });
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("long-rollback")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Stage {
                stage: "then_fail",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !taker.await.unwrap(),
        "another owner took the run while it was rolling back"
    );
    let stored = store.load("long-rollback").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::RolledBack);
    let resumed = pipe.resume("long-rollback").await;
    assert!(
        matches!(resumed, Err(Error::RolledBack { .. })),
        "{:?}",
        resumed.map(|_| ())
    );
}

// ---- An interrupted rollback is finished by the resume ----

#[stage(reads = [seed], writes = [a_out], rollback = unreserve)]
async fn reserve(seed: &u64, unreserved: Res<Unreserved>, time: Res<RefundTime>) -> u64 {
    let _ = (unreserved, time);
    *seed
}

async fn unreserve(seed: &u64, unreserved: Res<Unreserved>, time: Res<RefundTime>) {
    let _ = seed;
    tokio::time::sleep(time.0).await;
    unreserved.0.add();
}

#[derive(Default)]
struct Unreserved(Count);

#[stage(reads = [a_out], writes = [b_out], rollback = timed_refund)]
async fn pay_after(a_out: &u64, refunds: Res<Refunds>, time: Res<RefundTime>) -> u64 {
    let _ = (refunds, time);
    *a_out
}

#[stage(reads = [b_out], writes = [c_out])]
async fn fail_once(b_out: &u64, calls: Res<Calls>) -> Result<u64, StageError> {
    calls.fail_first("transient", *b_out)
}

#[tokio::test(start_paused = true)]
async fn a_run_dropped_while_rolling_back_is_rolled_back_by_its_resume() {
    let store = InMemoryStore::new();
    let refunds = Arc::new(Refunds::default());
    let unreserved = Arc::new(Unreserved::default());
    let pipe = pipeline! { reserve, pay_after, fail_once }
        .with_resource(Calls::default())
        .with_shared_resource(refunds.clone())
        .with_shared_resource(unreserved.clone())
        .with_resource(RefundTime(Duration::ZERO))
        .with_store(store.clone());
    // `fail_once` fails; the rollbacks run, last first: the refund, then the unreserve,
    // 10 s each. The run is dropped during the refund (a deploy, a caller's timeout).
    let slow_unreserve = pipe
        .clone()
        .with_resource(RefundTime(Duration::from_secs(10)));
    let dropped = tokio::time::timeout(
        Duration::from_secs(1),
        slow_unreserve
            .invoke(input! { seed: 1 })
            .run_id("dropped")
            .into_future(),
    )
    .await;
    assert!(dropped.is_err(), "still rolling back when dropped");
    assert_eq!(refunds.0.get(), 1, "the payment was refunded");
    assert_eq!(unreserved.0.get(), 0);
    // The lock's release runs in the background.
    tokio::task::yield_now().await;
    let stored = store.load("dropped").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::RollingBack);
    assert!(
        stored.error.as_deref().unwrap_or("").contains("transient"),
        "{:?}",
        stored.error
    );

    // A replay would start it afresh and drop the rollbacks still to run: refused, and the
    // run is left as it was.
    let replayed = pipe.replay("dropped").await;
    assert!(
        matches!(&replayed, Err(Error::RollbackPending { run_id }) if run_id == "dropped"),
        "{:?}",
        replayed.map(|c| c[c_out])
    );
    assert!(
        replayed
            .unwrap_err()
            .to_string()
            .contains("resume it first"),
        "says what to do"
    );
    assert_eq!(refunds.0.get(), 1);
    let stored = store.load("dropped").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::RollingBack);
    // So would a fresh invoke under its id: refused before any stage runs, the run left as
    // it was.
    let fresh = pipe.invoke(input! { seed: 2 }).run_id("dropped").await;
    assert!(
        matches!(&fresh, Err(Error::RollbackPending { run_id }) if run_id == "dropped"),
        "{:?}",
        fresh.map(|c| c[c_out])
    );
    assert_eq!(store.load("dropped").await.unwrap().unwrap(), stored);
    assert_eq!((refunds.0.get(), unreserved.0.get()), (1, 0));

    // The resume does not complete the run over the refunded payment: it runs the rollbacks
    // again (they are at least once, like stages) and refuses as for a rolled-back run.
    let resumed = pipe.resume("dropped").await;
    assert!(
        matches!(&resumed, Err(Error::RolledBack { run_id }) if run_id == "dropped"),
        "{:?}",
        resumed.map(|c| c[c_out])
    );
    assert_eq!(refunds.0.get(), 2);
    assert_eq!(unreserved.0.get(), 1);
    let stored = store.load("dropped").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::RolledBack);
    // Its stored error is still the failure that started the rollbacks.
    assert!(
        stored.error.as_deref().unwrap_or("").contains("transient"),
        "{:?}",
        stored.error
    );
    assert!(matches!(
        pipe.resume("dropped").await,
        Err(Error::RolledBack { .. })
    ));
    // Rolled back, it may be started afresh.
    let fresh = pipe.invoke(input! { seed: 3 }).run_id("dropped").await;
    assert_eq!(fresh.map(|c| c[c_out]).ok(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn a_version_without_a_stage_it_must_roll_back_cannot_resume_a_run_rolling_back() {
    let store = InMemoryStore::new();
    let refunds = Arc::new(Refunds::default());
    let unreserved = Arc::new(Unreserved::default());
    let with = |pipe: Pipeline, wait: u64| {
        pipe.with_resource(Calls::default())
            .with_shared_resource(refunds.clone())
            .with_shared_resource(unreserved.clone())
            .with_resource(RefundTime(Duration::from_secs(wait)))
            .with_store(store.clone())
    };
    // Dropped during its first rollback (the refund), as above.
    let old = with(pipeline! { reserve, pay_after, fail_once }, 10);
    let dropped = tokio::time::timeout(
        Duration::from_secs(1),
        old.invoke(input! { seed: 1 }).run_id("moved").into_future(),
    )
    .await;
    assert!(dropped.is_err());
    tokio::task::yield_now().await;
    let stored = store.load("moved").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::RollingBack);

    // A new version without `reserve`: its unreserve could not run. Refused, and nothing
    // changes.
    let new = with(pipeline! { pay_after, fail_once }, 0);
    let resumed = new
        .invoke(input! { seed: 1 })
        .run_id("moved")
        .resume()
        .allow_version_change()
        .await;
    let err = resumed.map(|c| c[c_out]).unwrap_err();
    assert!(
        matches!(&err, Error::IncompatibleCheckpoint { run_id, reason }
            if run_id == "moved" && reason.contains("`reserve`") && !reason.contains("  ")),
        "{err:?}"
    );
    assert_eq!(store.load("moved").await.unwrap().unwrap(), stored);
    assert_eq!((refunds.0.get(), unreserved.0.get()), (1, 0));

    // The version that wrote it finishes the rollbacks.
    let resumed = with(pipeline! { reserve, pay_after, fail_once }, 0)
        .resume("moved")
        .await;
    assert!(matches!(resumed, Err(Error::RolledBack { .. })));
    assert_eq!(unreserved.0.get(), 1);
}

// ---- No rollback runs unless the store recorded that the run is rolling back ----

#[tokio::test]
async fn a_run_whose_store_cannot_record_the_rollback_stays_resumable_undone() {
    let store = InMemoryStore::new();
    let refunds = Arc::new(Refunds::default());
    let calls = Arc::new(Calls::default());
    let broken = pipeline! { pay, pay_after_in_chain, fail_once }
        .with_shared_resource(refunds.clone())
        .with_shared_resource(calls.clone())
        .with_resource(RefundTime(Duration::ZERO))
        .with_store(Faulty::on_save(&store, |save| {
            matches!(
                save,
                Save::Finish {
                    status: RunStatus::RollingBack,
                    ..
                }
            )
            .then(|| failing("save", "connection refused"))
        }));
    let err = broken
        .invoke(input! { seed: 5 })
        .run_id("unrecorded")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store { run_id, .. } if run_id == "unrecorded"),
        "{err:?}"
    );
    // The failure that started it is in the error too (the run no longer returns it).
    let text = err.to_string();
    assert!(
        text.contains("connection refused")
            && text.contains("after: stage `fail_once` failed: transient")
            && text.contains("no rollback ran"),
        "{text}"
    );
    assert_eq!(
        refunds.0.get(),
        0,
        "nothing was undone without a record of it"
    );
    assert_eq!(
        store.load("unrecorded").await.unwrap().unwrap().status,
        RunStatus::Failed
    );
    // Resumed once the store works: the failed stage runs again, and the run completes.
    let healthy = pipeline! { pay, pay_after_in_chain, fail_once }
        .with_shared_resource(refunds.clone())
        .with_shared_resource(calls.clone())
        .with_resource(RefundTime(Duration::ZERO))
        .with_store(store.clone());
    let out = healthy.resume("unrecorded").await.unwrap();
    assert_eq!(out[c_out], 5);
    assert_eq!(refunds.0.get(), 0);
}

#[stage(reads = [a_out], writes = [b_out])]
async fn pay_after_in_chain(a_out: &u64) -> u64 {
    *a_out
}

// ---- A store in trouble while rolling back ----

#[stage(reads = [seed], writes = [a_out], rollback = late_refund)]
async fn charge_card(seed: &u64, refunds: Res<Refunds>) -> u64 {
    let _ = refunds;
    *seed
}

/// A refund whose effect lands at its end, 10 s in.
async fn late_refund(seed: &u64, refunds: Res<Refunds>) {
    let _ = seed;
    tokio::time::sleep(Duration::from_secs(10)).await;
    refunds.0.add();
}

#[stage(reads = [a_out], writes = [b_out])]
async fn decline_once(a_out: &u64, calls: Res<Calls>) -> Result<u64, StageError> {
    calls.fail_first("card declined", *a_out)
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_while_rolling_back_does_not_stop_the_rollbacks() {
    let store = InMemoryStore::new();
    let refunds = Arc::new(Refunds::default());
    let calls = Arc::new(Calls::default());
    let pipe = pipeline! { charge_card, decline_once }
        .with_shared_resource(refunds.clone())
        .with_shared_resource(calls.clone())
        .with_store({
            let failed = std::sync::atomic::AtomicBool::new(false);
            Faulty::on_renew(&store, move || {
                (!failed.swap(true, Ordering::SeqCst)).then(|| failing("renew", "timed out"))
            })
        })
        .with_lease(Duration::from_secs(3));
    let err = pipe
        .invoke(input! { seed: 7 })
        .run_id("blip")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Stage {
                stage: "decline_once",
                ..
            }
        ),
        "the run's own error, not the renewal's: {err:?}"
    );
    assert_eq!(refunds.0.get(), 1);
    assert_eq!(
        store.load("blip").await.unwrap().unwrap().status,
        RunStatus::RolledBack
    );
}

#[stage(reads = [seed], writes = [c_out])]
async fn decline_later(seed: &u64) -> Result<u64, StageError> {
    let _ = seed;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Err(StageError::msg("declined"))
}

#[tokio::test(start_paused = true)]
async fn a_stage_whose_entry_was_being_stored_is_rolled_back_by_the_resume_too() {
    let store = InMemoryStore::new();
    let refunds = Arc::new(Refunds::default());
    let pipe = pipeline! { parallel { charge_card, decline_later } }
        .with_shared_resource(refunds.clone())
        .with_store({
            let inner = store.clone();
            Faulty::on_save_call(&store, move |run_id, owner, save| {
                matches!(save, Save::Entry(_)).then(|| {
                    let (inner, save) = (inner.clone(), save.clone());
                    let (run_id, owner) = (run_id.to_string(), owner.to_string());
                    // Stored 50 ms late (a network round trip).
                    Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        inner.save(&run_id, &owner, save).await
                    }) as BoxFuture<'static, StoreResult<()>>
                })
            })
        });
    // `charge_card` returned at once; its entry is still being stored when `decline_later`
    // fails at 10 ms. The process stops 1 s into the refund.
    let dropped = tokio::time::timeout(
        Duration::from_secs(1),
        pipe.invoke(input! { seed: 1 })
            .run_id("pending-entry")
            .into_future(),
    )
    .await;
    assert!(dropped.is_err(), "still rolling back when dropped");
    tokio::task::yield_now().await;
    assert_eq!(
        store.load("pending-entry").await.unwrap().unwrap().status,
        RunStatus::RollingBack
    );
    assert_eq!(refunds.0.get(), 0);
    let resumed = pipe.resume("pending-entry").await;
    assert!(
        matches!(resumed, Err(Error::RolledBack { .. })),
        "{:?}",
        resumed.map(|_| ())
    );
    assert_eq!(refunds.0.get(), 1, "the charge was refunded by the resume");
}

// ---- A cancelled stage that panics as it is dropped ----

struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("a guard that panics when dropped");
        }
    }
}

#[stage(reads = [a_out], writes = [b_out])]
async fn guarded(a_out: &u64) -> u64 {
    let _guard = PanicOnDrop;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    *a_out
}

#[stage(reads = [seed], writes = [a_out], rollback = quick_refund)]
async fn quick_charge(seed: &u64) -> u64 {
    *seed
}

async fn quick_refund(seed: &u64) {
    let _ = seed;
}

#[derive(Default)]
struct RollbackLog(std::sync::Mutex<Vec<(String, bool)>>);

impl Callback for RollbackLog {
    fn on_rollback(&self, event: &fluxio::StageEvent<'_>, error: Option<&Error>) {
        self.0
            .lock()
            .unwrap()
            .push((event.stage.to_string(), error.is_some()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_sibling_panicking_as_it_is_dropped_leaves_the_rollbacks_as_they_are() {
    let log = Arc::new(RollbackLog::default());
    let pipe = pipeline! { quick_charge, parallel { guarded, failer } }.with_callback(log.clone());
    let err = pipe.invoke(input! { seed: 1 }).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Stage {
                stage: "failer",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        *log.0.lock().unwrap(),
        [("quick_charge".to_string(), false)],
        "one rollback, of the stage that has one, which went through"
    );
}

#[stage(reads = [a_out], writes = [b_out])]
async fn after_charge(a_out: &u64) -> u64 {
    *a_out
}

#[tokio::test(start_paused = true)]
async fn no_rollback_runs_for_a_stage_the_checkpoint_does_not_hold() {
    // `charge_card` ran, but its entry was not stored: a refund here could not be run again
    // by a resume if the process stopped during it. So nothing is undone, and the run stays
    // resumable: the resume runs `charge_card` again (as any stage whose end was not
    // recorded), then the rest.
    let store = InMemoryStore::new();
    let refunds = Arc::new(Refunds::default());
    let pipe = pipeline! { charge_card, after_charge }
        .with_shared_resource(refunds.clone())
        .with_store({
            let failed = std::sync::atomic::AtomicBool::new(false);
            Faulty::on_save(&store, move |save| {
                (matches!(save, Save::Entry(_)) && !failed.swap(true, Ordering::SeqCst))
                    .then(|| failing("save", "connection reset"))
            })
        });
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("lost-entry")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store { run_id, .. } if run_id == "lost-entry"),
        "{err:?}"
    );
    assert_eq!(refunds.0.get(), 0);
    assert_eq!(
        store.load("lost-entry").await.unwrap().unwrap().status,
        RunStatus::Failed
    );
    let out = pipe.resume("lost-entry").await.unwrap();
    assert_eq!(out[b_out], 1);
    assert_eq!(refunds.0.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_store_panicking_before_the_rollbacks_ends_the_run_with_its_panic() {
    let store = InMemoryStore::new();
    let log = Arc::new(RollbackLog::default());
    let pipe = pipeline! { charge_card, decline_once }
        .with_resource(Refunds::default())
        .with_resource(Calls::default())
        .with_callback(log.clone())
        .with_store(Faulty::on_save(&store, |save| {
            matches!(
                save,
                Save::Finish {
                    status: RunStatus::RollingBack,
                    ..
                }
            )
            .then(|| {
                Box::pin(async {
                    panic!("store bug while recording rolling_back");
                    #[allow(unreachable_code)]
                    Ok(())
                }) as BoxFuture<'static, StoreResult<()>>
            })
        }));
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("panic-record")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("store bug while recording"),
        "the store's panic, not a second poll's: {err}"
    );
    assert!(
        log.0.lock().unwrap().is_empty(),
        "no rollback ran, so none is reported"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_panicking_during_the_rollbacks_leaves_the_run_for_a_resume() {
    let store = InMemoryStore::new();
    let refunds = Arc::new(Refunds::default());
    let calls = Arc::new(Calls::default());
    let pipe = pipeline! { charge_card, decline_once }
        .with_shared_resource(refunds.clone())
        .with_shared_resource(calls.clone())
        .with_store(Faulty::on_renew(&store, || {
            Some(Box::pin(async {
                panic!("store bug while renewing");
                #[allow(unreachable_code)]
                Ok(true)
            }) as BoxFuture<'static, StoreResult<bool>>)
        }))
        .with_lease(Duration::from_secs(3));
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("panic-renew")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("store bug while renewing"),
        "{err}"
    );
    assert_eq!(refunds.0.get(), 0, "stopped 1 s into the 10 s refund");
    assert_eq!(
        store.load("panic-renew").await.unwrap().unwrap().status,
        RunStatus::RollingBack
    );
    let healthy = pipeline! { charge_card, decline_once }
        .with_shared_resource(refunds.clone())
        .with_shared_resource(calls.clone())
        .with_store(store.clone());
    let resumed = healthy.resume("panic-renew").await;
    assert!(
        matches!(resumed, Err(Error::RolledBack { .. })),
        "{:?}",
        resumed.map(|_| ())
    );
    assert_eq!(refunds.0.get(), 1);
}

#[stage(reads = [seed], writes = [a_out])]
async fn until_renewal(seed: &u64) -> u64 {
    // The lease is renewed a third of the way through it: this stage ends in that instant.
    tokio::time::sleep(Duration::from_millis(100)).await;
    *seed
}

/// A stage whose entry is stored in the poll where the lease's renewal fails ended: it is
/// reported completed before the run fails with the store's error (every started stage
/// gets its end).
#[tokio::test(start_paused = true)]
async fn a_stage_stored_as_the_lease_fails_is_reported_ended() {
    let store = InMemoryStore::new();
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { until_renewal }
        .with_callback(sink)
        .with_lease(Duration::from_millis(300))
        .with_store(Faulty::on_renew(&store, || {
            Some(failing("renew", "connection refused"))
        }));
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("at-renewal")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Store {
                operation: "renew",
                ..
            }
        ),
        "{err:?}"
    );
    let names: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "pipeline.started",
            "stage.started",
            "stage.completed",
            "pipeline.failed"
        ]
    );
    assert_eq!(
        store
            .load("at-renewal")
            .await
            .unwrap()
            .unwrap()
            .entries
            .len(),
        1
    );
}
