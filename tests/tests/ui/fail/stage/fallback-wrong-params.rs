use fluxio::prelude::*;

fluxio::keys! { pub order_id: u64; pub label: String; }

pub struct Pricing;

// A fallback takes the stage's parameters, all of them, in order.
#[stage(reads = [order_id], writes = [label], fallback = cached)]
async fn quote(order_id: &u64, _pricing: Res<Pricing>) -> Result<String, StageError> {
    Ok(order_id.to_string())
}

async fn cached(order_id: &u64) -> String {
    order_id.to_string()
}

fn main() {}
