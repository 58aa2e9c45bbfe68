use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; }

#[stage(reads = [user_id], timeout = "0s")]
async fn greet(user_id: &u64) {
    let _ = user_id;
}

#[stage(reads = [user_id], timeout = "99999999999999999999h")]
async fn forever(user_id: &u64) {
    let _ = user_id;
}

fn main() {}
