use fluxio::prelude::*;

pub struct Plain;

fn main() {
    let _ = pipeline! { Plain };
}
