//! The run report: a human-readable summary and, as its last line, one JSON object with a
//! fixed set of keys (`Summary`) that CI and docs/reliability.md parse.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::{quantile, Anomaly, Findings};

/// The machine-readable last line. The field names and their order are an interface
/// (issue 7); add nothing here without updating the consumers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The fault schedule's seed: `scripts/chaos --seed S` replays it.
    pub seed: u64,
    /// `git rev-parse --short HEAD` of the code under test (suffixed `-dirty` with local
    /// changes).
    pub commit: String,
    /// Wall-clock seconds of the workload under faults.
    pub duration_s: u64,
    /// Faults injected, by type.
    pub faults: BTreeMap<String, u64>,
    /// Operations that completed ok.
    pub ops_ok: u64,
    /// Operations that definitely did not take effect.
    pub ops_fail: u64,
    /// Operations with an unknown outcome.
    pub ops_info: u64,
    /// Safety: acknowledged values never read though later records of the shard were.
    pub acked_lost: u64,
    /// Safety: values read that no client sent.
    pub phantom_reads: u64,
    /// Safety: values read whose puts definitely failed.
    pub aborted_reads: u64,
    /// Safety: sequence numbers holding two values, or acks naming the wrong position.
    pub inconsistent_sequence: u64,
    /// Safety: read chains going backwards plus real-time order violations of puts.
    pub order_violations: u64,
    /// Safety: records a read chain jumped over.
    pub skipped_records: u64,
    /// Safety: nodes whose final drain differs from the others'.
    pub divergent_nodes: u64,
    /// Safety: values sent once but stored twice.
    pub server_duplicates: u64,
    /// Allowed: values sent more than once and stored more than once.
    pub retry_duplicates: u64,
    /// Safety: acknowledged values absent from every node's final drain.
    pub unseen_after_drain: u64,
    /// Producers' write-unavailability windows, median.
    pub unavailability_ms_p50: u64,
    /// 99th percentile of the windows.
    pub unavailability_ms_p99: u64,
    /// Longest window.
    pub unavailability_ms_max: u64,
    /// Safety: the consumer group's committed checkpoint of a shard seen to move back.
    pub checkpoint_regressions: u64,
    /// Safety: records at or below the final committed checkpoint that no worker processed.
    pub unprocessed_records: u64,
    /// Allowed: records the workers processed more than once (at-least-once delivery).
    pub reprocessed_records: u64,
}

/// What the fault schedule did, by fault type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultTally {
    /// Injections per type.
    pub count: BTreeMap<String, u64>,
    /// Seconds each type was in force.
    pub seconds: BTreeMap<String, f64>,
    /// Fault types the run could not inject, with the reason.
    pub not_injected: BTreeMap<String, String>,
    /// One line per injection: when, what, against which node.
    pub log: Vec<String>,
}

impl FaultTally {
    /// Records one injection of `kind` that lasted `seconds`.
    pub fn add(&mut self, kind: &str, seconds: f64, line: String) {
        *self.count.entry(kind.to_owned()).or_default() += 1;
        *self.seconds.entry(kind.to_owned()).or_default() += seconds;
        self.log.push(line);
    }
}

/// A whole run: inputs, what the nemesis did, and what the checker found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed of the fault schedule.
    pub seed: u64,
    /// The commit under test.
    pub commit: String,
    /// Seconds of workload under faults.
    pub duration_s: u64,
    /// Faults injected.
    pub faults: FaultTally,
    /// The checker's result.
    pub findings: Findings,
    /// Problems of the run itself (setup, heal, wait for health) that make it fail.
    pub run_errors: Vec<String>,
}

impl Report {
    /// The JSON last line.
    pub fn summary(&self) -> Summary {
        let f = &self.findings;
        Summary {
            seed: self.seed,
            commit: self.commit.clone(),
            duration_s: self.duration_s,
            faults: self.faults.count.clone(),
            ops_ok: f.ops_ok,
            ops_fail: f.ops_fail,
            ops_info: f.ops_info,
            acked_lost: f.acked_lost.len() as u64,
            phantom_reads: f.phantom_reads.len() as u64,
            aborted_reads: f.aborted_reads.len() as u64,
            inconsistent_sequence: f.inconsistent_sequence.len() as u64,
            order_violations: f.order_violations(),
            skipped_records: f.skipped_records.len() as u64,
            divergent_nodes: f.divergent_nodes.len() as u64,
            server_duplicates: f.server_duplicates.len() as u64,
            retry_duplicates: f.retry_duplicates.len() as u64,
            unseen_after_drain: f.unseen_after_drain.len() as u64,
            unavailability_ms_p50: quantile(&f.unavailability_ms, 0.5),
            unavailability_ms_p99: quantile(&f.unavailability_ms, 0.99),
            unavailability_ms_max: f.unavailability_ms.iter().copied().max().unwrap_or(0),
            checkpoint_regressions: f.checkpoint_regressions.len() as u64,
            unprocessed_records: f.unprocessed_records.len() as u64,
            reprocessed_records: f.reprocessed_records.len() as u64,
        }
    }

