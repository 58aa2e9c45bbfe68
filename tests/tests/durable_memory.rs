//! Durable execution semantics, on the in-memory store (the same runtime code drives the
//! SQLite and Redis stores; their own tests cover the stores, and `crash_resume.rs` covers
//! real processes killed mid-run).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::prelude::*;
use fluxio::store::{BoxFuture, CheckpointStore, ForwardStore, RunStatus, Save, StoreResult};
use fluxio::{Error, RunInfo};
use fluxio_tests::LifecycleLog;

fluxio::keys! {
    pub seed: u64;
    pub a_out: u64;
    pub b_out: u64;
    pub c_out: u64;
    pub extra: String;
    pub label: String;
    pub picked: String;
    pub key_seen: String;
}

/// Counts stage executions and decides which stages fail.
#[derive(Default)]
struct Probe {
    runs: Mutex<HashMap<&'static str, u32>>,
    fail: Mutex<Vec<&'static str>>,
    gate: Option<tokio::sync::Semaphore>,
    started: tokio::sync::Notify,
}

impl Probe {
    fn hit(&self, stage: &'static str) -> Result<(), StageError> {
        *self.runs.lock().unwrap().entry(stage).or_default() += 1;
        if self.fail.lock().unwrap().contains(&stage) {
            return Err(StageError::msg(format!("{stage} is told to fail")));
        }
        Ok(())
    }
    fn count(&self, stage: &str) -> u32 {
        self.runs.lock().unwrap().get(stage).copied().unwrap_or(0)
    }
    fn set_failing(&self, stages: &[&'static str]) {
        *self.fail.lock().unwrap() = stages.to_vec();
    }
}

#[stage(reads = [seed], writes = [a_out])]
async fn sa(seed: &u64, probe: Res<Arc<Probe>>) -> Result<u64, StageError> {
    probe.hit("sa")?;
    Ok(seed + 1)
}

#[stage(reads = [a_out], writes = [b_out])]
async fn sb(a_out: &u64, probe: Res<Arc<Probe>>) -> Result<u64, StageError> {
    probe.hit("sb")?;
    Ok(a_out * 10)
}

#[stage(reads = [b_out], writes = [c_out])]
async fn sc(b_out: &u64, probe: Res<Arc<Probe>>) -> Result<u64, StageError> {
    probe.hit("sc")?;
    Ok(b_out + 5)
}

fn chain(probe: &Arc<Probe>, store: &InMemoryStore) -> Pipeline {
    durable(pipeline! { sa, sb, sc }, probe, store)
}

/// `pipe` with `probe` and checkpointing into `store`.
fn durable(pipe: Pipeline, probe: &Arc<Probe>, store: &InMemoryStore) -> Pipeline {
    pipe.with_resource(probe.clone()).with_store(store.clone())
}

/// Runs [`chain`] as `run_id` on `seed` with `sc` failing: `sa` and `sb` are stored done.
async fn stopped_at_sc(probe: &Arc<Probe>, store: &InMemoryStore, run_id: &str, seed: u64) {
    probe.set_failing(&["sc"]);
    chain(probe, store)
        .invoke(input! { seed: seed })
        .run_id(run_id)
        .await
        .unwrap_err();
    probe.set_failing(&[]);
}

async fn stored(store: &InMemoryStore, run_id: &str) -> fluxio::store::StoredRun {
    store.load(run_id).await.unwrap().expect("a checkpoint")
}

#[tokio::test]
async fn a_failing_stage_leaves_a_failed_checkpoint_and_resume_skips_finished_stages() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    probe.set_failing(&["sb"]);
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("r1")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Stage { stage: "sb", .. }), "{err:?}");
    let cp = stored(&store, "r1").await;
    assert_eq!(cp.status, RunStatus::Failed);
    assert!(
        cp.error.as_deref().unwrap().contains("sb is told to fail"),
        "{:?}",
        cp.error
    );
    assert_eq!(cp.entries.len(), 1, "only `sa` finished");

    probe.set_failing(&[]);
    let out = pipe.resume("r1").await.unwrap();
    assert_eq!(out[c_out], (1 + 1) * 10 + 5);
    assert_eq!(
        (probe.count("sa"), probe.count("sb"), probe.count("sc")),
        (1, 2, 1)
    );
    assert_eq!(stored(&store, "r1").await.status, RunStatus::Completed);
}

#[tokio::test]
async fn runs_are_fresh_by_default() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    pipe.invoke(input! { seed: 1 }).run_id("r").await.unwrap();
    let out = pipe.invoke(input! { seed: 2 }).run_id("r").await.unwrap();
    assert_eq!(out[c_out], 35);
    assert_eq!(
        probe.count("sa"),
        2,
        "the second invoke ran everything again"
    );
    assert_eq!(
        stored(&store, "r").await.entries.len(),
        3,
        "the old checkpoint was replaced"
    );
}

#[tokio::test]
async fn a_lease_of_any_length_is_taken() {
    // `now + lease` overflowed the clock and panicked in the in-memory store.
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store).with_lease(Duration::MAX);
    let out = pipe
        .invoke(input! { seed: 1 })
        .run_id("long")
        .await
        .unwrap();
    assert_eq!(out[c_out], 25);
    assert!(store.acquire("other", "me", Duration::MAX).await.unwrap());
    assert!(store.renew("other", "me", Duration::MAX).await.unwrap());
    assert!(!store.acquire("other", "you", Duration::MAX).await.unwrap());
}

#[tokio::test]
async fn resuming_a_completed_run_returns_its_context_without_running_anything() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    let first = pipe
        .invoke(input! { seed: 3 })
        .run_id("done")
        .await
        .unwrap();
    let again = pipe.resume("done").await.unwrap();
    assert_eq!(again[c_out], first[c_out]);
    assert_eq!(again.keys(), first.keys());
    assert_eq!(probe.count("sa") + probe.count("sb") + probe.count("sc"), 3);
}

#[tokio::test]
async fn resume_without_a_checkpoint_or_without_a_store_is_an_error() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let err = chain(&probe, &store).resume("never").await.unwrap_err();
    assert!(
        matches!(&err, Error::NoCheckpoint { run_id } if run_id == "never"),
        "{err:?}"
    );
    let err = pipeline! { sa }.resume("x").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoStore {
                operation: "resume"
            }
        ),
        "{err:?}"
    );
}

#[stage(reads = [c_out], writes = [extra])]
async fn sd(c_out: &u64) -> String {
    format!("#{c_out}")
}

#[tokio::test]
async fn another_pipeline_version_is_refused_unless_allowed() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    stopped_at_sc(&probe, &store, "v", 1).await;

    // The same stages plus one at the end: a new version, compatible with the old run.
    let v2 = durable(pipeline! { sa, sb, sc, sd }, &probe, &store);
    let err = v2.resume("v").await.unwrap_err();
    match &err {
        Error::CheckpointVersion {
            run_id,
            stored,
            current,
        } => {
            assert_eq!(run_id, "v");
            assert_eq!(current, v2.version());
            assert_ne!(stored, current);
        }
        other => panic!("expected CheckpointVersion, got {other:?}"),
    }
    assert!(err.to_string().contains("allow_version_change"), "{err}");
    let out = v2
        .invoke(Ctx::new())
        .run_id("v")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(out[extra], "#25");
    assert_eq!(
        (probe.count("sa"), probe.count("sb"), probe.count("sc")),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn a_resume_under_a_new_version_makes_the_checkpoint_that_versions() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    probe.set_failing(&["sc"]);
    let v1 = chain(&probe, &store);
    v1.invoke(input! { seed: 1 }).run_id("m").await.unwrap_err();
    probe.set_failing(&[]);
    let v2 = durable(pipeline! { sa, sb, sc, sd }, &probe, &store);
    v2.invoke(Ctx::new())
        .run_id("m")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    let cp = stored(&store, "m").await;
    assert_eq!(
        cp.version,
        v2.version(),
        "the checkpoint is the new version's"
    );
    assert_eq!((cp.status, cp.entries.len()), (RunStatus::Completed, 4));

    // The new version resumes its own run without an override: it is completed.
    let out = v2.resume("m").await.unwrap();
    assert_eq!(out[extra], "#25");
    // An instance still on the old version is told the version changed — not that the
    // checkpoint is corrupt.
    let err = v1.resume("m").await.unwrap_err();
    assert!(
        matches!(&err, Error::CheckpointVersion { stored, current, .. }
            if stored == v2.version() && current == v1.version()),
        "{err:?}"
    );
    assert_eq!(probe.count("sc"), 2, "nothing ran again after the resume");
}

