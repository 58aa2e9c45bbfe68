//! Adversarial review: random outcomes and timings for the stages of a pipeline with a
//! parallel block, fallbacks, rollbacks and timeouts; every run must keep the promises
//! callbacks and rollbacks make.

use std::collections::HashMap;
use std::sync::Arc;

use fluxio::Error;
use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub a: u64;
    pub b: u64;
    pub c: u64;
    pub d: u64;
    pub e: u64;
}

#[derive(Clone, Copy, Debug)]
enum Beh {
    Ok(u64),
    Err(u64),
    Panic(u64),
    Hang,
}

#[derive(Default, Debug)]
struct Script(HashMap<&'static str, Beh>);

async fn act(script: &Script, name: &'static str) -> Result<u64, StageError> {
    let beh = script.0.get(name).copied().unwrap_or(Beh::Ok(0));
    match beh {
        Beh::Ok(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(1)
        }
        Beh::Err(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Err(StageError::msg(format!("{name} failed")))
        }
        Beh::Panic(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            panic!("{name} panicked")
        }
        Beh::Hang => std::future::pending().await,
    }
}

#[stage(reads = [n], writes = [a], rollback = rb_s1, fallback = fb_s1)]
async fn s1(n: &u64, s: Res<Script>) -> Result<u64, StageError> {
    let _ = n;
    act(&s, "s1").await
}
async fn rb_s1(_n: &u64, s: Res<Script>) -> Result<(), StageError> {
    act(&s, "rb_s1").await.map(|_| ())
}
async fn fb_s1(_n: &u64, s: Res<Script>) -> Result<u64, StageError> {
    act(&s, "fb_s1").await
}

#[stage(reads = [a], writes = [b], rollback = rb_s2, timeout = "40ms")]
async fn s2(a: &u64, s: Res<Script>) -> Result<u64, StageError> {
    let _ = a;
    act(&s, "s2").await
}
async fn rb_s2(_a: &u64, s: Res<Script>) -> Result<(), StageError> {
    act(&s, "rb_s2").await.map(|_| ())
}

#[stage(reads = [a], writes = [c], fallback = fb_s3)]
async fn s3(a: &u64, s: Res<Script>) -> Result<u64, StageError> {
    let _ = a;
    act(&s, "s3").await
}
async fn fb_s3(_a: &u64, s: Res<Script>) -> Result<u64, StageError> {
    act(&s, "fb_s3").await
}

#[stage(reads = [a], writes = [d], rollback = rb_s4, fallback = fb_s4, timeout = "60ms")]
async fn s4(a: &u64, s: Res<Script>) -> Result<u64, StageError> {
    let _ = a;
    act(&s, "s4").await
}
async fn rb_s4(_a: &u64, s: Res<Script>) -> Result<(), StageError> {
    act(&s, "rb_s4").await.map(|_| ())
}
async fn fb_s4(_a: &u64, s: Res<Script>) -> Result<u64, StageError> {
    act(&s, "fb_s4").await
}

#[stage(reads = [b, c, d], writes = [e], rollback = rb_s5)]
async fn s5(b: &u64, c: &u64, d: &u64, s: Res<Script>) -> Result<u64, StageError> {
    let _ = (b, c, d);
    act(&s, "s5").await
}
async fn rb_s5(_b: &u64, _c: &u64, _d: &u64, s: Res<Script>) -> Result<(), StageError> {
    act(&s, "rb_s5").await.map(|_| ())
}

use fluxio_tests::LifecycleLog as Log;

/// A user's middleware that passes every call through (the boxed path).
struct Pass;
impl fluxio::middleware::Middleware for Pass {
    fn handle<'a>(
        &'a self,
        call: fluxio::middleware::StageCall<'a>,
        next: fluxio::middleware::Next<'a>,
    ) -> fluxio::store::BoxFuture<'a, Result<fluxio::StageOutput, StageError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let out = next.run(call).await;
            tokio::task::yield_now().await;
            out
        })
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_beh(rng: &mut Rng) -> Beh {
    let ms = rng.below(5) * 10;
    match rng.below(10) {
        0..=5 => Beh::Ok(ms),
        6 | 7 => Beh::Err(ms),
        8 => Beh::Panic(ms),
        _ => Beh::Hang,
    }
}

