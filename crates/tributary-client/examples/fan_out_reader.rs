//! Registers an enhanced fan-out consumer and prints every record of a stream as the server
//! pushes it, parents before children across reshards, resubscribing from the last
//! continuation whenever a subscription ends. Stops after `LIMIT` records (default: never).
//!
//! Against `tributary dev` (run `scripts/dev` first), while something writes to `demo`:
//!
//! ```sh
//! cargo run -p tributary-client --example fan_out_reader -- demo my-app 100
//! ```

use std::ops::ControlFlow;
use std::time::Duration;

use tributary_client::{follow_with_consumer, Client, ErrorCode, StartingPosition};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let stream = args.next().unwrap_or_else(|| "demo".to_string());
    let consumer = args.next().unwrap_or_else(|| "fan-out-example".to_string());
    let limit = args.next().map(|n| n.parse()).transpose()?;
    let endpoint =
        std::env::var("TRIBUTARY_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7101".to_string());
    let client = Client::connect(&endpoint).await?;
    match client.register_stream_consumer(&stream, &consumer).await {
        Ok(_) => {}
        // Registered by an earlier run: reuse it.
        Err(err) if err.code() == Some(ErrorCode::ResourceInUse) => {}
        Err(err) => return Err(err.into()),
    }
    client
        .wait_for_consumer_active(&stream, &consumer, Duration::from_secs(30))
        .await?;
    let read = follow_with_consumer(
        &client,
        &stream,
        &consumer,
        None,
        &StartingPosition::TrimHorizon,
        limit,
        |shard, record| {
            println!(
                "{shard} {} {} {}",
                record.sequence_number,
                record.partition_key,
                String::from_utf8_lossy(&record.data)
            );
            ControlFlow::Continue(())
        },
    )
    .await?;
    eprintln!("{read} records read through consumer {consumer}");
    Ok(())
}