#[stage(reads = [seed], writes = [label])]
async fn s_label(seed: &u64) -> String {
    format!("seed {seed}")
}

#[tokio::test]
async fn a_new_version_finds_finished_stages_by_name_wherever_they_moved() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    stopped_at_sc(&probe, &store, "moved", 1).await;
    // A stage added in front moves every node index; `sa` and `sb` are still done.
    let v2 = durable(pipeline! { s_label, sa, sb, sc }, &probe, &store);
    let out = v2
        .invoke(Ctx::new())
        .run_id("moved")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!((out[label].as_str(), out[c_out]), ("seed 1", 25));
    assert_eq!(
        (probe.count("sa"), probe.count("sb"), probe.count("sc")),
        (1, 1, 2)
    );

    // A version without `sb` keeps the value `sb` wrote (`sc` reads it as an input now).
    stopped_at_sc(&probe, &store, "gone", 2).await;
    let v3 = durable(pipeline! { sa, sc }, &probe, &store);
    let out = v3
        .invoke(input! { b_out: 0 })
        .run_id("gone")
        .resume()
        .allow_version_change()
        .await;
    assert!(
        matches!(&out, Err(Error::MergeConflict { key: "b_out", stages, .. })
            if stages[0] == Error::CHECKPOINT && stages[1] == Error::RESUME_INPUT),
        "the value `sb` wrote is still in the run: {out:?}"
    );
    let out = v3
        .invoke(Ctx::new())
        .run_id("gone")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(out[c_out], 35);
}

/// A finished stage renamed in a new version (`sb` is `sb_slow` now, writing the same
/// key): resumed, the new stage would run, replace the value `sb` left and repeat its side
/// effects under another idempotency key. Refused before anything runs; the checkpoint
/// is left as it was.
#[tokio::test]
async fn a_new_stage_writing_what_a_vanished_finished_stage_wrote_is_refused() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    stopped_at_sc(&probe, &store, "renamed", 1).await;
    let before = stored(&store, "renamed").await;
    let v2 = durable(pipeline! { sa, sb_slow, sc }, &probe, &store);
    let err = v2
        .invoke(Ctx::new())
        .run_id("renamed")
        .resume()
        .allow_version_change()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IncompatibleCheckpoint { run_id, reason }
            if run_id == "renamed"
                && reason.contains("stage `sb_slow` has not run and writes `b_out`, whose value `sb` wrote")),
        "{err:?}"
    );
    assert_eq!(probe.count("sc"), 1, "nothing ran");
    let after = stored(&store, "renamed").await;
    assert_eq!(
        (after.version, after.entries),
        (before.version, before.entries),
        "nothing was written"
    );

    // A stage that reads the key too transforms the value, as it would have after the
    // vanished stage: `sb` deleted before `sb_bump` resumes.
    probe.set_failing(&["sb_bump"]);
    durable(pipeline! { sa, sb, sb_bump }, &probe, &store)
        .invoke(input! { seed: 1 })
        .run_id("deleted")
        .await
        .unwrap_err();
    probe.set_failing(&[]);
    let out = durable(pipeline! { sa, sb_bump }, &probe, &store)
        .invoke(Ctx::new())
        .run_id("deleted")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(out[b_out], 21, "`sb`'s 20, bumped once");
}

#[stage(reads = [b_out], writes = [b_out])]
async fn sb_bump(b_out: &u64, probe: Res<Arc<Probe>>) -> Result<u64, StageError> {
    probe.hit("sb_bump")?;
    Ok(b_out + 1)
}

#[stage(reads = [seed])]
async fn lane(seed: &u64) -> Route {
    Route::to(if *seed > 100 { "fast" } else { "slow" })
}

#[stage(reads = [a_out], writes = [b_out])]
async fn sb_slow(a_out: &u64) -> u64 {
    a_out * 1000
}

/// `sb` of a later version that also writes `extra`.
#[stage(name = "sb", reads = [a_out], writes = [b_out, extra])]
async fn sb_more(a_out: &u64) -> (u64, String) {
    (a_out * 10, "more".into())
}

/// `sb` of a later version that became a route.
#[stage(name = "sb", reads = [a_out])]
async fn sb_route(_a_out: &u64) -> Route {
    Route::to("x")
}

#[tokio::test]
async fn a_new_version_that_would_rerun_or_misplace_a_finished_stage_is_refused() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    stopped_at_sc(&probe, &store, "r", 1).await;
    let before = stored(&store, "r").await;
    let resume = |pipe: Pipeline| {
        let pipe = pipe.with_resource(probe.clone()).with_store(store.clone());
        async move {
            pipe.invoke(Ctx::new())
                .run_id("r")
                .resume()
                .allow_version_change()
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let refusals = [
        // `sb` moved into a branch of a route that has not run (it may choose the other).
        (
            resume(pipeline! { sa, lane => { "fast" => [sb], "slow" => [sb_slow] }, sc }).await,
            "stage `sb` finished, but it sits in branch `fast` of route `lane`, which has not run",
        ),
        // Two nodes named `sb`: which one ran cannot be told.
        (
            resume(pipeline! { sa, lane => { "fast" => [sb], "slow" => [sb] }, sc }).await,
            "stage `sb` finished, and this version has several nodes of that name",
        ),
        // `sb` now writes a key it did not write when it ran.
        (
            resume(pipeline! { sa, sb_more, sc }).await,
            "stage `sb` finished without writing `extra`, which it writes in this version",
        ),
        // `sb` is a route now, and it chose no branch when it ran.
        (
            resume(pipeline! { sa, sb_route => { "x" => [sb_slow] }, sc }).await,
            "`sb` finished as a plain stage and is a route in this version",
        ),
    ];
    for (err, says) in refusals {
        assert!(
            err.starts_with("run `r` cannot resume under this pipeline version")
                && err.contains(says),
            "{err}"
        );
    }
    assert_eq!(stored(&store, "r").await, before, "nothing was written");
    assert_eq!(probe.count("sb"), 1, "no finished stage ran again");
}

/// A ctx-style stage: it declares `label` and `picked` and writes only `label`.
#[stage(reads = [seed], writes = [label, picked])]
async fn labels_only(ctx: Ctx) -> Ctx {
    let seed = ctx[seed];
    ctx.with(label, format!("seed {seed}"))
}

#[stage(reads = [label], writes = [key_seen])]
async fn fails_once_on_label(label: &String, probe: Res<Arc<Probe>>) -> Result<String, StageError> {
    probe.hit("fails_once_on_label")?;
    Ok(label.clone())
}

#[tokio::test]
async fn a_ctx_style_stage_that_wrote_part_of_its_writes_still_fits_a_new_version() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    probe.set_failing(&["fails_once_on_label"]);
    durable(
        pipeline! { labels_only, fails_once_on_label },
        &probe,
        &store,
    )
    .invoke(input! { seed: 4 })
    .run_id("ctx")
    .await
    .unwrap_err();
    probe.set_failing(&[]);
    let out = durable(
        pipeline! { labels_only, fails_once_on_label, sd_after_label },
        &probe,
        &store,
    )
    .invoke(Ctx::new())
    .run_id("ctx")
    .resume()
    .allow_version_change()
    .await
    .unwrap();
    assert_eq!(
        (out[key_seen].as_str(), out[extra].as_str()),
        ("seed 4", "seed 4!")
    );
}

