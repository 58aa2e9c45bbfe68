use fluxio::prelude::*;

fluxio::keys! { pub n: u64; }

#[stage(name = "pay/charge", reads = [n])]
async fn charge(n: &u64) {
    let _ = n;
}

fn main() {}
