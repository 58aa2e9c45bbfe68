use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub out: u64;
}

#[derive(Debug)]
pub struct NotAnError;

#[stage(reads = [n], writes = [out])]
async fn check(n: &u64) -> Result<u64, NotAnError> {
    if *n == 0 { Err(NotAnError) } else { Ok(*n) }
}

fn main() {}
