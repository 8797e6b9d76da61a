//! The report of a run (JSON) and its side-by-side tables (terminal and Markdown).

use serde::{Deserialize, Serialize};

use crate::backend::System;
use crate::procs::NodeFigures;
use crate::stats::Percentiles;
use crate::workload::Workload;

/// The measured produce phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Produce {
    pub measured_secs: f64,
    pub acked_records: u64,
    /// Payload bytes acknowledged (keys and framing not counted).
    pub acked_bytes: u64,
    pub records_per_sec: f64,
    /// Payload MB/s, 1 MB = 10^6 bytes.
    pub mb_per_sec: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the send of a batch to the acknowledgement of each record in it.
    pub latency: Percentiles,
    /// At a fixed rate: how late each batch went out after its scheduled time (the
    /// producer fell behind its schedule; coordinated omission made visible).
    pub publish_delay: Option<Percentiles>,
}

/// The backlog phase: a backlog written as fast as possible, then read from one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchUp {
    pub backlog_bytes: u64,
    pub backlog_write_secs: f64,
    pub backlog_write_mb_per_sec: f64,
    pub read_records: u64,
    pub read_bytes: u64,
    pub read_secs: f64,
    pub read_mb_per_sec: f64,
    /// Server figures during the read.
    pub nodes: Vec<NodeFigures>,
}

/// Everything one run of one workload on one system measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub system: System,
    pub label: String,
    pub guarantee: String,
    pub workload: Workload,
    pub produce: Option<Produce>,
    /// Put (send) to a reader's hands, per record.
    pub end_to_end: Option<Percentiles>,
    pub consumed_in_window: Option<u64>,
    pub catch_up: Option<CatchUp>,
    /// Server figures over the measured window.
    pub nodes: Vec<NodeFigures>,
    /// Bytes the servers wrote to storage during the window ÷ (payload bytes acknowledged
    /// × 3 replicas): 1.0 means each replica wrote each payload byte once.
    pub write_amplification: Option<f64>,
}

impl RunReport {
    pub fn new(system: System, workload: &Workload) -> RunReport {
        RunReport {
            system,
            label: system.label().to_owned(),
            guarantee: system.guarantee().to_owned(),
            workload: workload.clone(),
            produce: None,
            end_to_end: None,
            consumed_in_window: None,
            catch_up: None,
            nodes: Vec::new(),
            write_amplification: None,
        }
    }

