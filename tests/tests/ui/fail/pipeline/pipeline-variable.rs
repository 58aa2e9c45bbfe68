use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub m: u64;
}

#[stage(reads = [n], writes = [m])]
async fn double(n: &u64) -> u64 {
    n * 2
}

fn main() {
    let sub = pipeline! { double };
    let _ = pipeline! { sub };
}
