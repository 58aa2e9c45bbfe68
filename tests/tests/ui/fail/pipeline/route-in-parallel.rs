use fluxio::prelude::*;

fluxio::keys! { pub tier: String; pub other: u64; }

#[stage(reads = [tier])]
async fn route(tier: &String) -> Route { Route::to(tier.clone()) }

#[stage(writes = [other])]
async fn count() -> u64 { 1 }

fn main() {
    let _ = pipeline! { parallel { route, count } };
}
