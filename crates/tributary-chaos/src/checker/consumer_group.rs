//! The consumer-group checks: a shard's committed checkpoint never moves back, every record
//! at or below the final checkpoint was processed by some worker, and how many records were
//! processed more than once.
//!
//! The server keeps one checkpoint per application and shard next to the shard's lease. It
//! refuses a checkpoint below the current one, and one from a worker whose lease epoch is not
//! the current one; every take of the lease adds one to the epoch. So the committed
//! checkpoint is a register that only grows, and the history observes it three ways:
//! - an acknowledged checkpoint `(epoch e, seq a)`: the register was set to `a` while the
//!   lease was at epoch `e`;
//! - a lease start `(epoch e, after S)`: the register held `S` when the lease moved to epoch
//!   `e` (the new owner resumes after the committed checkpoint, or at TRIM_HORIZON when there
//!   is none);
//! - the final lease table, listed through every node after the workers shut down.
//!
//! An observation at a lower epoch happened before every observation at a higher one (a
//! checkpoint is only accepted at the current epoch, and the epoch only grows); within one
//! epoch, an acknowledged checkpoint happened before one invoked after it completed; and
//! whatever completed before a final table was requested happened before that table. A
//! later observation below an earlier one is a regression: the server lost or rolled back a
//! committed checkpoint, and the next owner would skip or re-deliver records it must not.
//!
//! A takeover itself is not a regression: the new owner starts after the last committed
//! checkpoint and processes again what the old owner processed after it (at-least-once,
//! counted as `reprocessed_records`). A lease start is only compared with observations at
//! lower epochs: a take answered from a replica that had not applied it yet shows an older
//! state, which is still one the register really held.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::{parse_seq, Anomaly, Drains, Findings};
use crate::history::{Op, OpFn, OpType};

/// Where a shard's committed checkpoint stands, in the order it may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mark {
    /// Nothing checkpointed: processing starts at TRIM_HORIZON.
    Nothing,
    /// Every record up to and including this sequence number is processed.
    At(u128),
    /// The closed shard is processed to its end.
    End,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mark::Nothing => write!(f, "no checkpoint"),
            Mark::At(seq) => write!(f, "{seq}"),
            Mark::End => write!(f, "SHARD_END"),
        }
    }
}

/// What an observation of the committed checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A processor started after the checkpoint its lease showed.
    Start,
    /// A checkpoint was acknowledged.
    Ack,
    /// The final lease table listed it.
    Table,
}

/// One observation of a shard's committed checkpoint.
#[derive(Debug, Clone, Copy)]
struct Observation<'a> {
    source: Source,
    epoch: u64,
    mark: Mark,
    invoke_ns: u64,
    complete_ns: u64,
    op: &'a Op,
}

impl Observation<'_> {
    fn describe(&self) -> String {
        let op = self.op;
        match (self.source, self.mark) {
            (Source::Start, Mark::Nothing) => format!(
                "worker {} took the lease at epoch {} and started at TRIM_HORIZON (op {})",
                op.process, self.epoch, op.id
            ),
            (Source::Start, mark) => format!(
                "worker {} took the lease at epoch {} and started after {mark} (op {})",
                op.process, self.epoch, op.id
            ),
            (Source::Ack, mark) => format!(
                "checkpoint {mark} acknowledged to worker {} at epoch {} (op {})",
                op.process, self.epoch, op.id
            ),
            (Source::Table, mark) => format!(
                "node {} listed checkpoint {mark} at epoch {} after the workers stopped (op {})",
                op.node, self.epoch, op.id
            ),
        }
    }
}

/// Who processed a record: (worker process, lease epoch).
type Processors = Vec<(u64, Option<u64>)>;

