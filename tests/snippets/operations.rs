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
