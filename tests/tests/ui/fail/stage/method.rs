use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub out: u64;
}

struct Pricing;

impl Pricing {
    #[stage(reads = [n], writes = [out])]
    async fn price(&self, n: &u64) -> u64 {
        n * 2
    }
}

fn main() {}
