//! Auto-parallelism: stages that do not touch each other's keys run at the same time.
//!
//! Three lookups each take 200 ms; run as a pipeline they finish together in about
//! 200 ms, because none reads what another writes. `summary` reads all three, so the graph
//! makes it wait for them.
//!
//! Run it with `cargo run --example parallel`.

use std::time::Instant;

use fluxio::prelude::*;

fluxio::keys! {
    /// The city to report on.
    pub city: String;
    /// Today's weather there.
    pub weather: String;
    /// Local headlines.
    pub news: Vec<String>;
    /// A traffic index.
    pub traffic: u32;
    /// The combined report.
    pub summary: String;
}

#[stage(reads = [city], writes = [weather])]
async fn fetch_weather(city: &String) -> String {
    tokio::time::sleep(Duration::from_millis(200)).await;
    format!("sunny in {city}")
}

#[stage(reads = [city], writes = [news])]
async fn fetch_news(city: &String) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    vec![format!("{city} opens a new park")]
}

#[stage(reads = [city], writes = [traffic])]
async fn fetch_traffic(city: String) -> u32 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    city.len() as u32 * 3
}

#[stage(reads = [weather, news, traffic], writes = [summary])]
async fn summarize(weather: &String, news: &Vec<String>, traffic: &u32) -> String {
    format!(
        "{weather}; {} headline(s); traffic index {traffic}",
        news.len()
    )
}

#[tokio::main]
async fn main() -> Result<(), fluxio::Error> {
    let pipe = pipeline! { fetch_weather, fetch_news, fetch_traffic, summarize };
    println!("{}", pipe.to_mermaid());
    let started = Instant::now();
    let out = pipe.invoke(input! { city: "Lisbon".into() }).await?;
    println!("{}", out[summary]);
    println!("took {:?} for three 200 ms lookups", started.elapsed());
    Ok(())
}