/// Runs the consumer-group checks. Histories without consumer-group operations pass
/// untouched.
pub(super) fn check(
    history: &[Op],
    completions: &HashMap<u64, &Op>,
    drains: &Drains,
    findings: &mut Findings,
) {
    let group_ops = |f: OpFn| {
        matches!(
            f,
            OpFn::Worker | OpFn::Lease | OpFn::Process | OpFn::Checkpoint | OpFn::LeaseTable
        )
    };
    if !history.iter().any(|op| group_ops(op.f)) {
        return;
    }
    let mut observations: BTreeMap<&str, Vec<Observation>> = BTreeMap::new();
    let mut processed: BTreeMap<(&str, u128, &str), Processors> = BTreeMap::new();
    let mut runs: BTreeMap<u64, u64> = BTreeMap::new();
    let mut starts: BTreeMap<&str, Vec<(u64, u64, u64)>> = BTreeMap::new();
    let mut table_read = false;
    let figures = &mut findings.group;
    for invoke in history.iter().filter(|op| op.kind == OpType::Invoke) {
        if !group_ops(invoke.f) {
            continue;
        }
        let completion = completions.get(&invoke.id).copied();
        let kind = completion.map_or(OpType::Info, |c| c.kind);
        let complete_ns = completion.map_or(u64::MAX, |c| c.time_ns);
        let shard = invoke.shard.as_deref().unwrap_or_default();
        let epoch = invoke.epoch.unwrap_or(0);
        let mark = || match invoke.seq.as_deref() {
            None => Some(Mark::Nothing),
            Some(text) => parse_seq(text).map(Mark::At),
        };
        let observation = |source, mark| Observation {
            source,
            epoch,
            mark,
            invoke_ns: invoke.time_ns,
            complete_ns,
            op: invoke,
        };
        match invoke.f {
            OpFn::Worker => *runs.entry(invoke.process).or_default() += 1,
            OpFn::Lease if kind == OpType::Ok => {
                figures.leases_taken += 1;
                starts
                    .entry(shard)
                    .or_default()
                    .push((epoch, invoke.time_ns, invoke.process));
                match mark() {
                    Some(mark) => observations
                        .entry(shard)
                        .or_default()
                        .push(observation(Source::Start, mark)),
                    None => findings.group_failures.push(format!(
                        "lease start op {} has an unreadable sequence number {:?}",
                        invoke.id, invoke.seq
                    )),
                }
            }
            OpFn::Process if kind == OpType::Ok => {
                let Some(done) = completion else { continue };
                figures.batches += 1;
                for record in &done.records {
                    figures.records_processed += 1;
                    if let Some(seq) = parse_seq(&record.seq) {
                        processed
                            .entry((shard, seq, record.value.as_str()))
                            .or_default()
                            .push((invoke.process, invoke.epoch));
                    }
                }
            }
            OpFn::Checkpoint => match kind {
                OpType::Ok => {
                    figures.checkpoints_ok += 1;
                    match invoke.seq.as_deref().and_then(parse_seq) {
                        Some(seq) => observations
                            .entry(shard)
                            .or_default()
                            .push(observation(Source::Ack, Mark::At(seq))),
                        None => findings.group_failures.push(format!(
                            "checkpoint op {} has an unreadable sequence number {:?}",
                            invoke.id, invoke.seq
                        )),
                    }
                }
                OpType::Fail => figures.checkpoints_fail += 1,
                OpType::Info | OpType::Invoke => figures.checkpoints_info += 1,
            },
            OpFn::LeaseTable if kind == OpType::Ok => {
                table_read = true;
                // A table read with no shard stands for an empty table.
                let Some(done) = completion.filter(|c| c.shard.is_some()) else {
                    continue;
                };
                let shard = done.shard.as_deref().unwrap_or_default();
                let listed = if done.shard_end {
                    Some(Mark::End)
                } else {
                    match done.seq.as_deref() {
                        None => Some(Mark::Nothing),
                        Some(text) => parse_seq(text).map(Mark::At),
                    }
                };
                match listed {
                    Some(mark) => observations.entry(shard).or_default().push(Observation {
                        epoch: done.epoch.unwrap_or(0),
                        ..observation(Source::Table, mark)
                    }),
                    None => findings.group_failures.push(format!(
                        "lease table op {} has an unreadable checkpoint {:?}",
                        invoke.id, done.seq
                    )),
                }
            }
            _ => {}
        }
    }
    figures.worker_runs = runs.values().sum();
    figures.worker_restarts = runs.values().map(|n| n.saturating_sub(1)).sum();
    for leases in starts.values_mut() {
        leases.sort_unstable();
        figures.lease_handovers += leases.windows(2).filter(|w| w[0].2 != w[1].2).count() as u64;
    }

    for (shard, seen) in &observations {
        regressions(shard, seen, &mut findings.checkpoint_regressions);
    }

    // The final committed checkpoint per shard: the highest any node lists.
    let mut final_mark: BTreeMap<&str, Mark> = BTreeMap::new();
    for (shard, seen) in &observations {
        for table in seen.iter().filter(|o| o.source == Source::Table) {
            let mark = final_mark.entry(shard).or_insert(Mark::Nothing);
            *mark = (*mark).max(table.mark);
        }
    }
    for (shard, mark) in &final_mark {
        figures
            .final_checkpoints
            .insert((*shard).to_owned(), mark.to_string());
    }
    if !table_read {
        findings.group_failures.push(
            "consumer-group workers ran but the history has no final lease table: unprocessed records are unchecked"
                .into(),
        );
    }

    // Unprocessed: every drained record at or below the final checkpoint was processed.
    for (shard, by_node) in drains {
        let records: BTreeSet<(u128, &str)> = by_node
            .values()
            .flat_map(|drained| drained.iter().map(|(seq, value)| (*seq, value.as_str())))
            .collect();
        let bound = final_mark
            .get(shard.as_str())
            .copied()
            .unwrap_or(Mark::Nothing);
        for (seq, value) in &records {
            if Mark::At(*seq) > bound {
                continue;
            }
            if !processed.contains_key(&(shard.as_str(), *seq, *value)) {
                findings.unprocessed_records.push(Anomaly {
                    shard: shard.clone(),
                    detail: format!(
                        "{value} at {seq} is at or below the final checkpoint {bound}, but no worker processed it"
                    ),
                });
            }
        }
        if table_read {
            if let Some((last, _)) = records.last() {
                if bound < Mark::At(*last) {
                    findings.group_failures.push(format!(
                        "the workers did not reach the end of {shard}: its final checkpoint is {bound}, its last record {last}"
                    ));
                }
            }
        }
    }

    // Reprocessed: allowed, reported as a rate.
    let mut distinct: BTreeMap<&str, u64> = BTreeMap::new();
    for ((shard, seq, value), by) in &processed {
        *distinct.entry(shard).or_default() += 1;
        if by.len() > 1 {
            let who: Vec<String> = by
                .iter()
                .map(|(worker, epoch)| match epoch {
                    Some(epoch) => format!("worker {worker} at epoch {epoch}"),
                    None => format!("worker {worker}"),
                })
                .collect();
            findings.reprocessed_records.push(Anomaly {
                shard: (*shard).to_owned(),
                detail: format!(
                    "{value} at {seq} was processed {} times: {}",
                    by.len(),
                    who.join(", ")
                ),
            });
        }
    }
    findings.group.records_distinct = distinct.values().sum();
    for (shard, count) in distinct {
        findings
            .shards
            .entry(shard.to_owned())
            .or_default()
            .processed = count;
    }
}