    /// Whether the run passed: every safety figure zero, a complete drain, no run error,
    /// and at least one fault injected.
    pub fn passed(&self) -> bool {
        self.findings.is_safe() && self.run_errors.is_empty() && !self.faults.count.is_empty()
    }

    /// The human-readable report followed by the JSON summary as the last line.
    pub fn render(&self) -> String {
        let f = &self.findings;
        let s = self.summary();
        let mut out = String::new();
        let _ = writeln!(out, "== tributary-chaos report");
        let _ = writeln!(
            out,
            "seed {}   commit {}   duration {} s   replay: scripts/chaos --seed {} --duration {}",
            self.seed, self.commit, self.duration_s, self.seed, self.duration_s
        );
        let _ = writeln!(out, "-- faults (count, total seconds)");
        if self.faults.count.is_empty() {
            let _ = writeln!(out, "  none injected");
        }
        for (kind, count) in &self.faults.count {
            let seconds = self.faults.seconds.get(kind).copied().unwrap_or(0.0);
            let _ = writeln!(out, "  {kind:<22} {count:>4}  {seconds:>8.1} s");
        }
        for (kind, why) in &self.faults.not_injected {
            let _ = writeln!(out, "  {kind:<22} not injected: {why}");
        }
        let _ = writeln!(out, "-- operations");
        let _ = writeln!(
            out,
            "  ok {}   fail {}   info {}",
            f.ops_ok, f.ops_fail, f.ops_info
        );
        let _ = writeln!(
            out,
            "  values: attempted {}  acked {}  definitely failed {}  unknown {} (of which read: {})",
            f.values_attempted, f.values_acked, f.values_failed, f.values_unknown, f.values_recovered
        );
        let _ = writeln!(
            out,
            "  records returned: read chains {}   final drains (all nodes) {}",
            f.records_read, f.records_drained
        );
        let _ = writeln!(out, "-- safety (each must be 0)");
        let rows: [(&str, u64, &[Anomaly]); 14] = [
            ("acked_lost", s.acked_lost, &f.acked_lost),
            (
                "unseen_after_drain",
                s.unseen_after_drain,
                &f.unseen_after_drain,
            ),
            ("phantom_reads", s.phantom_reads, &f.phantom_reads),
            ("aborted_reads", s.aborted_reads, &f.aborted_reads),
            (
                "inconsistent_sequence",
                s.inconsistent_sequence,
                &f.inconsistent_sequence,
            ),
            (
                "order: chain backwards",
                f.nonmonotonic_reads.len() as u64,
                &f.nonmonotonic_reads,
            ),
            (
                "order: real-time",
                f.realtime_violations.len() as u64,
                &f.realtime_violations,
            ),
            ("skipped_records", s.skipped_records, &f.skipped_records),
            ("divergent_nodes", s.divergent_nodes, &f.divergence),
            (
                "server_duplicates",
                s.server_duplicates,
                &f.server_duplicates,
            ),
            (
                "retry_duplicates (ok)",
                s.retry_duplicates,
                &f.retry_duplicates,
            ),
            (
                "checkpoint_regressions",
                s.checkpoint_regressions,
                &f.checkpoint_regressions,
            ),
            (
                "unprocessed_records",
                s.unprocessed_records,
                &f.unprocessed_records,
            ),
            (
                "reprocessed_records (ok)",
                s.reprocessed_records,
                &f.reprocessed_records,
            ),
        ];
        for (name, count, examples) in rows {
            let _ = writeln!(out, "  {name:<24} {count}");
            for example in examples.iter().take(5) {
                let _ = writeln!(out, "      {}: {}", example.shard, example.detail);
            }
            if examples.len() > 5 {
                let _ = writeln!(out, "      … {} more", examples.len() - 5);
            }
        }
        if f.values_acked > 0 {
            let _ = writeln!(
                out,
                "  retry-duplicate rate   {:.4}% of acknowledged values",
                100.0 * s.retry_duplicates as f64 / f.values_acked as f64
            );
        }
        if f.group.records_distinct > 0 {
            let _ = writeln!(
                out,
                "  reprocessed rate       {:.4}% of distinct records processed",
                100.0 * s.reprocessed_records as f64 / f.group.records_distinct as f64
            );
        }
        for failure in &f.drain_failures {
            let _ = writeln!(out, "  drain incomplete: {failure}");
        }
        for failure in &f.group_failures {
            let _ = writeln!(out, "  consumer group incomplete: {failure}");
        }
        let g = &f.group;
        if g.worker_runs > 0 {
            let _ = writeln!(out, "-- consumer group");
            let _ = writeln!(
                out,
                "  worker runs {} (restarts {})   leases taken {} (handed to another worker {})",
                g.worker_runs, g.worker_restarts, g.leases_taken, g.lease_handovers
            );
            let _ = writeln!(
                out,
                "  batches {}   records processed {} ({} distinct)",
                g.batches, g.records_processed, g.records_distinct
            );
            let _ = writeln!(
                out,
                "  checkpoints: ok {}   refused {}   unknown {}",
                g.checkpoints_ok, g.checkpoints_fail, g.checkpoints_info
            );
            let finals: Vec<String> = g
                .final_checkpoints
                .iter()
                .map(|(shard, at)| format!("{shard} {at}"))
                .collect();
            let _ = writeln!(out, "  final checkpoints: {}", finals.join(", "));
        }
        let _ = writeln!(
            out,
            "-- per shard (acked, records in final drain, processed by the workers, anomalies)"
        );
        for (shard, figures) in &f.shards {
            let _ = writeln!(
                out,
                "  {shard}  {:>8} {:>8} {:>8} {:>5}",
                figures.acked, figures.drained, figures.processed, figures.anomalies
            );
        }
        let _ = writeln!(out, "-- availability");
        let _ = writeln!(
            out,
            "  write-unavailability windows: {}   p50 {} ms   p99 {} ms   max {} ms",
            f.unavailability_ms.len(),
            s.unavailability_ms_p50,
            s.unavailability_ms_p99,
            s.unavailability_ms_max
        );
        for error in &self.run_errors {
            let _ = writeln!(out, "run error: {error}");
        }
        let _ = writeln!(
            out,
            "RESULT: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        let json = serde_json::to_string(&s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        let _ = writeln!(out, "{json}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_is_the_summary_with_exactly_the_agreed_keys() {
        let mut faults = FaultTally::default();
        faults.add("kill", 10.0, "t=1s kill node2".into());
        let report = Report {
            seed: 42,
            commit: "abc1234".into(),
            duration_s: 60,
            faults,
            findings: Findings {
                unavailability_ms: vec![100, 300, 200],
                ..Findings::default()
            },
            run_errors: Vec::new(),
        };
        let text = report.render();
        let last = text.lines().last().expect("a last line");
        let value: serde_json::Value = serde_json::from_str(last).expect("json");
        let keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "seed",
            "commit",
            "duration_s",
            "faults",
            "ops_ok",
            "ops_fail",
            "ops_info",
            "acked_lost",
            "phantom_reads",
            "aborted_reads",
            "inconsistent_sequence",
            "order_violations",
            "skipped_records",
            "divergent_nodes",
            "server_duplicates",
            "retry_duplicates",
            "unseen_after_drain",
            "unavailability_ms_p50",
            "unavailability_ms_p99",
            "unavailability_ms_max",
            "checkpoint_regressions",
            "unprocessed_records",
            "reprocessed_records",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(value["faults"]["kill"], 1);
        assert_eq!(value["unavailability_ms_p50"], 200);
        assert_eq!(value["unavailability_ms_max"], 300);
        assert!(report.passed());
        assert!(text.contains("RESULT: PASS"));

        // Any safety figure, run error or a run without faults fails it.
        let mut lost = report.clone();
        lost.findings.acked_lost.push(Anomaly {
            shard: "shardId-000000000000".into(),
            detail: "x".into(),
        });
        assert!(!lost.passed());
        assert!(lost.render().contains("RESULT: FAIL"));
        for key in ["checkpoint_regressions", "unprocessed_records"] {
            let mut bad = report.clone();
            let list = if key == "checkpoint_regressions" {
                &mut bad.findings.checkpoint_regressions
            } else {
                &mut bad.findings.unprocessed_records
            };
            list.push(Anomaly {
                shard: "shardId-000000000000".into(),
                detail: "x".into(),
            });
            assert!(!bad.passed());
            let line = bad.render();
            let value: serde_json::Value =
                serde_json::from_str(line.lines().last().expect("a last line")).expect("json");
            assert_eq!(value[key], 1);
        }
        let mut incomplete = report.clone();
        incomplete
            .findings
            .group_failures
            .push("no final lease table".into());
        assert!(!incomplete.passed());
        let mut reprocessed = report.clone();
        reprocessed.findings.reprocessed_records.push(Anomaly {
            shard: "shardId-000000000000".into(),
            detail: "x".into(),
        });
        assert!(reprocessed.passed());
        let mut broken = report.clone();
        broken
            .run_errors
            .push("could not inject faults: no Docker".into());
        assert!(!broken.passed());
        let mut idle = report;
        idle.faults = FaultTally::default();
        assert!(!idle.passed());
    }
}
