use fluxio::prelude::*;

fluxio::keys! { pub prompt: String; }

#[stage(reads = [prompt])]
fn say(prompt: &String) -> impl Stream<Item = String> {
    futures::stream::iter(vec![prompt.clone()])
}

fn main() {}
