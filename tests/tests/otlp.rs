//! Runs and stages reach an OpenTelemetry collector: a pipeline runs under the
//! `tracing-opentelemetry` layer with an OTLP/HTTP exporter, pointed at a receiver that
//! this test runs on loopback. The receiver decodes each export request as a collector
//! would, and the test checks the span tree: the run, its stages under it, the retry
//! attempts under their stage, with run id, stage, kind and attempt as attributes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use fluxio::prelude::*;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
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

/// What the receiver got: decoded export requests, and anything it could not take.
#[derive(Default)]
struct Received {
    requests: Vec<ExportTraceServiceRequest>,
    problems: Vec<String>,
}

/// An OTLP/HTTP receiver on loopback: `POST /v1/traces` with a protobuf body, answered
/// `200 OK`, as a collector does. HTTP/1.1 with keep-alive, one thread per connection.
fn receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let shared = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let shared = shared.clone();
            std::thread::spawn(move || {
                if let Err(e) = serve(stream, &shared) {
                    shared.lock().unwrap().problems.push(e.to_string());
                }
            });
        }
    });
    (addr, received)
}

fn serve(stream: TcpStream, received: &Mutex<Received>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(()); // the client closed the connection
        }
        let mut content_length = 0;
        let mut content_type = String::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        {
            let mut received = received.lock().unwrap();
            if !request_line.starts_with("POST /v1/traces ") {
                received
                    .problems
                    .push(format!("unexpected request {request_line:?}"));
            } else if content_type != "application/x-protobuf" {
                received
                    .problems
                    .push(format!("unexpected content type {content_type:?}"));
            } else {
                match ExportTraceServiceRequest::decode(&body[..]) {
                    Ok(request) => received.requests.push(request),
                    Err(e) => received.problems.push(format!("undecodable body: {e}")),
                }
            }
        }
        writer.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
    }
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
    let spans: Vec<&Span> = received
        .requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
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
