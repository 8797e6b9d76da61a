//! One hand-made history per anomaly, and clean histories that must pass.

use super::*;
use crate::history::ReadRecord;

const S0: &str = "shardId-000000000000";
const S1: &str = "shardId-000000000001";

enum Outcome<'a> {
    Ok(&'a str, u128),
    Fail,
    Info,
    Pending,
}

/// Builds histories with a clock that advances 1 ms per recorded event.
#[derive(Default)]
struct Builder {
    ops: Vec<Op>,
    next_id: u64,
    now: u64,
}

impl Builder {
    fn tick(&mut self) -> u64 {
        self.now += 1_000_000;
        self.now
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// One put from invoke to completion.
    fn put(&mut self, process: u64, value: &str, attempt: u32, outcome: Outcome) -> &mut Self {
        let id = self.id();
        let t = self.tick();
        self.ops.push(Op {
            value: Some(value.into()),
            attempt: Some(attempt),
            ..Op::new(id, process, OpType::Invoke, OpFn::Put, 1, t)
        });
        let t = self.tick();
        let base = |kind| Op {
            value: Some(value.into()),
            attempt: Some(attempt),
            ..Op::new(id, process, kind, OpFn::Put, 1, t)
        };
        match outcome {
            Outcome::Ok(shard, seq) => self.ops.push(Op {
                shard: Some(shard.into()),
                seq: Some(seq.to_string()),
                ..base(OpType::Ok)
            }),
            Outcome::Fail => self.ops.push(Op {
                error: Some("InvalidArgument".into()),
                ..base(OpType::Fail)
            }),
            Outcome::Info => self.ops.push(Op {
                error: Some("timeout".into()),
                ..base(OpType::Info)
            }),
            Outcome::Pending => {}
        }
        self
    }

    fn ok(&mut self, process: u64, value: &str, shard: &str, seq: u128) -> &mut Self {
        self.put(process, value, 1, Outcome::Ok(shard, seq))
    }

    fn records(records: &[(u128, &str)]) -> Vec<ReadRecord> {
        records
            .iter()
            .map(|(seq, value)| ReadRecord {
                seq: seq.to_string(),
                value: (*value).into(),
            })
            .collect()
    }

    fn read(&mut self, chain: u64, node: u64, shard: &str, records: &[(u128, &str)]) -> &mut Self {
        let id = self.id();
        let t = self.tick();
        self.ops.push(Op {
            shard: Some(shard.into()),
            chain: Some(chain),
            ..Op::new(id, 100 + chain, OpType::Invoke, OpFn::Read, node, t)
        });
        let t = self.tick();
        self.ops.push(Op {
            shard: Some(shard.into()),
            chain: Some(chain),
            records: Self::records(records),
            ..Op::new(id, 100 + chain, OpType::Ok, OpFn::Read, node, t)
        });
        self
    }

    fn drain(&mut self, node: u64, shard: &str, records: &[(u128, &str)]) -> &mut Self {
        let id = self.id();
        let t = self.tick();
        self.ops.push(Op {
            shard: Some(shard.into()),
            ..Op::new(id, 1000 + node, OpType::Invoke, OpFn::Drain, node, t)
        });
        let t = self.tick();
        self.ops.push(Op {
            shard: Some(shard.into()),
            records: Self::records(records),
            ..Op::new(id, 1000 + node, OpType::Ok, OpFn::Drain, node, t)
        });
        self
    }

    /// The same drain through nodes 1, 2 and 3.
    fn drain_all(&mut self, shard: &str, records: &[(u128, &str)]) -> &mut Self {
        for node in 1..=3 {
            self.drain(node, shard, records);
        }
        self
    }

    /// An invocation and its completion, `fields` set on both.
    fn pair(&mut self, kind: OpType, fields: Op) -> &mut Self {
        let id = self.id();
        let invoked = self.tick();
        self.ops.push(Op {
            id,
            kind: OpType::Invoke,
            time_ns: invoked,
            ..fields.clone()
        });
        let done = self.tick();
        self.ops.push(Op {
            id,
            kind,
            time_ns: done,
            ..fields
        });
        self
    }

    /// One run of consumer-group worker `worker` (process 2000 + worker, through its node).
    fn worker_run(&mut self, worker: u64, kind: OpType) -> &mut Self {
        self.pair(
            kind,
            Op::new(0, 2000 + worker, kind, OpFn::Worker, worker, 0),
        )
    }

    /// Worker `worker` took the lease of `shard` at `epoch`, starting after `start` (None:
    /// TRIM_HORIZON).
    fn lease(&mut self, worker: u64, shard: &str, epoch: u64, start: Option<u128>) -> &mut Self {
        self.pair(
            OpType::Ok,
            Op {
                shard: Some(shard.into()),
                seq: start.map(|s| s.to_string()),
                epoch: Some(epoch),
                ..Op::new(0, 2000 + worker, OpType::Ok, OpFn::Lease, worker, 0)
            },
        )
    }

    /// Processor `processor` of worker `worker` was handed a batch.
    fn process(
        &mut self,
        worker: u64,
        processor: u64,
        shard: &str,
        epoch: u64,
        records: &[(u128, &str)],
    ) -> &mut Self {
        self.pair(
            OpType::Ok,
            Op {
                shard: Some(shard.into()),
                epoch: Some(epoch),
                chain: Some(processor),
                records: Self::records(records),
                ..Op::new(0, 2000 + worker, OpType::Ok, OpFn::Process, worker, 0)
            },
        )
    }

    fn checkpoint(
        &mut self,
        worker: u64,
        shard: &str,
        epoch: u64,
        seq: u128,
        kind: OpType,
    ) -> &mut Self {
        self.pair(
            kind,
            Op {
                shard: Some(shard.into()),
                seq: Some(seq.to_string()),
                epoch: Some(epoch),
                ..Op::new(0, 2000 + worker, kind, OpFn::Checkpoint, worker, 0)
            },
        )
    }

    /// Node `node` lists `shard` at `checkpoint` (None: nothing checkpointed) in the final
    /// lease table.
    fn table(
        &mut self,
        node: u64,
        shard: &str,
        epoch: u64,
        checkpoint: Option<u128>,
        shard_end: bool,
    ) -> &mut Self {
        self.pair(
            OpType::Ok,
            Op {
                shard: Some(shard.into()),
                seq: checkpoint.map(|s| s.to_string()),
                epoch: Some(epoch),
                shard_end,
                ..Op::new(0, 3000 + node, OpType::Ok, OpFn::LeaseTable, node, 0)
            },
        )
    }

    /// The same final lease table row through nodes 1, 2 and 3.
    fn table_all(&mut self, shard: &str, epoch: u64, checkpoint: Option<u128>) -> &mut Self {
        for node in 1..=3 {
            self.table(node, shard, epoch, checkpoint, false);
        }
        self
    }

    /// Three acknowledged puts into S0 at 10, 11 and 12, drained by every node.
    fn three_records() -> Builder {
        let mut h = Builder::default();
        h.ok(1, "1:0", S0, 10)
            .ok(1, "1:1", S0, 11)
            .ok(1, "1:2", S0, 12)
            .drain_all(S0, &[(10, "1:0"), (11, "1:1"), (12, "1:2")]);
        h
    }

    fn check(&self) -> Findings {
        check(&self.ops)
    }
}

/// Every safety figure, for asserting that exactly one of them is non-zero.
fn figures(f: &Findings) -> Vec<(&'static str, usize)> {
    vec![
        ("acked_lost", f.acked_lost.len()),
        ("phantom_reads", f.phantom_reads.len()),
        ("aborted_reads", f.aborted_reads.len()),
        ("inconsistent_sequence", f.inconsistent_sequence.len()),
        ("nonmonotonic_reads", f.nonmonotonic_reads.len()),
        ("realtime_violations", f.realtime_violations.len()),
        ("skipped_records", f.skipped_records.len()),
        ("unseen_after_drain", f.unseen_after_drain.len()),
        ("divergent_nodes", f.divergent_nodes.len()),
        ("server_duplicates", f.server_duplicates.len()),
        ("drain_failures", f.drain_failures.len()),
        ("checkpoint_regressions", f.checkpoint_regressions.len()),
        ("unprocessed_records", f.unprocessed_records.len()),
        ("group_failures", f.group_failures.len()),
    ]
}

fn assert_only(f: &Findings, expected: &[(&str, usize)]) {
    for (name, count) in figures(f) {
        let want = expected
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| *c);
        assert_eq!(count, want, "{name}: {f:#?}");
    }
}

