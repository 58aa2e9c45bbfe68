use fluxio::prelude::*;

fluxio::keys! { pub tier: String; pub a: u64; pub b: u64; }

#[stage(reads = [tier])]
async fn choose(tier: &String) -> Route { Route::to(tier.clone()) }

#[stage(writes = [a])]
async fn make_a() -> u64 { 1 }

#[stage(writes = [b])]
async fn make_b() -> u64 { 2 }

fn main() {
    let _ = pipeline! { parallel { make_b, choose => { "x" => [make_a] } } };
}
