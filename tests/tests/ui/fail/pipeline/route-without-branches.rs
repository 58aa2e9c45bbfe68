use fluxio::prelude::*;

fluxio::keys! { pub tier: String; }

#[stage(reads = [tier])]
async fn route(tier: &String) -> Route { Route::to(tier.clone()) }

fn main() {
    let _ = pipeline! { route };
}
