//! Real crashes: a durable pipeline runs in a second process (`src/bin/crash_worker.rs`),
//! is killed with SIGKILL while a stage is in flight, and a new process resumes the run.
//! The final context must equal an uninterrupted run's, and no finished stage may run
//! twice (only the stage in flight at the kill runs again: at-least-once).
//!
//! Executions are counted in a log file the stages append to, which survives the kill.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STAGES: [&str; 6] = ["step1", "step2", "step3", "step4", "step5", "step6"];

/// One test of this file at a time: each starts worker processes whose lease is 1 s, and
/// on two cores six tests' workers at once can starve one past its lease (it then loses
/// its lock, and the test fails for the machine, not the code).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one runs anyway.
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fluxio-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn worker(backend: &[String], mode: &str, run_id: &str, log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crash_worker"));
    cmd.args(backend).args([mode, run_id]).arg(log);
    cmd
}

/// Runs the worker to the end and returns its `RESULT` line.
/// A resume right after a kill finds the dead worker's lock until its lease (1 s) runs
/// out: the worker then exits with code 3 and is started again.
fn run_to_end(backend: &[String], mode: &str, run_id: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = worker(backend, mode, run_id, log)
            .output()
            .expect("start the worker");
        if out.status.code() == Some(3) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        break out;
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "worker {mode} {run_id} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .expect("a RESULT line")
        .to_string()
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts a fresh run and kills it with SIGKILL as soon as the `k`th stage has started.
fn run_and_kill(backend: &[String], run_id: &str, log: &Path, k: usize) {
    let mut child = worker(backend, "fresh", run_id, log)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the worker");
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_lines(log).len() < k {
        assert!(Instant::now() < deadline, "stage {k} never started");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the worker exited before stage {k} started: {status}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL the worker"); // std's kill is SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the worker finished before it was killed"
    );
}

fn crash_and_resume(backend: Vec<String>, dir: &Path) {
    let expected = run_to_end(&backend, "fresh", "uninterrupted", &dir.join("base.log"));
    assert_eq!(log_lines(&dir.join("base.log")), STAGES);

    for k in [1, 3, 5] {
        let run_id = format!("crash-at-{k}");
        let log = dir.join(format!("{run_id}.log"));
        run_and_kill(&backend, &run_id, &log, k);
        let resumed = run_to_end(&backend, "resume", &run_id, &log);
        assert_eq!(resumed, expected, "killed during stage {k}");

        let lines = log_lines(&log);
        for (i, stage) in STAGES.iter().enumerate() {
            let count = lines.iter().filter(|l| l == stage).count();
            // The stage in flight at the kill runs again; every finished one ran once.
            let want = if i + 1 == k { 2 } else { 1 };
            assert_eq!(
                count, want,
                "{stage} ran {count} times after a kill during stage {k}: {lines:?}"
            );
        }

        // Resuming the completed run returns its context without running anything.
        let again = run_to_end(&backend, "resume", &run_id, &log);
        assert_eq!(again, expected);
        assert_eq!(
            log_lines(&log).len(),
            lines.len(),
            "resuming a completed run ran stages"
        );
    }
}

/// Two runs killed mid-stage and one that completed: once the dead worker's lease ran out,
/// a new process lists the abandoned runs (and only those) and resumes them to the end.
fn recover_abandoned_runs(backend: Vec<String>, dir: &Path) {
    let expected = run_to_end(&backend, "fresh", "done", &dir.join("done.log"));
    for id in ["lost-a", "lost-b"] {
        run_and_kill(&backend, id, &dir.join(format!("{id}.log")), 2);
    }
    // A run whose lock is still held is live, not abandoned: wait out the lease (1 s).
    std::thread::sleep(Duration::from_millis(1_300));
    let out = worker(&backend, "recover", "-", &dir.join("recover.log"))
        .output()
        .expect("start the worker");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "recover failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("RECOVERED lost-a {expected}"),
            format!("RECOVERED lost-b {expected}"),
        ],
        "the abandoned runs, resumed; the completed one left alone"
    );
    // The stages the dead worker finished did not run again.
    assert_eq!(
        log_lines(&dir.join("recover.log")),
        ["step2", "step3", "step4", "step5", "step6"].repeat(2)
    );
    // Nothing is left to recover.
    let again = worker(&backend, "recover", "-", &dir.join("again.log"))
        .output()
        .expect("start the worker");
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout), "");
}

