use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub score: u64; }

// An async stage's fallback and rollback are `async fn`s.
#[stage(reads = [user_id], writes = [score], fallback = default_score, rollback = forget_score)]
async fn fetch_score(user_id: &u64) -> u64 {
    *user_id
}

fn default_score(_user_id: &u64) -> u64 {
    0
}

fn forget_score(_user_id: &u64) {}

// A sync stage's fallback is a plain `fn`.
#[stage(reads = [user_id], writes = [score], fallback = async_default)]
fn compute_score(user_id: &u64) -> u64 {
    *user_id
}

async fn async_default(_user_id: &u64) -> u64 {
    0
}

fn main() {}
