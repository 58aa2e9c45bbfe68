use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; }

#[stage(reads = [user_id], retries = 3)]
async fn greet(user_id: &u64) {
    let _ = user_id;
}

fn main() {}
