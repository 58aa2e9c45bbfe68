use fluxio::prelude::*;

fn main() {
    let _ = pipeline! { fetch_usr };
}
