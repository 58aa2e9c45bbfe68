//! The snippets of docs/observability.md, verbatim between their markers
//! (tests/tests/doc_snippets.rs checks it), with what makes them compile and run.

use fluxio::prelude::*;

// A one-stage pipeline that fails for order 0.
use crate::common::labels::*;

#[tokio::test]
async fn failed_stages_are_counted() {
    let pipe = pipeline! { make_label };

    // snippet: observability.md 1
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use fluxio::{Callback, Error, StageEvent};

    /// Counts failed stages, e.g. for a metrics gauge.
    #[derive(Default)]
    struct FailedStages(AtomicU64);

    impl Callback for FailedStages {
        fn on_stage_error(&self, event: &StageEvent<'_>, error: &Error, _elapsed: Duration) {
            self.0.fetch_add(1, Ordering::Relaxed);
            eprintln!("run {}: {error}", event.run_id); // the error names the stage
        }
    }

    // Keep a handle to read the count: `Arc<C>` is a callback too.
    let failed = std::sync::Arc::new(FailedStages::default());
    let pipe = pipe.with_callback(failed.clone());
    // end snippet

    pipe.invoke(input! { order_id: 1 }).await.unwrap();
    pipe.invoke(input! { order_id: 0 }).await.unwrap_err();
    assert_eq!(failed.0.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_event_stream() {
    let pipe = pipeline! { make_label };
    let (tx, rx) = std::sync::mpsc::channel();

    // snippet: observability.md 2
    use fluxio::events::{Event, EventSink};

    // `tx`: any sender whose `send` does not wait (std's mpsc, tokio's unbounded channel).
    let pipe = pipe.with_callback(EventSink::new(move |event: Event| {
        let _ = tx.send(event.stamped());   // to a task that writes them to your database
    }));
    // end snippet

    pipe.invoke(input! { order_id: 1 }).await.unwrap();
    let names: Vec<_> = rx.try_iter().map(|stamped| stamped.event.name()).collect();
    assert_eq!(
        names,
        [
            "pipeline.started",
            "stage.started",
            "stage.completed",
            "pipeline.completed"
        ]
    );
}

/// Compiled, not run: it installs the process's global subscriber and exports over HTTP.
#[allow(dead_code)]
async fn opentelemetry_setup() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // snippet: observability.md 3
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    // Endpoint and headers come from OTEL_EXPORTER_OTLP_ENDPOINT / _HEADERS.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    // The batch processor exports from its own thread: the blocking HTTP client never runs on
    // the runtime's threads.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-service"))),
    )?;
    // ... run pipelines ...
    // Flush before the process exits. Shutting down waits for the exporter's blocking HTTP
    // client: from async code, do it on the blocking pool, as examples/otlp.rs does.
    tokio::task::spawn_blocking(move || provider.shutdown()).await??;
    // end snippet
    Ok(())
}
