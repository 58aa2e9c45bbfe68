//! Per-stage recovery: `#[stage(fallback = ..)]` replaces a failed stage's writes;
//! `#[stage(rollback = ..)]` undoes finished stages, last first, when the run fails later.

use std::sync::{Arc, Mutex};

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::RunStatus;
use fluxio_tests::SkipStage;

fluxio::keys! {
    pub order_id: u64;
    pub price: u64;
    pub charged: bool;
    pub shipped: bool;
}

/// What happened, in order.
#[derive(Default)]
struct Journal(Mutex<Vec<String>>);

impl Journal {
    fn note(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[stage(reads = [order_id], writes = [price], fallback = cached_price)]
async fn fetch_price(order_id: &u64, journal: Res<Arc<Journal>>) -> Result<u64, StageError> {
    journal.note(format!("fetch_price {order_id}"));
    Err(StageError::msg("pricing service down"))
}

async fn cached_price(order_id: &u64, journal: Res<Arc<Journal>>) -> Result<u64, StageError> {
    journal.note("cached_price");
    if *order_id == 0 {
        return Err(StageError::msg("no cached price either"));
    }
    Ok(99)
}

#[tokio::test(start_paused = true)]
async fn a_fallback_produces_the_writes_after_the_retries_gave_up() {
    let journal = Arc::new(Journal::default());
    let pipe = pipeline! { fetch_price }
        .with_resource(journal.clone())
        .with_middleware(Retry::constant(2, Duration::from_millis(10)));
    let out = pipe.invoke(input! { order_id: 7 }).await.unwrap();
    assert_eq!(out[price], 99);
    assert_eq!(
        journal.entries(),
        ["fetch_price 7", "fetch_price 7", "cached_price"]
    );
}

#[tokio::test]
async fn a_failing_fallback_fails_the_run_with_both_errors() {
    let journal = Arc::new(Journal::default());
    let pipe = pipeline! { fetch_price }.with_resource(journal.clone());
    let err = pipe.invoke(input! { order_id: 0 }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `fetch_price` failed: its fallback failed too: no cached price either (the \
         stage had failed: pricing service down)"
    );
    let failed = err
        .find::<fluxio::FallbackFailed>()
        .expect("the fallback's failure");
    assert_eq!(failed.fallback.to_string(), "no cached price either");
    assert_eq!(
        failed.stage.to_string(),
        "stage `fetch_price` failed: pricing service down"
    );
}

#[stage(reads = [order_id], writes = [price], fallback = list_price)]
async fn get_quote(_order_id: &u64) -> Result<u64, StageError> {
    Err(StageError::msg("quotes down"))
}

/// A fallback that cannot fail, for a stage that can.
async fn list_price(order_id: &u64) -> u64 {
    10 * order_id
}

#[stage(reads = [order_id], writes = [price], fallback = panicking_price)]
async fn unpriced(_order_id: &u64) -> Result<u64, StageError> {
    Err(StageError::msg("pricing service down"))
}

async fn panicking_price(_order_id: &u64) -> u64 {
    panic!("price table missing")
}

#[tokio::test]
async fn a_fallback_that_panics_fails_the_run_with_both_errors() {
    let err = pipeline! { unpriced }
        .invoke(input! { order_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `unpriced` failed: its fallback failed too: panicked: price table missing (the \
         stage had failed: pricing service down)"
    );
    assert!(err.find::<fluxio::FallbackFailed>().is_some(), "{err:?}");
}

#[stage(reads = [order_id], writes = [price, charged], fallback = manual_review)]
async fn auto_approve(_order_id: &u64) -> (u64, bool) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    (1, true)
}

/// A fallback that can fail (with a `String`), for a stage that cannot.
async fn manual_review(order_id: &u64) -> Result<(u64, bool), String> {
    if *order_id == 0 {
        return Err("nobody to review it".into());
    }
    Ok((5, false))
}

#[tokio::test(start_paused = true)]
async fn a_fallback_may_fail_or_not_whatever_its_stage_does() {
    let out = pipeline! { get_quote }
        .invoke(input! { order_id: 3 })
        .await
        .unwrap();
    assert_eq!(out[price], 30);

    let pipe = pipeline! { auto_approve }.with_middleware(Timeout::new(Duration::from_secs(1)));
    let out = pipe.invoke(input! { order_id: 3 }).await.unwrap();
    assert_eq!((out[price], out[charged]), (5, false));
    let err = pipe.invoke(input! { order_id: 0 }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `auto_approve` failed: its fallback failed too: nobody to review it (the stage \
         had failed: stage `auto_approve` timed out after 1s)"
    );
}

#[stage(reads = [order_id], writes = [charged], rollback = refund)]
async fn charge(order_id: &u64, journal: Res<Arc<Journal>>) -> bool {
    journal.note(format!("charge {order_id}"));
    true
}

async fn refund(order_id: &u64, journal: Res<Arc<Journal>>) {
    journal.note(format!("refund {order_id}"));
}

#[stage(reads = [charged], writes = [shipped], rollback = cancel_shipment)]
fn ship(charged: &bool, journal: Res<Arc<Journal>>) -> bool {
    journal.note("ship");
    *charged
}

fn cancel_shipment(charged: &bool, journal: Res<Arc<Journal>>) -> Result<(), StageError> {
    journal.note(format!("cancel shipment (charged: {charged})"));
    Ok(())
}

#[stage(reads = [shipped])]
async fn notify(shipped: &bool, journal: Res<Arc<Journal>>) -> Result<(), StageError> {
    journal.note("notify");
    if *shipped {
        return Err(StageError::msg("mail server down"));
    }
    Ok(())
}

#[tokio::test]
async fn a_stage_with_a_rollback_is_never_cached() {
    // Through the built-in engine, and behind a user's middleware (boxed futures).
    for behind_a_users_middleware in [false, true] {
        let journal = Arc::new(Journal::default());
        let cache = Cache::ttl(Duration::from_secs(60));
        let mut pipe = pipeline! { charge, ship }.with_resource(journal.clone());
        if behind_a_users_middleware {
            pipe = pipe.with_middleware(SkipStage("nothing"));
        }
        let pipe = pipe.with_middleware(cache.clone());
        for _ in 0..2 {
            assert!(pipe.invoke(input! { order_id: 5 }).await.unwrap()[shipped]);
        }
        // The order is charged on every run: neither stage (both have a rollback) is cached.
        let charges = journal
            .entries()
            .iter()
            .filter(|e| *e == "charge 5")
            .count();
        assert_eq!(charges, 2, "{:?}", journal.entries());
        assert_eq!(cache.len(), 0);
    }
}

#[derive(Clone, Default)]
struct Rollbacks(Arc<Mutex<Vec<String>>>);

impl fluxio::Callback for Rollbacks {
    fn on_rollback(&self, e: &fluxio::StageEvent<'_>, error: Option<&Error>) {
        self.0.lock().unwrap().push(format!(
            "{} {}",
            e.stage,
            if error.is_some() { "failed" } else { "undone" }
        ));
    }
}

#[tokio::test]
async fn when_a_later_stage_fails_finished_stages_roll_back_last_first() {
    let journal = Arc::new(Journal::default());
    let seen = Rollbacks::default();
    let pipe = pipeline! { charge, ship, notify }
        .with_resource(journal.clone())
        .with_callback(seen.clone());
    let err = pipe.invoke(input! { order_id: 5 }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `notify` failed: mail server down",
        "the original error propagates"
    );
    assert_eq!(
        journal.entries(),
        [
            "charge 5",
            "ship",
            "notify",
            "cancel shipment (charged: true)",
            "refund 5"
        ]
    );
    assert_eq!(*seen.0.lock().unwrap(), ["ship undone", "charge undone"]);
}

#[tokio::test]
async fn a_successful_run_rolls_nothing_back() {
    let journal = Arc::new(Journal::default());
    let pipe = pipeline! { charge, ship }.with_resource(journal.clone());
    pipe.invoke(input! { order_id: 1 }).await.unwrap();
    assert_eq!(journal.entries(), ["charge 1", "ship"]);
}

#[tokio::test]
async fn a_rolled_back_durable_run_cannot_be_resumed() {
    let journal = Arc::new(Journal::default());
    let store = InMemoryStore::new();
    let pipe = pipeline! { charge, ship, notify }
        .with_resource(journal.clone())
        .with_store(store.clone());
    pipe.invoke(input! { order_id: 9 })
        .run_id("order-9")
        .await
        .unwrap_err();
    let run = store.load("order-9").await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::RolledBack);
    let err = pipe.resume("order-9").await.unwrap_err();
    assert!(
        matches!(&err, Error::RolledBack { run_id } if run_id == "order-9"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stage_a_middleware_skipped_is_not_rolled_back() {
    let journal = Arc::new(Journal::default());
    let seen = Rollbacks::default();
    let pipe = pipeline! { charge, ship, notify }
        .with_resource(journal.clone())
        .with_middleware(SkipStage("ship"))
        .with_callback(seen.clone());
    // `notify` reads what the skipped `ship` did not write: the run fails there.
    pipe.invoke(input! { order_id: 3 }).await.unwrap_err();
    assert_eq!(journal.entries(), ["charge 3", "refund 3"]);
    assert_eq!(*seen.0.lock().unwrap(), ["charge undone"]);
}

#[stage(reads = [order_id], rollback = unaudit)]
async fn audit(order_id: &u64, journal: Res<Arc<Journal>>) {
    journal.note(format!("audit {order_id}"));
}

async fn unaudit(order_id: &u64, journal: Res<Arc<Journal>>) {
    journal.note(format!("unaudit {order_id}"));
}

#[stage(reads = [order_id], writes = [charged])]
async fn pay(
    order_id: &u64,
    journal: Res<Arc<Journal>>,
    open: Res<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<bool, StageError> {
    if !open.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(StageError::msg("payments closed"));
    }
    journal.note(format!("pay {order_id}"));
    Ok(true)
}

#[stage(reads = [charged])]
async fn confirm(charged: &bool) -> Result<(), StageError> {
    let _ = charged;
    Err(StageError::msg("confirmation failed"))
}

#[tokio::test]
async fn a_skipped_stage_is_not_rolled_back_after_a_resume_either() {
    let journal = Arc::new(Journal::default());
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pipe = pipeline! { audit, pay, confirm }
        .with_resource(journal.clone())
        .with_resource(open.clone())
        .with_middleware(SkipStage("audit"))
        .with_store(InMemoryStore::new());
    // `audit` is skipped and checkpointed as such; `pay` fails.
    pipe.invoke(input! { order_id: 4 })
        .run_id("order-4")
        .await
        .unwrap_err();
    // Resumed: `audit` is not called again, `pay` succeeds, `confirm` fails, and the
    // rollbacks run — without undoing the audit that never happened.
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = pipe.resume("order-4").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "run `order-4`: stage `confirm` failed: confirmation failed"
    );
    assert_eq!(journal.entries(), ["pay 4"]);
}

/// Always fails; its fallback is generic over what it produces.
#[stage(reads = [order_id], writes = [price], fallback = nothing_known)]
fn quote(order_id: &u64) -> Result<u64, StageError> {
    Err(StageError::msg(format!("no quote for {order_id}")))
}

/// A fallback generic over its result: inferred from the key the stage writes.
fn nothing_known<T: Default>(_order_id: &u64) -> Result<T, StageError> {
    Ok(T::default())
}

#[tokio::test]
async fn a_generic_fallback_gets_its_type_from_the_key() {
    let out = pipeline! { quote }
        .invoke(input! { order_id: 3 })
        .await
        .unwrap();
    assert_eq!(out[price], 0);
}

#[stage(reads = [charged], writes = [shipped], rollback = cancel_shipment_badly)]
async fn ship_fragile(charged: &bool) -> bool {
    *charged
}

/// Panics on the run's own task (an async rollback; a blocking one runs on a thread of
/// its own, where a panic was always an error).
async fn cancel_shipment_badly(_charged: &bool) {
    panic!("courier API changed");
}

/// Stage failures and rollbacks, with their error texts.
#[derive(Clone, Default)]
struct Failures(Arc<Mutex<Vec<String>>>);

impl fluxio::Callback for Failures {
    fn on_stage_error(&self, e: &fluxio::StageEvent<'_>, error: &Error, _: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} failed: {error}", e.stage));
    }
    fn on_rollback(&self, e: &fluxio::StageEvent<'_>, error: Option<&Error>) {
        self.0.lock().unwrap().push(match error {
            Some(error) => format!("{} rollback failed: {error}", e.stage),
            None => format!("{} undone", e.stage),
        });
    }
}

#[tokio::test]
async fn a_rollback_that_panics_is_a_failed_rollback_and_the_others_still_run() {
    let journal = Arc::new(Journal::default());
    let seen = Failures::default();
    let pipe = pipeline! { charge, ship_fragile, notify }
        .with_resource(journal.clone())
        .with_callback(seen.clone());
    let err = pipe.invoke(input! { order_id: 5 }).await.unwrap_err();
    assert_eq!(err.to_string(), "stage `notify` failed: mail server down");
    assert_eq!(
        *seen.0.lock().unwrap(),
        [
            "notify failed: stage `notify` failed: mail server down",
            "ship_fragile rollback failed: rollback of stage `ship_fragile` failed: panicked: \
             courier API changed",
            "charge undone",
        ],
        "the stage itself did not fail: only its rollback"
    );
    assert_eq!(journal.entries().last().unwrap(), "refund 5");

    // Durable, the run's stored error lists the rollback that failed after the failure that
    // started them: a failed compensation is found afterwards, not only in the logs.
    let store = fluxio::store::InMemoryStore::new();
    let durable = pipe.clone().with_store(store.clone());
    durable
        .invoke(input! { order_id: 6 })
        .run_id("order-6")
        .await
        .unwrap_err();
    let record = durable.inspect("order-6").await.unwrap();
    assert_eq!(record.status, fluxio::store::RunStatus::RolledBack);
    assert_eq!(
        record.error.as_deref(),
        Some(
            "stage `notify` failed: mail server down; rollback of stage `ship_fragile` \
             failed: panicked: courier API changed"
        )
    );
}

#[stage(reads = [order_id], writes = [shipped])]
async fn fails_at_once(_order_id: &u64) -> Result<bool, StageError> {
    Err(StageError::msg("warehouse closed"))
}

#[tokio::test]
async fn a_durable_stage_is_rolled_back_even_if_its_entry_was_not_stored_yet() {
    // `charge` finishes, and its sibling fails before the charge's entry is stored: the
    // charge happened all the same, so it is refunded.
    let journal = Arc::new(Journal::default());
    let store = fluxio::store::InMemoryStore::new();
    let pipe = pipeline! { parallel { charge, fails_at_once } }
        .with_resource(journal.clone())
        .with_store(store.clone());
    let err = pipe
        .invoke(input! { order_id: 9 })
        .run_id("order-9")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("warehouse closed"), "{err}");
    assert_eq!(journal.entries(), ["charge 9", "refund 9"]);
    let resumed = pipe.resume("order-9").await.unwrap_err();
    assert!(matches!(resumed, Error::RolledBack { .. }), "{resumed:?}");
}

/// An in-memory store that refuses the `n`th save (the start record is the first) as if
/// another owner had taken the run's lock.
#[derive(Clone)]
struct LosesLock {
    inner: fluxio::store::InMemoryStore,
    at: usize,
    saves: Arc<std::sync::atomic::AtomicUsize>,
}

impl fluxio::store::ForwardStore for LosesLock {
    fn target(&self) -> &dyn fluxio::store::CheckpointStore {
        &self.inner
    }
    fn save(
        &self,
        run_id: &str,
        owner: &str,
        save: fluxio::store::Save,
    ) -> fluxio::store::BoxFuture<'static, fluxio::store::StoreResult<()>> {
        let n = self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n >= self.at {
            let run_id = run_id.to_string();
            return Box::pin(async move { Err(fluxio::store::StoreError::LockLost { run_id }) });
        }
        self.inner.save(run_id, owner, save)
    }
}

#[tokio::test]
async fn a_run_that_lost_its_lock_stops_without_rolling_back() {
    let journal = Arc::new(Journal::default());
    let store = LosesLock {
        inner: fluxio::store::InMemoryStore::new(),
        at: 3, // start, charge's entry, then ship's entry is refused
        saves: Arc::default(),
    };
    let pipe = pipeline! { charge, ship }
        .with_resource(journal.clone())
        .with_store(store.clone());
    let err = pipe
        .invoke(input! { order_id: 4 })
        .run_id("taken")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::LockLost { run_id } if run_id == "taken"),
        "{err:?}"
    );
    // The new owner carries the run on: nothing is undone here, and no end is written.
    assert_eq!(journal.entries(), ["charge 4", "ship"]);
    let stored = store.inner.load("taken").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running);
}

