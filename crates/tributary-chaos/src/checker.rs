//! Checks a recorded history for the safety properties of a replicated, sharded log
//! (`docs/reliability.md` and the P1-P10 table of the reliability reference).
//!
//! Sequence numbers give the version order of each shard directly, so no search is needed:
//! every observation (an acknowledged put, a record returned by a read or a drain) places a
//! value at a `(shard, seq)`, and each property is a pass over those placements.
//!
//! | figure | meaning |
//! |---|---|
//! | phantom_reads | a read returned a value no client ever sent |
//! | aborted_reads | a read returned a value whose every attempt definitely failed |
//! | inconsistent_sequence | two values at one sequence number, or an acknowledged value read only at another position |
//! | order_violations | a read chain went backwards or repeated a sequence number; or a put acknowledged before another was sent got the higher number |
//! | skipped_records | a read chain jumped over records that exist between two it returned |
//! | acked_lost | an acknowledged value nobody ever read although later records of its shard were read |
//! | unseen_after_drain | an acknowledged value absent from every node's final drain |
//! | divergent_nodes | nodes whose final drain of some shard differs from the other nodes' |
//! | server_duplicates | a value sent once that sits at two positions |
//! | retry_duplicates | a value sent more than once (a retry of an unknown outcome) that sits at two positions: allowed, reported as a rate |
//! | checkpoint_regressions | the consumer group's committed checkpoint of a shard was seen to move back (`checker/consumer_group.rs`) |
//! | unprocessed_records | a record at or below the final committed checkpoint of its shard that no worker processed |
//! | reprocessed_records | a record processed more than once (at-least-once delivery after a takeover): allowed, reported as a rate |
//!
//! The batches the consumer-group workers processed are reads too: their records are
//! observations for the phantom, aborted, one-value-per-position, lost and duplicate checks,
//! and each processor (one per lease taken) is checked like a read chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::history::{Op, OpFn, OpType};

/// One instance of an anomaly, with enough context to find it in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// The shard it happened in.
    pub shard: String,
    /// What was observed.
    pub detail: String,
}

/// Everything the checker found. Each anomaly list is a safety figure (its length), except
/// `retry_duplicates` and `reprocessed_records` (both allowed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Completions by type over all operations (an invocation that never completed counts
    /// as info).
    pub ops_ok: u64,
    /// See `ops_ok`.
    pub ops_fail: u64,
    /// See `ops_ok`.
    pub ops_info: u64,
    /// Distinct values the clients tried to write.
    pub values_attempted: u64,
    /// Distinct values acknowledged at least once.
    pub values_acked: u64,
    /// Values whose every attempt definitely failed.
    pub values_failed: u64,
    /// Values with no acknowledgement and at least one unknown outcome.
    pub values_unknown: u64,
    /// Values with an unknown outcome that were read anyway (they landed).
    pub values_recovered: u64,
    /// Records returned by read-chain calls.
    pub records_read: u64,
    /// Records returned by the final drains (all nodes).
    pub records_drained: u64,
    /// Consumer-group figures (all zero when the history has no workers).
    pub group: GroupFigures,
    /// Acknowledged value never read though a later record of its shard was (P6).
    pub acked_lost: Vec<Anomaly>,
    /// Value read that no client sent (P1).
    pub phantom_reads: Vec<Anomaly>,
    /// Value read whose every put definitely failed (P2).
    pub aborted_reads: Vec<Anomaly>,
    /// Two values at one sequence number, or an ack that names a position the value is not
    /// read at (P3).
    pub inconsistent_sequence: Vec<Anomaly>,
    /// A read chain whose sequence numbers do not strictly increase (P4).
    pub nonmonotonic_reads: Vec<Anomaly>,
    /// Put A acknowledged before put B was sent, same shard, seq(A) > seq(B) (P9).
    pub realtime_violations: Vec<Anomaly>,
    /// A read chain stepped over records known to exist between two it returned (P5); one
    /// entry per skipped record.
    pub skipped_records: Vec<Anomaly>,
    /// Acknowledged value absent from every node's final drain (P7).
    pub unseen_after_drain: Vec<Anomaly>,
    /// Nodes whose drain of some shard differs from the others' (P8), sorted.
    pub divergent_nodes: Vec<u64>,
    /// Why each divergent node was counted.
    pub divergence: Vec<Anomaly>,
    /// A value sent once stored at two positions (P10, server-caused).
    pub server_duplicates: Vec<Anomaly>,
    /// A value sent more than once stored at two positions (P10, retry-caused; allowed).
    pub retry_duplicates: Vec<Anomaly>,
    /// Drains that did not complete, or no drain at all: the total-loss and divergence
    /// figures are then incomplete, which fails the run.
    pub drain_failures: Vec<String>,
    /// The committed checkpoint of a shard seen below an earlier observation of it: a
    /// checkpoint acknowledged, a lease started from it, or the final lease table.
    pub checkpoint_regressions: Vec<Anomaly>,
    /// A drained record at or below its shard's final committed checkpoint that no worker
    /// processed (one entry per record).
    pub unprocessed_records: Vec<Anomaly>,
    /// A record processed more than once (allowed: delivery is at least once).
    pub reprocessed_records: Vec<Anomaly>,
    /// The consumer-group checks are incomplete: workers ran but there is no final lease
    /// table, or the final checkpoint of a shard is below its last record (the workers did
    /// not catch up). Fails the run, like an incomplete drain.
    pub group_failures: Vec<String>,
    /// Write-unavailability windows seen by the producers, in milliseconds: from the first
    /// put batch without any acknowledgement after a good one to the next acknowledged one.
    pub unavailability_ms: Vec<u64>,
    /// Per shard: acknowledged values and records in the longest drain.
    pub shards: BTreeMap<String, ShardFigures>,
}

