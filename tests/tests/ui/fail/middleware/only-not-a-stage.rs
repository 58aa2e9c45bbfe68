// `.only(..)` names a stage by the value `#[stage]` defines: a key, or a stage's name as
// a string, is not one.
use fluxio::prelude::*;

fluxio::keys! { pub price: u64; }

fn main() {
    let _ = Retry::exponential(3).only(price);
    let _ = Retry::exponential(3).except("fetch_price");
}
