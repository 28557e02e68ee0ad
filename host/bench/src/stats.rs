//! Counting what a run did: latency histograms, error tallies, and the report
//! (text and JSON). Pure: no I/O, no clock; durations come in measured.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram tells apart, in µs (one hour); longer ones
/// count as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Distinct error kinds kept; further kinds are counted under "other".
pub const ERROR_KINDS_MAX: usize = 16;
/// Longest error example kept, in bytes.
pub const ERROR_EXAMPLE_BYTES_MAX: usize = 300;

/// Latencies of successful operations, in µs, with 3 significant digits
/// (a p99.9 of 12.345 ms reads as 12.34x ms), in fixed memory.
#[derive(Clone, Debug)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        // Constant, valid bounds (low >= 1, high >= 2 * low, sigfig <= 5).
        let hist = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid");
        Latencies { hist }
    }

    pub fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail; saturate anyway.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            mean_us: self.hist.mean(),
            p50_us: self.hist.value_at_quantile(0.50),
            p90_us: self.hist.value_at_quantile(0.90),
            p99_us: self.hist.value_at_quantile(0.99),
            p999_us: self.hist.value_at_quantile(0.999),
            max_us: self.hist.max(),
        }
    }
}

/// Percentiles of one kind of operation, in µs (0 when none ran).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// One kind of error: how often, and the first message seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ErrorKind {
    pub count: u64,
    pub example: String,
}

/// Errors by kind. Invariant: at most ERROR_KINDS_MAX + 1 kinds ("other").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Errors {
    pub kinds: BTreeMap<String, ErrorKind>,
}

impl Errors {
    /// The entry for `kind`, or for "other" once ERROR_KINDS_MAX kinds are kept.
    fn slot(&mut self, kind: &str) -> &mut ErrorKind {
        let key = if self.kinds.contains_key(kind) || self.kinds.len() < ERROR_KINDS_MAX { kind } else { "other" };
        self.kinds.entry(key.to_string()).or_default()
    }

    pub fn record(&mut self, kind: &str, message: &str) {
        let entry = self.slot(kind);
        if entry.count == 0 {
            entry.example = truncate(message, ERROR_EXAMPLE_BYTES_MAX);
        }
        entry.count += 1;
    }

    pub fn merge(&mut self, other: &Errors) {
        for (kind, e) in &other.kinds {
            let entry = self.slot(kind);
            if entry.count == 0 {
                entry.example = e.example.clone();
            }
            entry.count += e.count;
        }
    }

    pub fn total(&self) -> u64 {
        self.kinds.values().map(|e| e.count).sum()
    }
}

fn truncate(s: &str, bytes_max: usize) -> String {
    if s.len() <= bytes_max {
        return s.to_string();
    }
    let mut end = bytes_max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What one client (or, merged, the whole run) measured.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub reads: Latencies,
    pub writes: Latencies,
    pub errors: Errors,
}

impl Tally {
    pub fn merge(&mut self, other: &Tally) {
        self.reads.merge(&other.reads);
        self.writes.merge(&other.writes);
        self.errors.merge(&other.errors);
    }
}

/// Latencies of all operations and of each kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencyReport {
    pub all: LatencySummary,
    pub reads: LatencySummary,
    pub writes: LatencySummary,
}

/// The result of a run, as printed and as written to --json-out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// "waft-bench": tells these files apart from others in a results directory.
    pub tool: &'static str,
    pub label: Option<String>,
    pub target: &'static str,
    pub endpoints: Vec<String>,
    /// The waft group loaded (None for etcd).
    pub group: Option<u64>,
    pub clients: usize,
    pub conns: usize,
    pub read_ratio: f64,
    pub consistency: &'static str,
    pub keys: u64,
    pub value_bytes: usize,
    /// Bytes of one write's payload fields: waft's whole command, etcd's key and value.
    pub write_request_bytes: usize,
    /// How the payload travels, in words.
    pub payload: String,
    pub prefilled: bool,
    pub warmup_secs: f64,
    /// From the end of the warmup to the last measured answer.
    pub elapsed_secs: f64,
    /// Successful operations measured (reads + writes).
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    /// Failed operations measured (refusals, transport errors, timeouts).
    pub errors: u64,
    pub ops_per_sec: f64,
    pub latency_us: LatencyReport,
    pub error_kinds: BTreeMap<String, ErrorKind>,
    /// True when the run was stopped early (Ctrl-C).
    pub interrupted: bool,
    /// CPU time (user + system) of the servers named by --server-pids
    /// together over the measured window, and per successful operation;
    /// none without --server-pids or when one could not be read.
    pub server_cpu_us: Option<u64>,
    pub server_cpu_us_per_op: Option<f64>,
    /// This client's own CPU time over the measured window, and per
    /// successful operation.
    pub client_cpu_us: Option<u64>,
    pub client_cpu_us_per_op: Option<f64>,
}

