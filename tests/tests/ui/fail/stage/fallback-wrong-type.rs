use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub score: u64; }

#[stage(reads = [user_id], writes = [score], fallback = default_score)]
async fn fetch_score(user_id: &u64) -> u64 {
    *user_id
}

async fn default_score(_user_id: &u64) -> String {
    "unknown".into()
}

fn main() {}