/// Volume figures of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShardFigures {
    /// Values acknowledged into the shard.
    pub acked: u64,
    /// Records in the longest drain of the shard.
    pub drained: u64,
    /// Distinct records of the shard the consumer-group workers processed.
    pub processed: u64,
    /// Anomalies (all safety lists together) located in the shard.
    pub anomalies: u64,
}

/// Volume figures of the consumer-group workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupFigures {
    /// Worker runs (first starts and restarts).
    pub worker_runs: u64,
    /// Runs after a worker's first: it gave up on an error or could not connect.
    pub worker_restarts: u64,
    /// Leases a worker started processing under.
    pub leases_taken: u64,
    /// Leases taken whose previous processor of the shard ran in another worker.
    pub lease_handovers: u64,
    /// Batches handed to processors.
    pub batches: u64,
    /// Records handed to processors (a record processed twice counts twice).
    pub records_processed: u64,
    /// Distinct records processed.
    pub records_distinct: u64,
    /// Checkpoints acknowledged.
    pub checkpoints_ok: u64,
    /// Checkpoints refused (LeaseLost, below the current one).
    pub checkpoints_fail: u64,
    /// Checkpoints with an unknown outcome.
    pub checkpoints_info: u64,
    /// Per shard, the highest committed checkpoint the final lease tables list
    /// (`SHARD_END`, a sequence number, or `none`).
    pub final_checkpoints: BTreeMap<String, String>,
}

impl Findings {
    /// `order_violations` of the summary: read chains going backwards plus real-time order
    /// violations of acknowledged puts.
    pub fn order_violations(&self) -> u64 {
        (self.nonmonotonic_reads.len() + self.realtime_violations.len()) as u64
    }

    /// Whether every safety figure is zero and the drain completed.
    pub fn is_safe(&self) -> bool {
        self.acked_lost.is_empty()
            && self.phantom_reads.is_empty()
            && self.aborted_reads.is_empty()
            && self.inconsistent_sequence.is_empty()
            && self.order_violations() == 0
            && self.skipped_records.is_empty()
            && self.unseen_after_drain.is_empty()
            && self.divergent_nodes.is_empty()
            && self.server_duplicates.is_empty()
            && self.drain_failures.is_empty()
            && self.checkpoint_regressions.is_empty()
            && self.unprocessed_records.is_empty()
            && self.group_failures.is_empty()
    }
}

