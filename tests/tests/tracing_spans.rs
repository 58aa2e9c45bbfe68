//! Every run, stage and retry attempt is a `tracing` span, and stage code runs inside its
//! stage's span. A global subscriber is installed once for this test binary: `tracing`
//! caches per-callsite interest across threads, so scoped subscribers in parallel tests
//! would see each other's caching.

use std::sync::{Arc, Mutex, OnceLock};

use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub a: u64;
    pub b: u64;
}

/// Records the spans runs open, with their fields; in the second list, the order in which
/// spans open (`new ..`) and close (`close ..`); in the third, fluxio's log lines.
#[derive(Clone, Default)]
struct SpanLog(
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<String>>>,
);

/// A span's or log line's fields, as ` name=value ...`.
struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

/// A span's name and fields, kept with it until it closes.
struct Described(String);

impl<S> tracing_subscriber::Layer<S> for SpanLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(Described(d)) = span.extensions().get::<Described>() {
                self.1.lock().unwrap().push(format!("close {d}"));
            }
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target().starts_with("fluxio") {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.2.lock().unwrap().push(fields.0);
        }
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        let described = format!("{}{}", attrs.metadata().name(), fields.0);
        self.1.lock().unwrap().push(format!("new {described}"));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Described(described.clone()));
        }
        self.0.lock().unwrap().push(described);
    }
}

fn spans() -> &'static SpanLog {
    static LOG: OnceLock<SpanLog> = OnceLock::new();
    LOG.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let log = SpanLog::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log.clone()))
            .expect("the only global subscriber of this test binary");
        log
    })
}

#[stage(reads = [n], writes = [a])]
async fn first(n: &u64) -> u64 {
    n + 1
}

#[stage(reads = [a], writes = [b])]
async fn second(a: &u64) -> u64 {
    a * 2
}

#[stage(reads = [n], writes = [a])]
async fn flaky(n: &u64, calls: Res<std::sync::atomic::AtomicU32>) -> Result<u64, StageError> {
    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
        return Err(StageError::msg("first call fails"));
    }
    Ok(*n)
}

#[tokio::test]
async fn every_run_stage_and_attempt_is_a_span() {
    let log = spans();
    let pipe = pipeline! { first, second }.with_store(InMemoryStore::new());
    pipe.invoke(input! { n: 1 }).run_id("traced").await.unwrap();
    let pipe = pipeline! { flaky }
        .with_resource(std::sync::atomic::AtomicU32::new(0))
        .with_middleware(Retry::constant(2, Duration::from_millis(1)))
        .with_callback(LoggingCallback::default());
    pipe.invoke(input! { n: 1 })
        .run_id("retried")
        .await
        .unwrap();
    // `LoggingCallback` says which attempt a stage ended on.
    let lines = log.2.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("message=stage completed")
            && l.contains("run_id=retried")
            && l.contains("attempt=2")),
        "{lines:?}"
    );

    let spans = log.0.lock().unwrap().clone();
    assert!(
        spans
            .iter()
            .any(|s| s.starts_with("fluxio.run") && s.contains("version=")),
        "{spans:?}"
    );
    assert!(
        spans.contains(&"fluxio.stage stage=first kind=async run_id=traced".to_string()),
        "{spans:?}"
    );
    assert!(
        spans.contains(&"fluxio.stage stage=second kind=async run_id=traced".to_string()),
        "{spans:?}"
    );
    assert!(
        spans.contains(&"fluxio.attempt stage=flaky attempt=1".to_string()),
        "{spans:?}"
    );
    assert!(
        spans.contains(&"fluxio.attempt stage=flaky attempt=2".to_string()),
        "{spans:?}"
    );
}

#[stage(reads = [n], writes = [a])]
async fn where_am_i(n: &u64, seen: Res<Mutex<Vec<String>>>) -> u64 {
    let span = tracing::Span::current();
    seen.lock()
        .unwrap()
        .push(span.metadata().map_or("none", |m| m.name()).to_string());
    *n
}

/// A sync stage: its body runs on tokio's blocking pool.
#[stage(reads = [a], writes = [b])]
fn where_am_i_blocking(a: &u64, seen: Res<Mutex<Vec<String>>>) -> u64 {
    let span = tracing::Span::current();
    seen.lock()
        .unwrap()
        .push(span.metadata().map_or("none", |m| m.name()).to_string());
    *a
}

#[tokio::test]
async fn stage_code_runs_inside_its_stage_span() {
    spans();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let pipe = pipeline! { where_am_i, where_am_i_blocking }.with_shared_resource(seen.clone());
    pipe.invoke(input! { n: 1 }).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["fluxio.stage", "fluxio.stage"],
        "async and sync stages alike"
    );
}

#[stage(reads = [n], writes = [a])]
async fn quick(n: &u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    n + 1
}

#[stage(reads = [a], writes = [b])]
async fn slow(a: &u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(50)).await;
    a * 2
}

#[tokio::test]
async fn a_stages_span_closes_when_the_stage_ends() {
    let log = spans();
    for (pipe, id) in [
        (pipeline! { quick, slow }, "span-ends"),
        (
            pipeline! { quick, slow }.with_store(InMemoryStore::new()),
            "span-ends-durable",
        ),
    ] {
        pipe.invoke(input! { n: 1 }).run_id(id).await.unwrap();
        let order: Vec<String> = log
            .1
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.ends_with(&format!("run_id={id}")))
            .cloned()
            .collect();
        // (A run span's fields end with its version, not its id.)
        assert_eq!(
            order,
            [
                format!("new fluxio.stage stage=quick kind=async run_id={id}"),
                format!("close fluxio.stage stage=quick kind=async run_id={id}"),
                format!("new fluxio.stage stage=slow kind=async run_id={id}"),
                format!("close fluxio.stage stage=slow kind=async run_id={id}"),
            ],
            "a span lasting until the run's end would give the stage the run's duration"
        );
    }
}
