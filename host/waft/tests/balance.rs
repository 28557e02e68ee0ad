//! `waft admin balance-leaders` on real daemons: every group's leadership is
//! first moved to node 1, then the balance spreads them so that no node
//! leads more than a tenth over an even share. `WAFT_BALANCE_GROUPS` sets
//! the number of groups (30 by default; the figure is 300).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, Spec, module, run_waft};
use waft_daemon::client::{self, Client};
use waft_proto::admin::AdminOp;
use waft_proto::client::Role;

const NODES: usize = 3;
const SETTLE: Duration = Duration::from_secs(120);

fn groups() -> u64 {
    std::env::var("WAFT_BALANCE_GROUPS").ok().and_then(|v| v.parse().ok()).unwrap_or(30)
}

/// Groups led per node (by node id), as the nodes say; `None` while some
/// group has no leader.
async fn leaders(c: &Cluster, groups: u64) -> Option<BTreeMap<u64, Vec<u64>>> {
    let mut led: BTreeMap<u64, Vec<u64>> = (1..=NODES as u64).map(|n| (n, Vec::new())).collect();
    for (i, addr) in c.addrs.iter().enumerate() {
        let status = client::status(addr, None).await.ok()?;
        for g in status.groups.iter().filter(|g| g.role() == Role::Leader) {
            led.entry(i as u64 + 1).or_default().push(g.group);
        }
    }
    let total: usize = led.values().map(Vec::len).sum();
    (total == groups as usize).then_some(led)
}

async fn wait_leaders(
    c: &mut Cluster,
    groups: u64,
    what: &str,
    ok: impl Fn(&BTreeMap<u64, Vec<u64>>) -> bool,
) -> BTreeMap<u64, Vec<u64>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        c.check_alive();
        let led = leaders(c, groups).await;
        if let Some(l) = &led
            && ok(l)
        {
            return l.clone();
        }
        let counts = led.map(|l| l.iter().map(|(n, g)| (*n, g.len())).collect::<Vec<_>>());
        assert!(Instant::now() < deadline, "{what}; leaders per node: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_leaders_spreads_leaderships_evenly() {
    let n = groups();
    let counter = module("waft_counter");
    let spec = Spec { groups: (1..=n).map(|g| (g, counter.clone())).collect(), args: Vec::new() };
    let mut c = Cluster::start("balance", NODES, spec);
    let started = Instant::now();
    wait_leaders(&mut c, n, "every group elects", |_| true).await;
    eprintln!("{n} groups on {NODES} nodes: all elected {:?} after the start", started.elapsed());

    // Everything on node 1 first, so the balance has all of it to do.
    let admin = Client::with_nodes(c.addrs.clone());
    let deadline = Instant::now() + SETTLE;
    loop {
        let led = wait_leaders(&mut c, n, "every group has a leader", |_| true).await;
        let elsewhere: Vec<u64> = led.iter().filter(|(node, _)| **node != 1).flat_map(|(_, g)| g.clone()).collect();
        if elsewhere.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "groups still led elsewhere: {elsewhere:?}");
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in elsewhere.chunks(elsewhere.len().div_ceil(8)) {
            let (admin, chunk) = (admin.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for g in chunk {
                    // A failed transfer is retried by the next round.
                    let _ = admin.admin(g, AdminOp::TransferLeader, vec![1], vec![]).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    let started = Instant::now();
    let (ok, out, err) = run_waft(&["admin", "--addr", &c.addrs[1], "balance-leaders"]).await;
    assert!(ok, "balance-leaders failed: {err}\n{out}");
    eprintln!("balance-leaders took {:?}:\n{out}", started.elapsed());
    assert!(out.contains("node 1: leads"), "{out}");
    let share = (n as usize).div_ceil(NODES);
    let bound = (share * 11).div_ceil(10);
    let led = wait_leaders(&mut c, n, "leaderships spread", |_| true).await;
    let counts: Vec<usize> = led.values().map(Vec::len).collect();
    eprintln!("leaders per node after the balance: {counts:?} (bound {bound})");
    assert!(counts.iter().all(|c| *c <= bound), "a node leads more than {bound}: {counts:?}");
    assert!(counts.iter().all(|c| *c > 0), "every node leads some: {counts:?}");
}
