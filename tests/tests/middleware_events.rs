//! Events through middleware: the attempts a failure reports when a `Timeout` outside a
//! `Retry` ends the call, and one end per started stage when a skipped stage's entry is
//! still being stored as a sibling fails.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::Error;
use fluxio::prelude::*;
use fluxio_tests::{SkipStage, Tag};

fluxio::keys! {
    pub n: u64;
    pub out: u64;
    pub other: u64;
}

fn names(events: &fluxio_tests::Events) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|e| match e {
            fluxio::events::Event::StageStarted { stage, .. }
            | fluxio::events::Event::StageCompleted { stage, .. }
            | fluxio::events::Event::StageFailed { stage, .. }
            | fluxio::events::Event::StageCancelled { stage, .. }
            | fluxio::events::Event::StageSkipped { stage, .. } => format!("{} {stage}", e.name()),
            _ => e.name().to_string(),
        })
        .collect()
}

/// Each call takes 30 ms and fails.
#[stage(reads = [n], writes = [out])]
async fn slow_fail(_n: &u64, calls: Res<AtomicU32>) -> Result<u64, StageError> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    Err(StageError::msg("nope"))
}

// A `Timeout` middleware outside a `Retry` cuts the third attempt: the failure reports the
// attempts made, as the stage's own timeout does (it said 1).
#[tokio::test(start_paused = true)]
async fn a_timeout_outside_a_retry_reports_the_attempts_made() {
    let mut failures = Vec::new();
    for with_user_mw in [false, true] {
        let calls = Arc::new(AtomicU32::new(0));
        let (sink, events) = fluxio_tests::event_log();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = pipeline! { slow_fail }
            .with_shared_resource(calls.clone())
            .with_callback(sink)
            .with_middleware(Timeout::new(Duration::from_millis(80)));
        if with_user_mw {
            pipe = pipe.with_middleware(Tag::new("t", &log));
        }
        let pipe = pipe.with_middleware(Retry::constant(5, Duration::from_millis(5)));
        let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let got = fluxio_tests::attempts(&events, "stage.failed");
        if got != [("slow_fail", 3)] {
            failures.push((with_user_mw, got));
        }
    }
    assert!(
        failures.is_empty(),
        "(user middleware?, stage.failed attempts): {failures:?}"
    );
}

// A skipped stage in a durable run whose sibling fails: reported skipped, and nothing more
// (it was also reported cancelled, its entry being stored).
#[stage(reads = [n], writes = [out])]
async fn quick_ok(n: &u64) -> u64 {
    *n
}

#[stage(reads = [n], writes = [other])]
async fn quick_fail(_n: &u64) -> Result<u64, StageError> {
    Err(StageError::msg("broke"))
}

#[tokio::test]
async fn a_skipped_durable_stage_has_one_end_when_a_sibling_fails() {
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { parallel { quick_ok, quick_fail } }
        .with_store(fluxio::store::InMemoryStore::new())
        .with_middleware(SkipStage("quick_ok"))
        .with_callback(sink);
    pipe.invoke(input! { n: 1 })
        .run_id("r6b")
        .await
        .unwrap_err();
    let names = names(&events);
    let ends = names
        .iter()
        .filter(|n| {
            [
                "stage.completed ",
                "stage.failed ",
                "stage.cancelled ",
                "stage.skipped ",
            ]
            .iter()
            .any(|e| n.strip_prefix(e) == Some("quick_ok"))
        })
        .count();
    assert_eq!(ends, 1, "{names:?}");
}
