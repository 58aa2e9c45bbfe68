use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub doubled: u64; }

#[stage(reads = [user_id], writes = [doubled])]
async fn double<'a>(user_id: &'a u64) -> u64 {
    user_id * 2
}

fn main() {}
