//! Adversarial review of `#[merge]` keys (review 3): paths that apply a stage's writes,
//! durable runs across versions, and the test harness.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fluxio::Error;
use fluxio::middleware::{Middleware, Next, StageCall};
use fluxio::prelude::*;
use fluxio::store::BoxFuture;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The flow of `plain` and `merged`: one body, so that the two differ only in how
/// `findings` is declared (`$($merge)*`: nothing, or `#[merge]`).
macro_rules! flow {
    ($($merge:tt)*) => {
        use std::sync::atomic::{AtomicU32, Ordering};

        use fluxio::prelude::*;

        fluxio::keys! {
            pub order: u64;
            $($merge)*
            pub findings: Vec<String>;
            pub verdict: String;
        }

        #[stage(reads = [order], writes = [findings])]
        async fn add(order: &u64) -> Vec<String> {
            vec![format!("a{order}")]
        }

        #[stage(reads = [findings], writes = [verdict])]
        async fn boom(findings: &[String], fails: Res<AtomicU32>) -> Result<String, StageError> {
            if fails.fetch_sub(1, Ordering::SeqCst) > 0 {
                return Err(StageError::msg("boom"));
            }
            Ok(findings.join(","))
        }

        pub fn pipe(fails: u32) -> Pipeline {
            pipeline! { add, boom }.with_resource(AtomicU32::new(fails))
        }
    };
}

/// The flow, with `findings` declared plainly.
mod plain {
    flow!();
}