#[stage(reads = [key_seen], writes = [extra])]
async fn sd_after_label(key_seen: &String) -> String {
    format!("{key_seen}!")
}

#[tokio::test]
async fn a_completed_run_resumes_to_its_result_under_any_version_allowed() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    chain(&probe, &store)
        .invoke(input! { seed: 1 })
        .run_id("done")
        .await
        .unwrap();
    // A graph the run's stages would not fit (two nodes named `sb`): nothing runs, so
    // nothing needs to fit.
    let out = pipeline! { sa, lane => { "fast" => [sb], "slow" => [sb] }, sc }
        .with_resource(probe.clone())
        .with_store(store.clone())
        .invoke(Ctx::new())
        .run_id("done")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(out[c_out], 25);
    assert_eq!(probe.count("sa"), 1);
}

#[stage(reads = [picked], writes = [key_seen])]
async fn s_pick(picked: &String) -> String {
    picked.clone()
}

#[tokio::test]
async fn replay_under_a_new_version_uses_the_inputs_it_knows() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let v1 = durable(pipeline! { s_pick, sa, sb, sc }, &probe, &store);
    v1.invoke(input! { seed: 3, picked: "x".into() })
        .run_id("old")
        .await
        .unwrap();
    // `picked` means nothing to the new version: it is left out, not called corruption.
    let v2 = chain(&probe, &store);
    let out = v2.replay("old").await.unwrap();
    assert_eq!(out[c_out], 45);
    assert!(out.get(picked).is_none());
}

#[stage(reads = [seed], writes = [a_out])]
async fn held(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.started.notify_one();
    let _permit = probe.gate.as_ref().unwrap().acquire().await.unwrap();
    *seed
}

#[tokio::test]
async fn a_second_invoke_with_a_live_run_id_is_refused_and_other_ids_do_not_wait() {
    let probe = Arc::new(Probe {
        gate: Some(tokio::sync::Semaphore::new(0)),
        ..Default::default()
    });
    let store = InMemoryStore::new();
    let pipe = durable(pipeline! { held }, &probe, &store);
    let started = probe.started.notified();
    let first = tokio::spawn({
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { seed: 1 }).run_id("busy").await }
    });
    started.await;

    let err = pipe
        .invoke(input! { seed: 2 })
        .run_id("busy")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RunIdInUse { run_id } if run_id == "busy"),
        "{err:?}"
    );

    // Another id runs to the end while "busy" is still held open.
    let other = durable(pipeline! { sa }, &probe, &store);
    assert_eq!(
        other
            .invoke(input! { seed: 5 })
            .run_id("free")
            .await
            .unwrap()[a_out],
        6
    );

    probe.gate.as_ref().unwrap().add_permits(1);
    assert_eq!(first.await.unwrap().unwrap()[a_out], 1);
    // The lock was released: the id can be used again.
    probe.gate.as_ref().unwrap().add_permits(1);
    pipe.invoke(input! { seed: 3 })
        .run_id("busy")
        .await
        .unwrap();
}

#[stage(reads = [seed], writes = [a_out])]
async fn left(seed: &u64, probe: Res<Arc<Probe>>) -> Result<u64, StageError> {
    probe.hit("left")?;
    Ok(seed + 100)
}

#[stage(reads = [seed], writes = [b_out])]
async fn right(seed: &u64, probe: Res<Arc<Probe>>) -> Result<u64, StageError> {
    probe.hit("right")?;
    Ok(seed + 200)
}

#[tokio::test]
async fn resume_continues_from_the_frontier_of_a_half_done_parallel_block() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = pipeline! { parallel { left, right } }
        .with_resource(probe.clone())
        .with_store(store.clone());
    probe.set_failing(&["right"]);
    pipe.invoke(input! { seed: 1 })
        .run_id("par")
        .await
        .unwrap_err();
    probe.set_failing(&[]);
    let out = pipe.resume("par").await.unwrap();
    assert_eq!((out[a_out], out[b_out]), (101, 201));
    assert_eq!((probe.count("left"), probe.count("right")), (1, 2));
}

#[stage(reads = [label])]
async fn choose(label: &String, probe: Res<Arc<Probe>>) -> Result<Route, StageError> {
    probe.hit("choose")?;
    Ok(Route::to(label.clone()))
}

#[stage(reads = [seed], writes = [picked])]
async fn gold(seed: &u64, probe: Res<Arc<Probe>>) -> Result<String, StageError> {
    probe.hit("gold")?;
    Ok(format!("gold {seed}"))
}

#[stage(reads = [seed], writes = [picked])]
async fn basic(seed: &u64, probe: Res<Arc<Probe>>) -> Result<String, StageError> {
    probe.hit("basic")?;
    Ok(format!("basic {seed}"))
}

#[tokio::test]
async fn a_route_decided_before_a_failure_is_kept_on_resume() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = pipeline! { choose => { "gold" => [gold], "basic" => [basic] } }
        .with_resource(probe.clone())
        .with_store(store.clone());
    probe.set_failing(&["gold"]);
    pipe.invoke(input! { seed: 7, label: "gold".into() })
        .run_id("route")
        .await
        .unwrap_err();
    // The record shows the route's choice as the run reported it: the branch not taken
    // skipped, right after the route (it has no entry of its own).
    let finished = |record: fluxio::RunRecord| -> Vec<(String, bool)> {
        record
            .finished
            .into_iter()
            .map(|f| (f.stage, f.skipped))
            .collect()
    };
    let owned = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
        v.iter().map(|&(s, k)| (s.to_string(), k)).collect()
    };
    assert_eq!(
        finished(pipe.inspect("route").await.unwrap()),
        owned(&[("choose", false), ("basic", true)])
    );
    probe.set_failing(&[]);
    let out = pipe.resume("route").await.unwrap();
    assert_eq!(out[picked], "gold 7");
    assert_eq!(
        finished(pipe.inspect("route").await.unwrap()),
        owned(&[("choose", false), ("basic", true), ("gold", false)])
    );
    assert_eq!(
        (
            probe.count("choose"),
            probe.count("gold"),
            probe.count("basic")
        ),
        (1, 2, 0)
    );
}

#[tokio::test]
async fn resume_input_adds_keys_and_refuses_to_override() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    probe.set_failing(&["sb"]);
    pipe.invoke(input! { seed: 1 })
        .run_id("m")
        .await
        .unwrap_err();
    probe.set_failing(&[]);
    let err = pipe
        .invoke(input! { seed: 9 })
        .run_id("m")
        .resume()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::MergeConflict { key: "seed", stages, run_id: Some(id) }
            if stages[0] == Error::CHECKPOINT && stages[1] == Error::RESUME_INPUT && id == "m"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "run `m`: the resume input sets `seed`, which the run already holds (in its \
         checkpoint); a resume input may only add keys"
    );
    // A key a finished stage wrote names the stage.
    let done = pipe.resume("m").await;
    assert!(done.is_ok(), "{done:?}");
    let err = pipe
        .invoke(input! { a_out: 0 })
        .run_id("m")
        .resume()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "run `m`: the resume input sets `a_out`, which the run already holds (written by \
         `sa`); a resume input may only add keys"
    );
}

