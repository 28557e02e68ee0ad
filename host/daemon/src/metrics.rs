//! Prometheus metrics over HTTP: `GET /metrics` on `--metrics-listen`.
//!
//! Owns the counters a group's driver bumps ([`GroupMetrics`]), the text
//! exposition format, and a deliberately tiny HTTP/1.1 responder (one request
//! per connection, a bounded request head, a timeout) — a scrape endpoint
//! needs nothing more, and it keeps an HTTP server stack out of the daemon.
//! Must never block a driver: drivers only touch atomics, and the page is
//! rendered from the published status and those atomics.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waft_proto::client::Role;

use crate::commit::Stats as CommitStats;
use crate::{GroupHandle, Groups};

/// Bytes of a request head read at most; a longer one gets 431.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a scraper may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait in the accept queue.
pub const CONNECTIONS_MAX: usize = 16;

/// How one metric's value is read off a group.
type Sample<'a> = dyn Fn(&GroupHandle, &waft_proto::client::GroupStatus) -> u64 + 'a;

/// Renders every group's metrics and the node's commit counters.
pub fn render(
    node: u64,
    groups: &[(u64, Arc<GroupHandle>)],
    commit: &CommitStats,
    pipelines: &crate::service::PipelineStats,
    auth: &crate::security::AuthStats,
) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        samples(&mut out);
    };
    let per_group = |value: &Sample<'_>, name: &str| {
        let mut s = String::new();
        for (g, h) in groups {
            let status = h.status.borrow();
            let _ = writeln!(s, "{name}{{node=\"{node}\",group=\"{g}\"}} {}", value(h, &status));
        }
        s
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let gauges: [(&str, &str, &Sample<'_>); 11] = [
        ("waft_group_term", "Current Raft term.", &|_, s| s.term),
        ("waft_group_commit_index", "Highest log index known committed.", &|_, s| s.commit_index),
        ("waft_group_applied_index", "Highest log index applied to the state machine.", &|_, s| s.applied_index),
        ("waft_group_snapshot_index", "Last index covered by this node's latest snapshot.", &|_, s| s.snapshot_index),
        ("waft_group_is_leader", "1 while this node leads the group.", &|_, s| u64::from(s.role() == Role::Leader)),
        ("waft_group_sessions_open", "Exactly-once client sessions open in the group.", &|_, s| s.sessions_open),
        (
            "waft_group_session_reply_bytes",
            "Bytes of command results kept for the retries of session clients.",
            &|_, s| s.session_reply_bytes,
        ),
        ("waft_group_snapshot_install_bytes_done", "Bytes of the snapshot being received (0 when none).", &|_, s| {
            s.snapshot_install.as_ref().map_or(0, |t| t.bytes_done)
        }),
        ("waft_group_snapshot_install_bytes_total", "Size of the snapshot being received (0 when none).", &|_, s| {
            s.snapshot_install.as_ref().map_or(0, |t| t.bytes_total)
        }),
        ("waft_group_fenced", "1 while this node's state differs from the group's (fenced).", &|_, s| {
            u64::from(s.fence.is_some())
        }),
        ("waft_group_digest_verified_index", "Highest index a verdict confirmed this node's state at.", &|_, s| {
            s.digest_verified_index
        }),
    ];
    for (name, help, value) in gauges {
        let samples = per_group(value, name);
        family(name, "gauge", help, &mut |o| o.push_str(&samples));
    }
    let counters: [(&str, &str, &Sample<'_>); 8] = [
        ("waft_group_proposals_total", "Proposals this node accepted as leader.", &|h, _| load(&h.metrics.proposals)),
        ("waft_group_reads_total", "Reads this node took in.", &|h, _| load(&h.metrics.reads)),
        ("waft_group_busy_rejections_total", "Requests answered BUSY.", &|h, _| load(&h.metrics.busy_rejections)),
        ("waft_group_applied_entries_total", "Entries applied to the state machine.", &|h, _| {
            load(&h.metrics.applied_entries)
        }),
        ("waft_group_apply_batches_total", "Batches of committed entries applied.", &|h, _| {
            load(&h.metrics.apply_batches)
        }),
        (
            "waft_group_apply_nanoseconds_total",
            "Time spent applying batches (divide by batches for latency).",
            &|h, _| load(&h.metrics.apply_nanos),
        ),
        ("waft_group_digest_mismatches_total", "Verdicts that found this node's state different.", &|_, s| {
            s.digest_mismatches
        }),
        ("waft_group_state_rebuilds_total", "Rebuilds of this node's state from a healthy snapshot.", &|_, s| {
            s.state_rebuilds
        }),
    ];
    for (name, help, value) in counters {
        let samples = per_group(value, name);
        family(name, "counter", help, &mut |o| o.push_str(&samples));
    }
    let mut roles = String::new();
    for (g, h) in groups {
        let role = h.status.borrow().role().as_str_name().trim_start_matches("ROLE_").to_lowercase();
        let _ = writeln!(roles, "waft_group_role{{node=\"{node}\",group=\"{g}\",role=\"{role}\"}} 1");
    }
    family("waft_group_role", "gauge", "The node's role in the group (one sample, value 1).", &mut |o| {
        o.push_str(&roles)
    });
    let mut lag = String::new();
    for (g, h) in groups {
        if let Ok(peers) = h.metrics.lag.lock() {
            for (peer, entries) in peers.iter() {
                let _ = writeln!(
                    lag,
                    "waft_group_replication_lag_entries{{node=\"{node}\",group=\"{g}\",peer=\"{peer}\"}} {entries}"
                );
            }
        }
    }
    family("waft_group_replication_lag_entries", "gauge", "On the leader: entries a peer lacks.", &mut |o| {
        o.push_str(&lag)
    });
    let syncs = format!("waft_node_log_syncs_total{{node=\"{node}\"}} {}\n", load(&commit.syncs));
    family("waft_node_log_syncs_total", "counter", "Synced RocksDB writes (group commits).", &mut |o| {
        o.push_str(&syncs)
    });
    let writes = format!("waft_node_log_writes_total{{node=\"{node}\"}} {}\n", load(&commit.writes_done));
    family(
        "waft_node_log_writes_total",
        "counter",
        "Group log writes made durable (writes/syncs = merge factor).",
        &mut |o| o.push_str(&writes),
    );
    let node_counters: [(&str, &str, &str, &AtomicU64); 6] = [
        (
            "waft_node_auth_denied_total",
            "counter",
            "Calls refused PERMISSION_DENIED: the caller lacks the role on the group.",
            &auth.denied,
        ),
        (
            "waft_node_auth_unauthenticated_total",
            "counter",
            "Calls refused PERMISSION_DENIED: an unknown token or an unreadable certificate.",
            &auth.unauthenticated,
        ),
        (
            "waft_node_auth_peers_refused_total",
            "counter",
            "Peer streams and snapshot pulls refused: no node certificate, or another node's.",
            &auth.peers_refused,
        ),
        ("waft_node_pipelines_open", "gauge", "Client Pipeline streams open.", &pipelines.open),
        (
            "waft_node_pipeline_batches_total",
            "counter",
            "Call batches received on Pipeline streams.",
            &pipelines.batches,
        ),
        (
            "waft_node_pipeline_calls_total",
            "counter",
            "Calls received on Pipeline streams (calls/batches = calls a message carried).",
            &pipelines.calls,
        ),
    ];
    for (name, kind, help, value) in node_counters {
        let sample = format!("{name}{{node=\"{node}\"}} {}\n", load(value));
        family(name, kind, help, &mut |o| o.push_str(&sample));
    }
    out
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: u64,
    groups: Arc<Groups>,
    commit: Arc<CommitStats>,
    pipelines: Arc<crate::service::PipelineStats>,
    auth: Arc<crate::security::Auth>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut conn, _)) = accepted else { continue };
        let (groups, commit, pipelines, auth) = (groups.clone(), commit.clone(), pipelines.clone(), auth.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut conn)).await {
                Ok(Ok(head)) if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") => {
                    // The groups of the moment: created ones appear at the next scrape.
                    let body = render(node, &groups.all(), &commit, &pipelines, &auth.stats);
                    reply(200, "OK", "text/plain; version=0.0.4", &body)
                }
                Ok(Ok(head)) if head.starts_with(b"GET ") => reply(404, "Not Found", "text/plain", "try /metrics\n"),
                Ok(Ok(_)) => reply(405, "Method Not Allowed", "text/plain", "GET /metrics only\n"),
                Ok(Err(HeadError::TooLarge)) => reply(431, "Request Header Fields Too Large", "text/plain", ""),
                Ok(Err(HeadError::Io)) | Err(_) => return,
            };
            // A scraper that does not read its answer is dropped, not waited on.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            })
            .await;
        });
    }
}

enum HeadError {
    TooLarge,
    Io,
}

/// Reads up to the blank line that ends a request head, bounded.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return if head.is_empty() { Err(HeadError::Io) } else { Ok(head) };
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return Err(HeadError::TooLarge);
        }
    }
}

fn reply(code: u16, reason: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Where the metrics endpoint listens, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}
