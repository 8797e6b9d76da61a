//! The standard suite: maximum throughput; latency at a fixed 20% of Tributary's maximum
//! with enhanced fan-out readers; backlog catch-up — on Tributary and NATS JetStream R3
//! (fsync before ack on both), plus the unsafe no-fsync variants at maximum throughput.

use serde::{Deserialize, Serialize};

use crate::backend::{Binaries, Cluster, System};
use crate::report::{markdown_table, text_table, RunReport};
use crate::runner::run;
use crate::workload::{ConsumerMode, Workload};

#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub quick: bool,
    pub compare_nats: bool,
    pub unsafe_variants: bool,
}

/// One scenario's runs, side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub reports: Vec<RunReport>,
}

/// The suite's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteReport {
    pub quick: bool,
    pub scenarios: Vec<Scenario>,
}

fn base(quick: bool) -> Workload {
    Workload {
        shards: 6,
        producers: 4,
        batch_records: 128,
        in_flight: 4,
        warmup_secs: if quick { 3 } else { 10 },
        duration_secs: if quick { 10 } else { 60 },
        ..Workload::default()
    }
}

pub async fn run_suite(bins: &Binaries, options: &SuiteOptions) -> anyhow::Result<SuiteReport> {
    let quick = options.quick;
    let max = base(quick);
    let mut max_runs = Vec::new();
    let mut latency_runs = Vec::new();
    let mut catch_up_runs = Vec::new();
    let mut safe = vec![System::Tributary];
    if options.compare_nats {
        safe.push(System::Nats);
    }
    let mut latency = Workload {
        consumers: ConsumerMode::Efo,
        batch_records: 64,
        in_flight: 16,
        ..base(quick)
    };
    let catch_up = Workload {
        duration_secs: 0,
        backlog_mb: if quick { 200 } else { 1000 },
        ..base(quick)
    };
    for system in safe {
        eprintln!("== {}: starting a 3-node cluster", system.label());
        let mut cluster = Cluster::start(system, bins).await?;
        eprintln!(
            "== {}: maximum throughput ({} s)",
            system.label(),
            max.duration_secs
        );
        let report = run(&mut cluster, &max, "max").await?;
        print_one(&report);
        if system == System::Tributary {
            let rate = report.produce.as_ref().map_or(0.0, |p| p.records_per_sec);
            latency.rate = ((rate * 0.2) as u64).max(100);
        }
        max_runs.push(report);
        eprintln!(
            "== {}: fixed rate {} records/s (20% of Tributary's max), enhanced fan-out readers",
            system.label(),
            latency.rate
        );
        let report = run(&mut cluster, &latency, "lat").await?;
        print_one(&report);
        latency_runs.push(report);
        eprintln!(
            "== {}: catch-up of a {} MB backlog",
            system.label(),
            catch_up.backlog_mb
        );
        let report = run(&mut cluster, &catch_up, "catchup").await?;
        print_one(&report);
        catch_up_runs.push(report);
    }
    if options.unsafe_variants {
        let mut unsafe_systems = vec![System::TributaryNofsync];
        if options.compare_nats {
            unsafe_systems.push(System::NatsDefaultSync);
        }
        for system in unsafe_systems {
            eprintln!("== {}: maximum throughput", system.label());
            let mut cluster = Cluster::start(system, bins).await?;
            let report = run(&mut cluster, &max, "max").await?;
            print_one(&report);
            max_runs.push(report);
        }
    }
    let describe = |w: &Workload| {
        format!(
            "{} stream × {} shards (JetStream: {} R3 streams), {} B records, {} producers, \
             batches of {} records, {} batches in flight per producer, {} s warmup, {} s measured",
            w.streams,
            w.shards,
            w.streams * w.shards,
            w.record_size,
            w.producers,
            w.batch_records,
            w.in_flight,
            w.warmup_secs,
            w.duration_secs
        )
    };
    Ok(SuiteReport {
        quick,
        scenarios: vec![
            Scenario {
                name: "Maximum throughput".into(),
                description: format!("open loop at no rate limit, no readers; {}", describe(&max)),
                reports: max_runs,
            },
            Scenario {
                name: "Latency at 20% of Tributary's maximum".into(),
                description: format!(
                    "fixed rate {} records/s on both systems, one enhanced fan-out reader per \
                     shard (JetStream: an ordered pull consumer per stream); {}",
                    latency.rate,
                    describe(&latency)
                ),
                reports: latency_runs,
            },
            Scenario {
                name: "Catch-up read".into(),
                description: format!(
                    "{} MB written as fast as possible into {} shards, then read from the \
                     start through node 1 only, all shards at once",
                    catch_up.backlog_mb, catch_up.shards
                ),
                reports: catch_up_runs,
            },
        ],
    })
}

fn print_one(report: &RunReport) {
    eprintln!("{}", text_table(&[report]));
}

impl SuiteReport {
    fn find(&self, scenario: usize, system: System) -> Option<&RunReport> {
        self.scenarios
            .get(scenario)?
            .reports
            .iter()
            .find(|r| r.system == system)
    }

