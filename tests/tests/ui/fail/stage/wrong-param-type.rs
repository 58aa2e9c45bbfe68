use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub greeting: String; }

#[stage(reads = [user_id], writes = [greeting])]
async fn greet(user_id: &String) -> String {
    user_id.clone()
}

fn main() {}
