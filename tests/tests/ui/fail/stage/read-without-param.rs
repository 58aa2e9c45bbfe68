use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub greeting: String; }

#[stage(reads = [user_id], writes = [greeting])]
async fn greet() -> String {
    "hi".into()
}

fn main() {}
