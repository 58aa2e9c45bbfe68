//! Every stage shape the macro accepts.
use fluxio::prelude::*;

fluxio::keys! { pub a: u64; pub b: String; pub c: Vec<u8>; pub tier: String; }

pub struct Client;

#[stage(reads = [a], writes = [b], timeout = "1m 30s", name = "renamed")]
async fn async_one(a: &u64) -> Result<String, StageError> { Ok(a.to_string()) }

#[stage(reads = [a, b], writes = [c])]
fn sync_one(a: u64, b: &String, _client: Res<Client>) -> Vec<u8> { vec![a as u8; b.len()] }

#[stage(reads = [a], writes = [b, c])]
async fn two(a: &u64) -> (String, Vec<u8>) { (a.to_string(), vec![]) }

#[stage(reads = [b])]
fn streamer(b: &String) -> impl Stream<Item = Result<u8, StageError>> {
    futures::stream::iter(b.clone().into_bytes().into_iter().map(Ok))
}

#[stage(reads = [tier])]
fn sync_route(tier: &String) -> Result<Route, std::io::Error> { Ok(Route::to(tier.clone())) }

#[stage(reads = [a], writes = [b])]
async fn ctx_style(ctx: Ctx) -> Result<Ctx, StageError> { let v = ctx[a]; Ok(ctx.set(b, v.to_string())) }

#[stage]
async fn nothing() {}

fn main() {
    let _ = pipeline! {
        async_one, sync_one, two, ctx_style,
        // One stage in two branches of a route: only one of them runs.
        sync_route => { "x" => [nothing], "y" => [parallel { nothing, streamer }] },
    };
}
