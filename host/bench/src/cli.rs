//! The bench's options: what `waft-bench` takes on its command line, and what
//! `waft bench` flattens into its own. Owns parsing and validation into a
//! [`Plan`]; must never open a connection.

use std::path::PathBuf;
use std::time::Duration;

use crate::BenchError;

/// The system under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A waft cluster, through waft-client, on a group running the atomic example.
    Waft,
    /// An etcd cluster, through etcd's v3 gRPC KV service (Put, Range).
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Waft => "waft",
            Target::Etcd => "etcd",
        }
    }
}

/// Read consistency as asked on the command line; which levels apply
/// depends on the target (see [`Args::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyArg {
    /// waft: ReadIndex with a quorum round. etcd: a Range without
    /// `serializable` (ReadIndex through the leader).
    Linearizable,
    /// waft only: ReadIndex without the quorum round while the leader's lease holds.
    Lease,
    /// waft only: a follower asks the leader for a read index and answers locally.
    Follower,
    /// waft only: the asked node's local state, no check.
    Stale,
    /// etcd only: a member-local Range (`serializable: true`).
    Serializable,
}

impl ConsistencyArg {
    pub fn name(self) -> &'static str {
        match self {
            ConsistencyArg::Linearizable => "linearizable",
            ConsistencyArg::Lease => "lease",
            ConsistencyArg::Follower => "follower",
            ConsistencyArg::Stale => "stale",
            ConsistencyArg::Serializable => "serializable",
        }
    }
}

/// Most concurrent clients: each is a task with one request in flight.
pub const CLIENTS_MAX: usize = 4096;
/// Most keys: key names carry the index in 10 decimal digits.
pub const KEYS_MAX: u64 = 1_000_000_000;
/// Longest key the atomic example accepts (its `KEY_BYTES_MAX`); waft's
/// payload rides in the key, so this bounds --value-bytes for waft.
pub const WAFT_KEY_BYTES_MAX: usize = 4096;
/// Largest etcd value: below etcd's default 1.5 MiB request limit.
pub const ETCD_VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Longest run and warmup accepted, so a typo cannot start a week-long run.
pub const DURATION_SECS_MAX: u64 = 24 * 3600;

/// `waft-bench` / `waft bench` options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The system to load.
    #[arg(long, value_enum, default_value_t = Target::Waft)]
    pub target: Target,
    /// Client addresses as HOST:PORT, comma separated. waft: any nodes of the
    /// cluster (writes follow the leader); etcd: its members' client
    /// addresses. Clients are spread over them round-robin, and each reads at
    /// the node it is given.
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// waft: the group to load; it must run the atomic example
    /// (waft_atomic.wasm). Not used for etcd.
    #[arg(long, default_value_t = 1)]
    pub group: u64,
    /// waft: spread the keys over this many groups, --group and the ones
    /// after it (key k goes to group GROUP + k mod GROUPS); each must run
    /// the atomic example.
    #[arg(long, default_value_t = 1)]
    pub groups: u64,
    /// Concurrent clients, each with one request in flight at a time.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// gRPC connections the clients share (clients use them round-robin)
    /// [default: one per client].
    #[arg(long)]
    pub conns: Option<usize>,
    /// Payload bytes per write. etcd: the value of each put. waft: the atomic
    /// example stores i64 values, so the payload rides in the key: each write
    /// is {"set":{"key":<KEY of this many bytes>,"value":<i64>}}, and reads
    /// ask {"get":{"key":<KEY>}}.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Share of operations that are reads, from 0 (all writes) to 1 (all reads).
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Read consistency. waft: linearizable, lease, follower or stale; etcd:
    /// linearizable or serializable.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Measure for this many seconds (after the warmup) [default: 10 unless --ops].
    #[arg(long, conflicts_with = "ops")]
    pub duration_secs: Option<u64>,
    /// Measure this many operations (after the warmup), then stop.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Key space: every operation picks one of this many keys uniformly.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Run the load this long before measuring (connections open, the leader
    /// is learned, caches warm); nothing from it is counted.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// Do not write every key once before a run with reads (reads then find
    /// missing keys: waft answers 0, etcd an empty range).
    #[arg(long)]
    pub no_prefill: bool,
    /// A request not answered in this long counts as an error (the command
    /// may still apply).
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Seed of the clients' key and operation choices; the same seed gives
    /// every client the same sequence again.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// A name for this run, carried into the JSON (e.g. the workload).
    #[arg(long)]
    pub label: Option<String>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The servers' process ids (comma-separated, on this machine): their
    /// CPU time over the measured window goes into the result, per
    /// operation, beside this client's own.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// TLS: the servers' CA (PEM), with --tls-cert and --tls-key (this
    /// client's certificate and key). Both targets: waft's nodes and etcd's
    /// members (`--client-cert-auth`) check it.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

/// When the measured part of a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    After(Duration),
    Ops(u64),
}

/// Read consistency, resolved for the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Waft(waft_proto::client::Consistency),
    Etcd { serializable: bool },
}

