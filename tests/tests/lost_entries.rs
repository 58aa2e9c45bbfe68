//! A checkpoint that lost a stage's entry (a row deleted by hand, a restore from a partial
//! backup) is refused as corrupt by `resume`, `inspect` and `diff` alike: resuming it would
//! run the lost stage again after the stages that used its output — a second charge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::format::decode_entry;
use fluxio::store::{CheckpointStore, RunStatus, Save};

fluxio::keys! {
    pub order: u64;
    pub charged: u64;
    pub packed: u64;
    pub shipped: u64;
    pub express: u64;
    pub ground: u64;
}

/// How many times `charge` ran.
#[derive(Default)]
struct Charges(AtomicU32);

#[stage(reads = [order], writes = [charged])]
async fn charge(order: &u64, charges: Res<Charges>) -> u64 {
    charges.0.fetch_add(1, Ordering::SeqCst);
    *order
}

#[stage(reads = [charged], writes = [packed])]
async fn pack(charged: &u64) -> u64 {
    charged + 1
}

/// Fails while the counter is above zero.
#[stage(reads = [packed], writes = [shipped])]
async fn ship(packed: &u64, fails: Res<AtomicU32>) -> Result<u64, StageError> {
    if fails
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err(StageError::msg("carrier down"));
    }
    Ok(packed + 1)
}

fn pipe(store: &InMemoryStore, charges: &Arc<Charges>, fails: u32) -> Pipeline {
    pipeline! { charge, pack, ship }
        .with_shared_resource(charges.clone())
        .with_resource(AtomicU32::new(fails))
        .with_store(store.clone())
}

/// Rewrites run `id` without the entry of stage `lost`, keeping its status.
async fn lose_entry(store: &InMemoryStore, id: &str, lost: &str) {
    let stored = store.load(id).await.unwrap().unwrap();
    let entries: Vec<Vec<u8>> = stored
        .entries
        .iter()
        .filter(|bytes| decode_entry(bytes).unwrap().stage != lost)
        .cloned()
        .collect();
    assert_eq!(
        entries.len() + 1,
        stored.entries.len(),
        "`{lost}` had one entry"
    );
    assert!(
        store
            .acquire(id, "tamper", Duration::from_secs(5))
            .await
            .unwrap()
    );
    let rewrite = Save::Rewrite {
        version: stored.version,
        header: stored.header,
        entries,
    };
    store.save(id, "tamper", rewrite).await.unwrap();
    let finish = Save::finish(stored.status, stored.error.as_deref());
    store.save(id, "tamper", finish).await.unwrap();
    store.release(id, "tamper").await.unwrap();
}

fn assert_lost(result: Result<impl std::fmt::Debug, Error>, id: &str, text: &str) {
    match result {
        Err(Error::CorruptCheckpoint { run_id, reason }) => {
            assert_eq!(run_id, id);
            assert!(reason.contains(text), "{reason}");
        }
        other => panic!("expected a corrupt checkpoint, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lost_entry_of_a_failed_run_is_corrupt_not_run_again() {
    let (store, charges) = (InMemoryStore::new(), Arc::new(Charges::default()));
    let err = pipe(&store, &charges, 1)
        .invoke(input! { order: 7 })
        .run_id("gap")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("carrier down"), "{err}");
    pipe(&store, &charges, 0)
        .invoke(input! { order: 8 })
        .run_id("good")
        .await
        .unwrap();
    lose_entry(&store, "gap", "charge").await;

    let p = pipe(&store, &charges, 0);
    let lost = "stage `pack` finished, but stage `charge`, which it waits for, has no entry";
    assert_lost(p.resume("gap").await, "gap", lost);
    assert_eq!(charges.0.load(Ordering::SeqCst), 2, "`charge` ran again");
    assert_lost(p.inspect("gap").await, "gap", lost);
    assert_lost(p.diff("good", "gap").await, "gap", lost);
    // The run is left as it was, for whoever repairs it.
    let listed = store.list_runs(&[RunStatus::Failed]).await.unwrap();
    assert!(listed.iter().any(|r| r.run_id == "gap"));
}

#[tokio::test]
async fn a_completed_run_missing_its_last_entry_is_corrupt() {
    let (store, charges) = (InMemoryStore::new(), Arc::new(Charges::default()));
    pipe(&store, &charges, 0)
        .invoke(input! { order: 7 })
        .run_id("done")
        .await
        .unwrap();
    lose_entry(&store, "done", "ship").await;
    let p = pipe(&store, &charges, 0);
    let lost = "the run is marked completed, but stage `ship` has no entry";
    // Not a context without `shipped`, which would panic where the caller reads it.
    assert_lost(p.resume("done").await, "done", lost);
    assert_lost(p.inspect("done").await, "done", lost);
}

#[stage(reads = [order])]
async fn pick(order: &u64) -> Route {
    Route::to(if order % 2 == 0 { "express" } else { "ground" })
}

#[stage(reads = [order], writes = [express])]
async fn by_air(order: &u64) -> u64 {
    *order
}

#[stage(reads = [order], writes = [ground])]
async fn by_road(order: &u64) -> u64 {
    *order
}

#[stage(reads = [order], writes = [shipped])]
async fn confirm(order: &u64) -> u64 {
    *order
}

/// The branch a route did not take has no entries, and that is not a loss.
#[tokio::test]
async fn branches_not_taken_are_not_lost_entries() {
    let store = InMemoryStore::new();
    let p = pipeline! {
        pick => { "express" => [by_air], "ground" => [by_road] },
        confirm,
    }
    .with_store(store.clone());
    let out = p
        .invoke(input! { order: 4 })
        .run_id("routed")
        .await
        .unwrap();
    assert_eq!(out[express], 4);
    let record = p.inspect("routed").await.unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(p.resume("routed").await.unwrap()[shipped], 4);
}
