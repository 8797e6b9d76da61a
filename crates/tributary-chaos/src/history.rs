//! The operation history: every client operation as an invoke record followed by exactly one
//! completion (`ok`, `fail` = definitely not applied, `info` = outcome unknown), one JSON
//! object per line.
//!
//! A PutRecords call of N entries is N operations that share their invoke and completion
//! times: entries succeed and fail individually, and the checker reasons per value. Every
//! value is unique per attempt sequence (`producer:counter`); a retry of an unknown outcome
//! re-sends the same value with `attempt` + 1, which is what lets the checker tell a
//! client-caused duplicate from a server-caused one.
//!
//! The consumer-group workers add their own operations: each processed batch, each
//! checkpoint, each lease they start processing under, each (re)start of a worker, and at
//! the end the application's lease table as every node lists it.

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
    /// One run of a consumer-group worker, from its start to its return: `ok` after a
    /// shutdown, `info` when it gave up on an error, `fail` when it could not connect. A
    /// worker with more than one run was restarted.
    Worker,
    /// A worker took a shard lease and started processing the shard after `seq` (absent:
    /// from TRIM_HORIZON) under lease `epoch`; the start is the application's checkpoint as
    /// the lease table showed it when the lease was taken. `info` for a start that is
    /// neither (the checker ignores it).
    Lease,
    /// A worker's processor was handed one batch of a shard (`records`, in order) under
    /// lease `epoch`; `chain` names the processor (one per lease taken), so its batches are
    /// checked like a read chain.
    Process,
    /// A worker checkpointed `seq` of a shard under lease `epoch`. `fail`: the final answer
    /// was a refusal (LeaseLost, below the current checkpoint); the SDK retries transient
    /// errors inside one call, so an earlier attempt of a refused call may still have
    /// applied. The checker reasons only about acknowledged checkpoints.
    Checkpoint,
    /// One shard's row of the application's lease table (ListLeases) through `node`, after
    /// the workers shut down: the checkpoint `seq` (absent: none), `shard_end` and `epoch`.
    LeaseTable,
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
    /// The client task (producer, reader, drainer, consumer-group worker) that ran it.
    pub process: u64,
    /// Invoke or one of the three completions.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// What the operation does.
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
    /// Put ok: the shard that took it. Read/drain: the shard read. Consumer-group
    /// operations: the shard processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Put ok: the sequence number the server acknowledged. Lease: the start; checkpoint:
    /// the position checkpointed; lease table: the checkpoint listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<String>,
    /// Read: the iterator chain this call continues (a chain resumed after an error with
    /// AFTER_SEQUENCE_NUMBER of its last record keeps its id). Process: the processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<u64>,
    /// Read/drain ok: the records returned, in order. Process: the batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<ReadRecord>,
    /// Lease, process, checkpoint, lease table: the shard lease's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Lease table: the shard is checkpointed at its end (closed and processed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard_end: bool,
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
            epoch: None,
            shard_end: false,
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
            Op {
                shard: Some("shardId-000000000000".into()),
                seq: Some("65536".into()),
                epoch: Some(3),
                shard_end: true,
                ..Op::new(2, 3001, OpType::Ok, OpFn::LeaseTable, 1, 40)
            },
        ];
        let mut buffer = Vec::new();
        write_jsonl(&mut buffer, &ops).expect("write");
        let text = String::from_utf8(buffer.clone()).expect("utf8");
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with(r#"{"id":0,"process":1,"type":"invoke","f":"put""#));
        assert!(text.contains(r#""f":"lease_table""#), "{text}");
        assert!(text.contains(r#""epoch":3,"shard_end":true"#), "{text}");
        assert_eq!(read_jsonl(buffer.as_slice()).expect("read"), ops);
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let error = read_jsonl("\n{\"id\":1}\n".as_bytes()).expect_err("must fail");
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