#[test]
fn a_clean_history_passes() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(2, "2:0", S1, 100)
        .ok(1, "1:1", S0, 11)
        .read(1, 1, S0, &[(10, "1:0")])
        .read(1, 2, S0, &[(11, "1:1")])
        .read(2, 3, S1, &[(100, "2:0")])
        .drain_all(S0, &[(10, "1:0"), (11, "1:1")])
        .drain_all(S1, &[(100, "2:0")]);
    let f = h.check();
    assert_only(&f, &[]);
    assert!(f.is_safe());
    assert_eq!(f.values_acked, 3);
    assert_eq!(f.records_read, 3);
    assert_eq!(f.records_drained, 9);
    assert_eq!(f.shards[S0].acked, 2);
    assert_eq!(f.shards[S0].drained, 2);
    assert!(f.unavailability_ms.is_empty());
}

#[test]
fn sparse_sequence_numbers_are_not_skips() {
    // Sequence numbers come from raft log indexes: gaps with nothing in them are normal.
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(1, "1:1", S0, 70_000)
        .read(1, 1, S0, &[(10, "1:0"), (70_000, "1:1")])
        .drain_all(S0, &[(10, "1:0"), (70_000, "1:1")]);
    assert_only(&h.check(), &[]);
}

#[test]
fn a_value_nobody_sent_is_a_phantom() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .read(1, 1, S0, &[(10, "1:0"), (11, "9:9")])
        .drain_all(S0, &[(10, "1:0"), (11, "9:9")]);
    let f = h.check();
    assert_only(&f, &[("phantom_reads", 1)]);
    assert!(f.phantom_reads[0].detail.contains("9:9"));
    assert!(!f.is_safe());
}