const STAGES: [&str; 5] = ["s1", "s2", "s3", "s4", "s5"];
const WITH_ROLLBACK: [&str; 4] = ["s1", "s2", "s4", "s5"];

fn check(seed: u64, script: &Script, lines: &[String], result: &Result<Ctx, Error>, mw: u64) {
    let ctx = format!("seed {seed} mw {mw} script {script:?}\n{lines:#?}\nresult {result:?}");
    // Every started stage ends exactly once.
    for s in STAGES {
        let starts = lines.iter().filter(|l| **l == format!("start {s}")).count();
        let ends = lines
            .iter()
            .filter(|l| {
                ["end", "error", "cancelled", "skip"]
                    .iter()
                    .any(|p| **l == format!("{p} {s}"))
            })
            .count();
        assert!(starts <= 1, "{ctx}");
        assert_eq!(starts, ends, "stage {s}: {ctx}");
        // Its end comes after its start.
        if starts == 1 {
            let st = lines
                .iter()
                .position(|l| *l == format!("start {s}"))
                .unwrap();
            let en = lines
                .iter()
                .position(|l| {
                    ["end", "error", "cancelled", "skip"]
                        .iter()
                        .any(|p| **l == format!("{p} {s}"))
                })
                .unwrap();
            assert!(st < en, "stage {s}: {ctx}");
        }
    }
    let run_ends: Vec<_> = lines.iter().filter(|l| l.starts_with("run_")).collect();
    assert_eq!(run_ends.len(), 2, "{ctx}");
    assert_eq!(lines.first().unwrap(), "run_start", "{ctx}");
    assert!(lines.last().unwrap().starts_with("run_end"), "{ctx}");
    let errors = lines.iter().filter(|l| l.starts_with("error ")).count();
    match result {
        Ok(_) => {
            assert_eq!(lines.last().unwrap(), "run_end ok", "{ctx}");
            assert_eq!(errors, 0, "{ctx}");
            assert!(!lines.iter().any(|l| l.starts_with("rollback")), "{ctx}");
            assert!(!lines.iter().any(|l| l.starts_with("cancelled")), "{ctx}");
            for s in STAGES {
                assert!(lines.contains(&format!("end {s}")), "{ctx}");
            }
        }
        Err(_) => {
            assert_eq!(lines.last().unwrap(), "run_end err", "{ctx}");
            assert_eq!(errors, 1, "exactly one stage fails the run: {ctx}");
            let first_err = lines.iter().position(|l| l.starts_with("error ")).unwrap();
            // Nothing starts or completes after the failure.
            assert!(
                !lines[first_err..].iter().any(|l| l.starts_with("start ")
                    || l.starts_with("end ")
                    || l.starts_with("fallback ")),
                "{ctx}"
            );
            // The finished stages with a rollback are rolled back, last finished first.
            let (finished, rolled) = rollback_orders(lines);
            assert_eq!(rolled, finished, "{ctx}");
            // Rollbacks come after every stage's end.
            if let Some(first_rb) = lines.iter().position(|l| l.starts_with("rollback ")) {
                assert!(
                    !lines[first_rb..]
                        .iter()
                        .any(|l| l.starts_with("cancelled ") || l.starts_with("error ")),
                    "{ctx}"
                );
            }
        }
    }
}

async fn one(seed: u64) {
    one_with(seed, false, None).await;
}

/// From a run's log: its finished stages that have a rollback, last finished first (the
/// order their rollbacks must run in), and the rollbacks that ran, in order.
fn rollback_orders(lines: &[String]) -> (Vec<&str>, Vec<&str>) {
    let mut finished: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("end "))
        .filter(|s| WITH_ROLLBACK.contains(s))
        .collect();
    finished.reverse();
    let rolled = lines
        .iter()
        .filter_map(|l| l.strip_prefix("rollback "))
        .map(|l| l.trim_end_matches(" failed"))
        .collect();
    (finished, rolled)
}

