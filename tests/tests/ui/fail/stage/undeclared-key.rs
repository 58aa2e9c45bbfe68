use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; }

#[stage(reads = [user_idd])]
async fn greet(user_idd: &u64) {
    let _ = user_idd;
}

fn main() {}