/// One send of a value.
#[derive(Debug, Clone)]
struct Attempt {
    invoke_ns: u64,
    complete_ns: u64,
    kind: OpType,
    /// Where the server said it put the value (ok only).
    at: Option<(String, u128)>,
}

/// A position, as parsed from an observation.
type Position = (String, u128);

/// One node's drain of one shard, in order.
type Drained = Vec<(u128, String)>;

/// Drains by shard, then node.
type Drains = BTreeMap<String, BTreeMap<u64, Drained>>;

/// Read chains and processors by (label, id), each with its calls.
type Chains<'a> = BTreeMap<(&'static str, u64), Vec<&'a Op>>;

/// Parses a decimal sequence number; `None` for anything else.
pub fn parse_seq(text: &str) -> Option<u128> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Runs every check over `history`.
pub fn check(history: &[Op]) -> Findings {
    let mut findings = Findings::default();

    // Pair invocations with completions.
    let mut invokes: HashMap<u64, &Op> = HashMap::new();
    let mut completions: HashMap<u64, &Op> = HashMap::new();
    for op in history {
        if op.kind == OpType::Invoke {
            invokes.insert(op.id, op);
        } else {
            completions.insert(op.id, op);
        }
    }
    for op in completions.values() {
        match op.kind {
            OpType::Ok => findings.ops_ok += 1,
            OpType::Fail => findings.ops_fail += 1,
            OpType::Info | OpType::Invoke => findings.ops_info += 1,
        }
    }
    findings.ops_info += invokes
        .keys()
        .filter(|id| !completions.contains_key(id))
        .count() as u64;
    let last_ns = history.iter().map(|op| op.time_ns).max().unwrap_or(0);

    // Every send of every value; an invocation without completion is an unknown outcome.
    let mut values: HashMap<&str, Vec<Attempt>> = HashMap::new();
    let mut sorted_invokes: Vec<&&Op> = invokes.values().collect();
    sorted_invokes.sort_by_key(|op| (op.time_ns, op.id));
    for invoke in &sorted_invokes {
        if invoke.f != OpFn::Put {
            continue;
        }
        let Some(value) = invoke.value.as_deref() else {
            continue;
        };
        let completion = completions.get(&invoke.id);
        let kind = completion.map_or(OpType::Info, |c| c.kind);
        let mut at = None;
        if let Some(done) = completion.filter(|c| c.kind == OpType::Ok) {
            match (
                done.shard.as_deref(),
                done.seq.as_deref().and_then(parse_seq),
            ) {
                (Some(shard), Some(seq)) => at = Some((shard.to_owned(), seq)),
                _ => findings.inconsistent_sequence.push(Anomaly {
                    shard: done.shard.clone().unwrap_or_default(),
                    detail: format!(
                        "put {value} (op {}) was acknowledged without a valid position: seq {:?}",
                        invoke.id, done.seq
                    ),
                }),
            }
        }
        values.entry(value).or_default().push(Attempt {
            invoke_ns: invoke.time_ns,
            complete_ns: completion.map_or(last_ns, |c| c.time_ns),
            kind,
            at,
        });
    }
    findings.values_attempted = values.len() as u64;
    for attempts in values.values() {
        if attempts.iter().any(|a| a.kind == OpType::Ok) {
            findings.values_acked += 1;
        } else if attempts.iter().all(|a| a.kind == OpType::Fail) {
            findings.values_failed += 1;
        } else {
            findings.values_unknown += 1;
        }
    }

    // Observations: what sits at each position, and where each value was read.
    let mut at: HashMap<Position, BTreeSet<String>> = HashMap::new();
    let mut read_at: HashMap<String, BTreeSet<Position>> = HashMap::new();
    // Every sequence number known to exist per shard (acks, reads, drains).
    let mut known: BTreeMap<String, BTreeSet<u128>> = BTreeMap::new();
    // Highest sequence number any read or drain returned per shard.
    let mut highest_read: HashMap<String, u128> = HashMap::new();
    let mut reported_phantom: BTreeSet<(String, String)> = BTreeSet::new();
    let mut reported_aborted: BTreeSet<(String, String)> = BTreeSet::new();
    for (value, attempts) in &values {
        for attempt in attempts {
            if let Some(position) = &attempt.at {
                at.entry(position.clone())
                    .or_default()
                    .insert((*value).to_owned());
                known
                    .entry(position.0.clone())
                    .or_default()
                    .insert(position.1);
            }
        }
    }
    let mut chains: Chains = BTreeMap::new();
    let mut drains: Drains = BTreeMap::new();
    let mut drained_any = false;
    for op in completions.values() {
        if !matches!(op.f, OpFn::Read | OpFn::Drain | OpFn::Process) {
            continue;
        }
        if op.f == OpFn::Drain {
            drained_any = true;
            if op.kind != OpType::Ok {
                findings.drain_failures.push(format!(
                    "node {} could not drain {}: {}",
                    op.node,
                    op.shard.as_deref().unwrap_or("?"),
                    op.error.as_deref().unwrap_or("no reason recorded")
                ));
                continue;
            }
        }
        if op.kind != OpType::Ok {
            continue;
        }
        let shard = op.shard.clone().unwrap_or_default();
        let mut drained = Vec::new();
        for record in &op.records {
            let Some(seq) = parse_seq(&record.seq) else {
                findings.inconsistent_sequence.push(Anomaly {
                    shard: shard.clone(),
                    detail: format!(
                        "node {} returned {} at sequence number {:?}, which is not a decimal integer",
                        op.node, record.value, record.seq
                    ),
                });
                continue;
            };
            match op.f {
                OpFn::Read => findings.records_read += 1,
                OpFn::Drain => {
                    findings.records_drained += 1;
                    drained.push((seq, record.value.clone()));
                }
                _ => {}
            }
            at.entry((shard.clone(), seq))
                .or_default()
                .insert(record.value.clone());
            read_at
                .entry(record.value.clone())
                .or_default()
                .insert((shard.clone(), seq));
            known.entry(shard.clone()).or_default().insert(seq);
            let high = highest_read.entry(shard.clone()).or_insert(seq);
            *high = (*high).max(seq);
            match values.get(record.value.as_str()) {
                None => {
                    if reported_phantom.insert((shard.clone(), record.value.clone())) {
                        findings.phantom_reads.push(Anomaly {
                            shard: shard.clone(),
                            detail: format!(
                                "node {} returned {:?} at {seq}, a value no client sent",
                                op.node, record.value
                            ),
                        });
                    }
                }
                Some(attempts) if attempts.iter().all(|a| a.kind == OpType::Fail) => {
                    if reported_aborted.insert((shard.clone(), record.value.clone())) {
                        findings.aborted_reads.push(Anomaly {
                            shard: shard.clone(),
                            detail: format!(
                                "node {} returned {} at {seq}, but all {} attempt(s) to put it definitely failed",
                                op.node,
                                record.value,
                                attempts.len()
                            ),
                        });
                    }
                }
                Some(_) => {}
            }
        }
        match op.f {
            OpFn::Read => chains
                .entry(("chain", op.chain.unwrap_or(u64::MAX)))
                .or_default()
                .push(op),
            OpFn::Process => chains
                .entry(("processor", op.chain.unwrap_or(u64::MAX)))
                .or_default()
                .push(op),
            OpFn::Drain => {
                drains
                    .entry(shard)
                    .or_default()
                    .entry(op.node)
                    .or_default()
                    .extend(drained);
            }
            _ => {}
        }
    }

    // P3: one value per position.
    let mut multi: Vec<(&Position, &BTreeSet<String>)> =
        at.iter().filter(|(_, values)| values.len() > 1).collect();
    multi.sort();
    for ((shard, seq), values) in multi {
        findings.inconsistent_sequence.push(Anomaly {
            shard: shard.clone(),
            detail: format!(
                "sequence number {seq} holds {} values: {values:?}",
                values.len()
            ),
        });
    }

    // Per acknowledged value: read where acked (P3), lost (P6), unseen after drain (P7).
    let mut drained_values: HashMap<&str, ()> = HashMap::new();
    for nodes in drains.values() {
        for records in nodes.values() {
            for (_, value) in records {
                drained_values.insert(value.as_str(), ());
            }
        }
    }
    let mut acked: Vec<(&str, &Attempt)> = Vec::new();
    for (value, attempts) in &values {
        for attempt in attempts.iter().filter(|a| a.at.is_some()) {
            acked.push((value, attempt));
        }
    }
    acked.sort_by(|a, b| (a.1.at.as_ref(), a.0).cmp(&(b.1.at.as_ref(), b.0)));
    let mut acked_values_seen: BTreeSet<&str> = BTreeSet::new();
    for (value, attempt) in &acked {
        let Some((shard, seq)) = &attempt.at else {
            continue;
        };
        findings.shards.entry(shard.clone()).or_default().acked += 1;
        let positions = read_at.get(*value);
        match positions {
            None => {
                if highest_read.get(shard).is_some_and(|high| high > seq) {
                    findings.acked_lost.push(Anomaly {
                        shard: shard.clone(),
                        detail: format!(
                            "{value} was acknowledged at {seq} but never read, though records up to {} were",
                            highest_read[shard]
                        ),
                    });
                }
            }
            Some(positions) if !positions.contains(&(shard.clone(), *seq)) => {
                findings.inconsistent_sequence.push(Anomaly {
                    shard: shard.clone(),
                    detail: format!(
                        "{value} was acknowledged at {shard}/{seq} but read only at {positions:?}"
                    ),
                });
            }
            Some(_) => {}
        }
        if drained_any && acked_values_seen.insert(value) && !drained_values.contains_key(value) {
            findings.unseen_after_drain.push(Anomaly {
                shard: shard.clone(),
                detail: format!("{value}, acknowledged at {seq}, is in no node's final drain"),
            });
        }
    }
    if !drained_any {
        findings
            .drain_failures
            .push("the history has no final drain: total loss and divergence are unchecked".into());
    }
    findings.values_recovered = values
        .iter()
        .filter(|(value, attempts)| {
            !attempts.iter().any(|a| a.kind == OpType::Ok)
                && attempts.iter().any(|a| a.kind == OpType::Info)
                && read_at.contains_key(**value)
        })
        .count() as u64;

    check_chains(&chains, &known, &mut findings);
    check_realtime(&acked, &mut findings);
    check_duplicates(&values, &read_at, &mut findings);
    check_divergence(&drains, &mut findings);
    consumer_group::check(history, &completions, &drains, &mut findings);
    findings.unavailability_ms = unavailability_windows(history, &completions, last_ns);

    for (shard, nodes) in &drains {
        let longest = nodes.values().map(Vec::len).max().unwrap_or(0) as u64;
        findings.shards.entry(shard.clone()).or_default().drained = longest;
    }
    let located: Vec<String> = [
        &findings.acked_lost,
        &findings.phantom_reads,
        &findings.aborted_reads,
        &findings.inconsistent_sequence,
        &findings.nonmonotonic_reads,
        &findings.realtime_violations,
        &findings.skipped_records,
        &findings.unseen_after_drain,
        &findings.divergence,
        &findings.server_duplicates,
        &findings.checkpoint_regressions,
        &findings.unprocessed_records,
    ]
    .iter()
    .flat_map(|list| list.iter().map(|a| a.shard.clone()))
    .collect();
    for shard in located {
        findings.shards.entry(shard).or_default().anomalies += 1;
    }
    findings
}

