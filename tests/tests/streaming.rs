//! `Pipeline::stream`: chunks in order, tagged, delivered while the stage still runs.

use std::sync::Arc;

use fluxio::Error;
use fluxio::prelude::*;
use futures::StreamExt;

fluxio::keys! {
    pub words: String;
    pub count: usize;
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
