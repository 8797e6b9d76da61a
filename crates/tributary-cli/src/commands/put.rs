//! `trib put`: one record from the command line, or one record per stdin line.

use std::io::{BufRead, Write};

use clap::Args;
use tributary_client::{put_all, PutOptions};

use super::Context;
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
    pub explicit_hash_key: Option<String>,
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
    let records: Vec<(String, Vec<u8>, Option<String>)> = data
        .into_iter()
        .map(|data| {
            let key = args.key.clone().unwrap_or_else(random_key);
            (key, data, args.explicit_hash_key.clone())
        })
        .collect();
    let total = records.len();
    let client = context.connect().await.map_err(|source| PartialPut {
        acknowledged: 0,
        total,
        source,
    })?;
    let summary = put_all(&client, &args.stream, records, &PutOptions::default())
        .await
        .map_err(|error| PartialPut {
            acknowledged: error.acknowledged,
            total: error.total,
            source: error.source,
        })?;
    if context.output == OutputFormat::Json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for (shard_id, sequence_number) in &summary.results {
            let view = PutResultView {
                shard_id,
                sequence_number,
            };
            write_json_line(&mut out, &view)?;
        }
        out.flush()?;
    }
    eprintln!("{}", acknowledged_line(summary.acknowledged, None));
    Ok(())
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

fn parse_hash_key(input: &str) -> Result<String, String> {
    match input.parse::<u128>() {
        Ok(_) if input.bytes().all(|b| b.is_ascii_digit()) => Ok(input.to_owned()),
        _ => Err(format!(
            "'{input}' is not a decimal integer from 0 to 340282366920938463463374607431768211455"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn explicit_hash_keys_are_decimal_u128() {
        assert!(parse_hash_key("0").is_ok());
        assert!(parse_hash_key(&u128::MAX.to_string()).is_ok());
        for bad in [
            "",
            "-1",
            "+1",
            "0x10",
            "340282366920938463463374607431768211456",
        ] {
            assert!(parse_hash_key(bad).is_err(), "{bad}");
        }
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