/// CPU microseconds per operation (none for none, or without operations).
fn per_op(cpu_us: Option<u64>, ops: u64) -> Option<f64> {
    cpu_us.filter(|_| ops > 0).map(|us| us as f64 / ops as f64)
}

/// The measured numbers that go into a [`Report`] next to the plan's.
pub struct Measured {
    pub tally: Tally,
    pub warmup: Duration,
    pub elapsed: Duration,
    pub prefilled: bool,
    pub interrupted: bool,
    pub server_cpu_us: Option<u64>,
    pub client_cpu_us: Option<u64>,
}

impl Report {
    pub fn new(plan: &crate::cli::Plan, m: Measured) -> Report {
        let mut all = m.tally.reads.clone();
        all.merge(&m.tally.writes);
        let ops = all.count();
        let secs = m.elapsed.as_secs_f64();
        Report {
            tool: "waft-bench",
            label: plan.label.clone(),
            target: plan.target.name(),
            endpoints: plan.endpoints.clone(),
            group: (plan.target == crate::cli::Target::Waft).then_some(plan.group),
            clients: plan.clients,
            conns: plan.conns,
            read_ratio: plan.read_ratio,
            consistency: plan.consistency_name,
            keys: plan.keys,
            value_bytes: plan.value_bytes,
            write_request_bytes: crate::workload::write_request_bytes(plan.target, plan.value_bytes),
            payload: crate::workload::payload_note(plan.target, plan.value_bytes),
            prefilled: m.prefilled,
            warmup_secs: m.warmup.as_secs_f64(),
            elapsed_secs: secs,
            ops,
            reads: m.tally.reads.count(),
            writes: m.tally.writes.count(),
            errors: m.tally.errors.total(),
            ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            latency_us: LatencyReport {
                all: all.summary(),
                reads: m.tally.reads.summary(),
                writes: m.tally.writes.summary(),
            },
            error_kinds: m.tally.errors.kinds,
            interrupted: m.interrupted,
            server_cpu_us: m.server_cpu_us,
            server_cpu_us_per_op: per_op(m.server_cpu_us, ops),
            client_cpu_us: m.client_cpu_us,
            client_cpu_us_per_op: per_op(m.client_cpu_us, ops),
        }
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and maps with string keys: cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The result for a person: what ran, throughput, percentiles, errors.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let group = self.group.map(|g| format!(", group {g}")).unwrap_or_default();
        let mix = match self.read_ratio {
            0.0 => "100% writes".to_string(),
            1.0 => format!("100% {} reads", self.consistency),
            r => format!("{:.0}% {} reads / {:.0}% writes", r * 100.0, self.consistency, (1.0 - r) * 100.0),
        };
        out += &format!(
            "{}: {} endpoint(s){group}, {} clients over {} connections, {mix}, {} keys{}\n",
            self.target,
            self.endpoints.len(),
            self.clients,
            self.conns,
            self.keys,
            if self.prefilled { " (prefilled)" } else { "" },
        );
        out += &format!("payload: {}\n", self.payload);
        out += &format!(
            "measured {:.2} s after {:.0} s of warmup{}: {} ops ({} writes, {} reads), {} errors\n",
            self.elapsed_secs,
            self.warmup_secs,
            if self.interrupted { " (interrupted)" } else { "" },
            self.ops,
            self.writes,
            self.reads,
            self.errors
        );
        out += &format!("throughput: {:.1} ops/s\n", self.ops_per_sec);
        let cpu = |per_op: Option<f64>| per_op.map_or_else(|| "-".to_string(), |us| format!("{us:.1}"));
        out += &format!(
            "cpu per op: servers {} µs, client {} µs\n",
            cpu(self.server_cpu_us_per_op),
            cpu(self.client_cpu_us_per_op)
        );
        out += &format!(
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "latency", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "mean ms"
        );
        let ms = |us: u64| us as f64 / 1000.0;
        for (name, s) in
            [("all", &self.latency_us.all), ("writes", &self.latency_us.writes), ("reads", &self.latency_us.reads)]
        {
            if s.count == 0 {
                continue;
            }
            out += &format!(
                "{name:<8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p99_us),
                ms(s.p999_us),
                ms(s.max_us),
                s.mean_us / 1000.0
            );
        }
        for (kind, e) in &self.error_kinds {
            out += &format!("error {kind}: {} times, e.g. {}\n", e.count, e.example);
        }
        out
    }
}
