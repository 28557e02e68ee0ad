//! Core throughput: proposals committed per second by a 3-node in-memory
//! cluster passing messages in one thread, proposals batched per Ready.
//! Prints each run and the median. No simulator checks on the hot path.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;
use waft_raft::*;

/// Proposals per batch (between two Ready rounds of the leader).
const BATCH: u64 = 256;
const PROPOSALS: u64 = 400_000;
const RUNS: usize = 5;

struct Node {
    raft: RawNode,
}

fn run_once() -> f64 {
    let ids = [1u64, 2, 3];
    let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
    for id in ids {
        let mut c = Config::new(id, 1);
        c.append_entries_max = 4096;
        c.append_bytes_max = 4 << 20;
        c.inflight_msgs_max = 256;
        c.snapshot_margin_entries = 1 << 40; // no snapshots: measure replication only
        c.uncommitted_entries_max = 1 << 20;
        nodes.insert(id, Node { raft: RawNode::new(c, Configuration::new(ids)).expect("config") });
    }
    let mut net: VecDeque<Message> = VecDeque::new();
    // One Ready round for one node: "persist" instantly (in-memory storage), send, apply.
    let pump = |n: &mut Node, net: &mut VecDeque<Message>| -> u64 {
        let mut applied = 0;
        while n.raft.has_ready() {
            let rd = n.raft.ready();
            net.extend(rd.messages);
            net.extend(rd.messages_after_persist);
            if let Some(hs) = rd.hard_state {
                n.raft.on_hard_state_persisted(hs);
            }
            if let Some(e) = rd.entries.last() {
                n.raft.on_persisted(e.index, e.term);
            }
            applied += rd.committed_entries.len() as u64;
        }
        applied
    };
    nodes.get_mut(&1).unwrap().raft.campaign_now();
    loop {
        for id in ids {
            pump(nodes.get_mut(&id).unwrap(), &mut net);
        }
        while let Some(m) = net.pop_front() {
            let to = m.to;
            nodes.get_mut(&to).unwrap().raft.step(m);
            pump(nodes.get_mut(&to).unwrap(), &mut net);
        }
        if nodes[&1].raft.role() == Role::Leader && nodes[&1].raft.committed() == nodes[&1].raft.last_index() {
            break;
        }
    }
    let payload = Bytes::from_static(&[7u8; 64]);
    let start_commit = nodes[&1].raft.committed();
    let start = Instant::now();
    let mut proposed = 0;
    while proposed < PROPOSALS {
        let leader = nodes.get_mut(&1).unwrap();
        for _ in 0..BATCH {
            leader.raft.propose(payload.clone()).expect("leader accepts");
        }
        proposed += BATCH;
        pump(leader, &mut net);
        while let Some(m) = net.pop_front() {
            let to = m.to;
            nodes.get_mut(&to).unwrap().raft.step(m);
            pump(nodes.get_mut(&to).unwrap(), &mut net);
        }
    }
    let committed = nodes[&1].raft.committed() - start_commit;
    assert!(committed >= PROPOSALS, "all proposals committed ({committed})");
    committed as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut rates: Vec<f64> = (0..RUNS)
        .map(|i| {
            let r = run_once();
            println!("run {i}: {r:.0} proposals committed/s");
            r
        })
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    println!(
        "median: {:.0} proposals committed/s (3 nodes, one thread, batch {BATCH}, 64-byte payloads)",
        rates[RUNS / 2]
    );
}