/// P4 and P5 over each read chain and each consumer-group processor, in call order.
fn check_chains(
    chains: &Chains,
    known: &BTreeMap<String, BTreeSet<u128>>,
    findings: &mut Findings,
) {
    for ((label, chain), calls) in chains {
        let mut calls = calls.clone();
        calls.sort_by_key(|op| (op.time_ns, op.id));
        let mut previous: Option<(u128, &str)> = None;
        for call in calls {
            let shard = call.shard.clone().unwrap_or_default();
            for record in &call.records {
                let Some(seq) = parse_seq(&record.seq) else {
                    continue;
                };
                if let Some((prev, prev_value)) = previous {
                    if seq <= prev {
                        findings.nonmonotonic_reads.push(Anomaly {
                            shard: shard.clone(),
                            detail: format!(
                                "{label} {chain} read {} at {seq} after {prev_value} at {prev} (node {})",
                                record.value, call.node
                            ),
                        });
                    } else if let Some(existing) = known.get(&shard) {
                        for missed in existing.range(prev + 1..seq) {
                            findings.skipped_records.push(Anomaly {
                                shard: shard.clone(),
                                detail: format!(
                                    "{label} {chain} went from {prev} to {seq} (node {}) over the record at {missed}",
                                    call.node
                                ),
                            });
                        }
                    }
                }
                previous = Some((seq, &record.value));
            }
        }
    }
}

