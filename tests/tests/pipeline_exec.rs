//! Running pipelines: scheduling, routing, errors, timeouts, cancellation, resources.
//!
//! Overlap and ordering are proven with counters, barriers and event logs, never with
//! wall-clock thresholds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::prelude::*;
use fluxio::{Error, StageEvent};

fluxio::keys! {
    pub seed: u64;
    pub a_out: u64;
    pub b_out: u64;
    pub c_out: u64;
    pub d_out: u64;
    pub total: u64;
    pub label: String;
    pub picked: String;
    pub never: u64;
    pub pair_x: u64;
    pub pair_y: String;
}

/// Shared by the stages of one test through `Res<Probe>`.
#[derive(Default)]
struct Probe {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    log: Mutex<Vec<String>>,
    barrier: Option<tokio::sync::Barrier>,
}

impl Probe {
    fn with_barrier(n: usize) -> Self {
        Probe {
            barrier: Some(tokio::sync::Barrier::new(n)),
            ..Default::default()
        }
    }
    fn log(&self, s: impl Into<String>) {
        self.log.lock().unwrap().push(s.into());
    }
    fn events(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    async fn overlap(&self, who: &str) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.log(format!("{who} start"));
        if let Some(b) = &self.barrier {
            // Every waiter must be in flight at once to pass.
            tokio::time::timeout(Duration::from_secs(10), b.wait())
                .await
                .expect("stages did not overlap");
        }
        tokio::task::yield_now().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.log(format!("{who} end"));
    }
}

#[stage(reads = [seed], writes = [a_out])]
async fn stage_a(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("a").await;
    seed + 1
}

#[stage(reads = [seed], writes = [b_out])]
async fn stage_b(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("b").await;
    seed + 2
}

#[stage(reads = [seed], writes = [c_out])]
async fn stage_c(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("c").await;
    seed + 3
}

#[stage(reads = [a_out, b_out, c_out], writes = [total])]
async fn sum(a_out: &u64, b_out: &u64, c_out: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.log("sum");
    a_out + b_out + c_out
}

#[tokio::test]
async fn independent_stages_in_a_sequence_overlap_and_dependents_wait() {
    let probe = Arc::new(Probe::with_barrier(3));
    let pipe = pipeline! { stage_a, stage_b, stage_c, sum }.with_resource(probe.clone());
    let out = pipe.invoke(input! { seed: 10 }).await.unwrap();
    assert_eq!(out[total], 11 + 12 + 13);
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 3);
    let events = probe.events();
    let sum_at = events.iter().position(|e| e == "sum").unwrap();
    for who in ["a", "b", "c"] {
        let end = events
            .iter()
            .position(|e| *e == format!("{who} end"))
            .unwrap();
        assert!(end < sum_at, "`sum` ran before `{who}` ended: {events:?}");
    }
}

#[stage(reads = [seed], writes = [a_out])]
async fn chain_1(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("1").await;
    seed * 2
}

#[stage(reads = [a_out], writes = [b_out])]
async fn chain_2(a_out: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("2").await;
    a_out + 1
}

#[stage(reads = [b_out], writes = [c_out])]
async fn chain_3(b_out: u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("3").await;
    b_out * 10
}

#[tokio::test]
async fn read_after_write_runs_in_order_one_at_a_time() {
    let probe = Arc::new(Probe::default());
    let pipe = pipeline! { chain_1, chain_2, chain_3 }.with_resource(probe.clone());
    let out = pipe.invoke(input! { seed: 4 }).await.unwrap();
    assert_eq!(out[c_out], (4 * 2 + 1) * 10);
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(
        probe.events(),
        ["1 start", "1 end", "2 start", "2 end", "3 start", "3 end"]
    );
}

#[stage(reads = [seed], writes = [a_out])]
async fn par_a(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("a").await;
    *seed
}

#[stage(reads = [seed], writes = [b_out])]
async fn par_b(seed: &u64, probe: Res<Arc<Probe>>) -> u64 {
    probe.overlap("b").await;
    *seed
}

#[tokio::test]
async fn parallel_block_forks_and_merges() {
    let probe = Arc::new(Probe::with_barrier(2));
    let pipe = pipeline! { parallel { par_a, par_b } }.with_resource(probe.clone());
    let out = pipe.invoke(input! { seed: 9 }).await.unwrap();
    assert_eq!((out[a_out], out[b_out]), (9, 9));
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 2);
}

