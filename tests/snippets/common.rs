//! The pipeline of docs/getting-started.md — its keys and stages — for the companions of
//! the guides that build on it (durability, middleware, observability, operations). Not a
//! snippet: getting_started.rs holds the guide's own text.

use fluxio::prelude::*;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub tier: String,
}

fluxio::keys! {
    /// The id the caller asks about.
    pub user_id: u64;
    pub user: User;
    pub profile: String;
    pub orders: Vec<u64>;
    pub prompt: String;
}

#[stage(reads = [user_id], writes = [user], timeout = "5s")]
pub async fn fetch_user(user_id: &u64) -> Result<User, StageError> {
    Ok(User {
        id: *user_id,
        name: "Alice".into(),
        tier: "pro".into(),
    })
}

#[stage(reads = [user], writes = [profile])]
pub async fn enrich_profile(user: &User) -> Result<String, StageError> {
    Ok(format!("{} ({})", user.name, user.tier))
}

#[stage(reads = [user_id], writes = [orders])]
pub async fn fetch_orders(user_id: &u64) -> Result<Vec<u64>, StageError> {
    Ok(vec![*user_id * 10])
}

#[stage(reads = [user])]
pub async fn route(user: &User) -> Route {
    Route::to(if user.tier == "pro" {
        "premium"
    } else {
        "standard"
    })
}

#[stage(reads = [prompt])]
pub fn stream_response(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(
        prompt
            .split(' ')
            .map(|w| Ok(w.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// A one-stage pipeline's keys and stage, for the observability and operations guides.
pub mod labels {
    use fluxio::prelude::*;

    fluxio::keys! {
        pub order_id: u64;
        pub label: String;
    }

    /// Fails for order 0.
    #[stage(reads = [order_id], writes = [label])]
    pub async fn make_label(order_id: &u64) -> Result<String, StageError> {
        match order_id {
            0 => Err(StageError::msg("no such order")),
            id => Ok(format!("order {id}")),
        }
    }
}
