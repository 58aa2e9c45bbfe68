//! `Pipeline::stream`: chunks in order, tagged, delivered while the stage still runs.

use std::sync::Arc;

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::CheckpointStore;
use futures::StreamExt;

fluxio::keys! {
    pub words: String;
    pub count: usize;
    pub published: bool;
}

#[stage(reads = [words])]
fn say(words: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(
        words
            .split(' ')
            .map(|w| Ok(w.to_string()))
            .collect::<Vec<_>>(),
    )
}

#[stage(reads = [words], writes = [count])]
async fn count_words(words: &String) -> usize {
    words.split(' ').count()
}

#[tokio::test]
async fn every_chunk_in_order_then_the_final_context() {
    let pipe = pipeline! { say, count_words };
    let mut s = pipe.stream::<String>(input! { words: "a b c".into() });
    let mut got = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.stage, "say");
        got.push(chunk.data);
    }
    assert_eq!(got, ["a", "b", "c"]);
    let out = s.finish().await.unwrap();
    assert_eq!(out[count], 3);
}

/// The gate the streaming stage waits on after its first chunk.
struct Gate(tokio::sync::Semaphore);

#[stage(reads = [words])]
fn gated(words: &String, gate: Res<Arc<Gate>>) -> impl Stream<Item = Result<String, StageError>> {
    let first = words.clone();
    async_stream(first, Arc::clone(&gate))
}

fn async_stream(first: String, gate: Arc<Gate>) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::unfold(0, move |step| {
        let (first, gate) = (first.clone(), gate.clone());
        async move {
            match step {
                0 => Some((Ok(first), 1)),
                1 => {
                    // Only the test, after receiving the first chunk, opens the gate.
                    let _permit = gate.0.acquire().await.unwrap();
                    Some((Ok("second".to_string()), 2))
                }
                _ => None,
            }
        }
    })
}

#[tokio::test]
async fn the_first_chunk_arrives_before_the_stream_stage_ends() {
    let gate = Arc::new(Gate(tokio::sync::Semaphore::new(0)));
    let pipe = pipeline! { gated }.with_resource(gate.clone());
    let mut s = pipe.stream::<String>(input! { words: "first".into() });
    let first = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("first chunk never came");
    assert_eq!(first.unwrap().unwrap().data, "first");
    gate.0.add_permits(1);
    let second = s.next().await.unwrap().unwrap();
    assert_eq!(
        second,
        fluxio::Chunk {
            stage: "gated",
            data: "second".to_string()
        }
    );
    assert!(s.next().await.is_none());
    s.finish().await.unwrap();
}

#[stage(reads = [words])]
fn fails_midway(words: &String) -> impl Stream<Item = Result<String, StageError>> {
    let first = words.clone();
    futures::stream::iter(vec![Ok(first), Err(StageError::msg("upstream closed"))])
}

#[tokio::test]
async fn a_failing_stream_yields_its_chunks_then_the_error() {
    let pipe = pipeline! { fails_midway };
    let mut s = pipe.stream::<String>(input! { words: "x".into() });
    assert_eq!(s.next().await.unwrap().unwrap().data, "x");
    let err = s.next().await.unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage `fails_midway` failed: upstream closed"
    );
    assert!(s.next().await.is_none());
    assert!(matches!(
        s.finish().await,
        Err(Error::Stage {
            stage: "fails_midway",
            ..
        })
    ));
}

#[tokio::test]
async fn asking_for_the_wrong_chunk_type_is_an_error() {
    let pipe = pipeline! { say };
    let mut s = pipe.stream::<u32>(input! { words: "a".into() });
    let err = s.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::ChunkType { stage: "say", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_chunk_type_names_the_run() {
    let pipe = pipeline! { say };
    let mut s = pipe
        .stream::<u32>(input! { words: "a".into() })
        .run_id("chat-3");
    let err = s.next().await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::ChunkType { stage: "say", run_id: Some(id), .. } if id == "chat-3"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("run `chat-3`: stage `say` streams `String` chunks, not `u32`"),
        "{err}"
    );
}

#[tokio::test]
async fn invoke_drains_stream_stages() {
    let out = pipeline! { say, count_words }
        .invoke(input! { words: "a b".into() })
        .await
        .unwrap();
    assert_eq!(out[count], 2);
}

#[tokio::test]
async fn finish_without_reading_runs_to_the_end() {
    let pipe = pipeline! { say, count_words };
    let s = pipe.stream::<String>(input! { words: "one two three four".into() });
    assert_eq!(s.finish().await.unwrap()[count], 4);
}

#[tokio::test]
async fn harness_collects_a_stream_stages_chunks() {
    let chunks = fluxio::testing::StepHarness::new(say)
        .chunks::<String>(input! { words: "p q".into() })
        .await
        .unwrap();
    assert_eq!(chunks, ["p", "q"]);
}

/// Fails until `ready` is set.
#[stage(reads = [count], writes = [published])]
async fn publish(
    count: &usize,
    ready: Res<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<bool, StageError> {
    let _ = count;
    if !ready.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(StageError::msg("publisher down"));
    }
    Ok(true)
}

/// Runs after `publish`.
#[stage(reads = [count, published])]
fn say_count(count: &usize, _published: &bool) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(vec![Ok(format!("{count} words"))])
}

