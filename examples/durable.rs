//! The specification's pipeline, durable on SQLite: crash it, then resume it.
//!
//! ```sh
//! cargo run --example durable                                 # a full run, checkpointed
//! cargo run --example durable -- --crash-after fetch_user     # dies after that stage
//! cargo run --example durable -- --resume req-abc-123         # a new process finishes it
//! ```
//!
//! Options: `--db PATH` (default `./fluxio.db`), `--run-id ID` (default `req-abc-123`).
//! The resumed run does not run `fetch_user` again: its result was checkpointed before the
//! crash. The crash is `std::process::abort()`: no destructor, no cleanup, like a kill.

use fluxio::prelude::*;
use fluxio::store::SqliteStore;
use fluxio::{StageEvent, StageKind};

/// How long a run's lock outlives a crashed process.
const LEASE: Duration = Duration::from_secs(2);

/// A user record.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The user's id.
    pub id: u64,
    /// The user's name.
    pub name: String,
    /// The plan the user is on.
    pub tier: String,
}

fluxio::keys! {
    /// The id the caller asks about.
    pub user_id: u64;
    /// The user loaded by `fetch_user`.
    pub user: User;
    /// A one-line profile.
    pub profile: String;
    /// The user's order ids.
    pub orders: Vec<u64>;
    /// What the response streams back.
    pub prompt: String;
    /// The response, collected.
    pub reply: String;
}

#[stage(reads = [user_id], writes = [user], timeout = "5s")]
async fn fetch_user(user_id: &u64) -> Result<User, StageError> {
    Ok(User {
        id: *user_id,
        name: "Alice".into(),
        tier: "pro".into(),
    })
}

#[stage(reads = [user], writes = [profile])]
async fn enrich_profile(user: &User) -> Result<String, StageError> {
    Ok(format!("{} ({})", user.name, user.tier))
}

#[stage(reads = [user_id], writes = [orders])]
async fn fetch_orders(user_id: &u64) -> Result<Vec<u64>, StageError> {
    Ok(vec![*user_id * 10])
}

#[stage(reads = [user])]
async fn route(user: &User) -> Route {
    Route::to(if user.tier == "pro" {
        "premium"
    } else {
        "standard"
    })
}

#[stage(reads = [prompt, profile], writes = [reply])]
async fn premium_reply(prompt: &str, profile: &str) -> String {
    format!("[premium for {profile}] {prompt}")
}

#[stage(reads = [prompt], writes = [reply])]
async fn standard_reply(prompt: &str) -> String {
    format!("[standard] {prompt}")
}

/// Prints each stage as it finishes, and aborts the process after `crash_after`.
struct Narrator {
    crash_after: Option<String>,
}

impl Callback for Narrator {
    fn on_stage_end(&self, event: &StageEvent<'_>, elapsed: Duration) {
        let kind = if event.kind == StageKind::Route {
            " (route)"
        } else {
            ""
        };
        println!("  ran {}{kind} in {elapsed:?}, checkpointed", event.stage);
        if self.crash_after.as_deref() == Some(event.stage) {
            println!(
                "  crashing after {} (simulated: abort, no cleanup)",
                event.stage
            );
            std::process::abort();
        }
    }
    fn on_stage_skip(&self, event: &StageEvent<'_>, reason: &str) {
        println!("  skipped {}: {reason}", event.stage);
    }
}

struct Args {
    db: String,
    run_id: String,
    crash_after: Option<String>,
    resume: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        db: "fluxio.db".into(),
        run_id: "req-abc-123".into(),
        crash_after: None,
        resume: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--db" => a.db = value(),
            "--run-id" => a.run_id = value(),
            "--crash-after" => a.crash_after = Some(value()),
            "--resume" => a.resume = Some(value()),
            other => {
                eprintln!(
                    "unknown option {other}; use --db PATH, --run-id ID, --crash-after STAGE, --resume ID"
                );
                std::process::exit(2);
            }
        }
    }
    a
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let store = SqliteStore::open(&args.db).await?;
    let pipe = pipeline! {
        fetch_user,
        parallel { enrich_profile, fetch_orders },
        route => {
            "premium" => [premium_reply],
            "standard" => [standard_reply],
        },
    }
    .with_callback(Narrator {
        crash_after: args.crash_after.clone(),
    })
    .with_store(store)
    // A crashed process's lock on its run id expires after this lease.
    .with_lease(LEASE);

    let out = match &args.resume {
        Some(run_id) => {
            println!(
                "resuming run {run_id} from {} (pipeline version {})",
                args.db,
                pipe.version()
            );
            let give_up = std::time::Instant::now() + 2 * LEASE;
            loop {
                match pipe.resume(run_id.clone()).await {
                    // The crashed process still holds the run until its lease runs out.
                    Err(fluxio::Error::RunIdInUse { .. })
                        if std::time::Instant::now() < give_up =>
                    {
                        println!(
                            "  run {run_id} is still locked by the crashed process; waiting for its lease"
                        );
                        tokio::time::sleep(LEASE / 4).await;
                    }
                    other => break other?,
                }
            }
        }
        None => {
            println!(
                "starting run {} in {} (pipeline version {})",
                args.run_id,
                args.db,
                pipe.version()
            );
            pipe.invoke(input! { user_id: 42, prompt: "hi there".into() })
                .run_id(args.run_id.clone())
                .await?
        }
    };
    println!("profile: {}", out[profile]);
    println!("orders:  {:?}", out[orders]);
    println!("reply:   {}", out[reply]);
    Ok(())
}
