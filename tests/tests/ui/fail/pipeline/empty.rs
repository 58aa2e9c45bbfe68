use fluxio::prelude::*;

fn main() {
    let _ = pipeline! {};
}