async fn collect(mut handle: fluxio::StreamHandle<String>) -> (Vec<String>, Result<Ctx, Error>) {
    let mut chunks = Vec::new();
    while let Some(chunk) = handle.next().await {
        match chunk {
            Ok(c) => chunks.push(format!("{}: {}", c.stage, c.data)),
            Err(_) => break,
        }
    }
    (chunks, handle.finish().await)
}

#[tokio::test]
async fn a_durable_stream_resumes_by_its_id_without_streaming_finished_stages_again() {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = InMemoryStore::new();
    let pipe = pipeline! { say, count_words, publish, say_count }
        .with_resource(ready.clone())
        .with_store(store.clone());

    let (chunks, out) = collect(
        pipe.stream::<String>(input! { words: "a b c".into() })
            .run_id("chat-1"),
    )
    .await;
    assert_eq!(chunks, ["say: a", "say: b", "say: c"]);
    assert!(
        matches!(
            out,
            Err(Error::Stage {
                stage: "publish",
                ..
            })
        ),
        "{out:?}"
    );
    assert!(
        store.exists("chat-1").await.unwrap(),
        "checkpointed under the caller's id"
    );

    // The publisher is back: the run continues under its id. `say` finished before the
    // failure, so its chunks are not streamed again; `say_count` runs now.
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let (chunks, out) = collect(pipe.stream::<String>(Ctx::new()).run_id("chat-1").resume()).await;
    assert_eq!(chunks, ["say_count: 3 words"]);
    assert_eq!(out.unwrap()[count], 3);
}

#[tokio::test(start_paused = true)]
async fn naming_a_stream_once_it_started_cancels_it_with_an_error() {
    let store = InMemoryStore::new();
    let pipe = pipeline! { plain_stream }.with_store(store.clone());
    let slow = || input! { chunks_n: 5, work_ms: 10, stall_ms: 0 };
    let mut chunks = pipe.stream::<u64>(slow());
    assert_eq!(chunks.next().await.unwrap().unwrap().data, 0);
    // Too late: the run goes on under the id it started with.
    let mut chunks = chunks.run_id("late-1");
    let item = chunks.next().await.expect("the error, as the last item");
    let err = item.unwrap_err();
    assert!(
        matches!(&err, Error::BadRunId { reason } if reason.contains("before its handle is first polled")),
        "{err:?}"
    );
    assert!(chunks.next().await.is_none());
    assert!(matches!(chunks.finish().await, Err(Error::BadRunId { .. })));
    assert!(!store.exists("late-1").await.unwrap());

    // The same through `finish`, and for `.resume()`.
    let mut chunks = pipe.stream::<u64>(slow());
    chunks.next().await;
    let out = chunks.resume().finish().await;
    assert!(matches!(out, Err(Error::BadRunId { .. })), "{out:?}");

    // Once the run has ended there is nothing to configure: its result stands.
    let mut chunks = pipe.stream::<u64>(slow());
    while chunks.next().await.is_some() {}
    let out = chunks.run_id("after-the-end").finish().await;
    assert!(out.is_ok(), "{out:?}");
}

fluxio::keys! {
    pub chunks_n: u64;
    pub work_ms: u64;
    pub stall_ms: u64;
}