/// The higher of two observations (the first on a tie).
fn higher<'a>(a: Option<Observation<'a>>, b: Observation<'a>) -> Option<Observation<'a>> {
    match a {
        Some(a) if a.mark >= b.mark => Some(a),
        _ => Some(b),
    }
}

/// Every observation of one shard's checkpoint that is below one that happened before it
/// (one anomaly per such observation, naming the highest earlier one).
fn regressions(shard: &str, seen: &[Observation], out: &mut Vec<Anomaly>) {
    let mut report = |later: &Observation, earlier: &Observation| {
        out.push(Anomaly {
            shard: shard.to_owned(),
            detail: format!(
                "{} is below {}: the committed checkpoint moved back",
                later.describe(),
                earlier.describe()
            ),
        });
    };
    // Starts and acknowledgements, by epoch.
    let mut by_epoch: BTreeMap<u64, Vec<Observation>> = BTreeMap::new();
    for o in seen.iter().filter(|o| o.source != Source::Table) {
        by_epoch.entry(o.epoch).or_default().push(*o);
    }
    // The highest observation at any lower epoch.
    let mut below: Option<Observation> = None;
    for observations in by_epoch.values() {
        for o in observations.iter().filter(|o| o.source == Source::Start) {
            if let Some(earlier) = below.filter(|e| e.mark > o.mark) {
                report(o, &earlier);
            }
        }
        let mut acks: Vec<Observation> = observations
            .iter()
            .filter(|o| o.source == Source::Ack)
            .copied()
            .collect();
        let mut by_completion = acks.clone();
        by_completion.sort_by_key(|o| o.complete_ns);
        acks.sort_by_key(|o| o.invoke_ns);
        let mut done = 0;
        let mut before = below;
        for o in &acks {
            while done < by_completion.len() && by_completion[done].complete_ns < o.invoke_ns {
                before = higher(before, by_completion[done]);
                done += 1;
            }
            if let Some(earlier) = before.filter(|e| e.mark > o.mark) {
                report(o, &earlier);
            }
        }
        for o in observations {
            below = higher(below, *o);
        }
    }

    // Final tables: after everything that completed before they were requested.
    let mut by_completion: Vec<&Observation> = seen.iter().collect();
    by_completion.sort_by_key(|o| o.complete_ns);
    let mut tables: Vec<&Observation> = seen.iter().filter(|o| o.source == Source::Table).collect();
    tables.sort_by_key(|o| o.invoke_ns);
    let mut done = 0;
    let mut before: Option<Observation> = None;
    for table in tables {
        while done < by_completion.len() && by_completion[done].complete_ns < table.invoke_ns {
            before = higher(before, *by_completion[done]);
            done += 1;
        }
        if let Some(earlier) = before.filter(|e| e.mark > table.mark) {
            report(table, &earlier);
        }
    }
}