/// P9: an acknowledged put that completed before another was invoked has the lower
/// sequence number (same shard). One entry per later put that got a lower number.
fn check_realtime(acked: &[(&str, &Attempt)], findings: &mut Findings) {
    let mut by_shard: BTreeMap<&str, Vec<(&str, &Attempt, u128)>> = BTreeMap::new();
    for (value, attempt) in acked {
        if let Some((shard, seq)) = &attempt.at {
            by_shard
                .entry(shard.as_str())
                .or_default()
                .push((value, attempt, *seq));
        }
    }
    for (shard, puts) in by_shard {
        let mut by_completion = puts.clone();
        by_completion.sort_by_key(|(_, a, _)| a.complete_ns);
        let mut by_invoke = puts;
        by_invoke.sort_by_key(|(_, a, _)| a.invoke_ns);
        let mut done = 0;
        // The completed put with the highest sequence number so far.
        let mut max: Option<(&str, u128)> = None;
        for (value, attempt, seq) in by_invoke {
            while done < by_completion.len()
                && by_completion[done].1.complete_ns < attempt.invoke_ns
            {
                let (v, _, s) = by_completion[done];
                if max.is_none_or(|(_, m)| s > m) {
                    max = Some((v, s));
                }
                done += 1;
            }
            if let Some((earlier, earlier_seq)) = max {
                if earlier_seq > seq {
                    findings.realtime_violations.push(Anomaly {
                        shard: shard.to_owned(),
                        detail: format!(
                            "{earlier} was acknowledged at {earlier_seq} before {value} was sent, but {value} got {seq}"
                        ),
                    });
                }
            }
        }
    }
}

