//! Runs and stages reach an OpenTelemetry collector: a pipeline runs under the
//! `tracing-opentelemetry` layer with an OTLP/HTTP exporter, pointed at a receiver that
//! this test runs on loopback. The receiver decodes each export request as a collector
//! would, and the test checks the span tree: the run, its stages under it, the retry
//! attempts under their stage, with run id, stage, kind and attempt as attributes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use fluxio::prelude::*;
use fluxio_tests::otlp::receiver;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tracing_subscriber::layer::SubscriberExt as _;

fluxio::keys! {
    pub n: u64;
    pub a: u64;
    pub b: u64;
}

#[stage(reads = [n], writes = [a])]
async fn fetch(n: &u64, calls: Res<AtomicU32>) -> Result<u64, StageError> {
    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(StageError::msg("the first call fails"));
    }
    Ok(n + 1)
}

#[stage(reads = [a], writes = [b])]
fn double(a: &u64) -> u64 {
    a * 2
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[test]
fn runs_stages_and_attempts_reach_an_otlp_receiver() {
    let (addr, received) = receiver();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("http://{addr}/v1/traces"))
        .build()
        .expect("an OTLP/HTTP exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("fluxio-tests")));
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only global subscriber of this test binary");

    let pipe = pipeline! { fetch, double }
        .with_resource(AtomicU32::new(0))
        .with_middleware(Retry::constant(2, Duration::from_millis(1)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt
        .block_on(
            pipe.invoke(input! { n: 1 })
                .run_id("otlp-run-1")
                .into_future(),
        )
        .unwrap();
    assert_eq!(out[b], 4);

    // Shutting the provider down flushes the batch to the receiver (and waits for it).
    provider.shutdown().expect("the exporter flushed its spans");

    let received = received.lock().unwrap();
    assert!(received.problems.is_empty(), "{:?}", received.problems);
    let spans = received.spans();
    let named =
        |name: &str| -> Vec<&Span> { spans.iter().copied().filter(|s| s.name == name).collect() };

    let runs = named("fluxio.run");
    assert_eq!(runs.len(), 1, "one run span: {spans:#?}");
    let run = runs[0];
    assert_eq!(attribute(run, "run_id").as_deref(), Some("otlp-run-1"));
    assert!(attribute(run, "version").is_some_and(|v| v.len() == 16));

    let stages: HashMap<String, &Span> = named("fluxio.stage")
        .into_iter()
        .map(|s| (attribute(s, "stage").unwrap_or_default(), s))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:#?}");
    for (name, kind) in [("fetch", "async"), ("double", "sync")] {
        let stage = stages[name];
        assert_eq!(stage.parent_span_id, run.span_id, "{name} is under the run");
        assert_eq!(stage.trace_id, run.trace_id);
        assert_eq!(attribute(stage, "kind").as_deref(), Some(kind), "{name}");
        assert_eq!(attribute(stage, "run_id").as_deref(), Some("otlp-run-1"));
    }

    let mut attempts: Vec<(String, String, Vec<u8>)> = named("fluxio.attempt")
        .into_iter()
        .map(|s| {
            (
                attribute(s, "stage").unwrap_or_default(),
                attribute(s, "attempt").unwrap_or_default(),
                s.parent_span_id.clone(),
            )
        })
        .collect();
    attempts.sort();
    let fetch_id = stages["fetch"].span_id.clone();
    let double_id = stages["double"].span_id.clone();
    assert_eq!(
        attempts,
        [
            ("double".to_string(), "1".to_string(), double_id),
            ("fetch".to_string(), "1".to_string(), fetch_id.clone()),
            ("fetch".to_string(), "2".to_string(), fetch_id),
        ],
        "every attempt under its stage; the failed first call of fetch is retried"
    );
}

use std::future::IntoFuture as _;
