use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; }

async fn plain(user_id: &u64) -> u64 {
    *user_id
}

fn main() {
    let _ = pipeline! { plain };
}
