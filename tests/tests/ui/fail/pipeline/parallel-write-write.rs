use fluxio::prelude::*;

fluxio::keys! { pub k: u64; }

#[stage(writes = [k])]
async fn load() -> u64 { 1 }

#[stage(writes = [k])]
async fn enrich() -> u64 { 2 }

fn main() {
    let _ = pipeline! { parallel { load, enrich } };
}
