//! The snippets of docs/streaming.md, verbatim between their markers
//! (tests/tests/doc_snippets.rs checks it), with what makes them compile and run.

// snippet: streaming.md 1
use fluxio::prelude::*;
use futures::Stream;

fluxio::keys! {
    pub prompt: String;
}

#[stage(reads = [prompt])]
fn answer(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    let words: Vec<_> = prompt.split(' ').map(|w| Ok(w.to_string())).collect();
    futures::stream::iter(words)
}
// end snippet

#[tokio::test]
async fn consuming_chunks() -> fluxio::Result<()> {
    // snippet: streaming.md 2
    use futures::StreamExt;

    let pipe = pipeline! { answer };
    let mut chunks = pipe.stream::<String>(input! { prompt: "hi there".into() });
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;                       // fluxio::Result<Chunk<String>>
        print!("[{}] {} ", chunk.stage, chunk.data);
    }
    let out = chunks.finish().await?;            // the final context
    // end snippet
    assert_eq!(out[prompt], "hi there");
    Ok(())
}

#[tokio::test]
async fn the_chunks_are_the_words() {
    use futures::StreamExt;

    let pipe = pipeline! { answer };
    let chunks: Vec<_> = pipe
        .stream::<String>(input! { prompt: "hi there".into() })
        .map(|chunk| chunk.unwrap().data)
        .collect()
        .await;
    assert_eq!(chunks, ["hi", "there"]);
}