#[stage(reads = [label])]
async fn choose(label: &String) -> Route {
    Route::to(label.clone())
}

#[stage(writes = [picked])]
async fn left() -> String {
    "left".into()
}

#[stage(writes = [picked])]
async fn right() -> String {
    "right".into()
}

#[stage(reads = [picked], writes = [total])]
async fn after_route(picked: &String) -> u64 {
    picked.len() as u64
}

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl fluxio::Callback for Recorder {
    fn on_stage_start(&self, e: &StageEvent<'_>) {
        self.0.lock().unwrap().push(format!("start {}", e.stage));
    }
    fn on_stage_skip(&self, e: &StageEvent<'_>, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("skip {} ({reason})", e.stage));
    }
    fn on_stage_error(&self, e: &StageEvent<'_>, error: &Error, _: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(format!("error {}: {error}", e.stage));
    }
}

#[tokio::test]
async fn route_runs_one_branch_and_reports_the_others_skipped() {
    let rec = Recorder::default();
    let pipe = pipeline! {
        choose => { "l" => [left], "r" => [right] },
        after_route,
    }
    .with_callback(rec.clone());
    let out = pipe.invoke(input! { label: "r".into() }).await.unwrap();
    assert_eq!(out[picked], "right");
    assert_eq!(out[total], 5);
    let events = rec.events();
    assert!(
        events.contains(&"skip left (route `choose` chose `r`)".to_string()),
        "{events:?}"
    );
    assert!(!events.contains(&"start left".to_string()), "{events:?}");
    assert!(events.contains(&"start right".to_string()));
}

/// Writes `b_out` (not `picked`) in a branch.
#[stage(writes = [b_out])]
async fn other_branch() -> u64 {
    1
}

/// A route a middleware skipped took no branch: a read of what its branches write says so,
/// rather than that a branch was "not taken" (as if the route had chosen another).
#[tokio::test]
async fn a_read_whose_route_was_skipped_says_the_route_was_skipped() {
    let pipe = pipeline! {
        choose => { "l" => [left], "r" => [other_branch] },
        after_route,
    }
    .with_middleware(fluxio_tests::SkipStage("choose"));
    let err = pipe.invoke(input! { label: "l".into() }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `after_route` reads `picked`, but nothing wrote it: `left` is in branch `l` of \
         route `choose`, which was skipped by a middleware and took no branch"
    );

    // A route inside a branch not taken did not run at all.
    let pipe = pipeline! {
        choose => {
            "l" => [inner_choice => { "in" => [left], "out" => [other_branch] }],
            "r" => [other_branch],
        },
        after_route,
    };
    let err = pipe.invoke(input! { label: "r".into() }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `after_route` reads `picked`, but nothing wrote it: `left` is in branch `in` of \
         route `inner_choice`, which did not run"
    );
}

#[stage]
async fn inner_choice() -> Route {
    Route::to("in")
}

