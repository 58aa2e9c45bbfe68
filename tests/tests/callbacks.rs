//! Callbacks, the event stream and `tracing` spans: what a run reports, and in which order.

use std::sync::{Arc, Mutex};

use fluxio::events::Event;
use fluxio::prelude::*;
use fluxio::{Error, StageEvent};
use fluxio_tests::{Events, SkipStage, attempts, event_log};

fluxio::keys! {
    pub n: u64;
    pub a: u64;
    pub b: u64;
    pub c: u64;
    pub bad: Unencodable;
    pub label: String;
    pub words: String;
}

#[stage(reads = [n], writes = [a])]
async fn first(n: &u64) -> u64 {
    n + 1
}

#[stage(reads = [a], writes = [b])]
async fn second(a: &u64) -> Result<u64, StageError> {
    if *a > 100 {
        return Err(StageError::msg("too big"));
    }
    Ok(a * 2)
}

/// The events of a successful run of `first, second`.
const A_THEN_B: [&str; 6] = [
    "pipeline.started",
    "stage.started first",
    "stage.completed first",
    "stage.started second",
    "stage.completed second",
    "pipeline.completed",
];

fn names(events: &Events) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|e| match e {
            Event::StageStarted { stage, .. }
            | Event::StageCompleted { stage, .. }
            | Event::StageFailed { stage, .. }
            | Event::StageSkipped { stage, .. }
            | Event::StageCancelled { stage, .. } => format!("{} {stage}", e.name()),
            other => other.name().to_string(),
        })
        .collect()
}

#[tokio::test]
async fn a_run_reports_its_lifecycle_in_order() {
    let (sink, events) = event_log();
    let pipe = pipeline! { first, second }.with_callback(sink);
    pipe.invoke(input! { n: 1 }).run_id("ok-run").await.unwrap();
    assert_eq!(names(&events), A_THEN_B);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.run_id() == "ok-run")
    );
}

#[tokio::test]
async fn a_failure_reports_the_stage_then_the_pipeline() {
    let (sink, events) = event_log();
    let pipe = pipeline! { first, second }.with_callback(sink);
    pipe.invoke(input! { n: 500 }).await.unwrap_err();
    let names = names(&events);
    assert_eq!(
        &names[names.len() - 2..],
        ["stage.failed second", "pipeline.failed"]
    );
    let last = events.lock().unwrap().last().cloned().unwrap();
    assert!(
        matches!(&last, Event::PipelineFailed { error, .. } if error.contains("too big")),
        "{last:?}"
    );
}

#[stage(reads = [label])]
async fn choose(label: &String) -> Route {
    Route::to(label.clone())
}

#[stage(writes = [a])]
async fn left() -> u64 {
    1
}

#[stage(writes = [a])]
async fn right() -> u64 {
    2
}

#[tokio::test]
async fn branches_not_taken_are_reported_skipped() {
    let (sink, events) = event_log();
    let pipe = pipeline! { choose => { "l" => [left], "r" => [right] } }.with_callback(sink);
    pipe.invoke(input! { label: "l".into() }).await.unwrap();
    assert!(
        names(&events).contains(&"stage.skipped right".to_string()),
        "{:?}",
        names(&events)
    );
}

/// What `inspect` says run `id` finished: (stage, skipped).
async fn finished_of(pipe: &fluxio::Pipeline, id: &str) -> Vec<(String, bool)> {
    let record = pipe.inspect(id).await.unwrap();
    record
        .finished
        .into_iter()
        .map(|f| (f.stage, f.skipped))
        .collect()
}

/// A stage in both branches of a route runs in the chosen one: it is not also reported
/// skipped (under its own name) for the other — in events or in `inspect`.
#[tokio::test]
async fn a_stage_in_both_branches_is_not_reported_skipped_when_it_runs() {
    let (sink, events) = event_log();
    let pipe = pipeline! { choose => { "l" => [left, right], "r" => [right] } }
        .with_callback(sink)
        .with_store(InMemoryStore::new());
    pipe.invoke(input! { label: "r".into() })
        .run_id("both")
        .await
        .unwrap();
    let names = names(&events);
    assert!(
        names.contains(&"stage.skipped left".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"stage.completed right".to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"stage.skipped right".to_string()),
        "{names:?}"
    );
    let finished = finished_of(&pipe, "both").await;
    assert_eq!(
        finished,
        [
            ("choose".to_string(), false),
            ("left".to_string(), true),
            ("right".to_string(), false)
        ]
    );
}