    /// The goals with the measured figures: (goal, Tributary, JetStream, verdict).
    pub fn goals(&self) -> Vec<[String; 4]> {
        let t = |s| self.find(s, System::Tributary);
        let n = |s| self.find(s, System::Nats);
        let mut goals = Vec::new();
        let mut goal = |name: &str,
                        tv: Option<f64>,
                        nv: Option<f64>,
                        ok: &dyn Fn(f64) -> bool,
                        higher: bool,
                        unit: &str| {
            let ahead = match (tv, nv) {
                (Some(a), Some(b)) => Some(if higher { a > b } else { a < b }),
                _ => None,
            };
            let met = tv.map(ok);
            let verdict = match (met, ahead) {
                (Some(true), Some(true)) => "met; ahead of JetStream".to_owned(),
                (Some(true), Some(false)) => "goal met; NOT ahead of JetStream".to_owned(),
                (Some(true), None) => "met".to_owned(),
                (Some(false), Some(true)) => "MISSED (ahead of JetStream)".to_owned(),
                (Some(false), _) => "MISSED".to_owned(),
                (None, _) => "not measured".to_owned(),
            };
            let show = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2} {unit}"));
            goals.push([name.to_owned(), show(tv), show(nv), verdict]);
        };
        let mbs = |r: Option<&RunReport>| r.and_then(|r| r.produce.as_ref()).map(|p| p.mb_per_sec);
        goal(
            "sustained produce ≥ 200 MB/s",
            mbs(t(0)),
            mbs(n(0)),
            &|v| v >= 200.0,
            true,
            "MB/s",
        );
        let ratio = match (mbs(t(0)), mbs(n(0))) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        goal(
            "produce ≥ 3× JetStream R3 sync=always",
            ratio,
            None,
            &|v| v >= 3.0,
            true,
            "×",
        );
        let lat = |r: Option<&RunReport>, f: fn(&crate::stats::Percentiles) -> f64| {
            r.and_then(|r| r.produce.as_ref()).map(|p| f(&p.latency))
        };
        goal(
            "at 20%: produce p50 ≤ 1 ms",
            lat(t(1), |p| p.p50_ms),
            lat(n(1), |p| p.p50_ms),
            &|v| v <= 1.0,
            false,
            "ms",
        );
        goal(
            "at 20%: produce p99 ≤ 5 ms",
            lat(t(1), |p| p.p99_ms),
            lat(n(1), |p| p.p99_ms),
            &|v| v <= 5.0,
            false,
            "ms",
        );
        let e2e = |r: Option<&RunReport>, f: fn(&crate::stats::Percentiles) -> f64| {
            r.and_then(|r| r.end_to_end.as_ref())
                .filter(|e| e.count > 0)
                .map(f)
        };
        goal(
            "at 20%: fan-out end-to-end p50 ≤ 5 ms",
            e2e(t(1), |p| p.p50_ms),
            e2e(n(1), |p| p.p50_ms),
            &|v| v <= 5.0,
            false,
            "ms",
        );
        goal(
            "at 20%: fan-out end-to-end p99 ≤ 25 ms",
            e2e(t(1), |p| p.p99_ms),
            e2e(n(1), |p| p.p99_ms),
            &|v| v <= 25.0,
            false,
            "ms",
        );
        let cu = |r: Option<&RunReport>| {
            r.and_then(|r| r.catch_up.as_ref())
                .map(|c| c.read_mb_per_sec)
        };
        goal(
            "catch-up read ≥ 500 MB/s from one node",
            cu(t(2)),
            cu(n(2)),
            &|v| v >= 500.0,
            true,
            "MB/s",
        );
        let wa = |r: Option<&RunReport>| r.and_then(|r| r.write_amplification);
        goal(
            "write amplification ≤ 1.2 (max-throughput run)",
            wa(t(0)),
            wa(n(0)),
            &|v| v <= 1.2,
            false,
            "",
        );
        goals
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for scenario in &self.scenarios {
            out.push_str(&format!(
                "\n## {}\n{}\n\n",
                scenario.name, scenario.description
            ));
            let reports: Vec<&RunReport> = scenario.reports.iter().collect();
            out.push_str(&text_table(&reports));
        }
        out.push_str("\n## Goals (issue 6)\n");
        for [name, t, n, verdict] in self.goals() {
            out.push_str(&format!(
                "{name:<48} Tributary {t:>14}  JetStream {n:>14}  {verdict}\n"
            ));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| Goal (issue 6) | Tributary | JetStream R3 sync=always | Verdict |\n|---|---:|---:|---|\n");
        for [name, t, n, verdict] in self.goals() {
            out.push_str(&format!("| {name} | {t} | {n} | {verdict} |\n"));
        }
        for scenario in &self.scenarios {
            out.push_str(&format!(
                "\n**{}** — {}.\n\n",
                scenario.name, scenario.description
            ));
            let reports: Vec<&RunReport> = scenario.reports.iter().collect();
            out.push_str(&markdown_table(&reports));
        }
        out.push_str("\nWhat an acknowledgement means in each column:\n\n");
        let mut seen = Vec::new();
        for report in self.scenarios.iter().flat_map(|s| &s.reports) {
            if !seen.contains(&report.system) {
                seen.push(report.system);
                out.push_str(&format!("- **{}**: {}\n", report.label, report.guarantee));
            }
        }
        out
    }
}