/// The flow, with `findings` declared `#[merge]`, and more versions of it.
mod merged {
    flow!(#[merge]);

    #[stage(reads = [order], writes = [findings])]
    async fn first(order: &u64) -> Vec<String> {
        vec![format!("first{order}")]
    }

    #[stage(reads = [order], writes = [findings])]
    async fn second(order: &u64) -> Vec<String> {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        vec![format!("second{order}")]
    }

    /// Version 1: two writers, then a reader that fails once.
    pub fn v1(fails: u32) -> Pipeline {
        pipeline! { first, second, boom }.with_resource(AtomicU32::new(fails))
    }

    #[stage(reads = [order], writes = [findings])]
    async fn third(order: &u64) -> Vec<String> {
        vec![format!("third{order}")]
    }

    /// Version 3: a new writer declared before the finished ones.
    pub fn v3() -> Pipeline {
        pipeline! { third, first, second, boom }.with_resource(AtomicU32::new(0))
    }

    /// Version 2: `first` was removed; its reader fails `fails` times.
    pub fn v2(fails: u32) -> Pipeline {
        pipeline! { second, boom }.with_resource(AtomicU32::new(fails))
    }
}

/// Declaring a key `#[merge]` changes what a stored write of it means (an addition, not the
/// value): a checkpoint written by one declaration and resumed by the other must not be
/// read as if nothing changed. The version should tell them apart.
#[test]
fn adding_merge_to_a_key_changes_the_pipeline_version() {
    assert_ne!(
        plain::pipe(0).version(),
        merged::pipe(0).version(),
        "the version does not see `#[merge]`"
    );
}

/// A run of the merged build fails after `add`; the plain build (same version) resumes it
/// and reads `add`'s stored addition as the whole value: the input's finding is lost.
#[tokio::test(start_paused = true)]
async fn a_merge_run_resumed_by_a_plain_build_keeps_the_input() {
    let store = InMemoryStore::new();
    let m = merged::pipe(1).with_store(store.clone());
    let err = m
        .invoke(input! { merged::order: 7, merged::findings: vec!["x".to_string()] })
        .run_id("v")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    let p = plain::pipe(0).with_store(store.clone());
    match p.resume("v").await {
        // Refused as another version: fine.
        Err(Error::CheckpointVersion { .. }) => {}
        Ok(out) => assert_eq!(
            out[plain::verdict],
            "x,a7",
            "the plain build read the stored addition as the whole value"
        ),
        Err(e) => panic!("{e}"),
    }
}

/// A plain write by a stage a new version removed, of a key the new version declares
/// `#[merge]`: the entry records that the write replaced the value (it was not an addition),
/// so the resume keeps it as the value — the input's finding it replaced stays replaced.
#[tokio::test(start_paused = true)]
async fn a_removed_plain_writers_value_is_not_merged_as_an_addition() {
    let store = InMemoryStore::new();
    let p = plain::pipe(1).with_store(store.clone());
    let err = p
        .invoke(input! { plain::order: 1, plain::findings: vec!["x".to_string()] })
        .run_id("was-plain")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    // Version 2 of the merged flow has no `add`; its `second` adds to the key.
    let out = merged::v2(0)
        .with_store(store.clone())
        .resume("was-plain")
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(
        sorted(out[merged::findings].clone()),
        ["a1", "second1"],
        "`add` replaced the input's value: it was not an addition"
    );
}

/// A stage removed in a new version: the values it wrote are kept (docs/durability.md), so
/// its addition to a merge key is kept — and must not replace what the key held before it.
///
/// The checkpoint records which writes were additions: the resume merges the removed
/// stage's addition. It then rewrites the entry as the value it made, so a later resume
/// (here after another failure) keeps it too.
#[tokio::test(start_paused = true)]
async fn a_removed_writers_addition_is_added_not_replacing() {
    let store = InMemoryStore::new();
    let v1 = merged::v1(1).with_store(store.clone());
    v1.invoke(input! { merged::order: 1, merged::findings: vec!["x".to_string()] })
        .run_id("gone")
        .await
        .unwrap_err();
    let v2 = merged::v2(1).with_store(store.clone());
    let err = v2.resume("gone").allow_version_change().await.unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    let record = v2.inspect("gone").await.unwrap();
    assert_eq!(
        sorted(record.ctx[merged::findings].clone()),
        ["first1", "second1", "x"],
        "the rewritten checkpoint lost an addition"
    );
    let out = merged::v2(0)
        .with_store(store.clone())
        .resume("gone")
        .await
        .unwrap();
    assert_eq!(
        sorted(out[merged::findings].clone()),
        ["first1", "second1", "x"],
        "the removed stage's addition replaced the value"
    );
}

fluxio::keys! {
    pub order: u64;
    #[merge]
    pub findings: Vec<String>;
    pub verdict: String;
}

#[stage(reads = [order], writes = [findings])]
async fn check(order: &u64) -> Vec<String> {
    vec![format!("check{order}")]
}

/// `StepHarness` runs a stage "by its contract": a merge writer's output adds to the
/// input's value, as in a pipeline.
#[tokio::test]
async fn the_step_harness_merges_a_merge_writers_output() {
    let harness = fluxio::testing::StepHarness::new(check);
    let out = harness
        .run(input! { order: 2, findings: vec!["x".to_string()] })
        .await
        .unwrap();
    let in_pipe = pipeline! { check }
        .invoke(input! { order: 2, findings: vec!["x".to_string()] })
        .await
        .unwrap();
    assert_eq!(in_pipe[findings], ["x", "check2"]);
    assert_eq!(
        out[findings], in_pipe[findings],
        "the harness replaced the value a pipeline adds to"
    );
}

// --- Paths that apply writes -------------------------------------------------------------

#[stage(reads = [order], writes = [findings], fallback = fallback_check)]
async fn failing_check(order: &u64) -> Result<Vec<String>, StageError> {
    Err(StageError::msg(format!("down {order}")))
}

async fn fallback_check(order: &u64) -> Vec<String> {
    vec![format!("fallback{order}")]
}

#[tokio::test(start_paused = true)]
async fn a_fallbacks_write_is_merged() {
    let pipe = pipeline! { check, failing_check };
    let out = pipe
        .invoke(input! { order: 3, findings: vec!["x".to_string()] })
        .await
        .unwrap();
    assert_eq!(sorted(out[findings].clone()), ["check3", "fallback3", "x"]);
    // Durable too.
    let pipe = pipeline! { check, failing_check }.with_store(InMemoryStore::new());
    let out = pipe
        .invoke(input! { order: 3, findings: vec!["x".to_string()] })
        .run_id("fb")
        .await
        .unwrap();
    assert_eq!(sorted(out[findings].clone()), ["check3", "fallback3", "x"]);
    assert_eq!(
        sorted(pipe.inspect("fb").await.unwrap().ctx[findings].clone()),
        ["check3", "fallback3", "x"]
    );
}

#[stage(reads = [order], writes = [findings])]
fn ctx_check(ctx: Ctx) -> Ctx {
    let o = ctx[order];
    ctx.set(findings, vec![format!("ctx{o}")])
}

#[tokio::test(start_paused = true)]
async fn a_ctx_style_stages_write_is_merged() {
    let pipe = pipeline! { check, ctx_check };
    let out = pipe
        .invoke(input! { order: 4, findings: vec!["x".to_string()] })
        .await
        .unwrap();
    assert_eq!(sorted(out[findings].clone()), ["check4", "ctx4", "x"]);
}

/// A middleware that answers for a stage with writes of its own.
#[derive(Clone)]
struct Answer;

impl Middleware for Answer {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        if call.meta.name == "check" {
            let mut w = fluxio::Writes::none();
            w.push::<findings>(vec!["answered".to_string()]);
            return Box::pin(std::future::ready(Ok(fluxio::StageOutput::Writes(w))));
        }
        next.run(call)
    }
}

