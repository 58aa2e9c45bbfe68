//! The snippets of docs/getting-started.md, verbatim between their markers
//! (tests/tests/doc_snippets.rs checks it), with what makes them compile and run.

// snippet: getting-started.md 1
use fluxio::prelude::*;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User { pub id: u64, pub name: String, pub tier: String }

fluxio::keys! {
    /// The id the caller asks about.
    pub user_id: u64;
    pub user: User;
    pub profile: String;
    pub orders: Vec<u64>;
    pub prompt: String;
}
// end snippet

// snippet: getting-started.md 2
#[stage(reads = [user_id], writes = [user], timeout = "5s")]
async fn fetch_user(user_id: &u64) -> Result<User, StageError> {
    Ok(User { id: *user_id, name: "Alice".into(), tier: "pro".into() })
}

#[stage(reads = [user], writes = [profile])]
async fn enrich_profile(user: &User) -> Result<String, StageError> {
    Ok(format!("{} ({})", user.name, user.tier))
}

#[stage(reads = [user_id], writes = [orders])]
async fn fetch_orders(user_id: &u64) -> Result<Vec<u64>, StageError> {
    Ok(vec![*user_id * 10])
}
// end snippet

// snippet: getting-started.md 3
#[tokio::main]
async fn main() -> Result<(), fluxio::Error> {
    let pipe = pipeline! {
        fetch_user,
        parallel { enrich_profile, fetch_orders },
    };
    let out = pipe.invoke(input! { user_id: 42 }).run_id("req-abc-123").await?;
    println!("{} / {:?}", out[profile], out[orders]);
    Ok(())
}
// end snippet

#[test]
fn step_4_runs() {
    main().unwrap();
}

/// Steps 5, 6 and 8 continue one another: `route`, `stream_response` and `pipe` carry over.
async fn steps_5_6_and_8() -> Result<(), fluxio::Error> {
    // snippet: getting-started.md 4
    #[stage(reads = [user])]
    async fn route(user: &User) -> Route {
        Route::to(if user.tier == "pro" { "premium" } else { "standard" })
    }

    let pipe = pipeline! {
        fetch_user,
        route => {
            "premium"  => [enrich_profile],
            "standard" => [fetch_orders],
        },
    };
    // end snippet
    let out = pipe.invoke(input! { user_id: 7 }).await?;
    assert_eq!(out[profile], "Alice (pro)");
    assert!(!out.contains(orders), "the standard branch ran");

    // snippet: getting-started.md 5
    #[stage(reads = [prompt])]
    fn stream_response(prompt: &String) -> impl Stream<Item = Result<String, StageError>> {
        futures::stream::iter(prompt.split(' ').map(|w| Ok(w.to_string())).collect::<Vec<_>>())
    }

    // Add it to the pipeline, after the route (it reads `prompt`, an input).
    let pipe = pipeline! {
        fetch_user,
        route => {
            "premium"  => [enrich_profile],
            "standard" => [fetch_orders],
        },
        stream_response,
    };

    use futures::StreamExt;
    let mut chunks = pipe.stream::<String>(input! { user_id: 7, prompt: "hi there".into() });
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        println!("{}: {}", chunk.stage, chunk.data);
    }
    let out = chunks.finish().await?;
    // end snippet
    assert_eq!(out[profile], "Alice (pro)");

    // snippet: getting-started.md 7
    println!("{}", pipe.to_mermaid());   // paste into any Mermaid renderer
    println!("{:?}", pipe.inputs());     // ["user_id", "prompt"]
    println!("{}", pipe.version());      // changes when the flow changes
    // end snippet
    assert_eq!(pipe.inputs(), ["user_id", "prompt"]);
    Ok(())
}

#[tokio::test]
async fn steps_5_6_and_8_run() {
    steps_5_6_and_8().await.unwrap();
}

// snippet: getting-started.md 6
use fluxio::testing::StepHarness;

#[tokio::test]
async fn fetches_the_user() {
    let out = StepHarness::new(fetch_user).run(input! { user_id: 1 }).await.unwrap();
    assert_eq!(out[user].name, "Alice");
}
// end snippet

#[tokio::test]
async fn the_body_stays_callable() {
    assert_eq!(fetch_user::run(&1).await.unwrap().name, "Alice");
}