/// A stage in two branches not taken is reported skipped once — in events and in
/// `inspect` — whichever branch is taken.
#[tokio::test]
async fn a_stage_in_two_branches_not_taken_is_reported_skipped_once() {
    let (sink, events) = event_log();
    let pipe = pipeline! {
        choose => { "l" => [left], "r" => [right], "again" => [right] }
    }
    .with_callback(sink)
    .with_store(InMemoryStore::new());
    pipe.invoke(input! { label: "l".into() })
        .run_id("twice")
        .await
        .unwrap();
    let skipped: Vec<String> = names(&events)
        .into_iter()
        .filter(|n| n.starts_with("stage.skipped"))
        .collect();
    assert_eq!(skipped, ["stage.skipped right"]);
    let finished = finished_of(&pipe, "twice").await;
    assert_eq!(
        finished,
        [
            ("choose".to_string(), false),
            ("right".to_string(), true),
            ("left".to_string(), false)
        ]
    );
}

#[stage(reads = [n], writes = [a])]
async fn forever(n: &u64) -> u64 {
    std::future::pending::<()>().await;
    *n
}

/// Runs `pipe` (`forever`) on a task, aborts it once the stage started, and returns the
/// events seen.
async fn abort_once_started(pipe: fluxio::Pipeline, events: &Events) -> Vec<String> {
    let run = tokio::spawn(async move { pipe.invoke(input! { n: 1 }).run_id("dropped").await });
    while !names(events).iter().any(|n| n == "stage.started forever") {
        tokio::task::yield_now().await;
    }
    run.abort();
    let _ = run.await;
    names(events)
}

#[tokio::test]
async fn a_dropped_run_is_reported_cancelled() {
    let (sink, events) = event_log();
    let names = abort_once_started(pipeline! { forever }.with_callback(sink), &events).await;
    assert_eq!(
        &names[names.len() - 2..],
        ["stage.cancelled forever", "pipeline.cancelled"],
        "the started stage ends too"
    );
}

#[tokio::test]
async fn a_callback_kept_in_an_arc_hears_its_stages_cancelled() {
    // As the observability guide shows: keep an `Arc` to read what the callback saw.
    let (sink, events) = event_log();
    let sink = Arc::new(sink);
    let names =
        abort_once_started(pipeline! { forever }.with_callback(sink.clone()), &events).await;
    assert_eq!(
        &names[names.len() - 2..],
        ["stage.cancelled forever", "pipeline.cancelled"]
    );
}

#[stage(reads = [n], writes = [c])]
async fn breaks(n: &u64) -> Result<u64, StageError> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    Err(StageError::msg(format!("{n} broke")))
}

#[tokio::test(start_paused = true)]
async fn siblings_dropped_by_a_failure_are_reported_cancelled_before_the_run_fails() {
    let (sink, events) = event_log();
    let pipe = pipeline! { parallel { forever, breaks } }.with_callback(sink);
    pipe.invoke(input! { n: 1 }).await.unwrap_err();
    let names = names(&events);
    assert_eq!(
        &names[names.len() - 3..],
        [
            "stage.failed breaks",
            "stage.cancelled forever",
            "pipeline.failed"
        ]
    );
    // Every started stage ended one way.
    let started = names
        .iter()
        .filter(|n| n.starts_with("stage.started"))
        .count();
    let ended = names
        .iter()
        .filter(|n| {
            ["stage.completed", "stage.failed", "stage.cancelled"]
                .iter()
                .any(|end| n.starts_with(end))
        })
        .count();
    assert_eq!(started, ended, "{names:?}");
}