#[tokio::test]
async fn replay_reruns_from_the_stored_input_and_diff_compares_runs() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    let first = pipe.invoke(input! { seed: 1 }).run_id("one").await.unwrap();
    pipe.invoke(input! { seed: 2 }).run_id("two").await.unwrap();

    let replayed = pipe.replay("one").await.unwrap();
    assert_eq!(replayed[c_out], first[c_out]);
    assert_eq!(probe.count("sa"), 3);

    let d = pipe.diff("one", "two").await.unwrap();
    assert_eq!(d.changed, ["a_out", "b_out", "c_out", "seed"]);
    assert!(d.added.is_empty() && d.removed.is_empty());
    assert!(pipe.diff("one", "one").await.unwrap().is_empty());
    assert!(matches!(
        pipe.diff("one", "nope").await,
        Err(Error::NoCheckpoint { .. })
    ));
}

#[tokio::test]
async fn inspect_reads_a_stored_run_without_running_it() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    probe.set_failing(&["sc"]);
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("r")
        .await
        .unwrap_err();
    let record = pipe.inspect("r").await.unwrap();
    assert_eq!(record.run_id, "r");
    assert_eq!(record.version, pipe.version());
    assert_eq!(record.status, RunStatus::Failed);
    let error = record.error.as_deref().unwrap_or("");
    assert!(error.contains("sc is told to fail"), "{error}");
    assert!(err.to_string().contains("sc is told to fail"));
    assert_eq!(
        (record.ctx[seed], record.ctx[a_out], record.ctx[b_out]),
        (1, 2, 20)
    );
    assert!(record.ctx.get(c_out).is_none());
    let finished: Vec<(&str, bool)> = record
        .finished
        .iter()
        .map(|f| (f.stage.as_str(), f.skipped))
        .collect();
    assert_eq!(finished, [("sa", false), ("sb", false)]);
    // Nothing ran, nothing changed.
    assert_eq!((probe.count("sa"), probe.count("sc")), (1, 1));
    assert_eq!(stored(&store, "r").await.status, RunStatus::Failed);

    // Resumed to its end, it reads as completed, with every stage.
    probe.set_failing(&[]);
    pipe.resume("r").await.unwrap();
    let record = pipe.inspect("r").await.unwrap();
    assert_eq!(record.status, RunStatus::Completed);
    assert_eq!(record.error, None);
    assert_eq!(record.ctx[c_out], 25);
    assert_eq!(record.finished.len(), 3);

    assert!(matches!(
        pipe.inspect("nope").await,
        Err(Error::NoCheckpoint { run_id }) if run_id == "nope"
    ));
    // An empty id is refused as a run's is, not looked for.
    let empty = |out: Result<(), Error>| match out {
        Err(e @ Error::BadRunId { .. }) => {
            assert_eq!(e.to_string(), "bad run id: a run id cannot be empty")
        }
        other => panic!("{other:?}"),
    };
    empty(pipe.inspect("").await.map(drop));
    empty(pipe.replay("").await.map(drop));
    empty(pipe.diff("", "r").await.map(drop));
    empty(pipe.diff("r", "").await.map(drop));
    let no_store = pipeline! { sa, sb, sc }.with_resource(probe.clone());
    assert!(matches!(
        no_store.inspect("r").await,
        Err(Error::NoStore {
            operation: "inspect"
        })
    ));
}

#[tokio::test]
async fn corrupt_checkpoints_are_errors_not_panics() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    let version = pipe.version().to_string();
    assert!(
        store
            .acquire("bad", "tester", Duration::from_secs(5))
            .await
            .unwrap()
    );
    let start = Save::Start {
        version: version.clone(),
        header: vec![1, 0xff, 0xff, 0xff],
    };
    store.save("bad", "tester", start).await.unwrap();
    store.release("bad", "tester").await.unwrap();
    let err = pipe.resume("bad").await.unwrap_err();
    assert!(
        matches!(&err, Error::CorruptCheckpoint { run_id, .. } if run_id == "bad"),
        "{err:?}"
    );
    let err = pipe.inspect("bad").await.unwrap_err();
    assert!(
        matches!(&err, Error::CorruptCheckpoint { run_id, .. } if run_id == "bad"),
        "{err:?}"
    );

    // A valid run with a garbage entry appended.
    pipe.invoke(input! { seed: 1 })
        .run_id("bad2")
        .await
        .unwrap();
    assert!(
        store
            .acquire("bad2", "tester", Duration::from_secs(5))
            .await
            .unwrap()
    );
    store
        .save("bad2", "tester", Save::Entry(vec![1, 2, 3]))
        .await
        .unwrap();
    store
        .save(
            "bad2",
            "tester",
            Save::Finish {
                status: RunStatus::Failed,
                error: None,
            },
        )
        .await
        .unwrap();
    store.release("bad2", "tester").await.unwrap();
    let err = pipe.resume("bad2").await.unwrap_err();
    assert!(matches!(err, Error::CorruptCheckpoint { .. }), "{err:?}");
}

#[tokio::test]
async fn a_checkpoint_whose_entries_contradict_its_route_is_corrupt_not_a_panic() {
    use fluxio::store::format::{Entry, Header, encode_entry, encode_header};
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = pipeline! { sa, lane => { "fast" => [sb], "slow" => [sb_slow] }, sc }
        .with_resource(probe.clone())
        .with_store(store.clone());
    // Well-formed records that cannot have come from this pipeline: the route chose
    // `slow`, yet `sb` of branch `fast` finished.
    let entry = |node: u32, stage: &str, route: Option<&str>, writes: Vec<(String, Vec<u8>)>| {
        encode_entry(&Entry {
            node,
            stage: stage.into(),
            route: route.map(Into::into),
            skipped: false,
            writes,
            seq: None,
            added: None,
        })
        .unwrap()
    };
    assert!(
        store
            .acquire("odd", "t", Duration::from_secs(5))
            .await
            .unwrap()
    );
    let header = encode_header(&Header { values: vec![] }).unwrap();
    store
        .save("odd", "t", Save::start(pipe.version(), header))
        .await
        .unwrap();
    for e in [
        entry(1, "lane", Some("slow"), vec![]),
        entry(2, "sb", None, vec![]),
    ] {
        store.save("odd", "t", Save::Entry(e)).await.unwrap();
    }
    store.release("odd", "t").await.unwrap();
    let err = pipe.resume("odd").await.unwrap_err();
    assert!(
        matches!(&err, Error::CorruptCheckpoint { reason, .. }
            if reason.contains("`sb` finished, but it sits in branch `fast` of route `lane`, which chose `slow`")),
        "{err:?}"
    );
}

#[stage(writes = [key_seen])]
async fn idem(info: RunInfo) -> String {
    info.idempotency_key()
}

/// Fails its first call; reports the idempotency key of every call.
#[stage(writes = [key_seen])]
async fn idem_flaky(
    info: RunInfo,
    seen: Res<Arc<Mutex<Vec<String>>>>,
) -> Result<String, StageError> {
    let mut seen = seen.lock().unwrap();
    seen.push(info.idempotency_key());
    if seen.len() == 1 {
        return Err(StageError::msg("first call fails"));
    }
    Ok(info.idempotency_key())
}

