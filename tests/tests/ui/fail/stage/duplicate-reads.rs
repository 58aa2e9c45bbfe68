use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub greeting: String; }

#[stage(reads = [user_id], reads = [user_id], writes = [greeting])]
async fn greet(user_id: &u64) -> String {
    format!("{user_id}")
}

fn main() {}