#[tokio::test(start_paused = true)]
async fn a_middlewares_answer_is_merged() {
    let pipe = pipeline! { check, other_check }.with_middleware(Answer);
    let out = pipe
        .invoke(input! { order: 6, findings: vec!["x".to_string()] })
        .await
        .unwrap();
    assert_eq!(sorted(out[findings].clone()), ["answered", "other6", "x"]);
}

#[stage(reads = [order], writes = [findings])]
async fn other_check(order: &u64) -> Vec<String> {
    vec![format!("other{order}")]
}

#[stage(reads = [findings], writes = [verdict])]
async fn summarize(findings: &[String]) -> String {
    sorted(findings.to_vec()).join(",")
}

#[tokio::test(start_paused = true)]
async fn parallel_writers_with_store_and_input_all_add() {
    let store = InMemoryStore::new();
    let pipe = pipeline! { parallel { check, other_check }, summarize }.with_store(store.clone());
    let out = pipe
        .invoke(input! { order: 5, findings: vec!["x".to_string()] })
        .run_id("par")
        .await
        .unwrap();
    assert_eq!(out[verdict], "check5,other5,x");
    let again = pipe.resume("par").await.unwrap();
    assert_eq!(again[verdict], "check5,other5,x");
    assert_eq!(sorted(again[findings].clone()), ["check5", "other5", "x"]);
    let replayed = pipe.replay("par").await.unwrap();
    assert_eq!(replayed[verdict], "check5,other5,x");
}

// --- Same name declared plainly elsewhere ----------------------------------------------------

#[stage(reads = [order], writes = [plain::findings])]
async fn plain_writer(order: &u64) -> Vec<String> {
    vec![format!("plain{order}")]
}

#[tokio::test(start_paused = true)]
async fn a_plain_declaration_of_the_same_name_replaces_and_orders() {
    // Plain writer first, then a merge writer: the merge adds to the plain value.
    let out = pipeline! { plain_writer, check }
        .invoke(input! { order: 1, findings: vec!["x".to_string()] })
        .await
        .unwrap();
    assert_eq!(out[findings], ["plain1", "check1"]);
    // Merge writer first, then the plain one: it replaces.
    let out = pipeline! { check, plain_writer }
        .invoke(input! { order: 1, findings: vec!["x".to_string()] })
        .await
        .unwrap();
    assert_eq!(out[findings], ["plain1"]);
}

// --- Routes -----------------------------------------------------------------------------------

fluxio::keys! {
    pub label: String;
}

#[stage(reads = [label])]
async fn choose(label: &String) -> Route {
    Route::to(label.clone())
}

#[stage(reads = [order], writes = [findings])]
async fn left_check(order: &u64) -> Vec<String> {
    vec![format!("left{order}")]
}

#[stage(reads = [order], writes = [findings])]
async fn right_check(order: &u64) -> Vec<String> {
    vec![format!("right{order}")]
}

#[stage(reads = [findings], writes = [verdict])]
async fn flaky_summary(findings: &[String], fails: Res<AtomicU32>) -> Result<String, StageError> {
    if fails.fetch_sub(1, Ordering::SeqCst) > 0 {
        return Err(StageError::msg("summary down"));
    }
    Ok(sorted(findings.to_vec()).join(","))
}

#[tokio::test(start_paused = true)]
async fn route_branches_adding_to_a_merge_key_survive_a_resume() {
    let store = InMemoryStore::new();
    let runs = Arc::new(AtomicU32::new(0));
    let pipe = pipeline! {
        check,
        choose => { "l" => [left_check], "r" => [right_check] },
        flaky_summary,
    }
    .with_resource(AtomicU32::new(1))
    .with_resource(runs)
    .with_store(store.clone());
    assert_eq!(
        sorted(pipe.inputs().into_iter().map(String::from).collect()),
        ["label", "order"]
    );
    let err = pipe
        .invoke(input! { order: 3, label: "r".to_string(), findings: vec!["x".to_string()] })
        .run_id("route")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("summary down"), "{err}");
    let out = pipe.resume("route").await.unwrap();
    assert_eq!(out[verdict], "check3,right3,x");
    let rec = pipe.inspect("route").await.unwrap();
    assert_eq!(sorted(rec.ctx[findings].clone()), ["check3", "right3", "x"]);
}

