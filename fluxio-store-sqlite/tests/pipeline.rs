//! A durable pipeline on `SqliteStore`, through `fluxio_core` directly (stages and keys are
//! written by hand, as the `fluxio` macros would generate them): a run fails, the store is
//! closed, and a new store on the same file resumes it without running finished stages
//! again.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::TempDb;
use fluxio_core::access::Access;
use fluxio_core::plan::NodeSpec;
use fluxio_core::store::{CheckpointStore, RunStatus};
use fluxio_core::{
    Ctx, Key, Pipeline, Stage, StageEnv, StageError, StageKind, StageMeta, StageOutput, Writes,
};
use fluxio_store_sqlite::SqliteStore;

#[derive(Clone, Copy)]
struct SeedKey;
impl Key for SeedKey {
    type Value = u64;
    const NAME: &'static str = "seed";
}
fn seed() -> SeedKey {
    SeedKey
}

#[derive(Clone, Copy)]
struct AKey;
impl Key for AKey {
    type Value = u64;
    const NAME: &'static str = "a";
}
fn a() -> AKey {
    AKey
}

#[derive(Clone, Copy)]
struct BKey;
impl Key for BKey {
    type Value = u64;
    const NAME: &'static str = "b";
}
fn b() -> BKey {
    BKey
}

#[derive(Clone, Copy)]
struct CKey;
impl Key for CKey {
    type Value = u64;
    const NAME: &'static str = "c";
}
fn c() -> CKey {
    CKey
}

static RUNS: [AtomicU32; 3] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];
static FAIL_LAST: AtomicBool = AtomicBool::new(false);

/// A stage `IN -> OUT` computing `f(input)`; stage `I` counts its runs in `RUNS[I]`.
struct Step<const I: usize, In, Out> {
    f: fn(u64) -> u64,
    _keys: std::marker::PhantomData<(In, Out)>,
}

impl<const I: usize, In, Out> Step<I, In, Out> {
    fn new(f: fn(u64) -> u64) -> Self {
        Step {
            f,
            _keys: std::marker::PhantomData,
        }
    }
}

const NAMES: [&str; 3] = ["add_one", "times_ten", "plus_five"];

impl<const I: usize, In, Out> Stage for Step<I, In, Out>
where
    In: Key<Value = u64>,
    Out: Key<Value = u64>,
{
    const META: StageMeta = StageMeta {
        name: NAMES[I],
        id: std::any::TypeId::of::<Self>,
        kind: StageKind::Async,
        access: Access::new(&[In::DESC], &[Out::DESC]),
        timeout: None,
        resources: &[],
    };

    fn call(
        &self,
        ctx: &Ctx,
        _env: &StageEnv,
    ) -> impl Future<Output = Result<StageOutput, StageError>> + Send + 'static + use<I, In, Out>
    {
        let input = ctx.get_typed::<In>().copied();
        let f = self.f;
        async move {
            RUNS[I].fetch_add(1, Ordering::SeqCst);
            if I == 2 && FAIL_LAST.load(Ordering::SeqCst) {
                return Err(StageError::msg("plus_five is told to fail"));
            }
            let input = input.ok_or_else(|| StageError::msg("missing input"))?;
            let mut w = Writes::none();
            w.push::<Out>(f(input));
            Ok(StageOutput::Writes(w))
        }
    }
}

fn pipeline(store: &SqliteStore) -> Pipeline {
    Pipeline::from_nodes(vec![
        NodeSpec::stage(Step::<0, SeedKey, AKey>::new(|x| x + 1), 0, None),
        NodeSpec::stage(Step::<1, AKey, BKey>::new(|x| x * 10), 0, None),
        NodeSpec::stage(Step::<2, BKey, CKey>::new(|x| x + 5), 0, None),
    ])
    .with_store(store.clone())
}

fn runs() -> [u32; 3] {
    RUNS.each_ref().map(|r| r.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_resumes_from_the_file_in_a_new_store() {
    let db = TempDb::new("pipeline");
    {
        let store = SqliteStore::open(db.path()).await.unwrap();
        let pipe = pipeline(&store);
        FAIL_LAST.store(true, Ordering::SeqCst);
        let err = pipe
            .invoke(Ctx::new().with(seed, 1))
            .run_id("job")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("told to fail"), "{err}");
        let stored = store.load("job").await.unwrap().expect("a checkpoint");
        assert_eq!(stored.status, RunStatus::Failed);
        assert_eq!(stored.entries.len(), 2);
        assert_eq!(runs(), [1, 1, 1]);
    }

    // As a new process would: a new store on the same file.
    let store = SqliteStore::open(db.path()).await.unwrap();
    let pipe = pipeline(&store);
    FAIL_LAST.store(false, Ordering::SeqCst);
    let out = pipe.resume("job").await.unwrap();
    assert_eq!(out.get(c), Some(&25));
    assert_eq!(out.get(a), Some(&2));
    assert_eq!(out.get(b), Some(&20));
    assert_eq!(runs(), [1, 1, 2], "finished stages do not run again");

    let stored = store.load("job").await.unwrap().expect("a checkpoint");
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.entries.len(), 3);
    // The run gave its lock back.
    assert!(
        store
            .acquire("job", "someone", Duration::from_secs(1))
            .await
            .unwrap()
    );

    // Resuming a completed run returns its context without running anything.
    store.release("job", "someone").await.unwrap();
    let again = pipe.resume("job").await.unwrap();
    assert_eq!(again.get(c), Some(&25));
    assert_eq!(runs(), [1, 1, 2]);
    assert!(store.stats().commits > 0);
}
