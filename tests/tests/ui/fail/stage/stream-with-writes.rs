use fluxio::prelude::*;

fluxio::keys! { pub prompt: String; pub answer: String; }

#[stage(reads = [prompt], writes = [answer])]
fn say(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(vec![Ok(prompt.clone())])
}

fn main() {}
