//! The pipeline of fluxio's specification, without store or middleware.
//!
//! Shows: typed keys, async and stream stages, an explicit `parallel` block, a route, the
//! compile-time graph rendered as Mermaid, and streaming the chunks of the chosen branch.
//!
//! Run it with `cargo run --example quickstart`.

use fluxio::prelude::*;

/// A user record, as a real `fetch_user` would load it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The user's id.
    pub id: u64,
    /// The user's name.
    pub name: String,
    /// The plan the user is on.
    pub tier: String,
}

fluxio::keys! {
    /// The id the caller asks about.
    pub user_id: u64;
    /// The user loaded by `fetch_user`.
    pub user: User;
    /// A one-line profile.
    pub profile: String;
    /// The user's order ids.
    pub orders: Vec<u64>;
    /// What the response streams back.
    pub prompt: String;
}

#[stage(reads = [user_id], writes = [user], timeout = "5s")]
async fn fetch_user(user_id: &u64) -> Result<User, StageError> {
    Ok(User {
        id: *user_id,
        name: "Alice".into(),
        tier: "pro".into(),
    })
}

#[stage(reads = [user], writes = [profile])]
async fn enrich_profile(user: &User) -> Result<String, StageError> {
    Ok(format!("{} ({})", user.name, user.tier))
}

#[stage(reads = [user_id], writes = [orders])]
async fn fetch_orders(user_id: &u64) -> Result<Vec<u64>, StageError> {
    Ok(vec![*user_id * 10])
}

#[stage(reads = [user])]
async fn route(user: &User) -> Route {
    Route::to(if user.tier == "pro" {
        "premium"
    } else {
        "standard"
    })
}

#[stage(reads = [prompt])]
fn stream_response(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
    futures::stream::iter(
        prompt
            .split(' ')
            .map(|w| Ok(w.to_string()))
            .collect::<Vec<_>>(),
    )
}

#[tokio::main]
async fn main() -> Result<(), fluxio::Error> {
    let pipe = pipeline! {
        fetch_user,
        parallel { enrich_profile, fetch_orders },
        route => {
            "premium" => [stream_response],
            "standard" => [stream_response],
        },
    };

    println!(
        "pipeline version {} reads {:?}",
        pipe.version(),
        pipe.inputs()
    );
    println!("{}", pipe.to_mermaid());

    let out: Ctx = pipe
        .invoke(input! { user_id: 42, prompt: "hi there".into() })
        .run_id("req-abc-123")
        .await?;
    println!("profile: {}", out[profile]);
    println!("orders:  {:?}", out[orders]);

    use futures::StreamExt;
    let mut chunks =
        pipe.stream::<String>(input! { user_id: 7, prompt: "streamed word by word".into() });
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        println!("chunk from {}: {}", chunk.stage, chunk.data);
    }
    let out = chunks.finish().await?;
    println!("final context holds {:?}", out.keys());
    Ok(())
}
