//! The fix for the parallel conflicts: stages that touch each other's keys run in sequence.
use fluxio::prelude::*;

fluxio::keys! { pub user: String; pub profile: String; pub k: u64; }

#[stage(writes = [user])]
async fn fetch_user() -> String { "a".into() }

#[stage(reads = [user], writes = [profile])]
async fn enrich_profile(user: &String) -> String { user.clone() }

#[stage(writes = [k])]
async fn load() -> u64 { 1 }

#[stage(writes = [k])]
async fn enrich() -> u64 { 2 }

fn main() {
    let _ = pipeline! { fetch_user, enrich_profile, load, enrich };
    let _ = pipeline! { parallel { fetch_user, load } };
}