#[stage(reads = [n], writes = [c], timeout = "50ms")]
async fn stuck(n: &u64) -> u64 {
    std::future::pending::<()>().await;
    *n
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_timed_out_failed_and_its_sibling_is_cancelled() {
    let (sink, events) = event_log();
    let pipe = pipeline! { parallel { forever, stuck } }.with_callback(sink);
    let err = pipe.invoke(input! { n: 1 }).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { stage: "stuck", .. }),
        "{err:?}"
    );
    let names = names(&events);
    assert_eq!(
        &names[names.len() - 3..],
        [
            "stage.failed stuck",
            "stage.cancelled forever",
            "pipeline.failed"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn event_durations_serialize_as_milliseconds() {
    let (sink, events) = event_log();
    let pipe = pipeline! { slow_step }.with_callback(sink);
    pipe.invoke(input! { n: 1 }).await.unwrap();
    let completed = events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.name() == "stage.completed")
        .cloned()
        .unwrap();
    let json = serde_json::to_value(&completed).unwrap();
    assert_eq!(json["type"], "stage.completed");
    assert_eq!(json["duration_ms"], 2000.0, "{json}");
}

/// A stamped event serializes flat: the event's own fields and `at_ms`, the wall-clock
/// time it was stamped.
#[test]
fn a_stamped_event_carries_the_time_beside_its_fields() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stamped = fluxio::events::Event::PipelineStarted {
        run_id: "order-7".into(),
    }
    .stamped();
    let json = serde_json::to_value(&stamped).unwrap();
    assert_eq!(json["type"], "pipeline.started", "{json}");
    assert_eq!(json["run_id"], "order-7", "{json}");
    let at = json["at_ms"].as_u64().unwrap();
    assert!(at >= before && at < before + 60_000, "{json}");
    assert_eq!(json.as_object().unwrap().len(), 3, "{json}");
}

/// Counts the events that have no `Event` variant.
#[derive(Default, Clone)]
struct Extra(Arc<Mutex<Vec<String>>>);

impl fluxio::Callback for Extra {
    fn on_retry(&self, e: &StageEvent<'_>, error: &StageError, delay: Duration) {
        self.0.lock().unwrap().push(format!(
            "retry {} attempt {} ({error}) after {delay:?}",
            e.stage, e.attempt
        ));
    }
    fn on_chunk(&self, e: &StageEvent<'_>) {
        self.0.lock().unwrap().push(format!("chunk {}", e.stage));
    }
    fn on_checkpoint(&self, e: &StageEvent<'_>, bytes: usize) {
        self.0.lock().unwrap().push(format!(
            "checkpoint {} {} attempt {}",
            e.stage,
            bytes > 0,
            e.attempt
        ));
    }
}

#[stage(reads = [n], writes = [a])]
async fn flaky(n: &u64, calls: Res<std::sync::atomic::AtomicU32>) -> Result<u64, StageError> {
    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
        return Err(StageError::msg("first call fails"));
    }
    Ok(*n)
}

#[stage(reads = [words])]
fn say(words: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(
        words
            .split(' ')
            .map(|w| Ok(w.to_string()))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test(start_paused = true)]
async fn retries_chunks_and_checkpoints_are_reported() {
    let extra = Extra::default();
    let pipe = pipeline! { flaky, say }
        .with_resource(std::sync::atomic::AtomicU32::new(0))
        .with_middleware(Retry::constant(2, Duration::from_millis(5)))
        .with_callback(extra.clone())
        .with_store(InMemoryStore::new());
    pipe.invoke(input! { n: 1, words: "x y".into() })
        .run_id("extra")
        .await
        .unwrap();
    let log = extra.0.lock().unwrap().clone();
    assert!(
        log.contains(&"retry flaky attempt 1 (first call fails) after 5ms".to_string()),
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| *l == "chunk say").count(),
        2,
        "{log:?}"
    );
    // The entry stored is the second attempt's: the checkpoint says so, as the stage's
    // end does.
    assert!(
        log.contains(&"checkpoint flaky true attempt 2".to_string())
            && log.contains(&"checkpoint say true attempt 1".to_string()),
        "{log:?}"
    );
}

#[tokio::test]
async fn callback_errors_for_missing_inputs_come_before_any_stage() {
    let (sink, events) = event_log();
    let pipe = pipeline! { first }.with_callback(sink);
    let err = pipe.invoke(Ctx::new()).await.unwrap_err();
    assert!(matches!(err, Error::MissingInput { .. }));
    assert_eq!(names(&events), ["pipeline.started", "pipeline.failed"]);
}

#[stage(reads = [n], writes = [label])]
async fn third(n: &u64) -> String {
    n.to_string()
}

#[tokio::test]
async fn a_stage_skipped_by_middleware_is_reported_skipped_only() {
    let (sink, events) = event_log();
    let pipe = pipeline! { first, third }
        .with_middleware(SkipStage("first"))
        .with_callback(sink);
    let out = pipe.invoke(input! { n: 1 }).await.unwrap();
    assert!(!out.contains(a), "a skipped stage writes nothing");
    assert_eq!(
        names(&events),
        [
            "pipeline.started",
            "stage.started first",
            "stage.skipped first",
            "stage.started third",
            "stage.completed third",
            "pipeline.completed",
        ]
    );
}

