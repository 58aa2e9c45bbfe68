//! The snippets of docs/operations.md, verbatim between their markers
//! (tests/tests/doc_snippets.rs checks it), with what makes them compile and run.

use std::collections::BTreeMap;
use std::sync::Mutex;

use fluxio::prelude::*;

// A one-stage pipeline that fails for order 0.
use crate::common::labels::*;

/// What became of a job.
#[derive(Debug, PartialEq)]
enum Outcome {
    Unfinished,
    Done(String),
    Failed(String),
}

/// The service's jobs table: each job's run id, its input and its outcome.
#[derive(Default)]
struct Jobs(Mutex<BTreeMap<String, (u64, Outcome)>>);

impl Jobs {
    fn add(&self, id: &str, order: u64) {
        self.0
            .lock()
            .unwrap()
            .insert(id.into(), (order, Outcome::Unfinished));
    }

    fn outcome(&self, id: &str) -> Option<Outcome> {
        self.0
            .lock()
            .unwrap()
            .remove(id)
            .map(|(_, outcome)| outcome)
    }

    async fn unfinished(&self) -> anyhow::Result<Vec<String>> {
        let jobs = self.0.lock().unwrap();
        Ok(jobs
            .iter()
            .filter(|(_, job)| job.1 == Outcome::Unfinished)
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn input(&self, id: &str) -> anyhow::Result<Ctx> {
        let order = self.0.lock().unwrap()[id].0;
        Ok(input! { order_id: order })
    }

    async fn done(&self, id: &str, ctx: &Ctx) -> anyhow::Result<()> {
        self.set(id, Outcome::Done(ctx[label].clone()))
    }

    async fn failed(&self, id: &str, error: &fluxio::Error) -> anyhow::Result<()> {
        self.set(id, Outcome::Failed(error.to_string()))
    }

    fn set(&self, id: &str, outcome: Outcome) -> anyhow::Result<()> {
        let mut jobs = self.0.lock().unwrap();
        let job = jobs
            .get_mut(id)
            .ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
        job.1 = outcome;
        Ok(())
    }
}

async fn pick_up_interrupted_runs(pipe: &Pipeline, jobs: &Jobs) -> anyhow::Result<()> {
    // snippet: operations.md 1
    for id in jobs.unfinished().await? {
        let outcome = match pipe.resume(&id).await {
            // It never started: start it.
            Err(fluxio::Error::NoCheckpoint { .. }) => {
                pipe.invoke(jobs.input(&id).await?).run_id(&id).await
            }
            other => other,
        };
        match outcome {
            Ok(ctx) => jobs.done(&id, &ctx).await?,          // also for a run that had completed
            Err(fluxio::Error::RunIdInUse { .. }) => {}      // another instance has it
            Err(e) => jobs.failed(&id, &e).await?,           // one failure does not stop the loop
        }
    }
    // end snippet
    Ok(())
}

#[tokio::test]
async fn interrupted_runs_are_picked_up() {
    let pipe = pipeline! { make_label }.with_store(InMemoryStore::new());
    let jobs = Jobs::default();
    // A job whose run completed, one whose run failed, and one that never started.
    jobs.add("job-1", 1);
    pipe.invoke(input! { order_id: 1 })
        .run_id("job-1")
        .await
        .unwrap();
    jobs.add("job-2", 0);
    pipe.invoke(input! { order_id: 0 })
        .run_id("job-2")
        .await
        .unwrap_err();
    jobs.add("job-3", 3);

    pick_up_interrupted_runs(&pipe, &jobs).await.unwrap();

    assert_eq!(jobs.outcome("job-1"), Some(Outcome::Done("order 1".into())));
    let Some(Outcome::Failed(error)) = jobs.outcome("job-2") else {
        panic!("job-2 did not fail")
    };
    assert!(error.contains("no such order"), "{error}");
    assert_eq!(jobs.outcome("job-3"), Some(Outcome::Done("order 3".into())));
}

/// Holds [`held_label`] and [`held_note`] until it has permits (each call uses one up).
struct Gate(tokio::sync::Semaphore);

#[stage(reads = [order_id], writes = [label])]
async fn held_label(order_id: &u64, gate: Res<Gate>) -> Result<String, StageError> {
    gate.0.acquire().await?.forget();
    Ok(format!("order {order_id}"))
}

fluxio::keys! {
    /// A note on the order, written by another pipeline.
    pub order_note: String;
}

#[stage(reads = [label], writes = [order_note])]
async fn held_note(label: &String, gate: Res<Gate>) -> Result<String, StageError> {
    gate.0.acquire().await?.forget();
    Ok(format!("{label}!"))
}

// snippet: operations.md 2
use fluxio::store::{CheckpointStore, RunListing, RunStatus};

// Store calls fail with `StoreError`, pipeline calls with `fluxio::Error`: a boxed error
// (or `anyhow::Error`) takes both.
async fn recover_abandoned_runs(
    pipe: &Pipeline,
    store: &dyn CheckpointStore,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listed = store.list_runs(&[RunStatus::Running, RunStatus::RollingBack]).await?;
    for run in listed.into_iter().filter(RunListing::is_abandoned) {
        if !run.run_id.starts_with("order-") || run.version != pipe.version() {
            // Another pipeline's run (by the id prefix this service gives its runs), or one
            // another build left: leave it to its own sweep.
            continue;
        }
        match pipe.resume(&run.run_id).await {
            Ok(_) => {}                                      // carried on to its end
            Err(fluxio::Error::RolledBack { .. }) => {}      // it was rolling back: finished that
            Err(fluxio::Error::RunIdInUse { .. }) => {}      // another instance took it first
            Err(e) => tracing::warn!(run_id = %run.run_id, error = %e, "could not recover"),
        }
    }
    Ok(())
}
// end snippet

#[tokio::test(start_paused = true)]
async fn abandoned_runs_are_found_and_recovered() {
    use std::future::IntoFuture;
    use std::time::Duration;

    use fluxio::store::{CheckpointStore, RunStatus};

    let store = InMemoryStore::new();
    let gate = std::sync::Arc::new(Gate(tokio::sync::Semaphore::new(0)));
    let pipe = pipeline! { held_label }
        .with_shared_resource(gate.clone())
        .with_store(store.clone());
    let other = pipeline! { make_label, held_note }
        .with_shared_resource(gate.clone())
        .with_store(store.clone());
    // A run that completed; then, with the gate shut, a run of this pipeline and one of
    // another whose invokes are dropped while a stage waits (their locks are given back).
    gate.0.add_permits(1);
    pipe.invoke(input! { order_id: 1 }).run_id("order-done").await.unwrap();
    for (p, id) in [(&pipe, "order-dropped"), (&other, "order-other"), (&pipe, "job-7")] {
        let run = p.invoke(input! { order_id: 2 }).run_id(id).into_future();
        assert!(tokio::time::timeout(Duration::from_secs(1), run).await.is_err());
    }
    // The background releases of the dropped runs' locks.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }

    gate.0.add_permits(10);
    recover_abandoned_runs(&pipe, &store).await.unwrap();

    let status = async |id: &str| store.load(id).await.unwrap().unwrap().status;
    assert_eq!(status("order-dropped").await, RunStatus::Completed);
    assert_eq!(status("order-done").await, RunStatus::Completed);
    // Another pipeline's runs are left for its own sweep: one of another version, and one
    // without this service's id prefix.
    assert_eq!(status("order-other").await, RunStatus::Running);
    assert_eq!(status("job-7").await, RunStatus::Running);
}
