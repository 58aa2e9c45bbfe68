//! Helpers shared by fluxio's integration tests (in `tests/`).

use std::sync::{Arc, Mutex};

use fluxio::events::{Event, EventSink};
use fluxio::middleware::{Middleware, Next, StageCall};
use fluxio::store::BoxFuture;
use fluxio::{StageError, StageOutput};

/// A user's middleware that records, in a shared log, each call it wraps: `"{tag} before
/// {stage} (attempt {n})"` on the way in, `"{tag} after {stage}: {ok}"` on the way out.
#[derive(Debug, Clone)]
pub struct Tag {
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tag {
    /// A middleware called `tag`, writing to `log`.
    pub fn new(tag: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Self {
        Tag {
            tag,
            log: log.clone(),
        }
    }
}

impl Middleware for Tag {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        let stage = call.meta.name;
        Box::pin(async move {
            self.log.lock().unwrap().push(format!(
                "{} before {stage} (attempt {})",
                self.tag, call.attempt
            ));
            let out = next.run(call).await;
            self.log
                .lock()
                .unwrap()
                .push(format!("{} after {stage}: {}", self.tag, out.is_ok()));
            out
        })
    }
}

/// A user's middleware that only passes calls on: the built-ins behind it run through their
/// own `Middleware::handle` (the boxed path), not the engine.
#[derive(Debug, Clone, Copy)]
pub struct PassOn;

impl Middleware for PassOn {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        next.run(call)
    }
}

/// A user's middleware that skips every call of one stage (with a reason), as a
/// maintenance switch would, and passes the others on.
#[derive(Debug, Clone, Copy)]
pub struct SkipStage(pub &'static str);

impl Middleware for SkipStage {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        if call.meta.name == self.0 {
            let reason = format!("`{}` is switched off", self.0);
            return Box::pin(std::future::ready(Ok(StageOutput::Skip(reason))));
        }
        next.run(call)
    }
}

/// An OTLP/HTTP receiver on loopback, as a collector takes traces: `POST /v1/traces` with a
/// protobuf body, decoded, answered `200 OK`. HTTP/1.1 with keep-alive, one thread per
/// connection. The OTLP test checks the span tree with it; the `otlp_sink` program runs it
/// for CI's run of the `otlp` example.
/// Every event of the runs a pipeline reports, in order.
pub type Events = Arc<Mutex<Vec<Event>>>;

/// A callback recording every event (`pipe.with_callback(sink)`), and the record.
pub fn event_log() -> (EventSink<impl Fn(Event) + Send + Sync + 'static>, Events) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    (EventSink::new(move |e| log.lock().unwrap().push(e)), events)
}

/// Checks that `store` lists each of `runs` — `(run id, the start of its error text, if it
/// failed)` — with the time its status was last written, between `since` (taken on this
/// machine before the runs) and now, give or take `slack` (a server's clock, Redis's, may
/// be another machine's), and its error.
pub async fn assert_listing_has_times_and_errors(
    store: &dyn fluxio::store::CheckpointStore,
    since: std::time::SystemTime,
    slack: std::time::Duration,
    runs: &[(&str, Option<&str>)],
) {
    // Stores keep milliseconds.
    let since = since - std::time::Duration::from_millis(1) - slack;
    let listed = store.list_runs(&[]).await.unwrap();
    for (id, error) in runs {
        let run = listed
            .iter()
            .find(|r| r.run_id == *id)
            .unwrap_or_else(|| panic!("`{id}` is not listed: {listed:?}"));
        let at = run.updated_at.expect("a listing with its time");
        assert!(
            at >= since && at <= std::time::SystemTime::now() + slack,
            "`{id}` updated at {at:?}, before {since:?} or in the future"
        );
        assert!(run.since_update().is_some());
        match (error, &run.error) {
            (None, None) => {}
            (Some(start), Some(text)) if text.starts_with(start) => {}
            (want, got) => panic!("`{id}`: error {got:?}, expected one starting {want:?}"),
        }
    }
}

