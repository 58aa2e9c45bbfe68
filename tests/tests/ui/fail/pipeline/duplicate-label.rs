use fluxio::prelude::*;

fluxio::keys! { pub tier: String; pub out: u64; }

#[stage(reads = [tier])]
async fn route(tier: &String) -> Route { Route::to(tier.clone()) }

#[stage(writes = [out])]
async fn one() -> u64 { 1 }

fn main() {
    let _ = pipeline! { route => { "premium" => [one], "premium" => [one] } };
}