#[tokio::test(start_paused = true)]
async fn runs_without_an_id_get_their_own_idempotency_key_kept_across_retries() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    // No id, no store, no callbacks: the leanest run still names itself for `RunInfo`.
    let pipe = pipeline! { idem_flaky }
        .with_resource(seen.clone())
        .with_middleware(Retry::constant(2, Duration::from_millis(1)));
    let first = pipe.invoke(Ctx::new()).await.unwrap();
    let second = pipe.invoke(Ctx::new()).await.unwrap();
    assert!(
        first[key_seen].starts_with("run-") && first[key_seen].ends_with(":idem_flaky"),
        "{}",
        first[key_seen]
    );
    assert_ne!(first[key_seen], second[key_seen], "two runs, two keys");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], seen[1], "a retry keeps its run's key");
}

#[tokio::test]
async fn stages_get_an_idempotency_key_from_run_id_and_stage() {
    let out = pipeline! { idem }
        .with_store(InMemoryStore::new())
        .invoke(Ctx::new())
        .run_id("pay-42")
        .await
        .unwrap();
    assert_eq!(out[key_seen], "pay-42:idem");
}

/// Resumes run `inner-run` of the pipeline it is given, adding `seed` again.
#[stage(reads = [label], writes = [picked])]
async fn resume_inner(label: &String, inner: Res<Pipeline>) -> Result<String, StageError> {
    inner
        .invoke(input! { seed: 5 })
        .run_id("inner-run")
        .resume()
        .await?;
    Ok(label.clone())
}

/// A clashing resume input met by a stage resuming another run is that stage's failure,
/// not the outer run's own clash.
#[tokio::test]
async fn a_resume_clash_inside_a_stage_is_the_stages_failure() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let inner = chain(&probe, &store);
    inner
        .invoke(input! { seed: 1 })
        .run_id("inner-run")
        .await
        .unwrap();
    let err = pipeline! { resume_inner }
        .with_resource(inner)
        .with_store(InMemoryStore::new())
        .invoke(input! { label: "x".into() })
        .run_id("outer-run")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Stage { stage: "resume_inner", run_id: Some(id), .. } if id == "outer-run"),
        "{err:?}"
    );
    assert!(
        matches!(
            err.find::<Error>(),
            Some(Error::MergeConflict { key: "seed", .. })
        ),
        "{err:?}"
    );
}

/// Records the idempotency key of every call.
#[stage(writes = [key_seen])]
async fn idem_seen(info: RunInfo, seen: Res<Arc<Mutex<Vec<String>>>>) -> String {
    seen.lock().unwrap().push(info.idempotency_key());
    info.idempotency_key()
}

/// A stage of a nested pipeline is keyed under the pipeline's name: two named copies of
/// one pipeline, and a top-level stage of the same name, get keys of their own.
#[tokio::test]
async fn nested_stages_get_idempotency_keys_of_their_own() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sub = pipeline! { idem_seen };
    let inner = pipeline! { sub.clone().named("inner") };
    pipeline! {
        sub.clone().named("first"),
        idem_seen,
        sub.clone().named("second"),
        inner.named("outer"),
    }
    .with_resource(seen.clone())
    .with_store(InMemoryStore::new())
    .invoke(Ctx::new())
    .run_id("pay-7")
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "pay-7:first/idem_seen",
            "pay-7:idem_seen",
            "pay-7:second/idem_seen",
            "pay-7:outer/inner/idem_seen",
        ]
    );
}

/// Two nested pipelines of one name that can both run would give their stages one
/// idempotency key (a second payment deduplicated away): the run is refused before any
/// stage runs, naming the name — also when the clash is inside a nested pipeline, and for
/// a nested pipeline named like a stage. In different branches of one route, one name is
/// fine (only one of them runs).
#[tokio::test]
async fn nested_pipelines_of_one_name_are_refused_before_any_stage_runs() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sub = pipeline! { idem_seen };
    let inner_clash = pipeline! { sub.clone(), sub.clone() };
    let cases = [
        (pipeline! { sub.clone(), sub.clone() }, "pipeline"),
        (
            pipeline! { sub.clone().named("pay"), sub.clone().named("pay") },
            "pay",
        ),
        (
            pipeline! { idem_seen, sub.clone().named("idem_seen") },
            "idem_seen",
        ),
        (pipeline! { inner_clash.named("outer") }, "pipeline"),
    ];
    for (k, (pipe, name)) in cases.into_iter().enumerate() {
        let err = pipe
            .with_resource(seen.clone())
            .invoke(Ctx::new())
            .run_id("pay-8")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::NameClash { name: n, run_id: Some(id), .. } if *n == name && id == "pay-8"),
            "{err:?}"
        );
        // The last clash is inside the nested pipeline `outer`: the error says where.
        let inside = matches!(&err, Error::NameClash { nested_in: Some(p), .. } if p == "outer");
        assert_eq!(inside, k == 3, "{err:?}");
        assert_eq!(
            err.to_string().contains("nested pipeline `outer`"),
            k == 3,
            "{err}"
        );
        assert!(err.to_string().contains("Pipeline::named"), "{err}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "no stage ran: {:?}",
        seen.lock().unwrap()
    );
    let unnamed = Error::NameClash {
        name: "pipeline",
        nested_in: None,
        run_id: None,
    };
    assert!(unnamed.to_string().contains("not given one"), "{unnamed}");

    // One name in two branches of a route: only one of them runs.
    pipeline! {
        pick_first => {
            "first" => [sub.clone()],
            "second" => [sub.clone()],
        }
    }
    .with_resource(seen.clone())
    .invoke(Ctx::new())
    .run_id("pay-9")
    .await
    .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["pay-9:pipeline/idem_seen"]);
}

/// A nested pipeline's name separates scopes in idempotency keys: one with a `/` (or none
/// at all) is refused where it is given.
#[test]
fn a_nested_pipeline_name_with_a_slash_is_refused() {
    for bad in ["pay/charge", "", " "] {
        let given = std::panic::catch_unwind(|| pipeline! { idem_seen }.named(bad));
        let Err(payload) = given else {
            panic!("`{bad}` was taken as a name")
        };
        let text = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains("hold no `/`"), "{text}");
    }
}

#[stage]
fn pick_first() -> Route {
    Route::to("first")
}

/// A save's future.
type SaveFuture = BoxFuture<'static, StoreResult<()>>;

/// Wraps the in-memory store (`.0`); its saves go through the hook, which is given the store
/// to forward them to.
struct OnSave<F>(InMemoryStore, Arc<F>);

impl<F> Clone for OnSave<F> {
    fn clone(&self) -> Self {
        OnSave(self.0.clone(), self.1.clone())
    }
}

impl<F> ForwardStore for OnSave<F>
where
    F: Fn(&InMemoryStore, &str, &str, Save) -> SaveFuture + Send + Sync + 'static,
{
    fn target(&self) -> &dyn CheckpointStore {
        &self.0
    }
    fn save(&self, run_id: &str, owner: &str, save: Save) -> SaveFuture {
        (self.1)(&self.0, run_id, owner, save)
    }
}

/// The in-memory store, its saves through `hook`.
fn on_save<F>(hook: F) -> OnSave<F>
where
    F: Fn(&InMemoryStore, &str, &str, Save) -> SaveFuture + Send + Sync + 'static,
{
    OnSave(InMemoryStore::new(), Arc::new(hook))
}

