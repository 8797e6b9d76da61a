//! Writes 10,000 keyed records through the batching, idempotent `Producer`: records are
//! sent one at a time and the SDK batches them per shard, keeps each key in order, retries
//! failures, and never stores a retried request twice.
//!
//! Against `tributary dev` (run `scripts/dev` first):
//!
//! ```sh
//! cargo run -p tributary-client --example producer -- demo
//! ```
//!
//! The endpoint comes from `$TRIBUTARY_ENDPOINT` (default `http://127.0.0.1:7101`; a
//! comma-separated list of nodes keeps working while one is down).

use tributary_client::{Client, Producer, ProducerOptions};

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
    let producer = Producer::new(&client, ProducerOptions::default());
    // `send` waits only for buffer space and returns the delivery to await later, so many
    // records are in flight at once: 100 users, 100 events each.
    let mut deliveries = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let user = format!("user-{}", i % 100);
        deliveries.push(producer.send(&stream, &user, format!("event {i}")).await?);
    }
    let mut first = None;
    for delivery in deliveries {
        let receipt = delivery.await?;
        first.get_or_insert(receipt);
    }
    let metrics = producer.metrics();
    if let Some(first) = first {
        println!(
            "{} records acknowledged in {} requests ({} retried); the first went to {} as {}",
            metrics.records_acknowledged,
            metrics.requests,
            metrics.retries,
            first.shard_id,
            first.sequence_number
        );
    }
    Ok(())
}
