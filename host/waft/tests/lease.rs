//! Lease reads on real `waft serve` processes across a leader stall: the
//! leader is SIGSTOPped for longer than an election timeout while writes go
//! on through a new leader, lease reads queue at the stopped node, then it
//! is SIGCONTed. Its lease ran out during the stall (it is measured on the
//! monotonic clock, not in ticks, which stop), so no read it answers may
//! return a value older than an acknowledged write.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, POLL_PAUSE, Spec, text};
use waft_daemon::client::Client;
use waft_proto::client::Consistency;

const GROUP: u64 = 1;
/// Stalls of the leader; each ends in a new leader and queued lease reads.
const PAUSES: usize = 6;
/// Lease reads queued at the stopped node per stall.
const READS_PER_PAUSE: usize = 8;
/// How long the leader stays stopped at least: several election timeouts
/// (300 ms by default), like a VM pause.
const PAUSE: Duration = Duration::from_millis(1000);
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} {pid}");
}

fn value(answer: &waft_daemon::client::Answer) -> u64 {
    text(answer).parse().unwrap_or_else(|e| panic!("a counter value, not {:?}: {e}", text(answer)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_never_answers_a_lease_read_with_an_old_value() {
    let mut c = Cluster::start("lease-pause", 3, Spec::one(GROUP, "waft_counter"));
    let incr = Bytes::from_static(br#"{"incr":1}"#);
    let get = Bytes::from_static(br#""get""#);
    let mut served = 0;
    for pause in 0..PAUSES {
        let began = Instant::now();
        let old = c.wait_for_leader(GROUP).await;
        eprintln!("stall {pause}: leader agreed in {:?}", began.elapsed());
        // A reader that talks to the leader only, its connection open.
        let reader = Client::new(c.addrs[old].clone());
        reader.query(GROUP, get.clone(), Consistency::Lease).await.expect("a lease read before the stall");
        let pid = c.pid(old).expect("the leader runs");
        signal(pid, "-STOP");
        let stopped = Instant::now();

        // Writes go on through the other two once they elect a new leader
        // (asked directly: a client following a stale hint would wait out
        // its timeout at the stopped node).
        let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
        let new = c.wait_for_leader_among(GROUP, &others).await;
        let writer = Client::new(c.addrs[new].clone());
        let acked = loop {
            match writer.propose(GROUP, incr.clone()).await {
                Ok(a) => break value(&a),
                Err(e) => {
                    assert!(stopped.elapsed() < WRITE_DEADLINE, "no write acknowledged without node {}: {e}", old + 1);
                    tokio::time::sleep(POLL_PAUSE).await;
                }
            }
        };
        let write_took = stopped.elapsed();

        // Lease reads queue at the stopped node (in its sockets).
        let reads: Vec<_> = (0..READS_PER_PAUSE)
            .map(|_| {
                let (reader, get) = (reader.clone(), get.clone());
                tokio::spawn(async move { reader.query(GROUP, get, Consistency::Lease).await })
            })
            .collect();
        // Nothing observable says the requests reached a stopped process's
        // socket: let them travel, and stall at least PAUSE in all.
        tokio::time::sleep(PAUSE.saturating_sub(stopped.elapsed()).max(Duration::from_millis(100))).await;
        signal(pid, "-CONT");
        for read in reads {
            match read.await.expect("the read task") {
                Ok(answer) => {
                    let got = value(&answer);
                    assert!(
                        got >= acked,
                        "stall {pause}: node {} answered a lease read with {got} after {acked} was acknowledged",
                        old + 1
                    );
                    served += 1;
                }
                // Not the leader any more, or a timeout: no answer is no stale answer.
                Err(e) => eprintln!("stall {pause}: a lease read failed: {e}"),
            }
        }
        eprintln!(
            "stall {pause}: write acked {write_took:?} into the stall, reads done {:?} after it began",
            stopped.elapsed()
        );
    }
    eprintln!("{served} lease reads answered across {PAUSES} stalls, none older than an acknowledged write");
}
