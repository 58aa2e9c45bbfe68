use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; }

#[stage(reads = [user_id])]
async fn greet(user_id: &u64) -> String {
    format!("{user_id}")
}

fn main() {}