#[tokio::test]
async fn a_run_whose_lock_was_taken_over_stops_at_its_next_write() {
    let probe = Arc::new(Probe {
        gate: Some(tokio::sync::Semaphore::new(0)),
        ..Default::default()
    });
    // Once `lost` is set, writes fail as if another process had taken the run's lock over
    // (the stores' own tests cover how they detect that).
    let lost = Arc::new(AtomicBool::new(false));
    let store = on_save({
        let lost = lost.clone();
        move |inner: &InMemoryStore, run_id: &str, owner: &str, save| {
            if lost.load(Ordering::SeqCst) {
                let run_id = run_id.to_string();
                return Box::pin(
                    async move { Err(fluxio::store::StoreError::LockLost { run_id }) },
                );
            }
            inner.save(run_id, owner, save)
        }
    });
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { held, sb }
        .with_resource(probe.clone())
        .with_callback(sink)
        .with_store(store.clone());
    let started = probe.started.notified();
    let run = tokio::spawn({
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { seed: 1 }).run_id("fence").await }
    });
    started.await;
    lost.store(true, Ordering::SeqCst);
    probe.gate.as_ref().unwrap().add_permits(1);
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::LockLost { run_id } if run_id == "fence"),
        "{err:?}"
    );
    assert_eq!(probe.count("sb"), 0, "no stage ran after the lock was lost");
    // `held` itself did not fail (its entry could not be stored; it runs again on resume):
    // it is reported cancelled, not as a failure a stage's metrics would count.
    assert_eq!(
        fluxio_tests::attempts(&events, "stage.cancelled"),
        [("held", 1)]
    );
    assert!(fluxio_tests::attempts(&events, "stage.failed").is_empty());
}

/// The in-memory store, its saves done only once polled, as a store that sends them over a
/// connection does (the in-memory store writes when `save` is called).
fn lazy() -> OnSave<impl Fn(&InMemoryStore, &str, &str, Save) -> SaveFuture + Send + Sync> {
    on_save(|inner: &InMemoryStore, run_id: &str, owner: &str, save| {
        let (inner, run_id, owner) = (inner.clone(), run_id.to_string(), owner.to_string());
        Box::pin(async move { inner.save(&run_id, &owner, save).await })
    })
}

/// What `log` heard of stage `left` and of the run's end.
fn of_left(log: &LifecycleLog) -> Vec<String> {
    log.lines()
        .into_iter()
        .filter(|l| l.ends_with(" left") || (l.starts_with("run_") && l != "run_start"))
        .collect()
}

/// `pipe` (`parallel { <left>, right }`) with `probe`, an event log, a [`LifecycleLog`] and
/// `store`, run as `run_id` with `right` failing: the run fails with `right`'s error.
async fn fail_beside(
    pipe: Pipeline,
    probe: &Arc<Probe>,
    store: impl CheckpointStore,
    run_id: &str,
) -> (Pipeline, fluxio_tests::Events, LifecycleLog) {
    let (sink, events) = fluxio_tests::event_log();
    let left_log = LifecycleLog::default();
    let pipe = pipe
        .with_resource(probe.clone())
        .with_callback(sink)
        .with_callback(left_log.clone())
        .with_store(store);
    probe.set_failing(&["right"]);
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id(run_id)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Stage { stage: "right", .. }),
        "{err:?}"
    );
    (pipe, events, left_log)
}

/// SPEC §6: siblings that had finished stay finished for resume — also one that finished in
/// the same wake-up as the failure, its entry not yet stored: the run stores it before it
/// ends, and a resume does not run it again.
#[tokio::test]
async fn a_sibling_finished_beside_the_failure_is_stored_before_the_run_ends() {
    let (probe, store) = (Arc::new(Probe::default()), lazy());
    let pipe = pipeline! { parallel { left, right } };
    let (pipe, events, left_log) = fail_beside(pipe, &probe, store.clone(), "beside-failure").await;
    probe.set_failing(&[]);
    let cp = stored(&store.0, "beside-failure").await;
    assert_eq!(cp.entries.len(), 1, "`left`'s entry is stored");
    // `left` finished as the run failed and its entry is stored: reported completed, after
    // its checkpoint, and before the run's end — never cancelled (a consumer would read
    // that as "runs again") nor failed.
    assert_eq!(
        fluxio_tests::attempts(&events, "stage.failed"),
        [("right", 1)]
    );
    assert_eq!(
        fluxio_tests::attempts(&events, "stage.completed"),
        [("left", 1)]
    );
    assert_eq!(fluxio_tests::attempts(&events, "stage.cancelled"), []);
    assert_eq!(
        of_left(&left_log),
        ["start left", "checkpoint left", "end left", "run_end err"]
    );
    let out = pipe.resume("beside-failure").await.unwrap();
    assert_eq!((out[a_out], out[b_out]), (101, 201));
    assert_eq!(
        (probe.count("left"), probe.count("right")),
        (1, 2),
        "the resume ran only the failed stage"
    );
}

#[stage(name = "left", reads = [seed], writes = [a_out], rollback = undo_left)]
async fn left_undone(seed: &u64, probe: Res<Arc<Probe>>) -> Result<u64, StageError> {
    probe.hit("left")?;
    Ok(seed + 100)
}

async fn undo_left(_seed: &u64, probe: Res<Arc<Probe>>) -> Result<(), StageError> {
    probe.hit("undo left")
}

/// The same with a rollback: the sibling stored beside the failure is reported completed,
/// then rolled back — it had finished, so its work is undone, not cancelled.
#[tokio::test]
async fn a_sibling_stored_beside_the_failure_is_completed_then_rolled_back() {
    let probe = Arc::new(Probe::default());
    let pipe = pipeline! { parallel { left_undone, right } };
    let store = lazy();
    let (_, events, left_log) = fail_beside(pipe, &probe, store, "beside-failure-undone").await;
    assert_eq!(probe.count("undo left"), 1);
    assert_eq!(
        of_left(&left_log),
        [
            "start left",
            "checkpoint left",
            "end left",
            "rollback left",
            "run_end err"
        ]
    );
    let names: Vec<&str> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.stage() == Some("left"))
        .map(|e| e.name())
        .collect();
    assert_eq!(
        names,
        ["stage.started", "stage.completed", "stage.rolled_back"]
    );
}

/// The in-memory store; every stage entry's save, once polled, fails (`hang`: never
/// answers).
fn entries_down(
    hang: bool,
) -> OnSave<impl Fn(&InMemoryStore, &str, &str, Save) -> SaveFuture + Send + Sync> {
    on_save(
        move |inner: &InMemoryStore, run_id: &str, owner: &str, save| {
            if !matches!(save, Save::Entry(_)) {
                return inner.save(run_id, owner, save);
            }
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Err(fluxio::store::StoreError::backend("save", "down"))
            })
        },
    )
}

/// The sibling finished beside the failure, but its entry cannot be stored: it is reported
/// cancelled (a resume runs it again), never completed, and gets no checkpoint.
#[tokio::test]
async fn a_sibling_whose_entry_cannot_be_stored_beside_the_failure_is_cancelled() {
    let probe = Arc::new(Probe::default());
    let store = entries_down(false);
    let pipe = pipeline! { parallel { left, right } };
    let (_, _, left_log) = fail_beside(pipe, &probe, store, "beside-down").await;
    assert_eq!(
        of_left(&left_log),
        ["start left", "cancelled left", "run_end err"]
    );
}