#[test]
fn reading_a_definitely_failed_put_is_an_aborted_read() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .put(1, "1:1", 1, Outcome::Fail)
        .read(1, 1, S0, &[(10, "1:0"), (11, "1:1")])
        .drain_all(S0, &[(10, "1:0"), (11, "1:1")]);
    assert_only(&h.check(), &[("aborted_reads", 1)]);
}

#[test]
fn an_unknown_put_that_landed_is_recovered_not_an_anomaly() {
    let mut h = Builder::default();
    h.put(1, "1:0", 1, Outcome::Info)
        .put(1, "1:1", 1, Outcome::Pending)
        .read(1, 1, S0, &[(10, "1:0"), (11, "1:1")])
        .drain_all(S0, &[(10, "1:0"), (11, "1:1")]);
    let f = h.check();
    assert_only(&f, &[]);
    assert_eq!(f.values_recovered, 2);
    assert_eq!(f.values_unknown, 2);
}

#[test]
fn two_values_at_one_sequence_number_are_inconsistent() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(2, "2:0", S0, 11)
        .read(1, 1, S0, &[(10, "1:0"), (11, "2:0")])
        // Another node serves a different value at 11.
        .read(2, 2, S0, &[(10, "1:0"), (11, "1:0")])
        .drain_all(S0, &[(10, "1:0"), (11, "2:0")]);
    let f = h.check();
    // 1:0 also sits at two positions; it was sent once, so that is a server duplicate.
    assert_only(
        &f,
        &[
            ("inconsistent_sequence", 1),
            ("server_duplicates", 1),
            ("nonmonotonic_reads", 0),
        ],
    );
    assert!(f.inconsistent_sequence[0]
        .detail
        .contains("sequence number 11"));
}

