//! The specification's opening example, as a user would write it, runs as written.

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

#[tokio::test]
async fn the_specification_example_runs() -> Result<(), fluxio::Error> {
    let pipe = pipeline! {
        fetch_user,
        parallel { enrich_profile, fetch_orders },   // explicit fork/merge
        route => {
            "premium"  => [stream_response],
            "standard" => [stream_response],
        },
    }
    .with_middleware(CircuitBreaker::new(5))
    .with_middleware(Retry::exponential(3))
    .with_middleware(Cache::ttl(Duration::from_secs(60)))
    .with_callback(LoggingCallback::default())
    .with_store(InMemoryStore::new()); // a store makes the pipeline durable

    let out: Ctx = pipe
        .invoke(input! { user_id: 42, prompt: "hi there".into() })
        .run_id("req-abc-123")
        .await?;
    assert_eq!(out[profile], "Alice (pro)");
    assert_eq!(out[orders], vec![420]);
    assert_eq!(pipe.inputs(), vec!["user_id", "prompt"]);

    // Streaming the same pipeline.
    use futures::StreamExt;
    let mut chunks = pipe.stream::<String>(input! { user_id: 7, prompt: "hi there".into() });
    let mut got = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        assert_eq!(chunk.stage, "stream_response");
        got.push(chunk.data);
    }
    assert_eq!(got, ["hi", "there"]);
    assert_eq!(chunks.finish().await?[profile], "Alice (pro)");
    Ok(())
}