/// A run dropped while the sibling's entry is still being stored: the sibling is reported
/// cancelled, once, and the run cancelled (no run end).
#[tokio::test]
async fn a_run_dropped_while_storing_a_sibling_beside_the_failure_cancels_it_once() {
    let probe = Arc::new(Probe::default());
    let left_log = LifecycleLog::default();
    let pipe = pipeline! { parallel { left, right } }
        .with_resource(probe.clone())
        .with_callback(left_log.clone())
        .with_store(entries_down(true));
    probe.set_failing(&["right"]);
    let waited = tokio::time::timeout(
        Duration::from_millis(200),
        std::future::IntoFuture::into_future(pipe.invoke(input! { seed: 1 }).run_id("beside-hang")),
    )
    .await;
    assert!(waited.is_err(), "the run waits for the entry: {waited:?}");
    assert_eq!(
        of_left(&left_log),
        ["start left", "cancelled left", "run_cancelled"]
    );
}

/// Two stages end together and the second's entry cannot be stored: the first's entry is
/// stored, so it ended (completed, checkpointed) — it is not left started without an end —
/// and the second, which did not fail, is reported cancelled; the run fails with the store's
/// error, and a resume runs only the second.
#[tokio::test]
async fn a_stage_stored_beside_a_failed_save_is_reported_ended() {
    let probe = Arc::new(Probe::default());
    // The second stage entry it is asked to save fails.
    let entries = std::sync::atomic::AtomicU32::new(0);
    let store = on_save(
        move |inner: &InMemoryStore, run_id: &str, owner: &str, save| {
            if matches!(save, Save::Entry(_)) && entries.fetch_add(1, Ordering::SeqCst) == 1 {
                return Box::pin(async { Err(fluxio::store::StoreError::backend("save", "down")) });
            }
            inner.save(run_id, owner, save)
        },
    );
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { parallel { left, right } }
        .with_resource(probe.clone())
        .with_callback(sink)
        .with_store(store.clone());
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("beside")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store { run_id, operation: "save", .. } if run_id == "beside"),
        "{err:?}"
    );
    let completed = fluxio_tests::attempts(&events, "stage.completed");
    let cancelled = fluxio_tests::attempts(&events, "stage.cancelled");
    assert_eq!(
        completed.len() + cancelled.len(),
        2,
        "{completed:?} {cancelled:?}"
    );
    assert_eq!((completed.len(), cancelled.len()), (1, 1));
    assert!(fluxio_tests::attempts(&events, "stage.failed").is_empty());
    let stored_one = completed[0].0;
    assert_eq!(stored(&store.0, "beside").await.entries.len(), 1);
    pipe.resume("beside").await.unwrap();
    assert_eq!(
        (probe.count(stored_one), probe.count(cancelled[0].0)),
        (1, 2),
        "the resume ran only the stage whose entry was lost"
    );
}

/// Wraps the in-memory store; loads find a record the store did not write.
struct Damaged(InMemoryStore);

impl ForwardStore for Damaged {
    fn target(&self) -> &dyn CheckpointStore {
        &self.0
    }
    fn load(
        &self,
        run_id: &str,
    ) -> fluxio::store::BoxFuture<'static, StoreResult<Option<fluxio::store::StoredRun>>> {
        let run_id = run_id.to_string();
        Box::pin(async move {
            Err(fluxio::store::StoreError::Corrupt {
                run_id,
                reason: "unknown status `zombie`".into(),
            })
        })
    }
}

#[tokio::test]
async fn a_record_the_store_did_not_write_is_a_corrupt_checkpoint_not_a_store_failure() {
    let pipe = pipeline! { sa }
        .with_resource(Arc::new(Probe::default()))
        .with_store(Damaged(InMemoryStore::new()));
    let err = pipe.resume("z-1").await.unwrap_err();
    assert!(
        matches!(&err, Error::CorruptCheckpoint { run_id, reason } if run_id == "z-1" && reason.contains("zombie")),
        "{err:?}"
    );
}

/// An in-memory store whose `release` takes a while, as over a network.
struct SlowRelease(InMemoryStore);

impl ForwardStore for SlowRelease {
    fn target(&self) -> &dyn CheckpointStore {
        &self.0
    }
    fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
        let (store, run_id, owner) = (self.0.clone(), run_id.to_string(), owner.to_string());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.release(&run_id, &owner).await
        })
    }
}

#[tokio::test]
async fn a_refused_resume_gives_the_lock_back_before_returning() {
    let probe = Arc::new(Probe::default());
    let store = Arc::new(SlowRelease(InMemoryStore::new()));
    probe.set_failing(&["sc"]);
    let v1 = pipeline! { sa, sb, sc }
        .with_resource(probe.clone())
        .with_shared_store(store.clone());
    v1.invoke(input! { seed: 1 }).run_id("r").await.unwrap_err();
    probe.set_failing(&[]);
    let v2 = pipeline! { sa, sb, sc, sd }
        .with_resource(probe.clone())
        .with_shared_store(store.clone());
    for _ in 0..3 {
        let err = v2.resume("r").await.unwrap_err();
        assert!(
            matches!(err, Error::CheckpointVersion { .. }),
            "the lock of the refused call before was still held: {err}"
        );
    }
    // What the version error says to do next works right away.
    let out = v2
        .invoke(Ctx::new())
        .run_id("r")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(out[extra], "#25");
}

#[tokio::test]
async fn a_run_refused_before_it_starts_leaves_the_store_as_it_was() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    chain(&probe, &store)
        .invoke(input! { seed: 1 })
        .run_id("kept")
        .await
        .unwrap();
    let before = stored(&store, "kept").await;

    // The same pipeline without its resource: refused before any stage — and before any
    // write, so the completed run's checkpoint is untouched.
    let unready = pipeline! { sa, sb, sc }.with_store(store.clone());
    let err = unready
        .invoke(input! { seed: 2 })
        .run_id("kept")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingResource { .. }), "{err:?}");
    let err = unready.resume("kept").await;
    assert!(
        err.is_ok(),
        "a completed run resumes to its result: {err:?}"
    );
    let err = unready.invoke(Ctx::new()).run_id("kept").await.unwrap_err();
    assert!(matches!(err, Error::MissingInput { .. }), "{err:?}");
    assert_eq!(stored(&store, "kept").await, before);
}

#[tokio::test]
async fn a_resume_without_a_run_id_or_an_empty_id_is_refused_saying_so() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    let err = pipe.invoke(Ctx::new()).resume().await.unwrap_err();
    assert!(matches!(err, Error::BadRunId { .. }), "{err:?}");
    assert!(err.to_string().contains(".run_id(id)"), "{err}");
    for err in [
        pipe.invoke(input! { seed: 1 })
            .run_id("")
            .await
            .unwrap_err(),
        pipe.resume("").await.unwrap_err(),
        pipeline! { sa }
            .with_resource(probe.clone())
            .invoke(input! { seed: 1 })
            .run_id("")
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.to_string(), "bad run id: a run id cannot be empty");
    }
    assert_eq!(probe.count("sa"), 0);
    assert!(store.load("").await.unwrap().is_none());

    // Allowing a version change means resuming: alone, it would start the run afresh.
    pipe.invoke(input! { seed: 1 })
        .run_id("kept-as-is")
        .await
        .unwrap();
    let before = stored(&store, "kept-as-is").await;
    let calls = probe.count("sa");
    let err = pipe
        .invoke(input! { seed: 1 })
        .run_id("kept-as-is")
        .allow_version_change()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRunId { .. }), "{err:?}");
    assert!(err.to_string().contains("add `.resume()`"), "{err}");
    assert_eq!(probe.count("sa"), calls, "no stage ran");
    assert_eq!(stored(&store, "kept-as-is").await, before);
}

