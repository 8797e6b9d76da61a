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
