//! One connection to the system under load, and the two operations the bench
//! issues through it: a write and a read of one key. Owns the mapping from
//! each target's API and errors to the bench's; must never retry on its own
//! (waft-client follows leaders within its bound; etcd forwards on the server)
//! nor panic on an answer from the network.

use std::time::Duration;

use bytes::Bytes;
use waft_client::{Client, ClientError};

use crate::BenchError;
use crate::cli::{Consistency, Plan, Target};
use crate::etcd::etcdserverpb::{PutRequest, RangeRequest, kv_client::KvClient};
use crate::workload;

/// How long to wait for a TCP connection to an etcd member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A failed operation: a short kind to count by, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    pub kind: String,
    pub message: String,
}

/// A connection to one system, shared (cheaply cloned) by the clients
/// assigned to it.
#[derive(Clone)]
pub enum Driver {
    Waft { client: Client, group: u64, groups: u64, consistency: waft_proto::client::Consistency, value_bytes: usize },
    Etcd { kv: KvClient<tonic::transport::Channel>, serializable: bool, value: Bytes },
}

impl Driver {
    /// Connection `conn` of the plan: waft starts it at endpoint `conn mod n`
    /// (and checks that node serves the group); etcd dials that member.
    pub async fn connect(plan: &Plan, conn: usize) -> Result<Driver, BenchError> {
        let n = plan.endpoints.len();
        let addr = plan.endpoints[conn % n].clone();
        let tls = plan.tls.load().map_err(|e| BenchError::InvalidOption(format!("TLS: {e}")))?;
        match (plan.target, plan.consistency) {
            (Target::Waft, Consistency::Waft(consistency)) => {
                // The other nodes follow, so the client can go on when one is down.
                let nodes: Vec<String> = (0..n).map(|i| plan.endpoints[(conn + i) % n].clone()).collect();
                let credentials = waft_client::Credentials::new(tls, None)
                    .map_err(|e| BenchError::InvalidOption(format!("TLS: {e}")))?;
                let client = Client::with_credentials(nodes, credentials);
                client.status(Some(plan.group)).await.map_err(|e| BenchError::Connect {
                    target: "waft",
                    addr: addr.clone(),
                    message: format!("{} (group {} must run waft_atomic.wasm)", chain(&e), plan.group),
                })?;
                Ok(Driver::Waft {
                    client,
                    group: plan.group,
                    groups: plan.groups,
                    consistency,
                    value_bytes: plan.value_bytes,
                })
            }
            (Target::Etcd, Consistency::Etcd { serializable }) => {
                let endpoint = waft_client::endpoint(tls.as_ref(), &addr)
                    .map_err(|e| BenchError::Connect { target: "etcd", addr: addr.clone(), message: chain(&e) })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true);
                let channel = endpoint.connect().await.map_err(|e| BenchError::Connect {
                    target: "etcd",
                    addr: addr.clone(),
                    message: format!("{}; is etcd listening there (--listen-client-urls http://{addr})?", chain(&e)),
                })?;
                // Each connection writes its own value; all of one length.
                let mut rng = workload::Rng::for_client(plan.seed, conn);
                let value = workload::etcd_value(&mut rng, plan.value_bytes);
                Ok(Driver::Etcd { kv: KvClient::new(channel), serializable, value })
            }
            _ => Err(BenchError::InvalidOption("the consistency level does not belong to the target".into())),
        }
    }

    /// Writes `key`; `seq` varies the written value where the target needs one.
    pub async fn write(&self, key: u64, seq: u64) -> Result<(), OpError> {
        match self {
            Driver::Waft { client, group, groups, value_bytes, .. } => {
                let group = group + key % groups;
                let command = workload::waft_set(key, seq, *value_bytes);
                // Outside any session, as etcd's put: the bench measures the
                // write path, not exactly-once bookkeeping, and a session's
                // window would cap how many writes one connection has in flight.
                client.propose_plain(group, command).await.map(drop).map_err(waft_error)
            }
            Driver::Etcd { kv, value, .. } => {
                let req = PutRequest { key: workload::etcd_key(key), value: value.clone(), ..Default::default() };
                kv.clone().put(req).await.map(drop).map_err(etcd_error)
            }
        }
    }

    /// Reads `key` at the driver's consistency, at the node the connection starts at.
    pub async fn read(&self, key: u64) -> Result<(), OpError> {
        match self {
            Driver::Waft { client, group, groups, consistency, value_bytes } => {
                let request = workload::waft_get(key, *value_bytes);
                client.query(group + key % groups, request, *consistency).await.map(drop).map_err(waft_error)
            }
            Driver::Etcd { kv, serializable, .. } => {
                let req =
                    RangeRequest { key: workload::etcd_key(key), serializable: *serializable, ..Default::default() };
                kv.clone().range(req).await.map(drop).map_err(etcd_error)
            }
        }
    }
}

/// A short name for what went wrong, to count errors by.
fn waft_kind(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => "connect".into(),
        ClientError::NotSent { .. } => "not sent".into(),
        ClientError::Rpc { status, .. } => format!("rpc {:?}", status.code()),
        ClientError::Refused(refusal) => format!("refused {}", refusal.code().as_str_name()),
        ClientError::NoOutcome { .. } => "no outcome".into(),
        ClientError::AttemptTimeout { .. } => "client timeout".into(),
        ClientError::Random(_) => "no randomness".into(),
        ClientError::GaveUp { last, .. } => format!("gave up after {}", waft_kind(last)),
    }
}

fn waft_error(e: ClientError) -> OpError {
    OpError { kind: waft_kind(&e), message: chain(&e) }
}

/// An error and its causes, e.g. "transport error: tcp connect error:
/// Connection refused (os error 111)": tonic's transport errors say little
/// on their own.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out += ": ";
            out += &text;
        }
        cause = c.source();
    }
    out
}

fn etcd_error(status: tonic::Status) -> OpError {
    OpError { kind: format!("rpc {:?}", status.code()), message: status.message().to_string() }
}

/// The bench's own deadline passed before an answer came.
pub fn timeout_error(after: Duration) -> OpError {
    OpError { kind: "bench timeout".into(), message: format!("no answer in {} ms", after.as_millis()) }
}
