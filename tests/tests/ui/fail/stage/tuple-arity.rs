use fluxio::prelude::*;

fluxio::keys! { pub a: u64; pub b: u64; pub c: u64; }

#[stage(writes = [a, b, c])]
async fn two() -> (u64, u64) {
    (1, 2)
}

fn main() {}
