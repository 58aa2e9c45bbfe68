use fluxio::prelude::*;

fluxio::keys! { pub user_id: u64; pub score: u64; }

#[derive(Debug)]
pub struct AppError;

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("app error")
    }
}

impl std::error::Error for AppError {}

pub type AppResult<T> = Result<T, AppError>;

#[stage(reads = [user_id], writes = [score])]
async fn score_user(user_id: &u64) -> AppResult<u64> {
    Ok(*user_id)
}

fn main() {}
