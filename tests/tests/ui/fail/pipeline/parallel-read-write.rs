use fluxio::prelude::*;

fluxio::keys! { pub user: String; pub profile: String; }

#[stage(writes = [user])]
async fn fetch_user() -> String { "a".into() }

#[stage(reads = [user], writes = [profile])]
async fn enrich_profile(user: &String) -> String { user.clone() }

fn main() {
    let _ = pipeline! { parallel { fetch_user, enrich_profile } };
}
