//! Spreading leaderships over nodes (`waft admin balance-leaders`, as
//! SOFAJRaft's CliService rebalance): every node is asked which groups it
//! serves and leads; leaderships then move, by leader transfer, from nodes
//! that lead more than their share to voters of the same group that lead
//! less, until no node leads more than the groups divided by the nodes,
//! rounded up.
//!
//! The plan ([`plan`]) is a pure function of what the nodes said; the moves
//! are ordinary transfers, each answered once the target leads, at most
//! `BALANCE_TRANSFERS_AT_ONCE` at a time. Priorities: the daemons set no
//! election priority (every voter stands alike), so every voter of a group
//! is a fair target.

use std::collections::BTreeMap;

use waft_proto::admin::AdminOp;
use waft_proto::client::Role;

use crate::{Client, ClientError, Credentials};

/// Leader transfers in flight at once.
pub const BALANCE_TRANSFERS_AT_ONCE: usize = 8;
/// Attempts per move: a transfer is abandoned when its target does not win
/// within an election timeout (a busy machine), and may pass next time.
pub const BALANCE_MOVE_ATTEMPTS: usize = 3;
/// Groups one balance looks at, at most (the status of every node is read
/// whole).
pub const BALANCE_GROUPS_MAX: usize = 100_000;

/// One group as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Led {
    pub group: u64,
    pub leader: u64,
    pub voters: Vec<u64>,
}

/// A leadership to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub group: u64,
    pub from: u64,
    pub to: u64,
}

/// What a balance found and did.
#[derive(Clone, Debug, Default)]
pub struct BalanceReport {
    /// Groups led per node before (every node asked, leaders or not).
    pub before: BTreeMap<u64, usize>,
    /// The same, as planned after the moves.
    pub planned: BTreeMap<u64, usize>,
    pub moved: Vec<Move>,
    /// Moves that failed, and why (the group keeps its leader).
    pub failed: Vec<(Move, String)>,
    /// Groups no node claimed to lead when asked (an election under way).
    pub leaderless: Vec<u64>,
    /// Nodes that did not answer (their groups were left as they were).
    pub unreachable: Vec<(u64, String)>,
}

/// The moves that bring every node of `nodes` to at most
/// `ceil(groups / nodes)` leaderships (when the groups' voters allow it):
/// repeatedly, from the node leading most, one of its groups to that
/// group's voter leading fewest, while that one stays under the ceiling.
pub fn plan(nodes: &[u64], led: &[Led]) -> Vec<Move> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let ceiling = led.len().div_ceil(nodes.len());
    let mut count: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    let mut by_leader: BTreeMap<u64, Vec<&Led>> = BTreeMap::new();
    for l in led {
        *count.entry(l.leader).or_default() += 1;
        by_leader.entry(l.leader).or_default().push(l);
    }
    let mut moves = Vec::new();
    // Nodes for which no group can move any more.
    let mut stuck: Vec<u64> = Vec::new();
    while let Some((&over, &n)) =
        count.iter().filter(|(id, _)| !stuck.contains(id)).max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
    {
        if n <= ceiling {
            break;
        }
        // The group whose least-loaded voter is the least loaded of all.
        let mut best: Option<(usize, usize, u64)> = None;
        for (at, l) in by_leader.get(&over).map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
            for &v in &l.voters {
                let c = count.get(&v).copied().unwrap_or(usize::MAX);
                if v != over && c < ceiling && best.is_none_or(|(_, bc, _)| c < bc) {
                    best = Some((at, c, v));
                }
            }
        }
        let Some((at, _, to)) = best else {
            stuck.push(over);
            continue;
        };
        let Some(group) = by_leader.get_mut(&over).map(|v| v.remove(at)) else { break };
        *count.entry(over).or_default() -= 1;
        *count.entry(to).or_default() += 1;
        by_leader.entry(to).or_default().push(group);
        moves.push(Move { group: group.group, from: over, to });
    }
    moves
}