#[test]
fn an_ack_naming_another_position_is_inconsistent() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .read(1, 1, S0, &[(12, "1:0")])
        .drain_all(S0, &[(12, "1:0")]);
    let f = h.check();
    // The ack places 1:0 at 10 and the reads at 12: a wrong ack and a value at two places.
    assert_eq!(f.inconsistent_sequence.len(), 1, "{f:#?}");
    assert!(f.inconsistent_sequence[0].detail.contains("read only at"));
    assert!(!f.is_safe());
}

#[test]
fn a_chain_that_goes_backwards_is_an_order_violation() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(1, "1:1", S0, 11)
        .read(1, 1, S0, &[(10, "1:0"), (11, "1:1")])
        .read(1, 2, S0, &[(10, "1:0")])
        .drain_all(S0, &[(10, "1:0"), (11, "1:1")]);
    let f = h.check();
    assert_only(&f, &[("nonmonotonic_reads", 1)]);
    assert_eq!(f.order_violations(), 1);
}

#[test]
fn a_chain_that_jumps_over_a_record_skips_it() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(1, "1:1", S0, 11)
        .ok(1, "1:2", S0, 12)
        .read(1, 1, S0, &[(10, "1:0")])
        .read(1, 1, S0, &[(12, "1:2")])
        .read(2, 2, S0, &[(10, "1:0"), (11, "1:1"), (12, "1:2")])
        .drain_all(S0, &[(10, "1:0"), (11, "1:1"), (12, "1:2")]);
    let f = h.check();
    assert_only(&f, &[("skipped_records", 1)]);
    assert!(f.skipped_records[0]
        .detail
        .contains("over the record at 11"));
}

#[test]
fn an_acked_write_missing_below_read_records_is_lost() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(1, "1:1", S0, 11)
        .ok(1, "1:2", S0, 12)
        .read(1, 1, S0, &[(10, "1:0"), (12, "1:2")])
        .drain_all(S0, &[(10, "1:0"), (12, "1:2")]);
    let f = h.check();
    // The chain also stepped over the acknowledged position 11.
    assert_only(
        &f,
        &[
            ("acked_lost", 1),
            ("unseen_after_drain", 1),
            ("skipped_records", 1),
        ],
    );
    assert!(f.acked_lost[0].detail.contains("1:1"));
}

#[test]
fn an_acked_tail_write_missing_after_the_drain_is_unseen() {
    // Nothing later was read, so the strong check cannot tell; the final drain does.
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(1, "1:1", S0, 11)
        .read(1, 1, S0, &[(10, "1:0")])
        .drain_all(S0, &[(10, "1:0")]);
    assert_only(&h.check(), &[("unseen_after_drain", 1)]);
}

#[test]
fn nodes_that_drain_different_records_diverge() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(1, "1:1", S0, 11)
        .drain(1, S0, &[(10, "1:0"), (11, "1:1")])
        .drain(2, S0, &[(10, "1:0"), (11, "1:1")])
        .drain(3, S0, &[(10, "1:0")]);
    let f = h.check();
    assert_only(&f, &[("divergent_nodes", 1)]);
    assert_eq!(f.divergent_nodes, vec![3]);
    assert!(f.divergence[0]
        .detail
        .contains("first difference at index 1"));
}

#[test]
fn a_node_missing_a_whole_shard_diverges() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10)
        .ok(1, "1:1", S1, 20)
        .drain_all(S0, &[(10, "1:0")])
        .drain(1, S1, &[(20, "1:1")])
        .drain(2, S1, &[(20, "1:1")]);
    let f = h.check();
    assert_only(&f, &[("divergent_nodes", 1)]);
    assert_eq!(f.divergent_nodes, vec![3]);
}

