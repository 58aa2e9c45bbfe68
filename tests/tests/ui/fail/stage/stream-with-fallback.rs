use fluxio::prelude::*;

fluxio::keys! { pub prompt: String; }

fn canned(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(vec![Ok(prompt.clone())])
}

#[stage(reads = [prompt], fallback = canned)]
fn say(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(vec![Ok(prompt.clone())])
}

fn main() {}