/// `n` resumes of run `run_id` of `pipe`, spawned at once (on the test's runtime), and
/// what each returned.
pub async fn resumes_at_once(
    pipe: &fluxio::Pipeline,
    run_id: &str,
    n: usize,
) -> Vec<Result<fluxio::Ctx, fluxio::Error>> {
    let resumes: Vec<_> = (0..n)
        .map(|_| {
            let (pipe, run_id) = (pipe.clone(), run_id.to_string());
            tokio::spawn(async move { pipe.resume(run_id).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for resume in resumes {
        out.push(resume.await.expect("a resume panicked"));
    }
    out
}

/// `(stage, attempt)` of every stage event named `name` (`stage.failed`, ...).
pub fn attempts(events: &Events, name: &str) -> Vec<(&'static str, u32)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.name() == name)
        .filter_map(|e| match e {
            Event::StageStarted { stage, attempt, .. }
            | Event::StageCompleted { stage, attempt, .. }
            | Event::StageFailed { stage, attempt, .. }
            | Event::StageCancelled { stage, attempt, .. } => Some((*stage, *attempt)),
            _ => None,
        })
        .collect()
}

pub mod otlp {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message as _;

    /// Called with each request as it is decoded, before it is answered.
    type OnRequest = Box<dyn Fn(&ExportTraceServiceRequest) + Send + Sync>;

    /// What the receiver got: decoded export requests, and anything it could not take.
    #[derive(Debug, Default)]
    pub struct Received {
        /// The export requests, in the order they arrived.
        pub requests: Vec<ExportTraceServiceRequest>,
        /// Requests it refused (another path or content type, an undecodable body) and
        /// broken connections.
        pub problems: Vec<String>,
    }

    impl Received {
        /// Every span of every request.
        pub fn spans(&self) -> Vec<&Span> {
            self.requests.iter().flat_map(spans).collect()
        }
    }

    /// The spans of one export request.
    pub fn spans(request: &ExportTraceServiceRequest) -> impl Iterator<Item = &Span> {
        request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
    }

    /// Starts a receiver on a free loopback port.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
        receiver_with(|_| {})
    }

    /// Starts a receiver on a free loopback port that also calls `on_request` with each
    /// request, before answering it (so the exporter sees its `200` after the call).
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn receiver_with(
        on_request: impl Fn(&ExportTraceServiceRequest) + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<Mutex<Received>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        let on_request: Arc<OnRequest> = Arc::new(Box::new(on_request));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                let on_request = on_request.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &shared, &on_request) {
                        shared.lock().unwrap().problems.push(e.to_string());
                    }
                });
            }
        });
        (addr, received)
    }

    fn serve(
        stream: TcpStream,
        received: &Mutex<Received>,
        on_request: &OnRequest,
    ) -> std::io::Result<()> {
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
            let problem = if !request_line.starts_with("POST /v1/traces ") {
                Some(format!("unexpected request {request_line:?}"))
            } else if content_type != "application/x-protobuf" {
                Some(format!("unexpected content type {content_type:?}"))
            } else {
                match ExportTraceServiceRequest::decode(&body[..]) {
                    Ok(request) => {
                        on_request(&request);
                        received.lock().unwrap().requests.push(request);
                        None
                    }
                    Err(e) => Some(format!("undecodable body: {e}")),
                }
            };
            if let Some(problem) = problem {
                received.lock().unwrap().problems.push(problem);
            }
            writer.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            )?;
        }
    }
}

/// A callback that records a run's lifecycle as lines (`run_start`, `start <stage>`,
/// `end <stage>`, `error`, `skip`, `cancelled`, `rollback <stage>[ failed]`, `fallback`,
/// `retry`, `chunk`, `run_end ok|err`, `run_cancelled`), and checks the promises every run
/// keeps.
#[derive(Default, Clone, Debug)]
pub struct LifecycleLog(Arc<Mutex<Vec<String>>>);

impl LifecycleLog {
    /// Adds a line of the test's own.
    pub fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    /// Every started stage has exactly one end; the run has exactly one end.
    pub fn check_invariants(&self) {
        let lines = self.lines();
        let starts: Vec<&String> = lines.iter().filter(|l| l.starts_with("start ")).collect();
        for s in &starts {
            let stage = s.trim_start_matches("start ");
            let ends = lines
                .iter()
                .filter(|l| {
                    ["end ", "error ", "cancelled ", "skip "]
                        .iter()
                        .any(|p| **l == format!("{p}{stage}"))
                })
                .count();
            assert_eq!(ends, 1, "stage {stage} has {ends} ends: {lines:#?}");
        }
        let run_ends = lines
            .iter()
            .filter(|l| l.starts_with("run_end") || *l == "run_cancelled")
            .count();
        assert_eq!(run_ends, 1, "{lines:#?}");
    }
}

impl fluxio::Callback for LifecycleLog {
    fn on_run_start(&self, _run_id: &str) {
        self.push("run_start".into());
    }
    fn on_run_end(
        &self,
        _run_id: &str,
        outcome: Result<&fluxio::Ctx, &fluxio::Error>,
        _e: std::time::Duration,
    ) {
        self.push(format!(
            "run_end {}",
            if outcome.is_ok() { "ok" } else { "err" }
        ));
    }
    fn on_run_cancelled(&self, _run_id: &str) {
        self.push("run_cancelled".into());
    }
    fn on_stage_start(&self, e: &fluxio::StageEvent<'_>) {
        self.push(format!("start {}", e.stage));
    }
    fn on_stage_end(&self, e: &fluxio::StageEvent<'_>, _: std::time::Duration) {
        self.push(format!("end {}", e.stage));
    }
    fn on_stage_error(
        &self,
        e: &fluxio::StageEvent<'_>,
        _err: &fluxio::Error,
        _: std::time::Duration,
    ) {
        self.push(format!("error {}", e.stage));
    }
    fn on_stage_skip(&self, e: &fluxio::StageEvent<'_>, _r: &str) {
        self.push(format!("skip {}", e.stage));
    }
    fn on_stage_cancelled(&self, e: &fluxio::StageEvent<'_>, _: std::time::Duration) {
        self.push(format!("cancelled {}", e.stage));
    }
    fn on_rollback(&self, e: &fluxio::StageEvent<'_>, err: Option<&fluxio::Error>) {
        self.push(format!(
            "rollback {}{}",
            e.stage,
            if err.is_some() { " failed" } else { "" }
        ));
    }
    fn on_fallback(&self, e: &fluxio::StageEvent<'_>, _err: &fluxio::Error) {
        self.push(format!("fallback {}", e.stage));
    }
    fn on_retry(&self, e: &fluxio::StageEvent<'_>, _err: &StageError, _d: std::time::Duration) {
        self.push(format!("retry {}", e.stage));
    }
    fn on_chunk(&self, e: &fluxio::StageEvent<'_>) {
        self.push(format!("chunk {}", e.stage));
    }
    fn on_checkpoint(&self, e: &fluxio::StageEvent<'_>, _bytes: usize) {
        self.push(format!("checkpoint {}", e.stage));
    }
}