    pub fn cluster_cpu_pct(&self) -> Option<f64> {
        (!self.nodes.is_empty()).then(|| self.nodes.iter().map(|n| n.cpu_pct_of_core).sum())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

struct Row {
    name: String,
    values: Vec<Option<f64>>,
    better: Better,
    decimals: usize,
}

/// Picks one percentile.
type Pick = fn(&Percentiles) -> f64;

/// How a row reads one figure out of a report.
type Getter<'a> = &'a dyn Fn(&RunReport) -> Option<f64>;

fn rows(reports: &[&RunReport]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |name: &str, better: Better, decimals: usize, f: Getter| {
        let values: Vec<Option<f64>> = reports.iter().map(|r| f(r)).collect();
        if values.iter().any(Option::is_some) {
            rows.push(Row {
                name: name.to_owned(),
                values,
                better,
                decimals,
            });
        }
    };
    use Better::*;
    add("produce records/s", Higher, 0, &|r| {
        r.produce.as_ref().map(|p| p.records_per_sec)
    });
    add("produce MB/s", Higher, 1, &|r| {
        r.produce.as_ref().map(|p| p.mb_per_sec)
    });
    add("produce errors (entries)", Lower, 0, &|r| {
        r.produce.as_ref().map(|p| p.errors as f64)
    });
    let pct: [(&str, Pick); 5] = [
        ("p50", |p| p.p50_ms),
        ("p90", |p| p.p90_ms),
        ("p99", |p| p.p99_ms),
        ("p99.9", |p| p.p999_ms),
        ("max", |p| p.max_ms),
    ];
    for (q, get) in pct {
        add(&format!("produce latency {q} ms"), Lower, 2, &|r| {
            r.produce
                .as_ref()
                .filter(|p| p.latency.count > 0)
                .map(|p| get(&p.latency))
        });
    }
    for (q, get) in pct {
        add(&format!("publish delay {q} ms"), Lower, 2, &|r| {
            r.produce
                .as_ref()
                .and_then(|p| p.publish_delay.as_ref())
                .filter(|d| d.count > 0)
                .map(get)
        });
    }
    for (q, get) in pct {
        add(&format!("end-to-end {q} ms"), Lower, 2, &|r| {
            r.end_to_end.as_ref().filter(|e| e.count > 0).map(get)
        });
    }
    add("records read in window (e2e)", Neither, 0, &|r| {
        r.consumed_in_window.map(|c| c as f64)
    });
    add("backlog write MB/s", Higher, 1, &|r| {
        r.catch_up.as_ref().map(|c| c.backlog_write_mb_per_sec)
    });
    add("catch-up read MB/s (one node)", Higher, 1, &|r| {
        r.catch_up.as_ref().map(|c| c.read_mb_per_sec)
    });
    add("catch-up records read", Neither, 0, &|r| {
        r.catch_up.as_ref().map(|c| c.read_records as f64)
    });
    add("server CPU, % of one core (3 nodes)", Lower, 0, &|r| {
        r.cluster_cpu_pct()
    });
    add("CPU µs per MB acked", Lower, 0, &|r| {
        let cpu: f64 = r.nodes.iter().map(|n| n.cpu_secs).sum();
        let p = r.produce.as_ref()?;
        (p.acked_bytes > 0).then(|| cpu * 1e6 / (p.acked_bytes as f64 / 1e6))
    });
    add("peak RSS, largest node MiB", Lower, 0, &|r| {
        r.nodes
            .iter()
            .map(|n| n.peak_rss_mib)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    });
    add("disk writes in window MB (3 nodes)", Neither, 0, &|r| {
        (!r.nodes.is_empty()).then(|| {
            r.nodes
                .iter()
                .map(|n| n.disk_write_bytes as f64)
                .sum::<f64>()
                / 1e6
        })
    });
    add("write amplification (per replica)", Lower, 2, &|r| {
        r.write_amplification
    });
    add("catch-up server CPU, % of one core", Lower, 0, &|r| {
        r.catch_up
            .as_ref()
            .map(|c| c.nodes.iter().map(|n| n.cpu_pct_of_core).sum())
    });
    rows
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if decimals == 0 => group(v.round() as i64),
        Some(v) => format!("{v:.decimals$}"),
    }
}

fn group(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// How many times better the first column is than the second (>1: first is better).
fn advantage(row: &Row) -> Option<f64> {
    let (a, b) = (row.values.first().copied()??, row.values.get(1).copied()??);
    match row.better {
        Better::Higher if b > 0.0 => Some(a / b),
        Better::Lower if a > 0.0 => Some(b / a),
        _ => None,
    }
}

/// Header, cells per row (first cell the metric name) for `reports` side by side; with
/// two or more reports an advantage column compares the first with the second.
fn cells(reports: &[&RunReport]) -> (Vec<String>, Vec<Vec<String>>) {
    let with_ratio = reports.len() >= 2;
    let mut header = vec!["metric".to_owned()];
    header.extend(reports.iter().map(|r| r.label.clone()));
    if with_ratio {
        header.push(format!("{} advantage ×", short(reports[0])));
    }
    let body = rows(reports)
        .iter()
        .map(|row| {
            let mut line = vec![row.name.clone()];
            line.extend(row.values.iter().map(|v| fmt(*v, row.decimals)));
            if with_ratio {
                line.push(advantage(row).map_or(String::new(), |a| format!("{a:.2}")));
            }
            line
        })
        .collect();
    (header, body)
}

fn short(report: &RunReport) -> &'static str {
    if report.system.is_nats() {
        "JetStream"
    } else {
        "Tributary"
    }
}

/// A plain-text table for the terminal.
pub fn text_table(reports: &[&RunReport]) -> String {
    let (header, body) = cells(reports);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for line in &body {
        for (i, cell) in line.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let render = |line: &[String]| {
        line.iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = render(&header);
    out.push('\n');
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
    for line in &body {
        out.push('\n');
        out.push_str(&render(line));
    }
    out.push('\n');
    for report in reports {
        out.push_str(&format!("  {}: {}\n", report.label, report.guarantee));
    }
    out
}

/// The same table in Markdown.
pub fn markdown_table(reports: &[&RunReport]) -> String {
    let (header, body) = cells(reports);
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!(
        "|{}\n",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    ));
    for line in body {
        out.push_str(&format!("| {} |\n", line.join(" | ")));
    }
    out
}
