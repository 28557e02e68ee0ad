//! The bench without a cluster: options as `waft-bench` and `waft bench`
//! parse them, percentile math, the error tally's bound, and the JSON shape
//! the comparison script reads. No timing is asserted.

use std::time::Duration;

use clap::Parser;
use waft_bench::cli::{Consistency, Stop, Target};
use waft_bench::stats::{ERROR_KINDS_MAX, Errors, Latencies, Measured, Report, Tally};
use waft_bench::{Args, BenchError, Plan};

/// The shape `waft bench` will have: the bench's Args flattened.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: Args,
}

fn args(extra: &[&str]) -> Result<Args, clap::Error> {
    Cli::try_parse_from(["bench"].iter().chain(extra)).map(|c| c.bench)
}

fn plan(extra: &[&str]) -> Result<Plan, BenchError> {
    args(extra).expect("clap accepts these options").plan()
}

#[test]
fn defaults_make_a_ten_second_waft_write_run() {
    let p = plan(&["--endpoints", "127.0.0.1:7001,http://127.0.0.1:7002/"]).expect("valid");
    assert_eq!(p.target, Target::Waft);
    assert_eq!(p.endpoints, ["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!((p.group, p.clients, p.conns, p.value_bytes, p.keys), (1, 16, 16, 256, 1000));
    assert_eq!(p.stop, Stop::After(Duration::from_secs(10)));
    assert_eq!(p.consistency, Consistency::Waft(waft_proto::client::Consistency::Linearizable));
    assert!(!p.prefill, "no reads, nothing to prefill");
    assert!(p.progress);
}

#[test]
fn every_option_reaches_the_plan() {
    let options = "--target etcd --endpoints a:1,b:2,c:3 --clients 64 --conns 8 --value-bytes 100 \
                   --read-ratio 0.9 --consistency serializable --ops 5000 --keys 10 --warmup-secs 0 \
                   --request-timeout-ms 500 --seed 9 --json-out /tmp/r.json --label mix --quiet";
    let p = plan(&options.split_whitespace().collect::<Vec<_>>()).expect("valid");
    assert_eq!(p.target, Target::Etcd);
    assert_eq!(p.endpoints.len(), 3);
    assert_eq!((p.clients, p.conns, p.value_bytes, p.keys, p.seed), (64, 8, 100, 10, 9));
    assert_eq!(p.read_ratio, 0.9);
    assert_eq!(p.consistency, Consistency::Etcd { serializable: true });
    assert_eq!(p.stop, Stop::Ops(5000));
    assert_eq!((p.warmup, p.request_timeout), (Duration::ZERO, Duration::from_millis(500)));
    assert!(p.prefill, "reads need their keys written first");
    assert!(!p.progress);
    assert_eq!(p.label.as_deref(), Some("mix"));
    let no_prefill = plan(&["--endpoints", "a:1", "--read-ratio", "1", "--no-prefill"]).expect("valid");
    assert!(!no_prefill.prefill);
}

#[test]
fn options_out_of_bounds_or_for_the_other_target_are_refused() {
    // clap: the endpoints are required; --ops and --duration-secs exclude each other.
    assert!(args(&[]).is_err());
    assert!(args(&["--endpoints", "a:1", "--ops", "5", "--duration-secs", "5"]).is_err());
    assert!(args(&["--endpoints", "a:1", "--consistency", "eventual"]).is_err());
    for bad in [
        &["--target", "etcd", "--consistency", "lease"][..],
        &["--consistency", "serializable"],
        &["--read-ratio", "1.5"],
        &["--clients", "0"],
        &["--clients", "4", "--conns", "5"],
        &["--keys", "0"],
        &["--group", "0"],
        &["--value-bytes", "10"],   // shorter than a waft key's id
        &["--value-bytes", "5000"], // longer than the atomic example's keys
        &["--ops", "0"],
        &["--duration-secs", "0"],
        &["--request-timeout-ms", "0"],
    ] {
        let mut all = vec!["--endpoints", "127.0.0.1:1"];
        all.extend_from_slice(bad);
        match plan(&all) {
            Err(BenchError::InvalidOption(why)) => assert!(!why.is_empty()),
            other => panic!("{bad:?} should be refused, got {other:?}"),
        }
    }
    assert!(plan(&["--endpoints", "localhost"]).is_err(), "no port");
    assert!(plan(&["--target", "etcd", "--endpoints", "a:1", "--value-bytes", "0"]).is_ok(), "etcd takes empty values");
}

#[test]
fn percentiles_of_a_known_distribution() {
    let mut l = Latencies::new();
    for ms in 1..=1000 {
        l.record(Duration::from_millis(ms));
    }
    let s = l.summary();
    assert_eq!(s.count, 1000);
    // Three significant digits: within 0.1% of the exact rank.
    let near = |got: u64, want_ms: u64| (got as f64 - want_ms as f64 * 1000.0).abs() <= want_ms as f64;
    assert!(near(s.p50_us, 500), "{s:?}");
    assert!(near(s.p90_us, 900), "{s:?}");
    assert!(near(s.p99_us, 990), "{s:?}");
    assert!(near(s.p999_us, 999), "{s:?}");
    assert!(near(s.max_us, 1000), "{s:?}");
    assert!((s.mean_us - 500_500.0).abs() < 600.0, "{s:?}");

    let mut merged = Latencies::new();
    merged.merge(&l);
    merged.merge(&l);
    assert_eq!(merged.summary().count, 2000);
    assert_eq!(merged.summary().p50_us, s.p50_us);
    assert_eq!(Latencies::new().summary().count, 0, "an empty histogram reports zeros");
    // Beyond the range still counts (as the highest value).
    let mut far = Latencies::new();
    far.record(Duration::from_secs(10 * 3600));
    assert_eq!(far.count(), 1);
}

#[test]
fn error_kinds_are_bounded_and_keep_an_example() {
    let mut e = Errors::default();
    for i in 0..(ERROR_KINDS_MAX + 10) {
        e.record(&format!("kind {i}"), &"x".repeat(1000));
    }
    e.record("kind 0", "second message");
    assert_eq!(e.kinds.len(), ERROR_KINDS_MAX + 1);
    assert_eq!(e.kinds["other"].count, 10);
    assert_eq!(e.kinds["kind 0"].count, 2);
    assert!(e.kinds["kind 0"].example.starts_with("xxx"), "the first message is kept");
    assert!(e.kinds["kind 0"].example.len() < 400, "examples are truncated");
    assert_eq!(e.total(), ERROR_KINDS_MAX as u64 + 11);
}

#[test]
fn the_json_has_the_fields_the_script_reads() {
    let p = plan(&["--endpoints", "127.0.0.1:7001", "--read-ratio", "0.5", "--label", "mix"]).expect("valid");
    let mut tally = Tally::default();
    for ms in 1..=100 {
        tally.writes.record(Duration::from_millis(ms));
        tally.reads.record(Duration::from_micros(ms * 100));
    }
    tally.errors.record("refused ERROR_CODE_TIMEOUT", "no answer in time");
    let report = Report::new(
        &p,
        Measured {
            tally,
            warmup: Duration::from_secs(1),
            elapsed: Duration::from_secs(2),
            prefilled: true,
            interrupted: false,
            server_cpu_us: Some(3_000),
            client_cpu_us: None,
        },
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("the report is JSON");
    assert_eq!(json["tool"], "waft-bench");
    assert_eq!(json["label"], "mix");
    assert_eq!(json["target"], "waft");
    assert_eq!(json["group"], 1);
    assert_eq!(json["consistency"], "linearizable");
    assert_eq!(json["ops"], 200);
    assert_eq!(
        (json["reads"].as_u64(), json["writes"].as_u64(), json["errors"].as_u64()),
        (Some(100), Some(100), Some(1))
    );
    assert_eq!(json["ops_per_sec"].as_f64(), Some(100.0));
    for kind in ["all", "reads", "writes"] {
        for field in ["count", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
            assert!(json["latency_us"][kind][field].is_number(), "latency_us.{kind}.{field}");
        }
    }
    assert_eq!(json["latency_us"]["all"]["count"], 200);
    assert_eq!((json["server_cpu_us"].as_u64(), json["server_cpu_us_per_op"].as_f64()), (Some(3_000), Some(15.0)));
    assert!(json["client_cpu_us_per_op"].is_null(), "a figure that could not be read is null, not 0");
    assert_eq!(json["error_kinds"]["refused ERROR_CODE_TIMEOUT"]["count"], 1);
    assert!(json["payload"].as_str().is_some_and(|s| s.contains("256-byte key")));
    assert_eq!(json["write_request_bytes"], waft_bench::workload::waft_set(0, 0, 256).len());
    let text = report.to_text();
    assert!(text.contains("throughput: 100.0 ops/s"), "{text}");
    assert!(text.contains("cpu per op: servers 15.0 µs, client - µs"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
}
