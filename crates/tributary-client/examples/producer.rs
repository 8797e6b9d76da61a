//! Writes 10,000 keyed records to a stream, in order per key, with retries.
//!
//! Against `tributary dev` (run `scripts/dev` first):
//!
//! ```sh
//! cargo run -p tributary-client --example producer -- demo
//! ```
//!
//! The endpoint comes from `$TRIBUTARY_ENDPOINT` (default `http://127.0.0.1:7101`; a
//! comma-separated list of nodes keeps working while one is down).

use tributary_client::{put_all, Client, PutOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stream = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo".to_string());
    let endpoint =
        std::env::var("TRIBUTARY_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7101".to_string());
    let client = Client::connect(&endpoint).await?;
    if client.describe_stream(&stream).await.is_err() {
        client.create_stream(&stream, 2, None).await?;
    }
    client
        .wait_for_active(&stream, std::time::Duration::from_secs(30))
        .await?;
    // (partition key, data, explicit hash key): 100 users, 100 events each.
    let records: Vec<(String, String, Option<String>)> = (0..10_000)
        .map(|i| (format!("user-{}", i % 100), format!("event {i}"), None))
        .collect();
    let summary = put_all(&client, &stream, records, &PutOptions::default()).await?;
    println!(
        "{} records acknowledged; the first went to {} as {}",
        summary.acknowledged, summary.results[0].0, summary.results[0].1
    );
    Ok(())
}
