//! `#[merge]` keys: several stages add to one key — in a `parallel` block too — and the
//! value holds every addition, in memory, through a cache, and after a durable resume.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fluxio::prelude::*;

fluxio::keys! {
    pub order: u64;
    /// Every check adds what it found.
    #[merge]
    pub findings: Vec<String>;
    /// Tags, a set: the order the checks finish in does not show.
    #[merge]
    pub tags: BTreeSet<String>;
    pub verdict: String;
}

#[stage(reads = [order], writes = [findings, tags])]
async fn check_fraud(order: &u64) -> (Vec<String>, BTreeSet<String>) {
    (
        vec![format!("fraud ok for {order}")],
        BTreeSet::from(["checked".to_string()]),
    )
}

#[stage(reads = [order], writes = [findings, tags])]
async fn check_stock(order: &u64) -> (Vec<String>, BTreeSet<String>) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    (
        vec![format!("stock ok for {order}")],
        BTreeSet::from(["checked".to_string(), "stock".to_string()]),
    )
}

#[stage(reads = [findings, tags], writes = [verdict])]
async fn decide(findings: &[String], tags: &BTreeSet<String>) -> String {
    format!("{} finding(s), tags {tags:?}", findings.len())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn stages_of_a_parallel_block_all_add_to_a_merge_key() {
    let pipe = pipeline! { parallel { check_fraud, check_stock }, decide };
    let out = pipe.invoke(input! { order: 7 }).await.unwrap();
    assert_eq!(
        sorted(out[findings].clone()),
        ["fraud ok for 7", "stock ok for 7"]
    );
    assert_eq!(
        out[tags],
        BTreeSet::from(["checked".to_string(), "stock".to_string()])
    );
    assert_eq!(out[verdict], r#"2 finding(s), tags {"checked", "stock"}"#);
}

#[tokio::test(start_paused = true)]
async fn writes_add_to_a_value_given_in_the_input() {
    let pipe = pipeline! { check_fraud, check_stock };
    let out = pipe
        .invoke(input! { order: 1, findings: vec!["from the caller".to_string()], tags: BTreeSet::new() })
        .await
        .unwrap();
    let all = out[findings].clone();
    assert_eq!(all[0], "from the caller", "the input's value comes first");
    assert_eq!(
        sorted(all),
        ["fraud ok for 1", "from the caller", "stock ok for 1"]
    );
}

/// Two writers of a merge key in a sequence do not wait for each other: both must be in
/// flight at once to pass the barrier.
#[stage(reads = [order], writes = [findings])]
async fn meet_a(order: &u64, barrier: Res<tokio::sync::Barrier>) -> Vec<String> {
    barrier.wait().await;
    vec![format!("a{order}")]
}

#[stage(reads = [order], writes = [findings])]
async fn meet_b(order: &u64, barrier: Res<tokio::sync::Barrier>) -> Vec<String> {
    barrier.wait().await;
    vec![format!("b{order}")]
}

#[tokio::test(start_paused = true)]
async fn writers_of_a_merge_key_in_a_sequence_run_at_the_same_time() {
    let pipe = pipeline! { meet_a, meet_b }.with_resource(tokio::sync::Barrier::new(2));
    let out = tokio::time::timeout(Duration::from_secs(5), pipe.invoke(input! { order: 3 }))
        .await
        .expect("the two writers ran one after the other")
        .unwrap();
    assert_eq!(sorted(out[findings].clone()), ["a3", "b3"]);
}

/// A stage that reads the key sees it whole, and what it writes replaces it.
#[stage(reads = [findings], writes = [findings])]
async fn dedupe(findings: &[String]) -> Vec<String> {
    let mut all = findings.to_vec();
    all.sort();
    all.dedup();
    all
}

#[stage(reads = [order], writes = [findings])]
async fn again(order: &u64) -> Vec<String> {
    vec![format!("fraud ok for {order}")]
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_reads_a_merge_key_replaces_it() {
    let pipe = pipeline! { check_fraud, again, dedupe };
    let out = pipe.invoke(input! { order: 2 }).await.unwrap();
    assert_eq!(out[findings], ["fraud ok for 2"]);
}

/// A durable run fails after one writer finished; the resume runs the other, and the value
/// holds both — the finished stage's addition restored from its checkpoint entry, not
/// run again. `inspect` and `diff` see the merged value too.
#[stage(reads = [order], writes = [findings])]
async fn flaky_check(order: &u64, fails: Res<AtomicU32>) -> Result<Vec<String>, StageError> {
    if fails.fetch_sub(1, Ordering::SeqCst) > 0 {
        return Err(StageError::msg("check service down"));
    }
    Ok(vec![format!("flaky ok for {order}")])
}

#[stage(reads = [order], writes = [findings])]
async fn counted_check(order: &u64, runs: Res<Arc<AtomicU32>>) -> Vec<String> {
    runs.fetch_add(1, Ordering::SeqCst);
    vec![format!("counted ok for {order}")]
}

#[tokio::test(start_paused = true)]
async fn a_resumed_run_holds_every_addition() {
    let store = InMemoryStore::new();
    let runs = Arc::new(AtomicU32::new(0));
    let pipe = pipeline! { counted_check, flaky_check }
        .with_resource(AtomicU32::new(1))
        .with_resource(runs.clone())
        .with_store(store.clone());
    let err = pipe
        .invoke(input! { order: 5 })
        .run_id("merge-1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("check service down"), "{err}");
    let out = pipe.resume("merge-1").await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the finished writer is not run again"
    );
    assert_eq!(
        sorted(out[findings].clone()),
        ["counted ok for 5", "flaky ok for 5"]
    );
    let record = pipe.inspect("merge-1".to_string()).await.unwrap();
    assert_eq!(record.ctx[findings], out[findings]);
    // A completed run resumed returns the same merged value.
    let completed = pipe.resume("merge-1").await.unwrap();
    assert_eq!(completed[findings], out[findings]);
    // Another run with one more finding differs from it on that key only.
    let pipe2 = pipeline! { counted_check, flaky_check }
        .with_resource(AtomicU32::new(0))
        .with_resource(runs.clone())
        .with_store(store.clone());
    pipe2
        .invoke(input! { order: 5 })
        .run_id("merge-2")
        .await
        .unwrap();
    assert!(
        pipe2
            .diff("merge-1", format!("merge-{}", 2))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A nested pipeline's writes of a merge key are its value after its stages: they replace
/// the outer value, and the nested pipeline is ordered against the other writers.
#[tokio::test(start_paused = true)]
async fn a_nested_pipeline_writing_a_merge_key_keeps_every_addition() {
    let checks = pipeline! { parallel { check_fraud, check_stock } }.named("checks");
    let pipe = pipeline! { again, checks.clone(), decide };
    let out = pipe.invoke(input! { order: 4 }).await.unwrap();
    assert_eq!(
        sorted(out[findings].clone()),
        ["fraud ok for 4", "fraud ok for 4", "stock ok for 4"]
    );
}

/// A cache hit gives the stage's own addition, merged like a run of the stage.
#[tokio::test(start_paused = true)]
async fn a_cache_hit_adds_what_the_stage_added() {
    let cache = Cache::ttl(Duration::from_secs(60));
    let pipe = pipeline! { parallel { check_fraud, check_stock } }.with_middleware(cache.clone());
    let first = pipe.invoke(input! { order: 9 }).await.unwrap();
    let second = pipe.invoke(input! { order: 9 }).await.unwrap();
    assert_eq!(cache.stats().hits, 2);
    assert_eq!(
        sorted(first[findings].clone()),
        sorted(second[findings].clone())
    );
    assert_eq!(second[findings].len(), 2);
}