#[test]
fn a_later_put_with_a_lower_sequence_number_violates_real_time_order() {
    let mut h = Builder::default();
    // 1:0 completes before 2:0 is invoked, yet 2:0 is placed before it.
    h.ok(1, "1:0", S0, 20)
        .ok(2, "2:0", S0, 10)
        .read(1, 1, S0, &[(10, "2:0"), (20, "1:0")])
        .drain_all(S0, &[(10, "2:0"), (20, "1:0")]);
    let f = h.check();
    assert_only(&f, &[("realtime_violations", 1)]);
    assert_eq!(f.order_violations(), 1);
}

#[test]
fn concurrent_puts_may_be_ordered_either_way() {
    let mut h = Builder::default();
    // Two entries of one call (same invoke and completion) may take any order.
    h.ops.push(Op {
        value: Some("1:0".into()),
        ..Op::new(1, 1, OpType::Invoke, OpFn::Put, 1, 1)
    });
    h.ops.push(Op {
        value: Some("1:1".into()),
        ..Op::new(2, 1, OpType::Invoke, OpFn::Put, 1, 1)
    });
    for (id, value, seq) in [(1, "1:0", 11), (2, "1:1", 10)] {
        h.ops.push(Op {
            value: Some(value.into()),
            shard: Some(S0.into()),
            seq: Some(seq.to_string()),
            ..Op::new(id, 1, OpType::Ok, OpFn::Put, 1, 5)
        });
    }
    h.now = 10;
    h.next_id = 10;
    h.drain_all(S0, &[(10, "1:1"), (11, "1:0")]);
    assert_only(&h.check(), &[]);
}

#[test]
fn duplicates_are_split_by_whether_the_client_retried() {
    let mut h = Builder::default();
    // 1:0 timed out, was sent again and acknowledged: both sends landed (allowed).
    h.put(1, "1:0", 1, Outcome::Info)
        .put(1, "1:0", 2, Outcome::Ok(S0, 11))
        // 2:0 was sent once but stored twice: a server bug.
        .ok(2, "2:0", S0, 12)
        .read(
            1,
            1,
            S0,
            &[(10, "1:0"), (11, "1:0"), (12, "2:0"), (13, "2:0")],
        )
        .drain_all(S0, &[(10, "1:0"), (11, "1:0"), (12, "2:0"), (13, "2:0")]);
    let f = h.check();
    assert_only(&f, &[("server_duplicates", 1)]);
    assert_eq!(f.retry_duplicates.len(), 1);
    assert!(f.retry_duplicates[0].detail.contains("1:0"));
    assert!(f.server_duplicates[0].detail.contains("2:0"));
}

#[test]
fn a_history_without_a_drain_is_incomplete() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10).read(1, 1, S0, &[(10, "1:0")]);
    let f = h.check();
    assert_only(&f, &[("drain_failures", 1)]);
    assert!(!f.is_safe());
}

#[test]
fn a_failed_drain_fails_the_run() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10).drain(1, S0, &[(10, "1:0")]);
    h.ops.push(Op {
        shard: Some(S0.into()),
        ..Op::new(99, 1002, OpType::Invoke, OpFn::Drain, 2, 100)
    });
    h.ops.push(Op {
        shard: Some(S0.into()),
        error: Some("Unavailable".into()),
        ..Op::new(99, 1002, OpType::Info, OpFn::Drain, 2, 101)
    });
    let f = h.check();
    assert_eq!(f.drain_failures.len(), 1, "{f:#?}");
    assert!(!f.is_safe());
}

#[test]
fn unparseable_sequence_numbers_are_inconsistent() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10);
    h.ops.push(Op {
        shard: Some(S0.into()),
        records: vec![ReadRecord {
            seq: "12abc".into(),
            value: "1:0".into(),
        }],
        ..Op::new(50, 1001, OpType::Ok, OpFn::Drain, 1, 100)
    });
    h.drain(2, S0, &[(10, "1:0")]).drain(3, S0, &[(10, "1:0")]);
    let f = h.check();
    assert!(f
        .inconsistent_sequence
        .iter()
        .any(|a| a.detail.contains("not a decimal integer")));
}

