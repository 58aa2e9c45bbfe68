use fluxio::prelude::*;

fluxio::keys! { pub a: u64; pub b: u64; }

#[stage(writes = [a])]
async fn make_a() -> u64 { 1 }

#[stage(writes = [b])]
async fn make_b() -> u64 { 2 }

fn main() {
    let _ = pipeline! { parallel { make_a make_b } };
}