#[stage(reads = [order_id], writes = [charged])]
async fn charges_through_another_run(
    order_id: &u64,
    payments: Res<fluxio::Pipeline>,
) -> Result<bool, StageError> {
    let out = payments
        .invoke(input! { order_id: *order_id })
        .run_id("payment-busy")
        .await?;
    Ok(out[charged])
}

#[tokio::test]
async fn another_runs_error_inside_a_stage_is_the_stages_failure() {
    // The payments run is held by someone else: the stage that invokes it fails, and the
    // outer run is recorded failed — not taken for a run whose own lock is busy or lost.
    let journal = Arc::new(Journal::default());
    let payments_store = fluxio::store::InMemoryStore::new();
    use fluxio::store::CheckpointStore as _;
    assert!(
        payments_store
            .acquire("payment-busy", "someone", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let payments = pipeline! { charge }
        .with_resource(journal.clone())
        .with_store(payments_store);
    let outer_store = fluxio::store::InMemoryStore::new();
    let pipe = pipeline! { charges_through_another_run }
        .with_resource(payments)
        .with_store(outer_store.clone());
    let err = pipe
        .invoke(input! { order_id: 5 })
        .run_id("order-5")
        .await
        .unwrap_err();
    let Error::Stage { stage, source, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*stage, "charges_through_another_run");
    assert!(
        matches!(source.downcast_ref::<Error>(), Some(Error::RunIdInUse { run_id }) if run_id == "payment-busy"),
        "{err:?}"
    );
    let stored = outer_store.load("order-5").await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Failed);
}

// ---- Panics and timeouts with a fallback ----

#[stage(reads = [order_id], writes = [price], fallback = journaled_list_price)]
async fn panicking_quote(order_id: &u64, journal: Res<Arc<Journal>>) -> u64 {
    journal.note("panicking_quote");
    tokio::task::yield_now().await;
    panic!("bad quote for {order_id}")
}

#[stage(reads = [order_id], writes = [price], fallback = sync_list_price)]
fn panicking_sync_quote(order_id: &u64, journal: Res<Arc<Journal>>) -> u64 {
    journal.note("panicking_sync_quote");
    panic!("bad quote for {order_id}")
}

fn sync_list_price(order_id: &u64, _journal: Res<Arc<Journal>>) -> u64 {
    10 * order_id
}

async fn journaled_list_price(order_id: &u64, _journal: Res<Arc<Journal>>) -> u64 {
    10 * order_id
}

#[tokio::test(start_paused = true)]
async fn a_panicking_stage_gets_its_fallback_async_or_sync_and_is_not_retried() {
    let journal = Arc::new(Journal::default());
    let asynchronous = pipeline! { panicking_quote }
        .with_resource(journal.clone())
        .with_middleware(Retry::exponential(3));
    let out = asynchronous.invoke(input! { order_id: 4 }).await.unwrap();
    assert_eq!(out[price], 40);
    let synchronous = pipeline! { panicking_sync_quote }
        .with_resource(journal.clone())
        .with_middleware(Retry::exponential(3));
    let out = synchronous.invoke(input! { order_id: 5 }).await.unwrap();
    assert_eq!(out[price], 50);
    // A panic is a bug: calling again would repeat it.
    assert_eq!(
        journal.entries(),
        ["panicking_quote", "panicking_sync_quote"]
    );
}

#[stage(reads = [order_id], writes = [price], timeout = "100ms", fallback = slow_price)]
async fn quick_failure(_order_id: &u64) -> Result<u64, StageError> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    Err(StageError::msg("quotes down"))
}

