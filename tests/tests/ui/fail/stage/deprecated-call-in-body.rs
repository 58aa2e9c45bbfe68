#![deny(deprecated)]

use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub m: u64;
    #[deprecated(note = "use `n`")]
    pub old_n: u64;
}

#[deprecated(note = "use `double`")]
fn old_double(n: u64) -> u64 {
    n * 2
}

// A stage that is not deprecated still warns about the deprecated things it uses.
#[stage(reads = [n], writes = [m])]
async fn uses_old(n: &u64) -> u64 {
    old_double(*n)
}

#[stage(reads = [old_n], writes = [m])]
async fn reads_old(old_n: &u64) -> u64 {
    *old_n
}

fn main() {}
