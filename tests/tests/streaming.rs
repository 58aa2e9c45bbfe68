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

fluxio::keys! {
    pub chunks_n: u64;
    pub stall_ms: u64;
}

/// `chunks_n` chunks at once, then `stall_ms` of its own work before it ends.
fn burst_then_stall(n: u64, stall_ms: u64) -> impl Stream<Item = Result<u64, StageError>> {
    let stall = std::time::Duration::from_millis(stall_ms);
    let burst = futures::stream::iter((0..n).map(Ok));
    let stall = futures::stream::once(async move {
        tokio::time::sleep(stall).await;
        Ok(n)
    });
    burst.chain(stall)
}

#[stage(reads = [chunks_n, stall_ms], timeout = "200ms")]
fn bursty(chunks_n: &u64, stall_ms: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    burst_then_stall(*chunks_n, *stall_ms)
}

/// The same without a timeout of its own (for the `Timeout` middleware).
#[stage(reads = [chunks_n, stall_ms])]
fn bursty_plain(chunks_n: &u64, stall_ms: &u64) -> impl Stream<Item = Result<u64, StageError>> {
    burst_then_stall(*chunks_n, *stall_ms)
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

fn both_timeouts() -> [fluxio::Pipeline; 2] {
    [
        pipeline! { bursty },
        pipeline! { bursty_plain }
            .with_middleware(Timeout::new(std::time::Duration::from_millis(200))),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_does_not_time_out_the_stream_stage() {
    // 100 chunks at once, read 10 ms apart: ~700 ms spent waiting for the consumer, against
    // a 200 ms timeout (own timeout, then the `Timeout` middleware).
    for pipe in both_timeouts() {
        let s = pipe.stream::<u64>(input! { chunks_n: 100, stall_ms: 0 });
        let (got, end) = read_slowly(s, std::time::Duration::from_millis(10)).await;
        assert_eq!(got, 101);
        assert!(end.is_ok(), "{end:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_stage_stalling_behind_a_slow_consumer_still_times_out() {
    // The consumer holds the stage up ~200 ms; then the stage's own work takes 1 s.
    for pipe in both_timeouts() {
        let started = tokio::time::Instant::now();
        let s = pipe.stream::<u64>(input! { chunks_n: 50, stall_ms: 1000 });
        let (got, end) = read_slowly(s, std::time::Duration::from_millis(10)).await;
        assert_eq!(got, 50, "every chunk sent before the stall arrives");
        assert!(
            matches!(end, Err(Error::Timeout { after, .. }) if after == std::time::Duration::from_millis(200)),
            "{end:?}"
        );
        // 200 ms of its own, plus the consumer's share; far from the 1 s stall.
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(800), "{took:?}");
    }
}
