use fluxio::prelude::*;

fluxio::keys! { pub n: u64; pub a: u64; pub b: u64; }

#[stage(reads = [n], writes = [a])]
async fn left(n: &u64) -> u64 {
    *n
}

#[stage(reads = [n], writes = [b])]
async fn right(n: &u64) -> u64 {
    *n
}

fn main() {
    let _ = pipeline! { parallel(left, right) };
}
