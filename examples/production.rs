//! The specification's pipeline as a service would run it: every middleware, a callback
//! that records structured events, tracing spans, and a durable SQLite store.
//!
//! Run it with `cargo run --example production` (it writes `production.db` in a temporary
//! directory). `RUST_LOG`-style filtering is left to your own subscriber; this example
//! prints every span fluxio opens and fluxio's log lines (`LoggingCallback`'s among them: the
//! user service's first call fails and `Retry` calls it again), then the events it
//! collected.

use std::sync::{Arc, Mutex};

use fluxio::events::{Event, EventSink};
use fluxio::prelude::*;
use fluxio::store::SqliteStore;

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
    /// The user.
    pub user: User;
    /// A one-line profile.
    pub profile: String;
    /// The user's orders.
    pub orders: Vec<u64>;
    /// What to answer.
    pub prompt: String;
}

/// A flaky upstream: fails its first call, as real services sometimes do.
#[derive(Default)]
struct UserService {
    calls: std::sync::atomic::AtomicU32,
}

#[stage(reads = [user_id], writes = [user], timeout = "5s", fallback = cached_user)]
async fn fetch_user(user_id: &u64, service: Res<UserService>) -> Result<User, StageError> {
    if service
        .calls
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        return Err(StageError::msg("user service: connection reset"));
    }
    Ok(User {
        id: *user_id,
        name: "Alice".into(),
        tier: "pro".into(),
    })
}

/// Serves a stale copy when the user service stays down.
async fn cached_user(user_id: &u64, _service: Res<UserService>) -> Result<User, StageError> {
    Ok(User {
        id: *user_id,
        name: "Alice (cached)".into(),
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

#[stage(reads = [prompt])]
fn stream_response(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(
        prompt
            .split(' ')
            .map(|w| Ok(w.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// Prints the spans fluxio opens and the log lines (a stand-in for an OpenTelemetry
/// exporter and a log subscriber).
struct PrintSpans;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PrintSpans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        println!("  span {}{}", attrs.metadata().name(), fields.0);
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        // fluxio's own lines only (sqlx logs every statement at `debug`).
        if !event.metadata().target().starts_with("fluxio") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        println!("  log  {:<5}{}", event.metadata().level(), fields.0);
    }
}

/// A span's or log line's fields, as ` message key=value ...`.
#[derive(Default)]
struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = match field.name() {
            "message" => write!(self.0, " {value:?}"),
            name => write!(self.0, " {name}={value:?}"),
        };
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::layer::SubscriberExt;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PrintSpans))?;

    let dir = std::env::temp_dir().join(format!("fluxio-production-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = SqliteStore::open(dir.join("production.db")).await?;

    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = EventSink::new({
        let events = events.clone();
        move |e| events.lock().unwrap().push(e)
    });

    let pipe = pipeline! {
        fetch_user,
        parallel { enrich_profile, fetch_orders },
        route => {
            "premium" => [stream_response],
            "standard" => [stream_response],
        },
    }
    .with_middleware(CircuitBreaker::new(5))
    .with_middleware(Retry::exponential(3).base_delay(Duration::from_millis(20)))
    // Only what depends on its reads alone: not the user service's answers.
    .with_middleware(
        Cache::ttl(Duration::from_secs(60))
            .only(enrich_profile)
            .only(fetch_orders),
    )
    .with_middleware(RateLimit::per_second(100.0))
    .with_middleware(Timeout::new(Duration::from_secs(10)))
    .with_callback(LoggingCallback::default())
    .with_callback(sink)
    .with_resource(UserService::default())
    .with_store(store);

    println!("run req-abc-123:");
    let out = pipe
        .invoke(input! { user_id: 42, prompt: "hi there".into() })
        .run_id("req-abc-123")
        .await?;
    println!("profile: {}", out[profile]);
    println!("orders:  {:?}", out[orders]);
    println!("events:");
    for e in events.lock().unwrap().iter() {
        match e.stage() {
            Some(stage) => println!("  {:<18} {stage}", e.name()),
            None => println!("  {}", e.name()),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
