use fluxio::prelude::*;

fluxio::keys! { pub order_id: u64; pub charged: bool; }

#[stage(reads = [order_id], writes = [charged], rollback = refund)]
async fn charge(order_id: &u64) -> bool {
    *order_id > 0
}

async fn refund(_order_id: &u64) -> bool {
    true
}

fn main() {}
