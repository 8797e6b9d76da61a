//! The operation history: every client operation as an invoke record followed by exactly one
//! completion (`ok`, `fail` = definitely not applied, `info` = outcome unknown), one JSON
//! object per line.
//!
//! A PutRecords call of N entries is N operations that share their invoke and completion
//! times: entries succeed and fail individually, and the checker reasons per value. Every
//! value is unique per attempt sequence (`producer:counter`); a retry of an unknown outcome
//! re-sends the same value with `attempt` + 1, which is what lets the checker tell a
//! client-caused duplicate from a server-caused one.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// Invocation or completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpType {
    /// The client is about to send the request.
    Invoke,
    /// The server confirmed the operation.
    Ok,
    /// The operation definitely did not take effect (a refusal before anything was applied).
    Fail,
    /// The outcome is unknown: a timeout, a lost connection, an error after the write may
    /// have been proposed. The write may or may not have landed.
    Info,
}

/// What the operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpFn {
    /// One PutRecords entry.
    Put,
    /// One GetRecords call on an iterator chain.
    Read,
    /// A node's full read of one shard from TRIM_HORIZON after the faults healed.
    Drain,
}

/// A record as a read returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRecord {
    /// Sequence number (decimal string, as the server sent it).
    pub seq: String,
    /// The record's data as UTF-8 (the workload only writes `producer:counter`).
    pub value: String,
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Pairs an invocation with its completion.
    pub id: u64,
    /// The client task (producer, reader or drainer) that ran it.
    pub process: u64,
    /// Invoke or one of the three completions.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// Put, read or drain.
    pub f: OpFn,
    /// The node whose endpoint served the request.
    pub node: u64,
    /// Monotonic nanoseconds since the run started.
    pub time_ns: u64,
    /// Put: the value written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Put: 1 for the first send of the value, 2+ for retries of an unknown outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Put ok: the shard that took it. Read/drain: the shard read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Put ok: the sequence number the server acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<String>,
    /// Read: the iterator chain this call continues (a chain resumed after an error with
    /// AFTER_SEQUENCE_NUMBER of its last record keeps its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<u64>,
    /// Read/drain ok: the records returned, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<ReadRecord>,
    /// Fail/info: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// A bare record; set the optional fields with struct update syntax.
    pub fn new(id: u64, process: u64, kind: OpType, f: OpFn, node: u64, time_ns: u64) -> Op {
        Op {
            id,
            process,
            kind,
            f,
            node,
            time_ns,
            value: None,
            attempt: None,
            shard: None,
            seq: None,
            chain: None,
            records: Vec::new(),
            error: None,
        }
    }
}

/// Writes `ops` as JSON lines.
pub fn write_jsonl<W: Write>(mut out: W, ops: &[Op]) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a JSON-lines history (blank lines are skipped). A malformed line is an error that
/// names its line number: a checker run on a partial history would under-report.
pub fn read_jsonl<R: BufRead>(input: R) -> anyhow::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|error| {
            anyhow::anyhow!("history line {} is not an operation: {error}", number + 1)
        })?;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips() {
        let ops = vec![
            Op {
                value: Some("1:0".into()),
                attempt: Some(1),
                ..Op::new(0, 1, OpType::Invoke, OpFn::Put, 2, 10)
            },
            Op {
                value: Some("1:0".into()),
                attempt: Some(1),
                shard: Some("shardId-000000000000".into()),
                seq: Some("65536".into()),
                ..Op::new(0, 1, OpType::Ok, OpFn::Put, 2, 20)
            },
            Op {
                shard: Some("shardId-000000000000".into()),
                chain: Some(7),
                records: vec![ReadRecord {
                    seq: "65536".into(),
                    value: "1:0".into(),
                }],
                ..Op::new(1, 9, OpType::Ok, OpFn::Read, 3, 30)
            },
        ];
        let mut buffer = Vec::new();
        write_jsonl(&mut buffer, &ops).expect("write");
        let text = String::from_utf8(buffer.clone()).expect("utf8");
        assert_eq!(text.lines().count(), 3);
        assert!(text.starts_with(r#"{"id":0,"process":1,"type":"invoke","f":"put""#));
        assert_eq!(read_jsonl(buffer.as_slice()).expect("read"), ops);
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let error = read_jsonl("\n{\"id\":1}\n".as_bytes()).expect_err("must fail");
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