/// Two processes sharing a store: while one runs `shared`, the other is refused with
/// `RunIdInUse` (worker exit code 3) and the first finishes undisturbed.
fn two_processes_one_run_id(backend: Vec<String>, dir: &Path) {
    let log = dir.join("shared.log");
    let mut first = worker(&backend, "fresh", "shared", &log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_lines(&log).is_empty() {
        assert!(Instant::now() < deadline, "the first worker never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = worker(&backend, "fresh", "shared", &dir.join("second.log"))
        .output()
        .unwrap();
    assert_eq!(
        second.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("run id `shared` is in use"));
    assert!(
        first.wait().unwrap().success(),
        "the first worker was disturbed"
    );
}

#[test]
fn sqlite_runs_resume_in_a_new_process_after_sigkill() {
    let _serial = one_at_a_time();
    let dir = scratch("sqlite");
    let db = dir.join("runs.db");
    crash_and_resume(vec!["sqlite".into(), db.display().to_string()], &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sqlite_abandoned_runs_are_listed_and_recovered_by_a_new_process() {
    let _serial = one_at_a_time();
    let dir = scratch("sqlite-recover");
    let db = dir.join("runs.db");
    recover_abandoned_runs(vec!["sqlite".into(), db.display().to_string()], &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redis_abandoned_runs_are_listed_and_recovered_by_a_new_process() {
    let _serial = one_at_a_time();
    let Some(url) = redis_url() else { return };
    let dir = scratch("redis-recover");
    let prefix = fluxio_testkit::unique_prefix("recover");
    recover_abandoned_runs(vec!["redis".into(), url.clone(), prefix.clone()], &dir);
    cleanup_redis(&url, &prefix);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sqlite_run_ids_are_locked_across_processes() {
    let _serial = one_at_a_time();
    let dir = scratch("sqlite-lock");
    let db = dir.join("runs.db");
    two_processes_one_run_id(vec!["sqlite".into(), db.display().to_string()], &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redis_run_ids_are_locked_across_processes() {
    let _serial = one_at_a_time();
    let Some(url) = redis_url() else { return };
    let dir = scratch("redis-lock");
    let prefix = fluxio_testkit::unique_prefix("lock");
    two_processes_one_run_id(vec!["redis".into(), url.clone(), prefix.clone()], &dir);
    cleanup_redis(&url, &prefix);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server under test, or `None` after a loud skip (a failure in CI) when it does not
/// answer.
fn redis_url() -> Option<String> {
    let url = fluxio_testkit::redis_url();
    match fluxio_testkit::ping(&url) {
        Ok(()) => Some(url),
        Err(e) => {
            fluxio_testkit::skip_or_fail(&e);
            None
        }
    }
}

#[test]
fn redis_runs_resume_in_a_new_process_after_sigkill() {
    let _serial = one_at_a_time();
    let Some(url) = redis_url() else { return };
    let dir = scratch("redis");
    let prefix = fluxio_testkit::unique_prefix("crash");
    crash_and_resume(vec!["redis".into(), url.clone(), prefix.clone()], &dir);
    // Clean up this test's keys.
    cleanup_redis(&url, &prefix);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deletes every key under `prefix`.
fn cleanup_redis(url: &str, prefix: &str) {
    if let Err(e) = fluxio_testkit::delete_keys(url, &format!("{prefix}*"), &[]) {
        eprintln!("warning: could not delete the keys under {prefix}: {e}");
    }
}
