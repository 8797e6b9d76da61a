//! A consumer-group worker: counts events per user and checkpoints after each batch. Start
//! it two or three times with the same application name and the stream's shards are shared
//! between the processes; stop one (Ctrl-C hands its shards over at once, a kill within the
//! lease time) and the others take its shards over from the last checkpoint.
//!
//! Against `tributary dev` (run `scripts/dev` and the `producer` example first):
//!
//! ```sh
//! cargo run -p tributary-client --example consumer_group -- demo billing
//! ```

use std::collections::HashMap;

use tributary_client::{
    Checkpointer, Client, ConsumerGroup, ConsumerGroupOptions, ProcessError, Record,
    RecordProcessor, ShardInfo,
};

/// One per shard lease: counts records per partition key.
struct CountPerUser {
    shard: String,
    counts: HashMap<String, u64>,
}

impl RecordProcessor for CountPerUser {
    async fn initialize(&mut self, shard: &ShardInfo) {
        println!(
            "{}: processing from {:?} (lease epoch {})",
            shard.shard_id, shard.start, shard.epoch
        );
    }

    async fn process_records(
        &mut self,
        records: &[Record],
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessError> {
        for record in records {
            *self.counts.entry(record.partition_key.clone()).or_default() += 1;
        }
        // The effect is in memory only here; a real processor checkpoints once its output
        // is durable (written to a database, a sink, another stream).
        if let Some(last) = records.last() {
            checkpointer.checkpoint(&last.sequence_number).await?;
        }
        println!(
            "{}: {} records, {} users so far",
            self.shard,
            records.len(),
            self.counts.len()
        );
        Ok(())
    }

    async fn lease_lost(&mut self) {
        println!("{}: another worker took this shard over", self.shard);
    }

    async fn shard_ended(&mut self, _checkpointer: &Checkpointer) -> Result<(), ProcessError> {
        println!(
            "{}: closed by a reshard and fully processed; its children go on",
            self.shard
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let stream = args.next().unwrap_or_else(|| "demo".to_string());
    let application = args.next().unwrap_or_else(|| "billing".to_string());
    let endpoint =
        std::env::var("TRIBUTARY_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7101".to_string());
    let client = Client::connect(&endpoint).await?;
    let group = ConsumerGroup::new(&client, &stream, &application, |shard: &ShardInfo| {
        CountPerUser {
            shard: shard.shard_id.clone(),
            counts: HashMap::new(),
        }
    })
    .with_options(ConsumerGroupOptions::default());
    println!(
        "worker {} of {application} on {stream}; Ctrl-C to stop",
        group.worker_id()
    );
    group
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("stopped: final checkpoints written, leases released");
    Ok(())
}