/// P10: a value read at more than one position, split by whether the client sent it more
/// than once.
fn check_duplicates(
    values: &HashMap<&str, Vec<Attempt>>,
    read_at: &HashMap<String, BTreeSet<Position>>,
    findings: &mut Findings,
) {
    let mut sorted: Vec<(&&str, &Vec<Attempt>)> = values.iter().collect();
    sorted.sort_by_key(|(value, _)| **value);
    for (value, attempts) in sorted {
        // Read positions only: an ack naming a position the value is not read at is an
        // inconsistent ack (P3), not a second copy.
        let Some(positions) = read_at.get(*value) else {
            continue;
        };
        if positions.len() < 2 {
            continue;
        }
        let anomaly = Anomaly {
            shard: positions.first().map(|p| p.0.clone()).unwrap_or_default(),
            detail: format!(
                "{value} (sent {} time(s)) is stored at {positions:?}",
                attempts.len()
            ),
        };
        if attempts.len() > 1 {
            findings.retry_duplicates.push(anomaly);
        } else {
            findings.server_duplicates.push(anomaly);
        }
    }
}

/// P8: every node's drain of a shard is identical. Within a shard, the nodes outside the
/// largest group of identical drains are divergent (a node that drained other shards but
/// not this one counts as having drained nothing of it).
fn check_divergence(drains: &Drains, findings: &mut Findings) {
    let nodes: BTreeSet<u64> = drains.values().flat_map(|n| n.keys().copied()).collect();
    let mut divergent: BTreeSet<u64> = BTreeSet::new();
    let empty = Vec::new();
    for (shard, by_node) in drains {
        let mut groups: Vec<(&Drained, Vec<u64>)> = Vec::new();
        for node in &nodes {
            let records = by_node.get(node).unwrap_or(&empty);
            match groups.iter_mut().find(|(r, _)| *r == records) {
                Some((_, members)) => members.push(*node),
                None => groups.push((records, vec![*node])),
            }
        }
        if groups.len() < 2 {
            continue;
        }
        // Largest group first; among equals, the longest drain is the reference.
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(b.0.len().cmp(&a.0.len())));
        let reference = groups[0].0;
        for (records, members) in &groups[1..] {
            let first_difference = reference
                .iter()
                .zip(records.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(reference.len().min(records.len()));
            for node in members {
                divergent.insert(*node);
                findings.divergence.push(Anomaly {
                    shard: shard.clone(),
                    detail: format!(
                        "node {node} drained {} records, nodes {:?} drained {}; first difference at index {first_difference}: {:?} vs {:?}",
                        records.len(),
                        groups[0].1,
                        reference.len(),
                        records.get(first_difference),
                        reference.get(first_difference)
                    ),
                });
            }
        }
    }
    findings.divergent_nodes = divergent.into_iter().collect();
}

