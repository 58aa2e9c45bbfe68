use fluxio::prelude::*;

fluxio::keys! { pub out: u64; }

#[stage(writes = [out])]
async fn one() -> u64 { 1 }

fn main() {
    let _ = pipeline! { one => { "a" => [one] } };
}