/// Panics in every hook it has.
struct Clumsy;

impl fluxio::Callback for Clumsy {
    fn on_run_start(&self, _: &str) {
        panic!("clumsy on_run_start");
    }
    fn on_stage_start(&self, _: &StageEvent<'_>) {
        panic!("clumsy on_stage_start");
    }
    fn on_stage_end(&self, _: &StageEvent<'_>, _: Duration) {
        panic!("clumsy on_stage_end");
    }
    fn on_run_end(&self, _: &str, _: Result<&Ctx, &Error>, _: Duration) {
        panic!("clumsy on_run_end");
    }
}

#[tokio::test]
async fn a_callback_that_panics_does_not_fail_the_run_or_silence_the_others() {
    let (sink, events) = event_log();
    let pipe = pipeline! { first, second }
        .with_callback(Clumsy)
        .with_callback(sink);
    let out = pipe.invoke(input! { n: 1 }).run_id("clumsy").await.unwrap();
    assert_eq!(out[b], 4);
    assert_eq!(names(&events), A_THEN_B);
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_retries_is_reported_with_the_last_attempt() {
    let (sink, events) = event_log();
    let pipe = pipeline! { first, second }
        .with_middleware(Retry::constant(3, Duration::from_millis(5)))
        .with_callback(sink);
    let err = pipe.invoke(input! { n: 500 }).await.unwrap_err();
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert_eq!(attempts(&events, "stage.failed"), [("second", 3)]);
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_succeeds_on_a_retry_completes_with_that_attempt() {
    let (sink, events) = event_log();
    let pipe = pipeline! { flaky }
        .with_resource(std::sync::atomic::AtomicU32::new(0))
        .with_middleware(Retry::constant(3, Duration::from_millis(5)))
        .with_callback(sink);
    pipe.invoke(input! { n: 1 }).await.unwrap();
    assert_eq!(attempts(&events, "stage.completed"), [("flaky", 2)]);
}

#[stage(reads = [n], writes = [a])]
async fn slow_step(n: &u64) -> u64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    *n
}

#[tokio::test(start_paused = true)]
async fn durations_follow_tokios_clock_so_a_paused_test_can_check_them() {
    let (sink, events) = event_log();
    pipeline! { slow_step }
        .with_callback(sink)
        .invoke(input! { n: 1 })
        .await
        .unwrap();
    let durations: Vec<Duration> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::StageCompleted { duration, .. } | Event::PipelineCompleted { duration, .. } => {
                Some(*duration)
            }
            _ => None,
        })
        .collect();
    assert_eq!(durations.len(), 2, "{durations:?}");
    assert!(
        durations
            .iter()
            .all(|d| *d >= Duration::from_secs(2) && *d < Duration::from_secs(3)),
        "{durations:?}"
    );
}

#[stage(reads = [n], writes = [a])]
async fn quick_ok(n: &u64) -> u64 {
    *n
}

#[stage(reads = [n], writes = [c])]
async fn quick_fail(_n: &u64) -> Result<u64, StageError> {
    Err(StageError::msg("broke"))
}

/// A value that refuses to be encoded (a checkpoint cannot hold it).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses"))
    }
}

#[stage(reads = [n], writes = [bad])]
async fn makes_bad(_n: &u64) -> Unencodable {
    Unencodable
}

/// Every `stage.started` has exactly one end.
fn every_start_ends(names: &[String]) {
    for name in names
        .iter()
        .filter_map(|n| n.strip_prefix("stage.started "))
    {
        let ends = names
            .iter()
            .filter(|n| {
                ["stage.completed ", "stage.failed ", "stage.cancelled "]
                    .iter()
                    .any(|end| n.strip_prefix(end) == Some(name))
            })
            .count();
        assert_eq!(ends, 1, "`{name}` ends {ends} times: {names:?}");
    }
}

