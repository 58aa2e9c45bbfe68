use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub greeting: String; }

#[stage(writes = [greeting])]
async fn greet(user_id: &u64) -> String {
    format!("{user_id}")
}

fn main() {}
