//! `trib put`: one record from the command line, or one record per stdin line.

use std::io::{BufRead, Write};

use clap::Args;
use tributary_client::{Producer, ProducerOptions};

use super::Context;
use crate::hash_key::parse_hash_key;
use crate::output::{write_json_line, OutputFormat, PutResultView};

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The stream to write to.
    pub stream: String,
    /// Partition key of every record (1-256 characters). Default: a random key per record,
    /// which spreads records over all shards.
    #[arg(long)]
    pub key: Option<String>,
    /// A decimal 128-bit integer that picks the shard instead of the key's MD5 hash.
    #[arg(long, value_name = "H", value_parser = parse_hash_key)]
    pub explicit_hash_key: Option<u128>,
    /// Read each stdin line as KEY, this separator, then DATA (e.g. `--key-separator ,` for
    /// `user-7,clicked`), so one run can write many partition keys.
    #[arg(long, value_name = "SEP", conflicts_with = "key")]
    pub key_separator: Option<String>,
    /// The record's data. Without it, every line of stdin is one record (its trailing newline
    /// removed).
    pub data: Option<String>,
}

/// Failure of a put in which some records may have been acknowledged; `main` reports both.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct PartialPut {
    pub acknowledged: usize,
    pub total: usize,
    #[source]
    pub source: tributary_client::Error,
}

pub async fn run(context: &Context, args: PutArgs) -> anyhow::Result<()> {
    let data: Vec<Vec<u8>> = match args.data {
        Some(data) => vec![data.into_bytes()],
        None => read_lines(std::io::stdin().lock())?,
    };
    let explicit_hash_key = args.explicit_hash_key.map(|key| key.to_string());
    let records: Vec<(String, Vec<u8>, Option<String>)> = data
        .into_iter()
        .enumerate()
        .map(|(line, data)| {
            let (key, data) = match &args.key_separator {
                Some(separator) => split_key(data, separator.as_bytes(), line + 1)?,
                None => (args.key.clone().unwrap_or_else(random_key), data),
            };
            Ok((key, data, explicit_hash_key.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    let total = records.len();
    let client = context.connect().await.map_err(|source| PartialPut {
        acknowledged: 0,
        total,
        source,
    })?;
    // Idempotent, batched per shard, one request in flight per shard (so each key's
    // records keep their order), retried with backoff.
    let producer = Producer::new(&client, ProducerOptions::default());
    let mut deliveries = Vec::with_capacity(total);
    for (key, data, explicit_hash_key) in records {
        let delivery = producer
            .send_with_hash_key(&args.stream, &key, data, explicit_hash_key)
            .await;
        deliveries.push(delivery);
    }
    let mut results = Vec::with_capacity(total);
    let mut first_error = None;
    for delivery in deliveries {
        let outcome = match delivery {
            Ok(delivery) => delivery.await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(receipt) => results.push(receipt),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    if context.output == OutputFormat::Json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for receipt in &results {
            let view = PutResultView {
                shard_id: &receipt.shard_id,
                sequence_number: &receipt.sequence_number,
            };
            write_json_line(&mut out, &view)?;
        }
        out.flush()?;
    }
    if let Some(source) = first_error {
        return Err(PartialPut {
            acknowledged: results.len(),
            total,
            source,
        }
        .into());
    }
    eprintln!("{}", acknowledged_line(results.len(), None));
    Ok(())
}

/// Splits `KEY<sep>DATA` at the first separator.
fn split_key(line: Vec<u8>, separator: &[u8], number: usize) -> anyhow::Result<(String, Vec<u8>)> {
    let at = (!separator.is_empty())
        .then(|| line.windows(separator.len()).position(|w| w == separator))
        .flatten()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "line {number} has no key separator {:?}; with --key-separator every line is KEY, separator, DATA",
                String::from_utf8_lossy(separator)
            )
        })?;
    let key = String::from_utf8(line[..at].to_vec())
        .map_err(|_| anyhow::anyhow!("line {number}: the partition key is not UTF-8"))?;
    Ok((key, line[at + separator.len()..].to_vec()))
}

/// `1000 records acknowledged`, or `37 of 1000 records acknowledged` after a failure.
pub fn acknowledged_line(acknowledged: usize, total: Option<usize>) -> String {
    let noun = match total.unwrap_or(acknowledged) {
        1 => "record",
        _ => "records",
    };
    match total {
        Some(total) => format!("{acknowledged} of {total} {noun} acknowledged"),
        None => format!("{acknowledged} {noun} acknowledged"),
    }
}

/// One record per line, without its `\n` (or `\r\n`). Lines need not be UTF-8.
fn read_lines(input: impl BufRead) -> std::io::Result<Vec<Vec<u8>>> {
    input
        .split(b'\n')
        .map(|line| {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Ok(line)
        })
        .collect()
}

/// 16 random hex characters.
fn random_key() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        let (key, data) = split_key(b"user-7,clicked,twice".to_vec(), b",", 1).expect("split");
        assert_eq!(
            (key.as_str(), data.as_slice()),
            ("user-7", &b"clicked,twice"[..])
        );
        let err = split_key(b"no separator".to_vec(), b",", 3).expect_err("missing");
        assert!(
            err.to_string().contains("line 3 has no key separator"),
            "{err}"
        );
    }

    #[test]
    fn stdin_lines_lose_only_their_line_ending() {
        let cases: [(&[u8], Vec<&[u8]>); 5] = [
            (b"", vec![]),
            (b"a\nb\n", vec![b"a", b"b"]),
            (b"a\nb", vec![b"a", b"b"]),
            (b"a\r\n\nc d \n", vec![b"a", b"", b"c d "]),
            (&[0xff, b'\n'], vec![&[0xff]]),
        ];
        for (input, expected) in cases {
            let lines = read_lines(input).expect("reading a slice");
            assert_eq!(lines, expected, "{input:?}");
        }
    }

    #[test]
    fn random_keys_are_16_hex_characters() {
        let key = random_key();
        assert_eq!(key.len(), 16);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    }

    #[test]
    fn acknowledgement_lines() {
        assert_eq!(acknowledged_line(1000, None), "1000 records acknowledged");
        assert_eq!(acknowledged_line(1, None), "1 record acknowledged");
        assert_eq!(
            acknowledged_line(37, Some(1000)),
            "37 of 1000 records acknowledged"
        );
    }
}