#[tokio::test]
async fn a_read_whose_writer_was_in_a_branch_not_taken_names_the_route() {
    let pipe = pipeline! {
        choose => { "l" => [left], "r" => [other_branch] },
        after_route,
    };
    let err = pipe.invoke(input! { label: "r".into() }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `after_route` reads `picked`, but nothing wrote it: `left` is in branch `l` of \
         route `choose`, which was not taken"
    );
    assert!(
        matches!(
            err,
            Error::MissingKey {
                stage: "after_route",
                key: "picked",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_read_a_nested_pipeline_did_not_write_names_the_nested_pipeline() {
    let sub = pipeline! { choose => { "l" => [left], "r" => [other_branch] } }.named("sub");
    let pipe = pipeline! { sub.clone(), after_route };
    let err = pipe.invoke(input! { label: "r".into() }).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `after_route` reads `picked`, but nothing wrote it: `sub` (a nested pipeline) \
         did not write it"
    );
}

#[tokio::test]
async fn unknown_route_label_is_an_error_naming_stage_and_label() {
    let pipe = pipeline! { choose => { "l" => [left], "r" => [right] } };
    let err = pipe
        .invoke(input! { label: "sideways".into() })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "route stage `choose` chose `sideways`, which is not one of its branches (`l`, `r`)"
    );
    match err {
        Error::UnknownRoute {
            stage,
            label,
            branches,
            ..
        } => {
            assert_eq!((stage, label.as_str()), ("choose", "sideways"));
            assert_eq!(branches, ["l", "r"]);
        }
        other => panic!("expected UnknownRoute, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_input_fails_before_any_stage_runs() {
    let rec = Recorder::default();
    let pipe = pipeline! { stage_a, stage_b }
        .with_callback(rec.clone())
        .with_resource(Arc::new(Probe::default()));
    let err = pipe.invoke(Ctx::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::MissingInput { key: "seed", .. }),
        "{err:?}"
    );
    assert!(rec.events().is_empty(), "{:?}", rec.events());
    assert_eq!(
        err.to_string(),
        "missing input `seed`: the pipeline reads it and no stage writes it before"
    );
}

#[tokio::test]
async fn missing_resource_fails_before_any_stage_runs() {
    let rec = Recorder::default();
    let pipe = pipeline! { left, stage_a }.with_callback(rec.clone());
    let err = pipe.invoke(input! { seed: 1 }).await.unwrap_err();
    match err {
        Error::MissingResource {
            stage,
            type_name,
            run_id: None,
        } => {
            assert_eq!(stage, "stage_a");
            assert!(type_name.contains("Probe"), "{type_name}");
        }
        other => panic!("expected MissingResource, got {other:?}"),
    }
    assert!(rec.events().is_empty());
    // The usual slip: a resource held in an `Arc`, given to `with_resource`, registers the
    // `Arc`. The message says what to call instead.
    let pipe = pipeline! { priced }.with_resource(Arc::new(Rates(3)));
    let err = pipe.invoke(input! { seed: 1 }).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingResource {
                stage: "priced",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("`.with_shared_resource(arc)`"),
        "{err}"
    );
    let pipe = pipeline! { priced }.with_shared_resource(Arc::new(Rates(3)));
    assert_eq!(pipe.invoke(input! { seed: 2 }).await.unwrap()[b_out], 6);

    // A stage of a nested pipeline (two levels down) is checked before anything runs too.
    let inner = pipeline! { stage_a };
    let middle = pipeline! { inner.named("inner") };
    let pipe = pipeline! { left, middle.named("middle") }.with_callback(rec.clone());
    let err = pipe.invoke(input! { seed: 1 }).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingResource {
                stage: "stage_a",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(rec.events().is_empty(), "{:?}", rec.events());
    // The nested pipeline's own resources count, as they do when it runs.
    let inner = pipeline! { stage_a }.with_resource(Arc::new(Probe::default()));
    let pipe = pipeline! { left, inner.named("inner") };
    assert_eq!(pipe.invoke(input! { seed: 1 }).await.unwrap()[a_out], 2);
}

/// A service's client, used as `Res<Rates>` (not `Res<Arc<Rates>>`).
struct Rates(u64);

#[stage(reads = [seed], writes = [b_out])]
async fn priced(seed: &u64, rates: Res<Rates>) -> u64 {
    seed * rates.0
}

/// An invoke is a future itself: it goes into `join_all` (and `select!`, `block_on`, …)
/// without `.into_future()`, each run starting when first polled.
#[tokio::test]
async fn invokes_are_futures_for_join_all() {
    let pipe = pipeline! { stage_a }.with_resource(Arc::new(Probe::default()));
    let runs = (1..=3).map(|i| pipe.invoke(input! { seed: i }).run_id(format!("job-{i}")));
    let done: Vec<_> = futures::future::join_all(runs).await;
    let outs: Vec<u64> = done.into_iter().map(|r| r.unwrap()[a_out]).collect();
    let one = pipe.invoke(input! { seed: 1 }).await.unwrap()[a_out];
    assert_eq!(outs.len(), 3);
    assert_eq!(outs[0], one);
    assert!(outs[0] < outs[1] && outs[1] < outs[2], "{outs:?}");
    // An invoke never polled runs nothing.
    drop(pipe.invoke(input! { seed: 9 }));
}

#[stage(writes = [never], timeout = "50ms")]
async fn slow() -> u64 {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    1
}

#[tokio::test(start_paused = true)]
async fn stage_timeout_is_an_error_naming_stage_and_duration() {
    let pipe = pipeline! { slow };
    let err = pipe.invoke(Ctx::new()).await.unwrap_err();
    match err {
        Error::Timeout { stage, after, .. } => {
            assert_eq!(stage, "slow");
            assert_eq!(after, Duration::from_millis(50));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

/// Works 150 ms without yielding (blocking its thread) before its first await, then waits
/// 20 ms: 170 ms in all, against a 100 ms timeout.
#[stage(writes = [never], timeout = "100ms")]
async fn works_before_awaiting() -> u64 {
    std::thread::sleep(Duration::from_millis(150));
    tokio::time::sleep(Duration::from_millis(20)).await;
    1
}

#[tokio::test]
async fn a_stage_timeout_counts_the_work_before_its_first_await() {
    // Real time: a blocked thread is what tokio's paused clock would not see.
    for pipe in [
        pipeline! { works_before_awaiting },
        // Through the engine too (its own timeout, not the middleware's).
        pipeline! { works_before_awaiting }.with_middleware(Retry::exponential(1)),
    ] {
        let err = pipe.invoke(Ctx::new()).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    stage: "works_before_awaiting",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

/// Signals when the stage starts and when its future is dropped.
struct CancelProbe {
    started: tokio::sync::Notify,
    dropped: AtomicUsize,
}

struct DropFlag(Arc<CancelProbe>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[stage(writes = [never])]
async fn hangs(probe: Res<Arc<CancelProbe>>) -> u64 {
    let _flag = DropFlag(Arc::clone(&probe));
    probe.started.notify_one();
    std::future::pending::<()>().await;
    0
}

#[tokio::test]
async fn dropping_the_invoke_future_cancels_stages_in_flight() {
    let probe = Arc::new(CancelProbe {
        started: tokio::sync::Notify::new(),
        dropped: AtomicUsize::new(0),
    });
    let pipe = pipeline! { hangs }.with_resource(probe.clone());
    let run = pipe.invoke(Ctx::new()).into_future();
    let waiter = probe.started.notified();
    tokio::select! {
        _ = run => panic!("the hanging stage finished"),
        _ = waiter => {}
    }
    // `select!` dropped the run future when the stage signalled it had started.
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 1);
}

use std::future::IntoFuture;

#[stage(writes = [never])]
async fn boom() -> u64 {
    panic!("kaboom")
}

#[tokio::test]
async fn a_panicking_stage_becomes_an_error_naming_it() {
    let pipe = pipeline! { boom };
    let err = pipe.invoke(Ctx::new()).await.unwrap_err();
    match &err {
        Error::Stage { stage, .. } => assert_eq!(*stage, "boom"),
        other => panic!("expected Stage, got {other:?}"),
    }
    assert_eq!(err.to_string(), "stage `boom` failed: panicked: kaboom");
    // The runtime survives: the same pipeline runs again.
    assert!(pipe.invoke(Ctx::new()).await.is_err());
}

#[stage(writes = [never])]
fn sync_boom() -> u64 {
    panic!("sync kaboom")
}

#[tokio::test]
async fn a_panicking_sync_stage_becomes_an_error_naming_it() {
    let err = pipeline! { sync_boom }
        .invoke(Ctx::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Stage {
                stage: "sync_boom",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("sync kaboom"));
}

#[stage(reads = [seed], writes = [a_out])]
async fn fails(seed: &u64) -> Result<u64, StageError> {
    Err(StageError::msg(format!("no luck with {seed}")))
}

#[tokio::test]
async fn stage_errors_name_the_stage() {
    let err = pipeline! { fails }
        .invoke(input! { seed: 3 })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "stage `fails` failed: no luck with 3");
}

/// A sync stage and an async stage side by side on a single-threaded runtime.
struct BlockingProbe {
    log: Mutex<Vec<&'static str>>,
    signal: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    wait: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

#[stage(writes = [a_out])]
fn blocking_stage(probe: Res<Arc<BlockingProbe>>) -> u64 {
    probe.log.lock().unwrap().push("sync started");
    std::thread::sleep(Duration::from_millis(200));
    let rx = probe.wait.lock().unwrap().take().unwrap();
    // Only reachable if the async stage ran while this one was blocking.
    let got = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    probe.log.lock().unwrap().push(if got {
        "sync saw async"
    } else {
        "sync never saw async"
    });
    1
}

#[stage(writes = [b_out])]
async fn async_beside(probe: Res<Arc<BlockingProbe>>) -> u64 {
    probe.log.lock().unwrap().push("async ran");
    probe
        .signal
        .lock()
        .unwrap()
        .take()
        .unwrap()
        .send(())
        .unwrap();
    2
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocking_sync_stage_does_not_stall_async_stages() {
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = Arc::new(BlockingProbe {
        log: Mutex::new(Vec::new()),
        signal: Mutex::new(Some(tx)),
        wait: Mutex::new(Some(rx)),
    });
    let pipe = pipeline! { blocking_stage, async_beside }.with_resource(probe.clone());
    let out = pipe.invoke(Ctx::new()).await.unwrap();
    assert_eq!((out[a_out], out[b_out]), (1, 2));
    let log = probe.log.lock().unwrap().clone();
    let pos = |e: &str| log.iter().position(|x| *x == e);
    assert!(
        pos("sync saw async").is_some(),
        "the sync stage blocked the runtime: {log:?}"
    );
    assert!(pos("async ran") < pos("sync saw async"), "{log:?}");
    assert_eq!(
        fluxio::StageKind::Sync,
        <blocking_stage as fluxio::Stage>::META.kind
    );
}

#[stage(reads = [seed], writes = [a_out, b_out])]
async fn ctx_style(ctx: Ctx) -> Result<Ctx, StageError> {
    let s = ctx[seed];
    Ok(ctx.set(a_out, s + 1).set(b_out, s + 2))
}

#[stage(reads = [seed], writes = [a_out])]
async fn ctx_sneaky(ctx: Ctx) -> Result<Ctx, StageError> {
    let s = ctx[seed];
    Ok(ctx.set(a_out, s).set(never, 0))
}

#[tokio::test]
async fn ctx_style_stages_write_declared_keys_and_are_checked() {
    let out = pipeline! { ctx_style }
        .invoke(input! { seed: 1 })
        .await
        .unwrap();
    assert_eq!((out[a_out], out[b_out]), (2, 3));
    let err = pipeline! { ctx_sneaky }
        .invoke(input! { seed: 1 })
        .await
        .unwrap_err();
    match err {
        Error::UndeclaredWrite { stage, key, .. } => {
            assert_eq!((stage, key), ("ctx_sneaky", "never"))
        }
        other => panic!("expected UndeclaredWrite, got {other:?}"),
    }
}

/// Reads `c_out` without declaring it, and says what it was given.
#[stage(reads = [seed], writes = [a_out, label], rollback = forget_peek)]
async fn ctx_peek(ctx: Ctx) -> Ctx {
    let undeclared = ctx.get(c_out).copied().unwrap_or(0);
    let given = ctx.keys().join(",");
    ctx.set(a_out, ctx[seed] + undeclared).set(label, given)
}

/// The rollback sees the stage's reads and writes, and nothing else.
async fn forget_peek(ctx: Ctx) -> Result<(), StageError> {
    ROLLBACK_SAW.lock().unwrap().push(ctx.keys().join(","));
    Ok(())
}

static ROLLBACK_SAW: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[stage(reads = [a_out], writes = [d_out])]
async fn fails_after_peek(a_out: &u64) -> Result<u64, StageError> {
    Err(StageError::msg(format!("no ({a_out})")))
}

#[tokio::test]
async fn a_ctx_style_stage_is_given_its_declared_reads_only() {
    // A key outside `reads` is not there for it, whatever the run holds: what the stage
    // computes cannot depend on something checkpoints, caches and the schedule ignore.
    let out = pipeline! { ctx_peek }
        .invoke(input! { seed: 1, c_out: 100 })
        .await
        .unwrap();
    assert_eq!(out[a_out], 1);
    assert_eq!(out[label], "seed");
    // The run's own context still holds the key.
    assert_eq!(out[c_out], 100);

    // Its rollback is given its reads and what it wrote.
    ROLLBACK_SAW.lock().unwrap().clear();
    let err = pipeline! { ctx_peek, fails_after_peek }
        .invoke(input! { seed: 1, c_out: 100 })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no (1)"), "{err}");
    assert_eq!(*ROLLBACK_SAW.lock().unwrap(), ["a_out,label,seed"]);
}

#[stage(reads = [seed], writes = [pair_x, pair_y])]
fn tuple_writer(seed: u64) -> Result<(u64, String), std::num::ParseIntError> {
    let parsed: u64 = "5".parse()?;
    Ok((seed + parsed, format!("#{seed}")))
}

#[tokio::test]
async fn tuple_returns_fill_writes_in_order() {
    let out = pipeline! { tuple_writer }
        .invoke(input! { seed: 7 })
        .await
        .unwrap();
    assert_eq!(out[pair_x], 12);
    assert_eq!(out[pair_y], "#7");
    // The original body stays callable.
    assert_eq!(tuple_writer::run(1).unwrap(), (6, "#1".to_string()));
}

#[stage(reads = [a_out], writes = [d_out])]
async fn after_sub(a_out: &u64) -> u64 {
    a_out * 100
}

#[tokio::test]
async fn nested_pipelines_run_as_one_node() {
    let inner = pipeline! { ctx_style };
    let outer = pipeline! { inner.clone(), after_sub };
    assert_eq!(outer.inputs(), vec!["seed"]);
    let out = outer.invoke(input! { seed: 1 }).await.unwrap();
    assert_eq!((out[a_out], out[b_out], out[d_out]), (2, 3, 200));
    assert_eq!(outer.graph().edges, vec![(0, 1)]);
}

/// A resource only the nested pipeline registers, and one both register.
struct Greeting(&'static str);
struct Suffix(&'static str);

#[stage(reads = [seed], writes = [label])]
async fn greet_seed(seed: &u64, greeting: Res<Greeting>, suffix: Res<Suffix>) -> String {
    format!("{} {seed}{}", greeting.0, suffix.0)
}

#[tokio::test]
async fn a_nested_pipeline_keeps_its_own_resources_and_the_outer_ones_fill_in() {
    let inner = pipeline! { greet_seed }
        .with_resource(Greeting("hello"))
        .with_resource(Suffix("!"));
    let outer = pipeline! { inner.clone(), after_label }.with_resource(Suffix("?"));
    let out = outer.invoke(input! { seed: 1 }).await.unwrap();
    assert_eq!(out[label], "hello 1!");
    assert_eq!(out[picked], "hello 1!?");
}

#[stage(reads = [label], writes = [picked])]
async fn after_label(label: &String, suffix: Res<Suffix>) -> String {
    format!("{label}{}", suffix.0)
}

#[tokio::test]
async fn runs_with_the_same_pipeline_are_independent() {
    let pipe = pipeline! { chain_1, chain_2, chain_3 }.with_resource(Arc::new(Probe::default()));
    let runs = (0..50u64).map(|i| {
        let pipe = pipe.clone();
        async move { pipe.invoke(input! { seed: i }).await.unwrap()[c_out] }
    });
    let outs = futures::future::join_all(runs).await;
    for (i, out) in outs.into_iter().enumerate() {
        assert_eq!(out, (i as u64 * 2 + 1) * 10);
    }
}

mod numbers {
    fluxio::keys! {
        pub id: u64;
    }
}

mod texts {
    fluxio::keys! {
        pub id: String;
    }
}

#[stage(writes = [numbers::id])]
fn make_number_id() -> u64 {
    7
}

#[stage(reads = [texts::id])]
fn read_text_id(id: &String) {
    let _ = id;
}

#[tokio::test]
async fn two_keys_with_one_name_are_refused_before_any_stage_runs() {
    let pipe = pipeline! { make_number_id, read_text_id };
    let err = pipe.invoke(Ctx::new()).await.unwrap_err();
    match &err {
        fluxio::Error::KeyClash {
            key,
            types,
            run_id: None,
        } => {
            assert_eq!(*key, "id");
            assert_eq!(*types, ["u64", "alloc::string::String"]);
        }
        other => panic!("expected KeyClash, got {other:?}"),
    }
    assert!(err.to_string().contains("must be unique"), "{err}");
}

#[tokio::test]
async fn a_value_of_another_type_under_the_name_is_not_called_missing() {
    // One stage on its own, given a context where `id` is a number.
    let harness = fluxio::testing::StepHarness::new(read_text_id);
    let err = harness.run(input! { numbers::id: 7 }).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("reads `id` as `String`") && text.contains("another type"),
        "{text}"
    );
}

static FIRST_CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[stage(reads = [seed], writes = [a_out])]
fn counted_first(seed: &u64) -> u64 {
    FIRST_CALLS.fetch_add(1, Ordering::SeqCst);
    *seed
}

#[stage(reads = [a_out, texts::id])]
fn text_after_a(a_out: &u64, id: &String) {
    let _ = (a_out, id);
}

#[tokio::test]
async fn an_input_of_another_type_is_refused_before_any_stage_runs() {
    let pipe = pipeline! { counted_first, text_after_a };
    let err = pipe
        .invoke(input! { seed: 1, numbers::id: 7 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            fluxio::Error::KeyType {
                stage: "text_after_a",
                key: "id",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(FIRST_CALLS.load(Ordering::SeqCst), 0, "no stage ran");
    // The right type runs.
    pipe.invoke(input! { seed: 1, texts::id: "x".to_string() })
        .await
        .unwrap();
    assert_eq!(FIRST_CALLS.load(Ordering::SeqCst), 1);
}

/// Depends on `a_out` (it runs after `sa`) without using its value.
#[stage(reads = [a_out], writes = [d_out])]
fn after_a(_a_out: &u64) -> u64 {
    99
}

#[tokio::test]
async fn an_underscored_parameter_reads_its_key_without_using_it() {
    let pipe = pipeline! { stage_a, after_a }.with_resource(Arc::new(Probe::default()));
    let out = pipe.invoke(input! { seed: 1 }).await.unwrap();
    assert_eq!(out[d_out], 99);
    assert_eq!(pipe.inputs(), ["seed"], "`a_out` comes from `sa`");
}

#[tokio::test]
async fn a_missing_input_that_a_later_stage_writes_names_both_stages() {
    // `after_a` reads `a_out`, which `stage_a` writes — but `stage_a` is declared after it,
    // so `a_out` is an input of the pipeline.
    let pipe = pipeline! { after_a, stage_a }.with_resource(Arc::new(Probe::default()));
    assert_eq!(pipe.inputs(), ["a_out", "seed"]);
    let err = pipe.invoke(input! { seed: 1 }).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InputWrittenLater {
                key: "a_out",
                reader: "after_a",
                writer: "stage_a",
                run_id: None,
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "missing input `a_out`: stage `after_a` reads it, and `stage_a`, which writes it, comes \
         after `after_a` in `pipeline!`; declare `stage_a` first, or pass `a_out` in the input"
    );
    // Given as an input, it is one.
    let out = pipe.invoke(input! { seed: 1, a_out: 5 }).await.unwrap();
    assert_eq!(out[d_out], 99);
}

/// Reads `picked` inside a branch.
#[stage(reads = [picked], writes = [d_out])]
async fn uses_picked(picked: &String) -> u64 {
    picked.len() as u64
}

/// Reads and writes `a_out`.
#[stage(reads = [a_out], writes = [a_out])]
async fn bump_a(a_out: &u64) -> u64 {
    a_out + 1
}

#[tokio::test]
async fn only_a_writer_that_could_run_first_is_named_for_a_missing_input() {
    // `right` writes `picked` in the other branch: it can never run before `uses_picked`.
    let pipe = pipeline! { choose => { "l" => [uses_picked], "r" => [right] } };
    let err = pipe.invoke(input! { label: "l".into() }).await.unwrap_err();
    assert!(
        matches!(err, Error::MissingInput { key: "picked", .. }),
        "{err:?}"
    );
    // `bump_a` writes `a_out` but reads it too: declaring it first would not help.
    let pipe = pipeline! { after_a, bump_a };
    let err = pipe.invoke(Ctx::new()).await.unwrap_err();
    assert!(
        matches!(err, Error::MissingInput { key: "a_out", .. }),
        "{err:?}"
    );
}

/// Stages whose names are one letter, as the macros' own generated names might be.
mod short_names {
    use super::*;

    #[stage(reads = [seed], writes = [a_out])]
    async fn c(seed: &u64) -> u64 {
        seed + 1
    }

    #[stage(reads = [a_out], writes = [b_out])]
    async fn e(a_out: &u64) -> u64 {
        a_out * 2
    }

    #[tokio::test]
    async fn stages_may_have_any_name_the_macros_use_internally() {
        let out = pipeline! { c, e }
            .with_middleware(Retry::constant(2, Duration::ZERO))
            .invoke(input! { seed: 1 })
            .await
            .unwrap();
        assert_eq!(out[b_out], 4);
    }
}

#[tokio::test]
async fn a_named_runs_mid_run_errors_name_it() {
    let pipe = pipeline! { choose => { "l" => [left], "r" => [right] } };
    let err = pipe
        .invoke(input! { label: "up".into() })
        .run_id("r-7")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "run `r-7`: route stage `choose` chose `up`, which is not one of its branches (`l`, `r`)"
    );
    let pipe = pipeline! {
        choose => { "l" => [left], "r" => [other_branch] },
        after_route,
    };
    let err = pipe
        .invoke(input! { label: "r".into() })
        .run_id("r-8")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingKey { run_id: Some(id), .. } if id == "r-8"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("run `r-8`: stage `after_route` reads `picked`")
    );
}

/// How many sync bodies started.
#[derive(Default)]
struct Started(std::sync::atomic::AtomicU32);

#[stage(reads = [seed], writes = [a_out])]
fn occupy_pool_a(seed: &u64, started: Res<Started>) -> u64 {
    started.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(300));
    *seed
}

#[stage(reads = [seed], writes = [b_out])]
fn occupy_pool_b(seed: &u64, started: Res<Started>) -> u64 {
    started.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(300));
    *seed
}

#[stage(reads = [seed], writes = [c_out])]
async fn fails_soon(seed: &u64) -> Result<u64, StageError> {
    let _ = seed;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    Err(StageError::msg("failed"))
}

#[test]
fn a_sync_stage_waiting_for_the_blocking_pool_never_starts_once_its_run_failed() {
    // One blocking thread: one of the two sync stages runs, the other waits for it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let started = Arc::new(Started::default());
    rt.block_on(async {
        let pipe = pipeline! { parallel { occupy_pool_a, occupy_pool_b, fails_soon } }
            .with_shared_resource(started.clone());
        pipe.invoke(input! { seed: 1 }).await.unwrap_err();
    });
    // Past the running one's end: the waiting one would have started by now.
    std::thread::sleep(std::time::Duration::from_millis(600));
    drop(rt);
    assert_eq!(started.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// The run id of an error, for the checks below.
fn run_id_of(err: &Error) -> Option<&str> {
    match err {
        Error::MissingInput { run_id, .. }
        | Error::InputWrittenLater { run_id, .. }
        | Error::MissingResource { run_id, .. }
        | Error::KeyType { run_id, .. }
        | Error::KeyClash { run_id, .. } => run_id.as_deref(),
        other => panic!("not a check made before the run: {other:?}"),
    }
}

#[tokio::test]
async fn the_checks_before_a_named_run_name_it() {
    let probe = Arc::new(Probe::default());
    let cases = [
        (
            pipeline! { stage_a, stage_b }.with_resource(probe.clone()),
            Ctx::new(),
            "run `order-7`: missing input `seed`",
        ),
        (
            pipeline! { after_a, stage_a }.with_resource(probe.clone()),
            input! { seed: 1 },
            "run `order-7`: missing input `a_out`: stage `after_a` reads it",
        ),
        (
            pipeline! { left, stage_a },
            input! { seed: 1 },
            "run `order-7`: stage `stage_a` needs resource",
        ),
        (
            pipeline! { counted_first, text_after_a },
            input! { seed: 1, numbers::id: 7 },
            "run `order-7`: stage `text_after_a` reads `id` as `String`",
        ),
        (
            pipeline! { make_number_id, read_text_id },
            Ctx::new(),
            "run `order-7`: two keys of the pipeline are named `id`",
        ),
    ];
    for (pipe, input, text) in cases {
        let err = pipe
            .invoke(input.clone())
            .run_id("order-7")
            .await
            .unwrap_err();
        assert_eq!(run_id_of(&err), Some("order-7"), "{err:?}");
        assert!(err.to_string().starts_with(text), "{err}");
        // Unnamed, they name no run.
        let err = pipe.invoke(input).await.unwrap_err();
        assert_eq!(run_id_of(&err), None, "{err:?}");
    }
}

#[tokio::test]
async fn a_durable_run_refused_before_it_starts_names_the_id_it_was_given() {
    let pipe = pipeline! { stage_a, stage_b }
        .with_resource(Arc::new(Probe::default()))
        .with_store(fluxio::store::InMemoryStore::new());
    let err = pipe.invoke(Ctx::new()).await.unwrap_err();
    let id = run_id_of(&err).expect("a stored run has an id, to resume it by");
    assert!(
        err.to_string()
            .starts_with(&format!("run `{id}`: missing input `seed`")),
        "{err}"
    );
}
