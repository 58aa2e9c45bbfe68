use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub greeting: String; }

// A parameter named `_user_id` reads `user_id` without using its value: the hint names
// the key, not the parameter.
#[stage(writes = [greeting])]
async fn greet(_user_id: &u64) -> String {
    "hello".to_string()
}

fn main() {}
