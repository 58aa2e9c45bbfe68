use fluxio::prelude::*;

fluxio::keys! { pub prompt: String; }

#[stage(reads = [prompt])]
async fn say(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(vec![Ok(prompt.clone())])
}

fn main() {}
