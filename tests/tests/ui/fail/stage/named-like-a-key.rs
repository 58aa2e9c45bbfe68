use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub summary: String; }

#[stage(reads = [user_id], writes = [summary])]
async fn summary(user_id: &u64) -> String {
    format!("user {user_id}")
}

fn main() {}
