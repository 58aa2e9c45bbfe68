//! A durable pipeline in its own process, for the crash-and-resume tests: the tests kill it
//! with SIGKILL mid-run and start it again with `resume`.
//!
//! `crash_worker <sqlite PATH | redis URL PREFIX> <fresh | resume | recover> RUN_ID LOG_FILE`
//!
//! `recover` ignores RUN_ID: it lists the store's abandoned runs (running or rolling back,
//! nobody holding their lock) and resumes each, printing `RECOVERED <id> RESULT ...`.
//!
//! Every stage appends its name to LOG_FILE (flushed to disk) when it starts, so the log
//! survives the kill and counts executions. At the end the worker prints
//! `RESULT key=value;...` with the final context.

use std::io::Write;
use std::sync::Arc;

use fluxio::prelude::*;
use fluxio::store::{RunListing, RunStatus};

fluxio::keys! {
    /// The run's input.
    pub seed: u64;
    /// Step outputs.
    pub v1: u64;
    /// Step outputs.
    pub v2: u64;
    /// Step outputs.
    pub v3: u64;
    /// Step outputs.
    pub v4: u64;
    /// Step outputs.
    pub v5: u64;
    /// Step outputs.
    pub v6: String;
}

/// Where stages record that they ran.
struct Log(std::path::PathBuf);

impl Log {
    fn record(&self, stage: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .expect("log file");
        // One write of the whole line: `writeln!` writes the name and the newline apart, and
        // a kill between the two glued the next process's line onto this one.
        f.write_all(format!("{stage}\n").as_bytes())
            .expect("write log");
        f.sync_all().expect("sync log");
    }
}

async fn work(log: &Log, stage: &str) {
    log.record(stage);
    // Long enough for the test to kill the process while a stage is in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[stage(reads = [seed], writes = [v1])]
async fn step1(seed: &u64, log: Res<Log>) -> u64 {
    work(&log, "step1").await;
    seed * 3
}

#[stage(reads = [v1], writes = [v2])]
async fn step2(v1: &u64, log: Res<Log>) -> u64 {
    work(&log, "step2").await;
    v1 + 7
}

#[stage(reads = [v2], writes = [v3])]
async fn step3(v2: &u64, log: Res<Log>) -> u64 {
    work(&log, "step3").await;
    v2 * v2
}

#[stage(reads = [v3], writes = [v4])]
async fn step4(v3: &u64, log: Res<Log>) -> u64 {
    work(&log, "step4").await;
    v3 - 1
}

#[stage(reads = [v4], writes = [v5])]
async fn step5(v4: &u64, log: Res<Log>) -> u64 {
    work(&log, "step5").await;
    v4 / 2
}

#[stage(reads = [v5, seed], writes = [v6])]
async fn step6(v5: &u64, seed: &u64, log: Res<Log>) -> String {
    work(&log, "step6").await;
    format!("{seed}->{v5}")
}

fn usage() -> ! {
    eprintln!(
        "usage: crash_worker <sqlite PATH | redis URL PREFIX> <fresh | resume | recover> RUN_ID LOG_FILE"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (store, rest): (Arc<dyn CheckpointStore>, &[String]) =
        match args.first().map(String::as_str) {
            Some("sqlite") if args.len() == 5 => (
                Arc::new(
                    fluxio::store::SqliteStore::open(&args[1])
                        .await
                        .expect("open sqlite"),
                ),
                &args[2..],
            ),
            Some("redis") if args.len() == 6 => {
                let store = fluxio::store::RedisStore::connect(&args[1])
                    .await
                    .expect("connect redis");
                (Arc::new(store.key_prefix(args[2].clone())), &args[3..])
            }
            _ => usage(),
        };
    let (mode, run_id, log) = (&rest[0], &rest[1], &rest[2]);
    let pipe = pipeline! { step1, step2, step3, step4, step5, step6 }
        .with_resource(Log(log.into()))
        .with_shared_store(store.clone())
        // A killed worker's lock expires a second later; the tests wait that long.
        .with_lease(Duration::from_secs(1));
    let result = match mode.as_str() {
        "fresh" => pipe.invoke(input! { seed: 5 }).run_id(run_id.clone()).await,
        "resume" => pipe.resume(run_id.clone()).await,
        "recover" => {
            let listed = store
                .list_runs(&[RunStatus::Running, RunStatus::RollingBack])
                .await
                .expect("list the runs");
            let mut abandoned: Vec<String> = listed
                .into_iter()
                .filter(RunListing::is_abandoned)
                .map(|run| run.run_id)
                .collect();
            abandoned.sort();
            for id in abandoned {
                match pipe.resume(id.clone()).await {
                    Ok(ctx) => println!("RECOVERED {id} {}", result_line(&ctx)),
                    Err(e) => println!("FAILED {id} {e}"),
                }
            }
            return;
        }
        _ => usage(),
    };
    match result {
        Ok(ctx) => println!("{}", result_line(&ctx)),
        Err(e @ fluxio::Error::RunIdInUse { .. }) => {
            eprintln!("run failed: {e}");
            std::process::exit(3);
        }
        Err(e) => {
            eprintln!("run failed: {e}");
            std::process::exit(1);
        }
    }
}

/// `RESULT key=value;...` for the final context.
fn result_line(ctx: &Ctx) -> String {
    format!(
        "RESULT seed={};v1={};v2={};v3={};v4={};v5={};v6={}",
        ctx[seed], ctx[v1], ctx[v2], ctx[v3], ctx[v4], ctx[v5], ctx[v6]
    )
}
