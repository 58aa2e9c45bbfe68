//! Exports fluxio's spans to an OpenTelemetry collector over OTLP/HTTP (protobuf): every run
//! is a `fluxio.run` span, every stage a `fluxio.stage` span under it, every retry attempt a
//! `fluxio.attempt` span under its stage.
//!
//! ```sh
//! # any OTLP/HTTP collector; by default http://localhost:4318/v1/traces
//! cargo run -p fluxio-examples --example otlp
//!
//! # Langfuse (OTLP/HTTP only, Basic auth with the project's public:secret key pair)
//! export OTEL_EXPORTER_OTLP_ENDPOINT="https://cloud.langfuse.com/api/public/otel"
//! export OTEL_EXPORTER_OTLP_HEADERS="Authorization=Basic $(printf '%s' "$LANGFUSE_PUBLIC_KEY:$LANGFUSE_SECRET_KEY" | base64 -w0)"
//! cargo run -p fluxio-examples --example otlp --features otlp-tls
//! ```
//!
//! The exporter reads the standard `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers,
//! timeout); `OTEL_SERVICE_NAME` names the service. Nothing here is specific to fluxio but
//! the spans: fluxio emits plain `tracing` spans, and `tracing-opentelemetry` turns them
//! into OpenTelemetry spans.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::prelude::*;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt as _;

fluxio::keys! {
    /// The question asked.
    pub question: String;
    /// Documents found for it.
    pub documents: Vec<String>;
    /// A summary of each document.
    pub summaries: Vec<String>;
    /// Keywords of the question.
    pub keywords: Vec<String>;
    /// The answer.
    pub answer: String;
}

/// A search service that drops its first request, to show a retried stage.
#[derive(Default)]
struct Search {
    calls: AtomicU32,
}

#[stage(reads = [question], writes = [documents])]
async fn search(question: &str, service: Res<Search>) -> Result<Vec<String>, StageError> {
    if service.calls.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(StageError::msg("search: connection reset"));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(vec![
        format!("notes on {question}"),
        format!("a guide to {question}"),
    ])
}

#[stage(reads = [documents], writes = [summaries])]
async fn summarize(documents: &[String]) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    documents
        .iter()
        .map(|d| format!("summary of {d}"))
        .collect()
}

#[stage(reads = [question], writes = [keywords])]
fn extract_keywords(question: &str) -> Vec<String> {
    question.split_whitespace().map(str::to_lowercase).collect()
}

#[stage(reads = [summaries, keywords], writes = [answer])]
async fn compose(summaries: &[String], keywords: &[String]) -> String {
    format!(
        "{} (keywords: {})",
        summaries.join("; "),
        keywords.join(", ")
    )
}

/// The OTLP exporter, counting what the collector accepted and keeping the last failure:
/// the SDK drops a batch it could not export without telling the program.
#[derive(Debug)]
struct Reported {
    inner: opentelemetry_otlp::SpanExporter,
    exported: Arc<AtomicUsize>,
    failure: Arc<Mutex<Option<String>>>,
}

impl SpanExporter for Reported {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.exported.fetch_add(spans, Ordering::SeqCst);
            }
            Err(e) => *self.failure.lock().unwrap() = Some(e.to_string()),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The exporter: endpoint and headers from OTEL_EXPORTER_OTLP_* (see the module docs).
    let exported = Arc::new(AtomicUsize::new(0));
    let failure = Arc::new(Mutex::new(None));
    let exporter = Reported {
        inner: opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?,
        exported: exported.clone(),
        failure: failure.clone(),
    };
    // A batch processor exports from its own thread, so the blocking HTTP client never
    // runs on the runtime's threads.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(
                    std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "fluxio-example".into()),
                )
                .build(),
        )
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("fluxio"))),
    )?;

    let pipe = pipeline! {
        parallel {
            search,
            extract_keywords,
        },
        summarize,
        compose,
    }
    .with_resource(Search::default())
    .with_middleware(Retry::constant(3, Duration::from_millis(50)));

    for (i, q) in ["Durable Pipelines", "Rust Async"].into_iter().enumerate() {
        let run_id = format!("otlp-example-{}-{i}", std::process::id());
        let out = pipe
            .invoke(input! { question: q.to_string() })
            .run_id(run_id.clone())
            .await?;
        println!("{run_id}: {}", out[answer]);
    }

    // Flush what is still batched (waiting for the export), then say how it went.
    tokio::task::spawn_blocking(move || provider.shutdown()).await??;
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(format!(
            "the collector did not take the spans ({e}); is one listening at \
             OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318)?"
        )
        .into());
    }
    println!("{} spans exported", exported.load(Ordering::SeqCst));
    Ok(())
}