#[stage(reads = [order_id], writes = [price], timeout = "100ms", fallback = slow_price)]
async fn instant_failure(_order_id: &u64) -> Result<u64, StageError> {
    Err(StageError::msg("quotes down"))
}

async fn slow_price(_order_id: &u64) -> Result<u64, StageError> {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(1)
}

#[tokio::test(start_paused = true)]
async fn a_stages_timeout_covers_its_fallback() {
    for pipe in [pipeline! { quick_failure }, pipeline! { instant_failure }] {
        let started = tokio::time::Instant::now();
        let err = pipe.invoke(input! { order_id: 1 }).await.unwrap_err();
        assert!(
            matches!(err, Error::Timeout { after, .. } if after == Duration::from_millis(100)),
            "{err:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}

#[stage(reads = [order_id], writes = [price])]
fn always_panics(order_id: &u64, journal: Res<Arc<Journal>>) -> u64 {
    journal.note("always_panics");
    panic!("bad quote for {order_id}")
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_not_retried_even_when_the_predicate_says_so() {
    let journal = Arc::new(Journal::default());
    let pipe = pipeline! { always_panics }
        .with_resource(journal.clone())
        .with_middleware(Retry::exponential(3).when(|_| true));
    let err = pipe.invoke(input! { order_id: 1 }).await.unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    assert_eq!(journal.entries(), ["always_panics"]);
}

/// Works 150 ms without yielding, then fails: against its 100 ms timeout.
#[stage(reads = [order_id], writes = [price], timeout = "100ms", fallback = quick_price)]
async fn works_then_fails(_order_id: &u64) -> Result<u64, StageError> {
    std::thread::sleep(Duration::from_millis(150));
    Err(StageError::msg("quotes down"))
}

async fn quick_price(_order_id: &u64) -> Result<u64, StageError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(1)
}

#[tokio::test]
async fn a_fallback_has_only_what_its_stage_left_of_the_timeout_after_a_failed_first_poll() {
    // Real time: the stage's work is a blocked thread. It failed on its first poll, having
    // used up its 100 ms: its fallback has none left.
    let out = pipeline! { works_then_fails }
        .invoke(input! { order_id: 1 })
        .await;
    assert!(
        matches!(
            out,
            Err(Error::Timeout {
                stage: "works_then_fails",
                ..
            })
        ),
        "{:?}",
        out.map(|c| c[price])
    );
}

#[stage(writes = [order_id])]
async fn new_order() -> u64 {
    7
}

#[stage(reads = [order_id], writes = [price], fallback = default_price)]
async fn price_order(order_id: &u64) -> u64 {
    *order_id * 10
}

async fn default_price(_order_id: &u64) -> u64 {
    1
}

/// Counts `on_fallback` calls.
#[derive(Default)]
struct Fallbacks(std::sync::atomic::AtomicU32);

impl Callback for Fallbacks {
    fn on_fallback(&self, _event: &fluxio::StageEvent<'_>, _error: &Error) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A stage whose read is missing (its writer was skipped) was never called: its fallback,
/// which takes the same parameters, does not run, and the run fails with `MissingKey`
/// saying why.
#[tokio::test]
async fn a_missing_read_is_not_answered_by_the_fallback() {
    let fallbacks = Arc::new(Fallbacks::default());
    let err = pipeline! { new_order, price_order }
        .with_middleware(SkipStage("new_order"))
        .with_callback(fallbacks.clone())
        .invoke(Ctx::new())
        .await
        .unwrap_err();
    match &err {
        Error::MissingKey {
            stage: "price_order",
            key: "order_id",
            reason,
            ..
        } => assert!(reason.contains("skipped by a middleware"), "{reason}"),
        other => panic!("expected MissingKey, got {other:?}"),
    }
    assert_eq!(
        fallbacks.0.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no fallback ran"
    );
}

#[stage(reads = [order_id], writes = [price], fallback = default_price)]
async fn looks_up_price(order_id: &u64) -> Result<u64, StageError> {
    // The stage's own code failing with a `MissingKey` naming it (a lookup of its own):
    // it was called, so its fallback answers.
    Err(StageError::new(Error::MissingKey {
        stage: "looks_up_price",
        run_id: None,
        key: "price",
        reason: format!("no price for order {order_id}"),
    }))
}

#[tokio::test]
async fn a_stage_that_ran_and_failed_like_a_missing_read_still_gets_its_fallback() {
    let out = pipeline! { looks_up_price }
        .invoke(input! { order_id: 3 })
        .await
        .unwrap();
    assert_eq!(out[price], 1);
    // A missing read is not retried either: the context would be the same.
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let err = pipeline! { new_order, price_order }
        .with_middleware(SkipStage("new_order"))
        .with_middleware(Retry::constant(3, std::time::Duration::ZERO).when(|_| true))
        .with_callback(Arc::new(CountRetries(calls.clone())))
        .invoke(Ctx::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingKey { .. }), "{err:?}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Counts `on_retry` calls.
struct CountRetries(Arc<std::sync::atomic::AtomicU32>);

impl Callback for CountRetries {
    fn on_retry(
        &self,
        _event: &fluxio::StageEvent<'_>,
        _error: &StageError,
        _delay: std::time::Duration,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[stage(reads = [order_id], writes = [reserved], rollback = release_reservation)]
async fn reserve(order_id: &u64) -> u64 {
    *order_id
}

async fn release_reservation(_order_id: &u64) -> Result<(), StageError> {
    Err(StageError::msg("warehouse unreachable"))
}

fluxio::keys! {
    pub reserved: u64;
}

/// The event stream carries recovery too: a retry, a fallback, the rollbacks (one that
/// failed) — each naming its stage, before the run's own end.
#[tokio::test(start_paused = true)]
async fn recovery_is_in_the_event_stream() {
    use fluxio::events::Event;
    let journal = Arc::new(Journal::default());
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { fetch_price, reserve, charge, ship, notify }
        .with_resource(journal.clone())
        .with_callback(sink)
        .with_middleware(Retry::constant(2, Duration::from_millis(10)));
    pipe.invoke(input! { order_id: 5 })
        .run_id("audit")
        .await
        .unwrap_err();
    let recovery: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e.name(),
                "stage.retrying"
                    | "stage.fallback"
                    | "stage.rolled_back"
                    | "stage.rollback_failed"
                    | "pipeline.failed"
            )
        })
        .map(|e| match e {
            Event::StageRetrying {
                stage,
                attempt,
                error,
                delay,
                ..
            } => format!("retrying {stage} #{attempt} after {delay:?}: {error}"),
            Event::StageFallback {
                stage,
                attempt,
                error,
                ..
            } => format!("fallback {stage} #{attempt}: {error}"),
            Event::StageRollbackFailed { stage, error, .. } => {
                format!("rollback failed {stage}: {error}")
            }
            other => format!("{} {}", other.name(), other.stage().unwrap_or("-")),
        })
        .collect();
    // `fetch_price` and `notify` run concurrently: their events interleave in any order.
    let (during, after) = recovery.split_at(3);
    let mut during = during.to_vec();
    during.sort();
    assert_eq!(
        during,
        [
            "fallback fetch_price #2: stage `fetch_price` failed after 2 attempts: pricing service down",
            "retrying fetch_price #1 after 10ms: pricing service down",
            "retrying notify #1 after 10ms: mail server down",
        ]
    );
    // The rollbacks, last finished first, then the run's end.
    assert_eq!(
        after,
        [
            "stage.rolled_back ship",
            "stage.rolled_back charge",
            "rollback failed reserve: rollback of stage `reserve` failed: warehouse unreachable",
            "pipeline.failed -",
        ]
    );
    let json = serde_json::to_string(&events.lock().unwrap()[..]).unwrap();
    assert!(
        json.contains(r#"{"type":"stage.rolled_back","run_id":"audit","stage":"ship"}"#),
        "{json}"
    );
    assert!(
        json.contains(r#""type":"stage.retrying""#) && json.contains(r#""delay_ms":10"#),
        "{json}"
    );
}