/// `chunks_n` chunks, each after `work_ms` of the stage's own work, then `stall_ms` more
/// of it before the stream ends.
fn paced(n: u64, work_ms: u64, stall_ms: u64) -> impl Stream<Item = Result<u64, StageError>> {
    let (work, stall) = (
        std::time::Duration::from_millis(work_ms),
        std::time::Duration::from_millis(stall_ms),
    );
    let chunks = futures::stream::iter(0..n).then(move |i| async move {
        tokio::time::sleep(work).await;
        Ok(i)
    });
    let stall = futures::stream::once(async move {
        tokio::time::sleep(stall).await;
        Ok(n)
    });
    chunks.chain(stall)
}

#[stage(reads = [chunks_n, work_ms, stall_ms], timeout = "200ms")]
fn timed_stream(
    chunks_n: &u64,
    work_ms: &u64,
    stall_ms: &u64,
) -> impl Stream<Item = Result<u64, StageError>> {
    paced(*chunks_n, *work_ms, *stall_ms)
}

/// The same without a timeout of its own (for the `Timeout` middleware).
#[stage(reads = [chunks_n, work_ms, stall_ms])]
fn plain_stream(
    chunks_n: &u64,
    work_ms: &u64,
    stall_ms: &u64,
) -> impl Stream<Item = Result<u64, StageError>> {
    paced(*chunks_n, *work_ms, *stall_ms)
}

/// Reads every chunk, `delay` after each; how many it got and how the run ended.
async fn read_slowly(
    mut s: fluxio::StreamHandle<u64>,
    delay: std::time::Duration,
) -> (usize, Result<(), Error>) {
    let mut got = 0;
    while let Some(chunk) = s.next().await {
        if let Err(e) = chunk {
            return (got, Err(e));
        }
        got += 1;
        tokio::time::sleep(delay).await;
    }
    (got, s.finish().await.map(|_| ()))
}

/// The stream stage with its own 200 ms timeout, and without one behind a 200 ms
/// `Timeout` middleware.
fn both_timeouts() -> [fluxio::Pipeline; 2] {
    [
        pipeline! { timed_stream },
        pipeline! { plain_stream }
            .with_middleware(Timeout::new(std::time::Duration::from_millis(200))),
    ]
}