/// Asks every node the node at `seed` knows which groups it leads, plans
/// the moves and makes them.
pub async fn balance_leaders(seed: &str, credentials: &Credentials) -> Result<BalanceReport, ClientError> {
    let known = crate::nodes(seed, None, credentials).await?;
    let addresses: BTreeMap<u64, String> = known.nodes.into_iter().map(|n| (n.node_id, n.address)).collect();
    // Every node's view; a group's leader is the node that says it leads it
    // in the highest term.
    let mut leaders: BTreeMap<u64, (u64, Led)> = BTreeMap::new();
    let mut served: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    let mut asked = Vec::new();
    let mut unreachable = Vec::new();
    for (&id, addr) in &addresses {
        let status = match Client::with_credentials(vec![addr.clone()], credentials.clone()).status(None).await {
            Ok(status) if status.node_id == id => status,
            Ok(status) => {
                unreachable.push((id, format!("{addr} answers as node {}", status.node_id)));
                continue;
            }
            Err(e) => {
                unreachable.push((id, e.to_string()));
                continue;
            }
        };
        asked.push(id);
        if status.groups.len() > BALANCE_GROUPS_MAX {
            return Err(ClientError::NotSent {
                addr: addr.clone(),
                why: format!("node {id} serves more than {BALANCE_GROUPS_MAX} groups"),
            });
        }
        for g in status.groups {
            served.insert(g.group);
            if g.role() != Role::Leader {
                continue;
            }
            let voters = g.configuration.map(|c| c.voters).unwrap_or_default();
            let led = Led { group: g.group, leader: status.node_id, voters };
            if leaders.get(&g.group).is_none_or(|(term, _)| *term < g.term) {
                leaders.insert(g.group, (g.term, led));
            }
        }
    }
    let led: Vec<Led> = leaders.into_values().map(|(_, l)| l).collect();
    let mut report = BalanceReport {
        leaderless: served.iter().copied().filter(|g| !led.iter().any(|l| l.group == *g)).collect(),
        unreachable,
        ..Default::default()
    };
    report.before = asked.iter().map(|id| (*id, led.iter().filter(|l| l.leader == *id).count())).collect();
    let moves = plan(&asked, &led);
    report.planned = report.before.clone();
    for m in &moves {
        if let Some(c) = report.planned.get_mut(&m.from) {
            *c -= 1;
        }
        *report.planned.entry(m.to).or_default() += 1;
    }
    let mut pending = moves.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < BALANCE_TRANSFERS_AT_ONCE {
            let Some(m) = pending.next() else { break };
            let Some(addr) = addresses.get(&m.from).cloned() else { continue };
            let client = Client::with_credentials(vec![addr], credentials.clone());
            tasks.spawn(async move {
                let mut attempt = 1;
                loop {
                    let done = client.admin(m.group, AdminOp::TransferLeader, vec![m.to], Vec::new()).await;
                    match done {
                        Ok(_) => return (m, Ok(())),
                        // Abandoned (the target did not win in time): the
                        // group kept its leader, so another try is safe.
                        Err(e)
                            if attempt < BALANCE_MOVE_ATTEMPTS
                                && e.code() == Some(waft_proto::client::ErrorCode::Rejected) =>
                        {
                            attempt += 1;
                        }
                        Err(e) => return (m, Err(e.to_string())),
                    }
                }
            });
        }
        let Some(joined) = tasks.join_next().await else { break };
        match joined {
            Ok((m, Ok(()))) => report.moved.push(m),
            Ok((m, Err(why))) => report.failed.push((m, why)),
            Err(e) => {
                return Err(ClientError::NotSent {
                    addr: seed.to_string(),
                    why: format!("a transfer task failed: {e}"),
                });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(group: u64, leader: u64, voters: &[u64]) -> Led {
        Led { group, leader, voters: voters.to_vec() }
    }

    fn counts(nodes: &[u64], led: &[Led], moves: &[Move]) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
        for l in led {
            let to = moves.iter().find(|m| m.group == l.group).map_or(l.leader, |m| m.to);
            *c.entry(to).or_default() += 1;
        }
        c
    }

    #[test]
    fn everything_on_one_node_spreads_to_the_ceiling() {
        let all: Vec<Led> = (1..=300).map(|g| led(g, 1, &[1, 2, 3])).collect();
        let moves = plan(&[1, 2, 3], &all);
        assert_eq!(moves.len(), 200);
        assert!(moves.iter().all(|m| m.from == 1 && m.to != 1));
        assert_eq!(counts(&[1, 2, 3], &all, &moves).values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
        // Uneven: 301 groups, a ceiling of 101.
        let all: Vec<Led> = (1..=301).map(|g| led(g, 2, &[1, 2, 3])).collect();
        let c = counts(&[1, 2, 3], &all, &plan(&[1, 2, 3], &all));
        assert!(c.values().all(|n| *n <= 101), "{c:?}");
    }

    #[test]
    fn only_voters_take_over_and_balanced_groups_stay() {
        // Node 4 is a voter of no group: it cannot lead any.
        let all: Vec<Led> = (1..=6).map(|g| led(g, 1, &[1, 2])).collect();
        let moves = plan(&[1, 2, 4], &all);
        assert!(moves.iter().all(|m| m.to == 2), "{moves:?}");
        assert_eq!(moves.len(), 2, "node 2 takes up to the ceiling of 2; node 1 keeps the rest");
        let even = vec![led(1, 1, &[1, 2, 3]), led(2, 2, &[1, 2, 3]), led(3, 3, &[1, 2, 3])];
        assert!(plan(&[1, 2, 3], &even).is_empty());
        assert!(plan(&[], &even).is_empty());
    }
}
