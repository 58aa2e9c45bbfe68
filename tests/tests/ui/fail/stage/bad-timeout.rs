use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; }

#[stage(reads = [user_id], timeout = "5 parsecs")]
async fn greet(user_id: &u64) {
    let _ = user_id;
}

fn main() {}