#[test]
fn unavailability_windows_run_from_first_failure_to_next_success() {
    let mut h = Builder::default();
    h.ok(1, "1:0", S0, 10) // t 1-2 ms
        .put(1, "1:1", 1, Outcome::Info) // invoked at 3 ms
        .put(1, "1:2", 1, Outcome::Fail)
        .ok(1, "1:3", S0, 11) // completes at 8 ms
        .ok(2, "2:0", S0, 12)
        .drain_all(S0, &[(10, "1:0"), (11, "1:3"), (12, "2:0")]);
    let f = h.check();
    assert_eq!(f.unavailability_ms, vec![5]);
    assert_eq!(f.ops_fail, 1);
    assert_eq!(f.ops_info, 1);
}

#[test]
fn quantiles_use_the_nearest_rank() {
    assert_eq!(quantile(&[], 0.5), 0);
    assert_eq!(quantile(&[5], 0.99), 5);
    let values: Vec<u64> = (1..=100).collect();
    assert_eq!(quantile(&values, 0.5), 50);
    assert_eq!(quantile(&values, 0.99), 99);
    assert_eq!(quantile(&values, 1.0), 100);
}

/// Worker 1 processes S0 to 11 at epoch 1 and checkpoints it; its lease moves to worker 2
/// (epoch 2), which starts after `start` and processes the rest; the final table lists
/// `final_checkpoint` on every node.
fn takeover(start: Option<u128>, final_checkpoint: u128) -> Builder {
    let mut h = Builder::three_records();
    h.worker_run(1, OpType::Ok)
        .worker_run(2, OpType::Ok)
        .lease(1, S0, 1, None)
        .process(1, 1, S0, 1, &[(10, "1:0")])
        .checkpoint(1, S0, 1, 10, OpType::Ok)
        .process(1, 1, S0, 1, &[(11, "1:1")])
        .checkpoint(1, S0, 1, 11, OpType::Ok)
        // Worker 1 processed 12 but lost the lease before its checkpoint went through.
        .process(1, 1, S0, 1, &[(12, "1:2")])
        .checkpoint(1, S0, 1, 12, OpType::Fail)
        .lease(2, S0, 2, start);
    let after = start.unwrap_or(0);
    let rest: Vec<(u128, &str)> = [(10, "1:0"), (11, "1:1"), (12, "1:2")]
        .into_iter()
        .filter(|(seq, _)| *seq > after)
        .collect();
    h.process(2, 2, S0, 2, &rest)
        .checkpoint(2, S0, 2, 12, OpType::Ok)
        .table_all(S0, 2, Some(final_checkpoint));
    h
}

#[test]
fn a_consumer_group_takeover_passes_and_reprocesses_after_the_checkpoint() {
    let f = takeover(Some(11), 12).check();
    assert_only(&f, &[]);
    assert!(f.is_safe());
    // 12 was processed by the old owner after its last committed checkpoint and again by
    // the new one: allowed.
    assert_eq!(f.reprocessed_records.len(), 1, "{f:#?}");
    assert!(f.reprocessed_records[0].detail.contains("1:2 at 12"));
    assert_eq!(f.group.worker_runs, 2);
    assert_eq!(f.group.worker_restarts, 0);
    assert_eq!(f.group.leases_taken, 2);
    assert_eq!(f.group.lease_handovers, 1);
    assert_eq!(f.group.batches, 4);
    assert_eq!(f.group.records_processed, 4);
    assert_eq!(f.group.records_distinct, 3);
    assert_eq!(f.group.checkpoints_ok, 3);
    assert_eq!(f.group.checkpoints_fail, 1);
    assert_eq!(f.group.final_checkpoints[S0], "12");
    assert_eq!(f.shards[S0].processed, 3);
}

#[test]
fn a_history_without_workers_has_no_consumer_group_figures() {
    let f = Builder::three_records().check();
    assert_only(&f, &[]);
    assert_eq!(f.group, GroupFigures::default());
    assert!(f.reprocessed_records.is_empty());
}

