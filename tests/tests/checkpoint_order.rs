//! A store may commit entries saved at the same time in another order than the run applied
//! them. Resume, `inspect` and rollbacks follow the order the run applied them in (each
//! entry's `seq`), not the store's — and checkpoints written before entries had a `seq`
//! (format 1) still resume.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxio::prelude::*;
use fluxio::store::format::{decode_entry, encode_header};
use fluxio::store::{BoxFuture, CheckpointStore, ForwardStore, RunStatus, Save, StoreResult};
use tokio::sync::Notify;

fluxio::keys! {
    pub order: u64;
    #[merge]
    pub findings: Vec<String>;
    pub verdict: String;
}

/// Finishes at once: the run applies its addition first.
#[stage(reads = [order], writes = [findings])]
async fn quick(order: &u64) -> Vec<String> {
    vec![format!("quick{order}")]
}

/// Finishes a moment after `quick`.
#[stage(reads = [order], writes = [findings])]
async fn slow(order: &u64) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    vec![format!("slow{order}")]
}

/// Fails while `fails` is above zero.
#[stage(reads = [findings], writes = [verdict])]
async fn verdict_of(findings: &[String], fails: Res<AtomicU32>) -> Result<String, StageError> {
    if fails
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Err(StageError::msg("not yet"));
    }
    Ok(findings.join(","))
}

fn pipe(fails: u32) -> Pipeline {
    pipeline! { parallel { quick, slow }, verdict_of }.with_resource(AtomicU32::new(fails))
}

/// An in-memory store whose saves of `quick`'s entries land only after the next save of
/// `slow`'s entry: the commit order of two stages that finished close together is the
/// reverse of the order they finished in (as with a store whose writes race).
#[derive(Clone)]
struct Reordering {
    inner: InMemoryStore,
    slow_saved: Arc<Notify>,
    /// Which stages' entries were committed, in commit order.
    committed: Arc<Mutex<Vec<String>>>,
}

impl Reordering {
    fn new() -> Self {
        Reordering {
            inner: InMemoryStore::new(),
            slow_saved: Arc::new(Notify::new()),
            committed: Arc::default(),
        }
    }
}

impl ForwardStore for Reordering {
    fn target(&self) -> &dyn CheckpointStore {
        &self.inner
    }
    fn save(&self, run_id: &str, owner: &str, save: Save) -> BoxFuture<'static, StoreResult<()>> {
        let stage = match &save {
            Save::Entry(bytes) => decode_entry(bytes).ok().map(|e| e.stage),
            _ => None,
        };
        let (inner, run_id, owner) = (self.inner.clone(), run_id.to_string(), owner.to_string());
        let (slow_saved, committed) = (self.slow_saved.clone(), self.committed.clone());
        Box::pin(async move {
            if stage.as_deref() == Some("quick") {
                slow_saved.notified().await;
            }
            inner.save(&run_id, &owner, save).await?;
            if let Some(stage) = stage {
                if stage == "slow" {
                    slow_saved.notify_one();
                }
                committed.lock().unwrap().push(stage);
            }
            Ok(())
        })
    }
}

/// The live run merged `quick`'s addition first; the store committed `slow`'s entry first.
/// The resumed run, and `inspect`, merge as the live run did.
#[tokio::test(start_paused = true)]
async fn merge_additions_are_restored_in_the_order_the_run_applied_them() {
    let store = Reordering::new();
    // A completed run: what `invoke` returned is what `inspect` and a resume give back.
    let out = pipe(0)
        .with_store(store.clone())
        .invoke(input! { order: 1 })
        .run_id("done")
        .await
        .unwrap();
    assert_eq!(out[findings], ["quick1", "slow1"], "the live run's order");
    assert_eq!(
        store.committed.lock().unwrap()[..2],
        ["slow", "quick"],
        "the store must commit in the other order for this test to mean anything"
    );
    let record = pipe(0)
        .with_store(store.clone())
        .inspect("done")
        .await
        .unwrap();
    assert_eq!(record.ctx[findings], out[findings]);
    let stages: Vec<&str> = record.finished.iter().map(|f| f.stage.as_str()).collect();
    assert_eq!(
        stages,
        ["quick", "slow", "verdict_of"],
        "in the order they finished"
    );
    let again = pipe(0)
        .with_store(store.clone())
        .resume("done")
        .await
        .unwrap();
    assert_eq!(again[findings], out[findings]);

    // A failed run, resumed: the reader sees the additions in the live order.
    store.committed.lock().unwrap().clear();
    let err = pipe(1)
        .with_store(store.clone())
        .invoke(input! { order: 2 })
        .run_id("failed")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not yet"), "{err}");
    assert_eq!(*store.committed.lock().unwrap(), ["slow", "quick"]);
    let resumed = pipe(0)
        .with_store(store.clone())
        .resume("failed")
        .await
        .unwrap();
    assert_eq!(resumed[findings], ["quick2", "slow2"]);
    assert_eq!(resumed[verdict], "quick2,slow2");
}

/// Rollbacks run in the reverse of the order their stages finished in: also those a resume
/// runs again for a run stopped while rolling back, whose store committed the stages'
/// entries in the other order.
mod rollbacks {
    use std::sync::atomic::AtomicBool;