#[tokio::test]
async fn a_named_nested_pipeline_is_reported_and_found_by_its_name() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let (sink, events) = fluxio_tests::event_log();
    let front = pipeline! { sa, sb }.named("front");
    probe.set_failing(&["sc"]);
    pipeline! { front.clone(), sc }
        .with_resource(probe.clone())
        .with_callback(sink)
        .with_store(store.clone())
        .invoke(input! { seed: 1 })
        .run_id("named")
        .await
        .unwrap_err();
    let completed: Vec<&str> = fluxio_tests::attempts(&events, "stage.completed")
        .into_iter()
        .map(|(stage, _)| stage)
        .collect();
    assert_eq!(completed, ["front"]);
    assert_eq!(
        pipeline! { front.clone(), sc }.graph().nodes[0].name,
        "front"
    );
    // A new version with a stage in front still finds `front` done.
    probe.set_failing(&[]);
    let out = durable(pipeline! { s_label, front.clone(), sc }, &probe, &store)
        .invoke(Ctx::new())
        .run_id("named")
        .resume()
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(out[c_out], 25);
    assert_eq!((probe.count("sa"), probe.count("sc")), (1, 2));
}

#[stage(reads = [b_out], writes = [extra])]
async fn sx(b_out: &u64) -> String {
    format!("x{b_out}")
}

#[tokio::test]
async fn a_finished_nested_pipeline_that_gained_a_stage_is_refused() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    probe.set_failing(&["sc"]);
    pipeline! { pipeline! { sa, sb }.named("front"), sc }
        .with_resource(probe.clone())
        .with_store(store.clone())
        .invoke(input! { seed: 1 })
        .run_id("grown")
        .await
        .unwrap_err();
    probe.set_failing(&[]);
    // `front` finished before `sx` was added to it: marked done, `sx` would never run.
    let err = pipeline! { pipeline! { sa, sb, sx }.named("front"), sc }
        .with_resource(probe.clone())
        .with_store(store.clone())
        .invoke(Ctx::new())
        .run_id("grown")
        .resume()
        .allow_version_change()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IncompatibleCheckpoint { reason, .. }
            if reason.contains("`front`") && reason.contains("`extra`")),
        "{err:?}"
    );
}

/// A default `b_out`, for a new version to put in front of `sb`.
#[stage(reads = [a_out], writes = [b_out])]
async fn s_default(a_out: &u64) -> u64 {
    a_out + 998
}

#[tokio::test]
async fn a_new_stage_that_would_overwrite_a_finished_stages_value_is_refused() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    probe.set_failing(&["sc"]);
    durable(pipeline! { sa, sb, sc }, &probe, &store)
        .invoke(input! { seed: 1 })
        .run_id("overwrite")
        .await
        .unwrap_err();
    probe.set_failing(&[]);
    // In a fresh run `sb`'s `b_out` replaces `s_default`'s; resumed, `s_default` would run
    // after `sb` and replace its value.
    let err = durable(pipeline! { sa, s_default, sb, sc }, &probe, &store)
        .invoke(Ctx::new())
        .run_id("overwrite")
        .resume()
        .allow_version_change()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IncompatibleCheckpoint { reason, .. }
            if reason.contains("`s_default`") && reason.contains("`b_out`") && reason.contains("`sb`")),
        "{err:?}"
    );
}

mod deep_values {
    use super::*;

    /// A recursive key type.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Tree {
        pub children: Vec<Tree>,
    }

    fluxio::keys! {
        pub depth: usize;
        pub tree: Tree;
    }

    #[stage(reads = [depth], writes = [tree])]
    async fn grow(depth: &usize) -> Tree {
        let mut tree = Tree { children: vec![] };
        for _ in 1..*depth {
            tree = Tree {
                children: vec![tree],
            };
        }
        tree
    }

    #[tokio::test]
    async fn a_deeply_nested_value_is_stored_and_read_back() {
        // Decoding recursed once per level on the thread's stack: a tree of a thousand
        // levels, stored fine, aborted the process when a resume or an inspect read it.
        // A shallow value of the type comes first: the write-time check of a key type
        // looks at its first value only, so depth must not depend on it.
        let store = InMemoryStore::new();
        let pipe = pipeline! { grow }.with_store(store.clone());
        pipe.invoke(input! { depth: 3 })
            .run_id("shallow")
            .await
            .unwrap();
        let out = pipe
            .invoke(input! { depth: 1_000 })
            .run_id("deep")
            .await
            .unwrap();
        let stored = pipe.inspect("deep").await.unwrap();
        assert_eq!(stored.ctx[tree], out[tree]);
        let resumed = pipe.resume("deep").await.unwrap();
        assert_eq!(resumed[tree], out[tree]);
    }
}

mod self_describing {
    use super::*;

    fluxio::keys! {
        pub doc: serde_json::Value;
        pub summary: String;
    }

    #[stage(reads = [seed], writes = [doc])]
    async fn make_doc(seed: &u64) -> serde_json::Value {
        serde_json::json!({ "seed": seed })
    }

    #[stage(reads = [doc], writes = [summary])]
    async fn summarize(doc: &serde_json::Value) -> String {
        doc.to_string()
    }

    #[tokio::test]
    async fn a_key_type_a_checkpoint_cannot_read_back_fails_the_run_at_its_first_write() {
        // bincode cannot decode a `serde_json::Value` (it needs `deserialize_any`): stored,
        // the run could never be resumed. It fails where the value is first written, naming
        // the key and what to do, and the checkpoint holds no entry that cannot be read.
        let store = InMemoryStore::new();
        let pipe = pipeline! { make_doc, summarize }.with_store(store.clone());
        let err = pipe
            .invoke(input! { seed: 7 })
            .run_id("json")
            .await
            .unwrap_err();
        match &err {
            Error::Encode {
                run_id,
                stage,
                key,
                reason,
            } => {
                assert_eq!(
                    (run_id.as_str(), *stage, *key),
                    ("json", Some("make_doc"), "doc")
                );
                assert!(
                    reason.contains("cannot be read back") && reason.contains("deserialize_any"),
                    "{reason}"
                );
            }
            other => panic!("expected Encode, got {other:?}"),
        }
        assert!(stored(&store, "json").await.entries.is_empty());
        assert!(
            err.to_string()
                .starts_with("run `json`: stage `make_doc`: `doc` does not encode"),
            "{err}"
        );
        // The same value in the input: refused before anything runs, named as the input's.
        let err = pipeline! { summarize }
            .with_store(store.clone())
            .invoke(input! { doc: serde_json::json!({ "seed": 7 }) })
            .run_id("json-input")
            .await
            .unwrap_err();
        match &err {
            Error::Encode { stage, key, .. } => assert_eq!((*stage, *key), (None, "doc")),
            other => panic!("expected Encode, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("run `json-input`: input `doc` does not encode"),
            "{err}"
        );
        // Without a store nothing is encoded: the pipeline runs.
        let out = pipeline! { make_doc, summarize }
            .invoke(input! { seed: 7 })
            .await
            .unwrap();
        assert_eq!(out[summary], r#"{"seed":7}"#);
    }
}

/// A listing carries when each run's status was last written, and a failed run's error.
#[tokio::test]
async fn a_listing_says_when_and_why() {
    let (probe, store) = (Arc::new(Probe::default()), InMemoryStore::new());
    let pipe = chain(&probe, &store);
    let since = std::time::SystemTime::now();
    pipe.invoke(input! { seed: 1 })
        .run_id("done")
        .await
        .unwrap();
    probe.set_failing(&["sb"]);
    pipe.invoke(input! { seed: 1 })
        .run_id("failed")
        .await
        .unwrap_err();
    fluxio_tests::assert_listing_has_times_and_errors(
        &store,
        since,
        std::time::Duration::ZERO,
        &[("done", None), ("failed", Some("stage `sb` failed"))],
    )
    .await;
}