/// The producers' write-unavailability windows in milliseconds. Entries of one PutRecords
/// call share the process and invoke time; a call counts as good when any entry was
/// acknowledged. A window opens at the first call without an acknowledgement after a good
/// one and closes when the next good call completes (or at the end of the history).
fn unavailability_windows(
    history: &[Op],
    completions: &HashMap<u64, &Op>,
    last_ns: u64,
) -> Vec<u64> {
    // (process, invoke time) -> (any ok, latest completion)
    let mut calls: BTreeMap<(u64, u64), (bool, u64)> = BTreeMap::new();
    for op in history {
        if op.kind != OpType::Invoke || op.f != OpFn::Put {
            continue;
        }
        let completion = completions.get(&op.id);
        let ok = completion.is_some_and(|c| c.kind == OpType::Ok);
        let done = completion.map_or(last_ns, |c| c.time_ns);
        let call = calls
            .entry((op.process, op.time_ns))
            .or_insert((false, done));
        call.0 |= ok;
        call.1 = call.1.max(done);
    }
    let mut windows = Vec::new();
    let mut open: Option<(u64, u64)> = None; // (process, opened at)
    let mut current_process = None;
    for ((process, invoked), (ok, done)) in calls {
        if current_process != Some(process) {
            if let Some((_, start)) = open.take() {
                windows.push(last_ns.saturating_sub(start) / 1_000_000);
            }
            current_process = Some(process);
        }
        match (ok, open) {
            (false, None) => open = Some((process, invoked)),
            (true, Some((_, start))) => {
                windows.push(done.saturating_sub(start) / 1_000_000);
                open = None;
            }
            _ => {}
        }
    }
    if let Some((_, start)) = open {
        windows.push(last_ns.saturating_sub(start) / 1_000_000);
    }
    windows
}

/// The `q` quantile (0.0-1.0) of `values` by nearest rank; 0 when empty.
pub fn quantile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

mod consumer_group;

#[cfg(test)]
mod tests;