    use super::*;

    fluxio::keys! {
        pub a: u64;
        pub b: u64;
        pub c: u64;
    }

    /// The rollbacks that ran, in order; while `hang` is set, `slow`'s never ends.
    #[derive(Default)]
    pub struct Undo {
        pub done: Mutex<Vec<&'static str>>,
        pub hang: AtomicBool,
    }

    #[stage(reads = [order], writes = [a], rollback = undo_quick)]
    async fn quick(order: &u64, undo: Res<Undo>) -> u64 {
        let _ = undo;
        *order
    }
    async fn undo_quick(_order: &u64, undo: Res<Undo>) -> Result<(), StageError> {
        undo.done.lock().unwrap().push("quick");
        Ok(())
    }

    #[stage(reads = [order], writes = [b], rollback = undo_slow)]
    async fn slow(order: &u64, undo: Res<Undo>) -> u64 {
        let _ = undo;
        tokio::time::sleep(Duration::from_millis(5)).await;
        *order
    }
    async fn undo_slow(_order: &u64, undo: Res<Undo>) -> Result<(), StageError> {
        if undo.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        undo.done.lock().unwrap().push("slow");
        Ok(())
    }

    #[stage(reads = [a, b], writes = [c])]
    async fn last(a: &u64, b: &u64) -> Result<u64, StageError> {
        Err(StageError::msg(format!("last fails on {}", a + b)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_rollback_runs_in_the_reverse_of_the_order_stages_finished() {
        let store = Reordering::new();
        let undo = Arc::new(Undo::default());
        let pipe = || {
            pipeline! { parallel { quick, slow }, last }
                .with_shared_resource(undo.clone())
                .with_store(store.clone())
        };
        // `last` fails; the first rollback (`slow`'s, as `slow` finished last) hangs, and
        // the run is given up (its process stopped, say) while rolling back.
        undo.hang.store(true, Ordering::SeqCst);
        let first = pipe();
        let run = first.invoke(input! { order: 1 }).run_id("rb");
        let stopped = tokio::time::timeout(Duration::from_secs(1), run).await;
        assert!(stopped.is_err(), "the run hangs in `slow`'s rollback");
        assert_eq!(*store.committed.lock().unwrap(), ["slow", "quick"]);
        assert!(undo.done.lock().unwrap().is_empty());
        // Let the dropped run's lock go.
        tokio::time::sleep(Duration::from_secs(60)).await;
        undo.hang.store(false, Ordering::SeqCst);
        let err = pipe().resume("rb").await.unwrap_err();
        assert!(matches!(err, fluxio::Error::RolledBack { .. }), "{err:?}");
        assert_eq!(*undo.done.lock().unwrap(), ["slow", "quick"]);
    }
}

/// Bincode's encoding of a string (length as a one-byte varint, then the bytes).
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

/// An entry as format 1 wrote it: version byte 1, then node, stage, route, skipped and
/// writes — no `seq`, no `added`.
fn format_1_entry(node: u8, stage: &str, writes: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![1, node];
    string(&mut out, stage);
    out.push(0); // no route
    out.push(0); // not skipped
    out.push(u8::try_from(writes.len()).unwrap());
    for (key, bytes) in writes {
        string(&mut out, key);
        out.push(u8::try_from(bytes.len()).unwrap());
        out.extend_from_slice(bytes);
    }
    out
}

/// The encoding of a `Vec<String>` value.
fn strings(items: &[&str]) -> Vec<u8> {
    let mut out = vec![u8::try_from(items.len()).unwrap()];
    for s in items {
        string(&mut out, s);
    }
    out
}

/// A checkpoint written by a build of format 1 resumes: its entries are applied in the
/// store's order, and its additions to a `#[merge]` key merge as this pipeline merges them.
#[tokio::test]
async fn a_format_1_checkpoint_still_resumes() {
    let store = InMemoryStore::new();
    let p = pipe(0).with_store(store.clone());
    assert!(
        store
            .acquire("old", "t", Duration::from_secs(5))
            .await
            .unwrap()
    );
    // The input, in format 1 (a header's form did not change): `order` = 3.
    let mut header = encode_header(&fluxio::store::format::Header {
        values: vec![("order".into(), vec![3])],
    })
    .unwrap();
    header[0] = 1;
    store
        .save("old", "t", Save::start(p.version(), header))
        .await
        .unwrap();
    for entry in [
        format_1_entry(1, "slow", &[("findings", strings(&["slow3"]))]),
        format_1_entry(0, "quick", &[("findings", strings(&["quick3"]))]),
    ] {
        store.save("old", "t", Save::Entry(entry)).await.unwrap();
    }
    store
        .save("old", "t", Save::finish(RunStatus::Failed, Some("crashed")))
        .await
        .unwrap();
    store.release("old", "t").await.unwrap();
    let out = p.resume("old").await.unwrap();
    // Format 1 did not record the order the run applied them in: the store's order.
    assert_eq!(out[findings], ["slow3", "quick3"]);
    assert_eq!(out[verdict], "slow3,quick3");
}