// --- SQLite ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_resume_merges_every_writer() {
    let dir = std::env::temp_dir().join(format!("fluxio-review3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("merge.db");
    let _ = std::fs::remove_file(&path);
    let store = fluxio::store::SqliteStore::open(&path).await.unwrap();
    let pipe = pipeline! { check, other_check, left_check, flaky_summary }
        .with_resource(AtomicU32::new(1))
        .with_store(store.clone());
    pipe.invoke(input! { order: 8, findings: vec!["x".to_string()] })
        .run_id("sq")
        .await
        .unwrap_err();
    drop(pipe);
    drop(store);
    // A new process's view: a fresh store on the same file.
    let store = fluxio::store::SqliteStore::open(&path).await.unwrap();
    let pipe = pipeline! { check, other_check, left_check, flaky_summary }
        .with_resource(AtomicU32::new(0))
        .with_store(store.clone());
    let out = pipe.resume("sq").await.unwrap();
    assert_eq!(out[verdict], "check8,left8,other8,x");
    let a = pipe.inspect("sq").await.unwrap();
    assert_eq!(
        sorted(a.ctx[findings].clone()),
        ["check8", "left8", "other8", "x"]
    );
    let pipe = pipeline! { check, other_check, left_check, flaky_summary }
        .with_resource(AtomicU32::new(0))
        .with_store(store.clone());
    pipe.invoke(input! { order: 8, findings: vec!["x".to_string()] })
        .run_id("sq2")
        .await
        .unwrap();
    let d = pipe.diff("sq", "sq2").await.unwrap();
    assert!(d.is_empty(), "{d:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A nested pipeline writes the merge key whole (its value after its stages, which started
/// from the outer one): a resume restores the outer writer's addition, then the nested
/// pipeline's whole value, and holds each addition once.
#[tokio::test(start_paused = true)]
async fn a_nested_pipelines_whole_write_survives_a_resume() {
    let store = InMemoryStore::new();
    let nested = pipeline! { parallel { other_check, left_check } }.named("nested");
    let pipe = pipeline! { check, nested.clone(), flaky_summary }
        .with_resource(AtomicU32::new(1))
        .with_store(store.clone());
    pipe.invoke(input! { order: 4, findings: vec!["x".to_string()] })
        .run_id("nest")
        .await
        .unwrap_err();
    let pipe = pipeline! { check, nested.clone(), flaky_summary }
        .with_resource(AtomicU32::new(0))
        .with_store(store.clone());
    let out = pipe.resume("nest").await.unwrap();
    assert_eq!(out[verdict], "check4,left4,other4,x");
    assert_eq!(
        sorted(pipe.inspect("nest").await.unwrap().ctx[findings].clone()),
        ["check4", "left4", "other4", "x"]
    );
}

/// The nested pipeline first, then a stage adding to the key it wrote whole: a resume adds
/// the stage's stored addition to the nested value, as the live run did (the nested
/// pipeline's write does not make the key a plain one).
#[tokio::test(start_paused = true)]
async fn an_addition_after_a_nested_pipelines_whole_write_survives_a_resume() {
    let store = InMemoryStore::new();
    let nested = pipeline! { parallel { other_check, left_check } }.named("nested");
    let pipe = |fails| {
        pipeline! { nested.clone(), check, flaky_summary }
            .with_resource(AtomicU32::new(fails))
            .with_store(store.clone())
    };
    pipe(1)
        .invoke(input! { order: 5, findings: vec!["x".to_string()] })
        .run_id("nest-first")
        .await
        .unwrap_err();
    let out = pipe(0).resume("nest-first").await.unwrap();
    assert_eq!(out[verdict], "check5,left5,other5,x");
}

/// A new version adds a writer of a `#[merge]` key before writers that finished: resumed,
/// it adds to the value rather than replacing theirs, so the resume is accepted (a plain
/// key's new writer there is refused: it would replace the finished stage's value).
#[tokio::test(start_paused = true)]
async fn a_new_merge_writer_before_finished_ones_is_accepted_on_resume() {
    let store = InMemoryStore::new();
    merged::v1(1)
        .with_store(store.clone())
        .invoke(input! { merged::order: 1, merged::findings: vec!["x".to_string()] })
        .run_id("front")
        .await
        .unwrap_err();
    let out = merged::v3()
        .with_store(store.clone())
        .resume("front")
        .allow_version_change()
        .await
        .unwrap();
    assert_eq!(
        sorted(out[merged::findings].clone()),
        ["first1", "second1", "third1", "x"]
    );
}