fn is_subsequence(small: &[&str], big: &[&str]) -> bool {
    let mut it = big.iter();
    small.iter().all(|x| it.any(|y| y == x))
}

/// A run of the script of `seed`, durable or not, dropped after `drop_after` ms if given.
async fn one_with(seed: u64, durable: bool, drop_after: Option<u64>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut script = Script::default();
    for name in [
        "s1", "s2", "s3", "s4", "s5", "fb_s1", "fb_s3", "fb_s4", "rb_s1", "rb_s2", "rb_s4", "rb_s5",
    ] {
        let mut beh = random_beh(&mut rng);
        if name.starts_with("rb_") && matches!(beh, Beh::Hang) {
            beh = Beh::Ok(20);
        }
        script.0.insert(name, beh);
    }
    // s5 must not hang forever in a run nothing else fails (no timeout there).
    if matches!(script.0["s5"], Beh::Hang) {
        script.0.insert("s5", Beh::Ok(5));
    }
    if matches!(script.0["s3"], Beh::Hang) {
        script.0.insert("s3", Beh::Err(5));
    }
    if matches!(script.0["fb_s3"], Beh::Hang) {
        script.0.insert("fb_s3", Beh::Ok(5));
    }
    if matches!(script.0["s1"], Beh::Hang) {
        script.0.insert("s1", Beh::Err(5));
    }
    if matches!(script.0["fb_s1"], Beh::Hang) {
        script.0.insert("fb_s1", Beh::Ok(5));
    }
    let mw = rng.below(64);
    let log = Log::default();
    let mut pipe = pipeline! { s1, parallel { s2, s3, s4 }, s5 };
    // The resume's pipeline: the same flow and store, fresh middleware (none).
    let bare = pipe.clone();
    if mw & 4 == 4 {
        pipe = pipe.with_middleware(Pass);
    }
    if mw & 16 == 16 {
        pipe = pipe.with_middleware(CircuitBreaker::new(1));
    }
    if mw & 1 == 1 {
        pipe = pipe.with_middleware(Retry::constant(2, Duration::from_millis(7)));
    }
    if mw & 2 == 2 {
        pipe = pipe.with_middleware(Timeout::new(Duration::from_millis(35)));
    }
    if mw & 8 == 8 {
        pipe = pipe.with_middleware(Cache::ttl(Duration::from_secs(1)));
    }
    if mw & 32 == 32 {
        pipe = pipe.with_middleware(Pass);
    }
    let script = Arc::new(script);
    let store = InMemoryStore::new();
    if durable {
        pipe = pipe.with_store(store.clone());
    }
    let base = bare.with_store(store.clone());
    let pipe = pipe
        .with_shared_resource(script.clone())
        .with_callback(log.clone());
    let run_id = format!("fuzz-{seed}");
    let limit = Duration::from_millis(drop_after.unwrap_or(3_600_000));
    let outcome =
        tokio::time::timeout(limit, pipe.invoke(input! { n: 1 }).run_id(run_id.clone())).await;
    let lines = log.lines();
    let ctx = format!(
        "seed {seed} durable {durable} drop {drop_after:?} mw {mw} script {script:?}\n{lines:#?}\noutcome {outcome:?}"
    );
    let result = match outcome {
        Ok(result) => {
            if durable {
                check_durable(&ctx, &lines, &result);
            } else {
                check(seed, &script, &lines, &result, mw);
            }
            Some(result)
        }
        Err(_) => {
            assert!(drop_after.is_some(), "hung: {ctx}");
            // Dropped: every started stage ends, the run is cancelled, once.
            each_start_ends(&lines, &ctx);
            assert_eq!(
                lines.last().map(String::as_str),
                Some("run_cancelled"),
                "{ctx}"
            );
            assert!(!lines.iter().any(|l| l.starts_with("run_end")), "{ctx}");
            None
        }
    };
    if !durable {
        return;
    }
    // Resume with every stage and rollback succeeding at once.
    tokio::task::yield_now().await;
    let log2 = Log::default();
    let ok_script: Arc<Script> = Arc::new(Script::default());
    let again = base
        .with_shared_resource(ok_script)
        .with_callback(log2.clone());
    let resumed = again.resume(run_id.as_str()).await;
    let lines2 = log2.lines();
    let ctx = format!("{ctx}\nresume {resumed:?}\n{lines2:#?}");
    let ended_before: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("end "))
        .collect();
    match (&result, &resumed) {
        (Some(Ok(_)), Ok(_)) => {
            assert!(!lines2.iter().any(|l| l.starts_with("start ")), "{ctx}");
        }
        (_, Err(Error::RolledBack { .. })) => {
            // Only a run whose rollbacks all ran (here or in the resume).
            let rolled_first = lines.iter().any(|l| l.starts_with("rollback "));
            let rolled_now = lines2.iter().any(|l| l.starts_with("rollback "));
            assert!(
                rolled_first
                    || rolled_now
                    || ended_before.iter().all(|s| !WITH_ROLLBACK.contains(s)),
                "{ctx}"
            );
            assert!(!lines2.iter().any(|l| l.starts_with("start ")), "{ctx}");
        }
        (_, Ok(_)) => {
            // Stages that completed (stored) before do not run again.
            for st in &ended_before {
                assert!(
                    !lines2.contains(&format!("start {st}")),
                    "{st} ran again: {ctx}"
                );
            }
            // And nothing was rolled back before (or it would be refused).
            assert!(!lines.iter().any(|l| l.starts_with("rollback ")), "{ctx}");
        }
        (_, Err(e)) => panic!("resume failed with {e}: {ctx}"),
    }
}