/// A validated run: every field is within its bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub target: Target,
    /// HOST:PORT, without a scheme. Invariant: not empty.
    pub endpoints: Vec<String>,
    /// waft only. Invariant: >= 1 for waft.
    pub group: u64,
    /// waft only: keys spread over `group..group + groups`. Invariant: >= 1.
    pub groups: u64,
    /// Invariant: 1 <= clients <= CLIENTS_MAX.
    pub clients: usize,
    /// Invariant: 1 <= conns <= clients.
    pub conns: usize,
    pub value_bytes: usize,
    /// Invariant: 0.0 <= read_ratio <= 1.0.
    pub read_ratio: f64,
    pub consistency: Consistency,
    pub consistency_name: &'static str,
    pub stop: Stop,
    /// Invariant: 1 <= keys <= KEYS_MAX.
    pub keys: u64,
    pub warmup: Duration,
    /// Write every key once before the run.
    pub prefill: bool,
    pub request_timeout: Duration,
    pub seed: u64,
    pub json_out: Option<PathBuf>,
    pub label: Option<String>,
    pub progress: bool,
    pub server_pids: Vec<u32>,
    /// TLS towards the servers; all `None`: plaintext.
    pub tls: waft_client::TlsFiles,
}

fn invalid(what: impl Into<String>) -> BenchError {
    BenchError::InvalidOption(what.into())
}

impl Args {
    /// Checks every option against its bound and the target.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.trim().trim_start_matches("http://").trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(invalid("--endpoints: give at least one HOST:PORT"));
        }
        if let Some(e) = endpoints.iter().find(|e| e.starts_with("https://") || !e.contains(':')) {
            return Err(invalid(format!("--endpoints: {e:?} is not HOST:PORT (plain http only)")));
        }
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return Err(invalid(format!("--clients {}: give 1 to {CLIENTS_MAX}", self.clients)));
        }
        let conns = self.conns.unwrap_or(self.clients);
        if conns == 0 || conns > self.clients {
            return Err(invalid(format!("--conns {conns}: give 1 to --clients ({})", self.clients)));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(invalid(format!("--read-ratio {}: give a share from 0 to 1, e.g. 0.9", self.read_ratio)));
        }
        if self.keys == 0 || self.keys > KEYS_MAX {
            return Err(invalid(format!("--keys {}: give 1 to {KEYS_MAX}", self.keys)));
        }
        match self.target {
            Target::Waft => {
                if self.groups == 0 || self.group.checked_add(self.groups).is_none() {
                    return Err(invalid("--groups: 1 or more, within the group ids"));
                }
                if self.group == 0 {
                    return Err(invalid("--group 0: group ids start at 1"));
                }
                let min = crate::workload::KEY_ID_BYTES;
                if self.value_bytes < min || self.value_bytes > WAFT_KEY_BYTES_MAX {
                    return Err(invalid(format!(
                        "--value-bytes {}: for waft the payload is the atomic key, {min} to {WAFT_KEY_BYTES_MAX} bytes",
                        self.value_bytes
                    )));
                }
            }
            Target::Etcd => {
                if self.value_bytes > ETCD_VALUE_BYTES_MAX {
                    return Err(invalid(format!(
                        "--value-bytes {}: at most {ETCD_VALUE_BYTES_MAX} for etcd",
                        self.value_bytes
                    )));
                }
            }
        }
        let consistency = match (self.target, self.consistency) {
            (Target::Waft, c) => {
                use waft_proto::client::Consistency as C;
                Consistency::Waft(match c {
                    ConsistencyArg::Linearizable => C::Linearizable,
                    ConsistencyArg::Lease => C::Lease,
                    ConsistencyArg::Follower => C::Follower,
                    ConsistencyArg::Stale => C::Stale,
                    ConsistencyArg::Serializable => {
                        return Err(invalid(
                            "--consistency serializable is etcd's; waft's are linearizable, lease, follower, stale",
                        ));
                    }
                })
            }
            (Target::Etcd, ConsistencyArg::Linearizable) => Consistency::Etcd { serializable: false },
            (Target::Etcd, ConsistencyArg::Serializable) => Consistency::Etcd { serializable: true },
            (Target::Etcd, c) => {
                return Err(invalid(format!(
                    "--consistency {} is waft's; etcd's are linearizable and serializable",
                    c.name()
                )));
            }
        };
        let stop = match (self.ops, self.duration_secs) {
            (Some(_), Some(_)) => return Err(invalid("give --duration-secs or --ops, not both")),
            (Some(0), None) => return Err(invalid("--ops 0: measure at least one operation")),
            (Some(n), None) => Stop::Ops(n),
            (None, Some(s)) if s == 0 || s > DURATION_SECS_MAX => {
                return Err(invalid(format!("--duration-secs {s}: give 1 to {DURATION_SECS_MAX}")));
            }
            (None, Some(s)) => Stop::After(Duration::from_secs(s)),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        if self.warmup_secs > DURATION_SECS_MAX {
            return Err(invalid(format!("--warmup-secs {}: at most {DURATION_SECS_MAX}", self.warmup_secs)));
        }
        if self.request_timeout_ms == 0 {
            return Err(invalid("--request-timeout-ms 0: give a positive timeout"));
        }
        let tls = waft_client::TlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: None,
        };
        tls.load().map_err(|e| invalid(format!("TLS: {e}")))?;
        Ok(Plan {
            tls,
            target: self.target,
            endpoints,
            group: self.group,
            groups: self.groups,
            clients: self.clients,
            conns,
            value_bytes: self.value_bytes,
            read_ratio: self.read_ratio,
            consistency,
            consistency_name: self.consistency.name(),
            stop,
            keys: self.keys,
            warmup: Duration::from_secs(self.warmup_secs),
            prefill: self.read_ratio > 0.0 && !self.no_prefill,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            seed: self.seed,
            json_out: self.json_out.clone(),
            label: self.label.clone(),
            progress: !self.quiet,
            server_pids: self.server_pids.clone(),
        })
    }
}
