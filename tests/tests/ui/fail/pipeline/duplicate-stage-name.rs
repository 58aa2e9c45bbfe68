use fluxio::prelude::*;

fluxio::keys! { pub order: u64; pub charged: bool; pub receipt: String; }

#[stage(reads = [order], writes = [charged])]
async fn charge(order: &u64) -> bool {
    *order > 0
}

mod legacy {
    use super::*;

    /// Another stage that calls itself `charge`.
    #[stage(reads = [charged], writes = [receipt], name = "charge")]
    pub async fn send_receipt(charged: &bool) -> String {
        format!("charged: {charged}")
    }
}

fn main() {
    let _twice = pipeline! { charge, charge };
    let _renamed = pipeline! { charge, legacy::send_receipt };
}
