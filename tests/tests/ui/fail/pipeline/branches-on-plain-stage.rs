use fluxio::prelude::*;

fluxio::keys! { pub out: u64; pub more: u64; }

#[stage(writes = [out])]
async fn one() -> u64 { 1 }

#[stage(reads = [out], writes = [more])]
async fn two(out: &u64) -> u64 { out + 1 }

fn main() {
    let _ = pipeline! { one => { "a" => [two] } };
}
