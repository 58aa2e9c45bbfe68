#![deny(unused_must_use)]

use fluxio::prelude::*;

fluxio::keys! { pub n: u64; pub a: u64; }

#[stage(reads = [n], writes = [a])]
async fn double(n: &u64) -> u64 {
    n * 2
}

fn main() {
    pipeline! { double };
}