#[test]
fn records_processed_by_one_owner_only_are_not_reprocessed() {
    let mut h = Builder::three_records();
    h.worker_run(1, OpType::Ok)
        .lease(1, S0, 1, None)
        .process(1, 1, S0, 1, &[(10, "1:0"), (11, "1:1"), (12, "1:2")])
        .checkpoint(1, S0, 1, 12, OpType::Ok)
        .table_all(S0, 1, Some(12));
    let f = h.check();
    assert_only(&f, &[]);
    assert!(f.reprocessed_records.is_empty(), "{f:#?}");
    assert_eq!(f.group.records_distinct, 3);
}

#[test]
fn a_lease_started_below_an_acknowledged_checkpoint_is_a_regression() {
    // Worker 2 took over at epoch 2 but was handed TRIM_HORIZON although 11 was
    // committed at epoch 1.
    let f = takeover(None, 12).check();
    assert_only(&f, &[("checkpoint_regressions", 1)]);
    assert!(f.checkpoint_regressions[0]
        .detail
        .contains("started at TRIM_HORIZON"));
    assert!(f.checkpoint_regressions[0]
        .detail
        .contains("checkpoint 11 acknowledged to worker 2001 at epoch 1"));
    assert!(!f.is_safe());
}

#[test]
fn an_acknowledged_checkpoint_below_one_of_an_earlier_epoch_is_a_regression() {
    let mut h = takeover(Some(11), 12);
    // Worker 2 checkpoints 10 at epoch 2 and the server accepts it.
    h.checkpoint(2, S0, 2, 10, OpType::Ok);
    let f = h.check();
    assert_only(&f, &[("checkpoint_regressions", 1)]);
    assert!(f.checkpoint_regressions[0]
        .detail
        .contains("checkpoint 10 acknowledged to worker 2002 at epoch 2"));
    // Refused, the same checkpoint is no anomaly.
    let mut h = takeover(Some(11), 12);
    h.checkpoint(2, S0, 2, 10, OpType::Fail);
    assert_only(&h.check(), &[]);
}

#[test]
fn within_one_epoch_only_checkpoints_acknowledged_in_order_must_grow() {
    let mut h = Builder::three_records();
    h.worker_run(1, OpType::Ok)
        .lease(1, S0, 1, None)
        .process(1, 1, S0, 1, &[(10, "1:0"), (11, "1:1"), (12, "1:2")])
        .checkpoint(1, S0, 1, 12, OpType::Ok)
        .checkpoint(1, S0, 1, 11, OpType::Ok)
        .table_all(S0, 1, Some(12));
    let f = h.check();
    // 11 was sent after 12 was acknowledged; the final tables (12) are fine.
    assert_only(&f, &[("checkpoint_regressions", 1)]);

    // Two checkpoints in flight at once may be applied in either order.
    let mut h = Builder::three_records();
    h.worker_run(1, OpType::Ok).lease(1, S0, 1, None).process(
        1,
        1,
        S0,
        1,
        &[(10, "1:0"), (11, "1:1"), (12, "1:2")],
    );
    for (seq, id) in [(12, 90), (11, 91)] {
        h.ops.push(Op {
            shard: Some(S0.into()),
            seq: Some(u128::to_string(&seq)),
            epoch: Some(1),
            ..Op::new(id, 2001, OpType::Invoke, OpFn::Checkpoint, 1, 100_000_000)
        });
    }
    for (seq, id) in [(12, 90), (11, 91)] {
        h.ops.push(Op {
            shard: Some(S0.into()),
            seq: Some(u128::to_string(&seq)),
            epoch: Some(1),
            ..Op::new(id, 2001, OpType::Ok, OpFn::Checkpoint, 1, 100_000_001)
        });
    }
    h.now = 200_000_000;
    h.table_all(S0, 1, Some(12));
    assert_only(&h.check(), &[]);
}

