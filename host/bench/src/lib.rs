//! waft-bench: a load generator that measures waft and etcd with the same code.
//!
//! Owns the load (closed-loop clients, each with one request in flight), the
//! measurement (throughput; latency percentiles from an HDR histogram) and
//! the result (text and JSON). Talks to waft through `waft-client` and to
//! etcd through etcd's own v3 gRPC KV service ([`etcd`], Put and Range), so
//! the two systems differ only in the driver's few lines. Must never hold
//! more requests in flight than clients, retry behind the client libraries'
//! backs, or panic on an answer from the network: errors are counted and
//! reported.
//!
//! The `waft-bench` binary is [`cli::Args`] parsed by clap and handed to
//! [`run`]; `waft bench` flattens the same `Args` into its subcommand:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     bench: waft_bench::cli::Args,
//! }
//!
//! # async fn f() -> Result<(), waft_bench::BenchError> {
//! let cli = Cli::parse_from(["bench", "--target", "etcd", "--endpoints", "127.0.0.1:2379", "--ops", "1000"]);
//! let report = waft_bench::run(cli.bench).await?;
//! println!("{:.0} ops/s, p99 {} µs", report.ops_per_sec, report.latency_us.all.p99_us);
//! # Ok(()) }
//! ```
//!
//! What "a 256-byte write" means differs by system, and the report says so:
//! etcd puts a 256-byte value under an 11-byte key; the atomic example keeps
//! i64 values, so waft sets a 256-byte key (see [`workload::payload_note`]).

pub mod cli;
pub mod cpu;
pub mod driver;
pub mod run;
pub mod stats;
pub mod workload;

pub use cli::{Args, Plan};
pub use stats::Report;

/// etcd's v3 API, the part the bench uses (proto/: Put and Range of `KV`),
/// with etcd's package names so the gRPC paths are etcd's own.
pub mod etcd {
    pub mod mvccpb {
        #![allow(clippy::all)]
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        #![allow(clippy::all)]
        tonic::include_proto!("etcdserverpb");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    InvalidOption(String),
    #[error("cannot start on {target} at {addr}: {message}")]
    Connect { target: &'static str, addr: String, message: String },
    #[error(
        "prefill: {failed} of {keys} writes failed, e.g. {example}; is the cluster healthy? (--no-prefill skips it)"
    )]
    Prefill { failed: u64, keys: u64, example: String },
    #[error("cannot write the result to {path}: {source}")]
    WriteJson { path: std::path::PathBuf, source: std::io::Error },
    #[error("no operation succeeded ({errors} errors{}); see the errors above", example_suffix(.example))]
    NothingSucceeded { errors: u64, example: Option<String> },
}

fn example_suffix(example: &Option<String>) -> String {
    example.as_ref().map(|e| format!(", e.g. {e}")).unwrap_or_default()
}

/// The whole command: validate `args`, run, print the result on stdout,
/// write the JSON if asked. A run in which nothing succeeded is an error,
/// after its result has been printed and written.
pub async fn run(args: Args) -> Result<Report, BenchError> {
    let plan = args.plan()?;
    let report = run::measure(plan.clone()).await?;
    print!("{}", report.to_text());
    if let Some(path) = &plan.json_out {
        std::fs::write(path, report.to_json() + "\n")
            .map_err(|source| BenchError::WriteJson { path: path.clone(), source })?;
        println!("result written to {}", path.display());
    }
    if report.ops == 0 && !report.interrupted {
        let example = report.error_kinds.values().next().map(|e| e.example.clone());
        return Err(BenchError::NothingSucceeded { errors: report.errors, example });
    }
    Ok(report)
}
