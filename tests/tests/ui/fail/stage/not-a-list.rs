use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; }

#[stage(reads = user_id)]
async fn greet(user_id: &u64) {
    let _ = user_id;
}

fn main() {}