#[tokio::test]
async fn in_a_durable_run_every_started_stage_ends_too() {
    // A sibling whose entry was being stored when the run failed.
    let (sink, events) = event_log();
    let pipe = pipeline! { parallel { quick_ok, quick_fail } }
        .with_store(fluxio::store::InMemoryStore::new())
        .with_callback(sink);
    pipe.invoke(input! { n: 1 }).run_id("d1").await.unwrap_err();
    every_start_ends(&names(&events));

    // A stage whose writes cannot be stored.
    let (sink, events) = event_log();
    let pipe = pipeline! { makes_bad }
        .with_store(fluxio::store::InMemoryStore::new())
        .with_callback(sink);
    let err = pipe.invoke(input! { n: 1 }).run_id("d2").await.unwrap_err();
    assert!(err.to_string().contains("does not encode"), "{err}");
    let names = names(&events);
    every_start_ends(&names);
    assert!(
        names.contains(&"stage.failed makes_bad".to_string()),
        "{names:?}"
    );
}

/// A resume says so: `pipeline.resumed` after `pipeline.started`, naming the stages the
/// checkpoint holds as done; a fresh run has none.
#[tokio::test(start_paused = true)]
async fn a_resume_is_told_apart_from_a_fresh_run() {
    let store = InMemoryStore::new();
    let (sink, events) = event_log();
    let pipe = pipeline! { first, second }
        .with_store(store.clone())
        .with_callback(sink);
    // `second` fails on this input: `first` is stored as done.
    pipe.invoke(input! { n: 200 })
        .run_id("told-apart")
        .await
        .unwrap_err();
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.name() == "pipeline.resumed"),
        "a fresh run is not a resume"
    );
    events.lock().unwrap().clear();
    pipe.resume("told-apart").await.unwrap_err();
    let seen = events.lock().unwrap().clone();
    let names: Vec<&str> = seen.iter().map(|e| e.name()).collect();
    assert_eq!(
        names[..3],
        ["pipeline.started", "pipeline.resumed", "stage.started"],
        "{names:?}"
    );
    let json = serde_json::to_value(&seen[1]).unwrap();
    assert_eq!(json["type"], "pipeline.resumed");
    assert_eq!(json["run_id"], "told-apart");
    assert_eq!(json["finished"], serde_json::json!(["first"]), "{json}");
}

/// A durable call that is no run — its id held by a live run (a recovery sweep that lost a
/// race), nothing stored to resume, a resume of a completed run (answered with the stored
/// result) — is not reported as a run: no `pipeline.started`, no `pipeline.failed` for a
/// healthy run, no `pipeline.completed` counted twice. A call that fails (a version
/// refused) is a failed run, as before.
#[tokio::test]
async fn calls_that_are_no_run_are_not_reported_as_runs() {
    use fluxio::store::CheckpointStore;
    let store = InMemoryStore::new();
    let (sink, events) = event_log();
    let pipe = pipeline! { first }
        .with_store(store.clone())
        .with_callback(sink);
    let quiet = |what: &str| {
        let seen = names(&events);
        assert!(seen.is_empty(), "{what}: {seen:?}");
    };

    // Another instance holds the run.
    assert!(
        store
            .acquire("busy", "other", Duration::from_secs(30))
            .await
            .unwrap()
    );
    let err = pipe.resume("busy").await.unwrap_err();
    assert!(matches!(err, Error::RunIdInUse { .. }), "{err:?}");
    let err = pipe
        .invoke(input! { n: 1 })
        .run_id("busy")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RunIdInUse { .. }), "{err:?}");
    quiet("id in use");

    let err = pipe.resume("never-started").await.unwrap_err();
    assert!(matches!(err, Error::NoCheckpoint { .. }), "{err:?}");
    quiet("nothing to resume");

    pipe.invoke(input! { n: 1 }).run_id("done").await.unwrap();
    assert_eq!(
        names(&events),
        [
            "pipeline.started",
            "stage.started first",
            "stage.completed first",
            "pipeline.completed"
        ]
    );
    events.lock().unwrap().clear();
    pipe.resume("done").await.unwrap();
    quiet("a completed run's stored result");

    // Refused for a reason that is a failure: reported as one.
    let other = pipeline! { first, second }
        .with_store(store.clone())
        .with_callback(event_log().0);
    let (sink, failed) = event_log();
    let other = other.with_callback(sink);
    let err = other.resume("done").await.unwrap_err();
    assert!(matches!(err, Error::CheckpointVersion { .. }), "{err:?}");
    assert_eq!(names(&failed), ["pipeline.started", "pipeline.failed"]);
}