#[test]
fn a_final_lease_table_below_an_acknowledged_checkpoint_is_a_regression() {
    let mut h = takeover(Some(11), 12);
    // One node lists the checkpoint at 11 after 12 was acknowledged.
    h.table(3, S0, 2, Some(11), false);
    let f = h.check();
    assert_only(&f, &[("checkpoint_regressions", 1)]);
    assert!(f.checkpoint_regressions[0]
        .detail
        .contains("node 3 listed checkpoint 11"));
    // SHARD_END is above every sequence number.
    let mut h = takeover(Some(11), 12);
    h.table(3, S0, 2, None, true);
    let f = h.check();
    assert_only(&f, &[]);
    assert_eq!(f.group.final_checkpoints[S0], "SHARD_END");
}

#[test]
fn a_record_below_the_final_checkpoint_that_no_worker_processed_is_unprocessed() {
    // Worker 1 processed 10 only, yet 11 was checkpointed (the outcome reached nobody);
    // worker 2 resumed after 11. Nobody processed 11.
    let build = |processed_11: bool| {
        let mut h = Builder::three_records();
        h.worker_run(1, OpType::Ok)
            .worker_run(2, OpType::Ok)
            .lease(1, S0, 1, None)
            .process(1, 1, S0, 1, &[(10, "1:0")]);
        if processed_11 {
            h.process(1, 1, S0, 1, &[(11, "1:1")]);
        }
        h.checkpoint(1, S0, 1, 11, OpType::Info)
            .lease(2, S0, 2, Some(11))
            .process(2, 2, S0, 2, &[(12, "1:2")])
            .checkpoint(2, S0, 2, 12, OpType::Ok)
            .table_all(S0, 2, Some(12));
        h.check()
    };
    let f = build(false);
    assert_only(&f, &[("unprocessed_records", 1)]);
    assert!(f.unprocessed_records[0].detail.contains("1:1 at 11"));
    assert!(!f.is_safe());
    let f = build(true);
    assert_only(&f, &[]);
    assert_eq!(f.group.checkpoints_info, 1);
}

#[test]
fn workers_that_stop_short_of_the_last_record_leave_the_check_incomplete() {
    let mut h = Builder::three_records();
    h.worker_run(1, OpType::Ok)
        .lease(1, S0, 1, None)
        .process(1, 1, S0, 1, &[(10, "1:0"), (11, "1:1")])
        .checkpoint(1, S0, 1, 11, OpType::Ok)
        .table_all(S0, 1, Some(11));
    let f = h.check();
    // 12 is above the final checkpoint: not unprocessed, but the run did not catch up.
    assert_only(&f, &[("group_failures", 1)]);
    assert!(f.group_failures[0].contains("did not reach the end"));
    assert!(!f.is_safe());
}

#[test]
fn workers_without_a_final_lease_table_leave_the_check_incomplete() {
    let mut h = Builder::three_records();
    h.worker_run(1, OpType::Info)
        .worker_run(1, OpType::Ok)
        .lease(1, S0, 1, None)
        .process(1, 1, S0, 1, &[(10, "1:0"), (11, "1:1"), (12, "1:2")]);
    let f = h.check();
    assert_only(&f, &[("group_failures", 1)]);
    assert!(f.group_failures[0].contains("no final lease table"));
    assert_eq!(f.group.worker_runs, 2);
    assert_eq!(f.group.worker_restarts, 1);
}

#[test]
fn processed_batches_are_reads_checked_like_chains() {
    let mut h = Builder::three_records();
    h.worker_run(1, OpType::Ok)
        .lease(1, S0, 1, None)
        .process(1, 1, S0, 1, &[(10, "1:0"), (11, "1:1")])
        // The processor is handed a value nobody sent, then 11 again.
        .process(1, 1, S0, 1, &[(12, "9:9"), (11, "1:1")])
        .checkpoint(1, S0, 1, 12, OpType::Ok)
        .table_all(S0, 1, Some(12));
    let f = h.check();
    // 9:9 at 12 also puts two values at one sequence number, and 1:2 was never processed.
    assert_only(
        &f,
        &[
            ("nonmonotonic_reads", 1),
            ("phantom_reads", 1),
            ("inconsistent_sequence", 1),
            ("unprocessed_records", 1),
        ],
    );
    assert!(f.nonmonotonic_reads[0].detail.starts_with("processor 1 "));
}