const MS: std::time::Duration = std::time::Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_does_not_time_out_the_stream_stage() {
    for pipe in both_timeouts() {
        // 100 chunks at once (the buffer fills), read 10 ms apart: ~1 s of the consumer's
        // time against a 200 ms timeout.
        let s = pipe.stream::<u64>(input! { chunks_n: 100, work_ms: 0, stall_ms: 0 });
        let (got, end) = read_slowly(s, 10 * MS).await;
        assert_eq!(got, 101);
        assert!(end.is_ok(), "{end:?}");
        // 5 chunks, 10 ms of work each, read 100 ms apart (the buffer never fills).
        let s = pipe.stream::<u64>(input! { chunks_n: 5, work_ms: 10, stall_ms: 0 });
        let (got, end) = read_slowly(s, 100 * MS).await;
        assert_eq!(got, 6);
        assert!(end.is_ok(), "{end:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_stage_stalling_behind_a_slow_consumer_still_times_out() {
    for pipe in both_timeouts() {
        // The consumer spends ~500 ms on the chunks; the stage's own work then takes 2 s.
        let started = tokio::time::Instant::now();
        let s = pipe.stream::<u64>(input! { chunks_n: 50, work_ms: 0, stall_ms: 2000 });
        let (got, end) = read_slowly(s, 10 * MS).await;
        assert_eq!(got, 50, "every chunk sent before the stall arrives");
        assert!(
            matches!(end, Err(Error::Timeout { after, .. }) if after == 200 * MS),
            "{end:?}"
        );
        // About 200 ms of its own plus the ~180 ms it waited for room in the buffer (18
        // chunks past the 32 it holds, read 10 ms apart) and the consumer's reading of what
        // was left; far from the 2 s stall.
        let took = started.elapsed();
        assert!(took < 1500 * MS, "{took:?}");
        // Without a consumer holding it up: the 200 ms.
        let started = tokio::time::Instant::now();
        let end = pipe
            .stream::<u64>(input! { chunks_n: 0, work_ms: 0, stall_ms: 2000 })
            .finish()
            .await;
        assert!(matches!(end, Err(Error::Timeout { .. })), "{end:?}");
        assert!(started.elapsed() < 300 * MS, "{:?}", started.elapsed());
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_stage_waiting_on_a_consumer_away_longer_than_its_timeout_goes_on() {
    for pipe in both_timeouts() {
        // 40 chunks at once: the stage waits for room after 32. The consumer is away 1 s
        // after each chunk — five times the stage's 200 ms, all of it the consumer's.
        let s = pipe.stream::<u64>(input! { chunks_n: 40, work_ms: 0, stall_ms: 0 });
        let (got, end) = read_slowly(s, 1000 * MS).await;
        assert_eq!(got, 41);
        assert!(end.is_ok(), "{end:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_stage_stalled_while_the_consumer_reads_slowly_times_out_on_time() {
    for pipe in both_timeouts() {
        // 10 chunks at once (the buffer holds them all), then the stage hangs for 1.1 s. The
        // consumer takes 100 ms over each chunk, but the stage never waits for it: the
        // reading is not the stage's excuse, and it times out 200 ms in.
        let s = pipe.stream::<u64>(input! { chunks_n: 10, work_ms: 0, stall_ms: 1100 });
        let (got, end) = read_slowly(s, 100 * MS).await;
        assert_eq!(got, 10, "every chunk sent before the stall arrives");
        assert!(
            matches!(end, Err(Error::Timeout { after, .. }) if after == 200 * MS),
            "{end:?}"
        );
    }
}

#[stage(reads = [chunks_n], writes = [count], timeout = "200ms")]
async fn slow_sibling(chunks_n: &u64) -> usize {
    // 160 ms of its own work, in 16 steps (awaits): within its timeout.
    for _ in 0..16 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    *chunks_n as usize
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_does_not_time_out_other_stages_of_the_run() {
    // A consumer that holds on to each chunk for 100 ms slows the stream down, not
    // `slow_sibling`: the run goes on meanwhile (were it driven by the consumer's polls,
    // each of the sibling's 16 steps would wait for a chunk to be read).
    let pipe = pipeline! { parallel { plain_stream, slow_sibling } };
    let s = pipe.stream::<u64>(input! { chunks_n: 5, work_ms: 0, stall_ms: 0 });
    let (got, end) = read_slowly(s, 100 * MS).await;
    assert_eq!(got, 6);
    assert!(end.is_ok(), "{end:?}");
}

#[stage(reads = [words])]
fn boxed_words(words: &String) -> futures::stream::BoxStream<'static, Result<String, StageError>> {
    let words: Vec<_> = words.split(' ').map(|w| Ok(w.to_string())).collect();
    futures::stream::iter(words).boxed()
}

#[stage(reads = [words])]
fn pinned_words(
    words: &String,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<String, StageError>> + Send>> {
    let words: Vec<_> = words.split(' ').map(|w| Ok(w.to_uppercase())).collect();
    Box::pin(futures::stream::iter(words))
}

#[tokio::test]
async fn boxed_streams_are_stream_stages_too() {
    let pipe = pipeline! { boxed_words, pinned_words };
    let mut s = pipe.stream::<String>(input! { words: "a b".into() });
    let mut got = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        got.push(format!("{}:{}", chunk.stage, chunk.data));
    }
    got.sort();
    assert_eq!(
        got,
        [
            "boxed_words:a",
            "boxed_words:b",
            "pinned_words:A",
            "pinned_words:B"
        ]
    );
}

#[stage(reads = [chunks_n], writes = [published], timeout = "300ms")]
async fn hung_sibling(chunks_n: &u64) -> bool {
    // A call that never answers in time.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    *chunks_n > 0
}

#[tokio::test(start_paused = true)]
async fn a_stage_hung_beside_a_stream_times_out_however_slow_the_reader() {
    // 200 chunks of 5 ms each, read 20 ms apart (4 s of streaming): the stage beside the
    // stream hangs, and its 300 ms are the clock's, not the stream's pace.
    let pipe = pipeline! { parallel { plain_stream, hung_sibling } };
    let started = tokio::time::Instant::now();
    let s = pipe.stream::<u64>(input! { chunks_n: 200, work_ms: 5, stall_ms: 0 });
    let (got, end) = read_slowly(s, 20 * MS).await;
    assert!(
        matches!(
            &end,
            Err(Error::Timeout {
                stage: "hung_sibling",
                ..
            })
        ),
        "{end:?}"
    );
    // The run failed at 300 ms, not at the stream's end (200 chunks): the reader got what
    // was produced by then — read so far, and at most a buffer's worth (32) ahead — then
    // the error.
    assert!(got < 50, "{got}");
    let took = started.elapsed();
    assert!(
        took <= 20 * MS * got as u32 + 20 * MS,
        "{took:?} for {got} chunks"
    );
}

#[stage(reads = [chunks_n])]
fn numbers(chunks_n: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    futures::stream::iter((0..*chunks_n).map(Ok).collect::<Vec<_>>())
}

#[tokio::test]
async fn a_durable_stream_keeps_its_lease_while_the_consumer_pauses() {
    // Real time: the in-memory store's leases are on the system clock.
    let pipe = pipeline! { numbers }
        .with_store(InMemoryStore::new())
        .with_lease(std::time::Duration::from_millis(300));
    let mut s = pipe
        .stream::<u64>(input! { chunks_n: 100 })
        .run_id("paused-reader");
    assert_eq!(s.next().await.unwrap().unwrap().data, 0);
    // A slow client behind a server-sent events response, say: longer than the lease.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut rest = Vec::new();
    while let Some(chunk) = s.next().await {
        rest.push(chunk.unwrap().data);
    }
    assert_eq!(rest, (1..100).collect::<Vec<_>>());
    s.finish().await.unwrap();
}

#[stage(reads = [chunks_n], writes = [count])]
async fn counted_after(chunks_n: &u64) -> usize {
    // Still running when the consumer gets the chunk.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    *chunks_n as usize
}

#[tokio::test]
async fn naming_a_stream_after_its_run_ended_unseen_changes_nothing() {
    let pipe = pipeline! { numbers, counted_after };
    let mut s = pipe.stream::<u64>(input! { chunks_n: 1 });
    assert_eq!(s.next().await.unwrap().unwrap().data, 0);
    // The run ends on its task meanwhile; the handle has not seen it yet.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let out = s.run_id("too-late").finish().await.unwrap();
    assert_eq!(out[count], 1);
}

#[test]
fn a_streamed_run_whose_runtime_shut_down_is_cancelled_naming_it() {
    // The run starts on a task of the runtime the handle is first polled in; that runtime
    // shuts down before the run ends (`plain_stream` stalls for a minute).
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut s = pipeline! { plain_stream }
        .stream::<u64>(input! { chunks_n: 1, work_ms: 0, stall_ms: 60_000 })
        .run_id("shut-down");
    let chunk = first.block_on(s.next());
    assert!(matches!(chunk, Some(Ok(_))), "{chunk:?}");
    drop(first);
    let end = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(s.finish());
    let err = end.unwrap_err();
    assert!(
        matches!(&err, Error::Cancelled { run_id: Some(id) } if id == "shut-down"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "run `shut-down` cancelled");
}

/// `n` chunks; after the first, the stage works 300 ms without yielding (blocking its
/// thread), then floods the buffer and waits for room.
fn flood_after_work(n: u64) -> impl Stream<Item = Result<u64, StageError>> {
    futures::stream::iter(0..n).then(|i| async move {
        if i == 1 {
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        Ok(i)
    })
}

#[stage(reads = [chunks_n])]
fn late_flood(chunks_n: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    flood_after_work(*chunks_n)
}

/// The same with a timeout of its own.
#[stage(reads = [chunks_n], timeout = "100ms")]
fn late_flood_timed(chunks_n: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    flood_after_work(*chunks_n)
}

#[tokio::test]
async fn a_stream_stage_past_its_deadline_before_it_waits_for_the_consumer_times_out() {
    // Real time: the stage's 300 ms of work is a blocked thread, which tokio's paused clock
    // would not see.
    for pipe in [
        pipeline! { late_flood_timed },
        pipeline! { late_flood }.with_middleware(Timeout::new(100 * MS)),
    ] {
        let mut s = pipe.stream::<u64>(input! { chunks_n: 40 });
        assert!(matches!(s.next().await, Some(Ok(_))));
        // Away for a second: the stage, past its 100 ms already, waits for room meanwhile.
        // That wait is the consumer's, but the time it had used up before was its own.
        tokio::time::sleep(1000 * MS).await;
        let (_, end) = read_slowly(s, std::time::Duration::ZERO).await;
        assert!(
            matches!(end, Err(Error::Timeout { after, .. }) if after == 100 * MS),
            "{end:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_behind_a_users_middleware_leaves_out_the_consumers_time_too() {
    let pipe = pipeline! { plain_stream }
        .with_middleware(fluxio_tests::PassOn)
        .with_middleware(Timeout::new(200 * MS));
    // The buffer fills; the consumer is away 1 s after each chunk: its time, not the stage's.
    let s = pipe.stream::<u64>(input! { chunks_n: 40, work_ms: 0, stall_ms: 0 });
    let (got, end) = read_slowly(s, 1000 * MS).await;
    assert_eq!(got, 41);
    assert!(end.is_ok(), "{end:?}");
    // A stage that stalls while the consumer reads what it has times out on time.
    let s = pipe.stream::<u64>(input! { chunks_n: 10, work_ms: 0, stall_ms: 1100 });
    let (got, end) = read_slowly(s, 100 * MS).await;
    assert_eq!(got, 10);
    assert!(
        matches!(end, Err(Error::Timeout { after, .. }) if after == 200 * MS),
        "{end:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_streams_end_comes_once_the_run_has_let_go_of_its_id() {
    let store = InMemoryStore::new();
    let pipe = pipeline! { plain_stream }.with_store(store.clone());
    let slow = || input! { chunks_n: 5, work_ms: 10, stall_ms: 0 };

    // Through `finish`: it returns once the run has stopped, so its id is free at once.
    let mut chunks = pipe.stream::<u64>(slow()).run_id("held-1");
    chunks.next().await;
    let out = chunks.run_id("other").finish().await;
    assert!(matches!(out, Err(Error::BadRunId { .. })), "{out:?}");
    let out = pipe.resume("held-1").await;
    assert!(out.is_ok(), "resumed right after: {out:?}");

    // Through the stream: its last item comes once the run has stopped.
    let mut chunks = pipe.stream::<u64>(slow()).run_id("held-2");
    chunks.next().await;
    let mut chunks = chunks.run_id("other");
    while chunks.next().await.is_some() {}
    let out = pipe.resume("held-2").await;
    assert!(out.is_ok(), "resumed right after: {out:?}");
}

#[tokio::test]
async fn cancel_returns_once_the_run_has_stopped_and_let_go_of_its_id() {
    let gate = Arc::new(Gate(tokio::sync::Semaphore::new(0)));
    let (sink, events) = fluxio_tests::event_log();
    let pipe = pipeline! { gated }
        .with_resource(gate.clone())
        .with_store(InMemoryStore::new())
        .with_callback(sink);
    let names =
        || -> Vec<&'static str> { events.lock().unwrap().iter().map(|e| e.name()).collect() };

    // Mid-run: the stage waits at its gate after its first chunk.
    let mut s = pipe
        .stream::<String>(input! { words: "first".into() })
        .run_id("cancelled-1");
    assert_eq!(s.next().await.unwrap().unwrap().data, "first");
    let out = s.cancel().await;
    assert!(
        matches!(&out, Err(Error::Cancelled { run_id: Some(id) }) if id == "cancelled-1"),
        "{out:?}"
    );
    // Stopped by the time `cancel` returns: reported, and its id free.
    assert_eq!(
        names(),
        [
            "pipeline.started",
            "stage.started",
            "stage.cancelled",
            "pipeline.cancelled"
        ]
    );
    gate.0.add_permits(1);
    let resumed = pipe.resume("cancelled-1").await;
    assert!(resumed.is_ok(), "resumed right after: {resumed:?}");

    // Never polled: nothing ran, nothing is reported.
    events.lock().unwrap().clear();
    let out = pipe
        .stream::<String>(input! { words: "first".into() })
        .run_id("never")
        .cancel()
        .await;
    assert!(
        matches!(&out, Err(Error::Cancelled { run_id: Some(id) }) if id == "never"),
        "{out:?}"
    );
    assert!(names().is_empty(), "{:?}", names());

    // Ended before it was cancelled: its result stands — whether the handle saw the end...
    gate.0.add_permits(1);
    let mut s = pipe.stream::<String>(input! { words: "first".into() });
    while s.next().await.is_some() {}
    assert!(s.cancel().await.is_ok());
    // ...or not yet: both chunks read, the run's task left to finish on its own.
    let mut s = pipe.stream::<String>(input! { words: "first".into() });
    assert!(s.next().await.is_some() && s.next().await.is_some());
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(s.cancel().await.is_ok());
}