/// Every start of a stage (a retry starts it again) has its own end.
fn each_start_ends(lines: &[String], ctx: &str) {
    for st in STAGES {
        let starts = lines
            .iter()
            .filter(|l| **l == format!("start {st}"))
            .count();
        let ends = lines
            .iter()
            .filter(|l| {
                ["end", "error", "cancelled", "skip"]
                    .iter()
                    .any(|p| **l == format!("{p} {st}"))
            })
            .count();
        assert_eq!(starts, ends, "stage {st}: {ctx}");
    }
}

fn check_durable(ctx: &str, lines: &[String], result: &Result<Ctx, Error>) {
    each_start_ends(lines, ctx);
    assert_eq!(lines.first().unwrap(), "run_start", "{ctx}");
    let want = if result.is_ok() {
        "run_end ok"
    } else {
        "run_end err"
    };
    assert_eq!(lines.last().unwrap(), want, "{ctx}");
    if result.is_err() {
        let (finished, rolled) = rollback_orders(lines);
        assert!(is_subsequence(&finished, &rolled), "{ctx}");
    }
}

/// The scripted stages' panics are expected: only the others are printed.
fn quiet_stage_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.to_string();
            if !msg.contains(" panicked") || msg.contains("seed") {
                hook(info);
            }
        }));
    });
}

#[tokio::test(start_paused = true)]
async fn random_runs_keep_the_callback_and_rollback_promises() {
    quiet_stage_panics();
    for seed in 1..6000 {
        one(seed).await;
    }
}

#[tokio::test(start_paused = true)]
async fn random_durable_runs_resume_as_promised() {
    quiet_stage_panics();
    for seed in 1..1500 {
        one_with(seed, true, None).await;
    }
}

#[tokio::test(start_paused = true)]
async fn random_runs_dropped_at_random_times() {
    quiet_stage_panics();
    for seed in 1..1500 {
        let drop_after = (seed * 7) % 120;
        one_with(seed, false, Some(drop_after)).await;
        one_with(seed, true, Some(drop_after)).await;
    }
}
