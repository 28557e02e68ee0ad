//! Quorum math for majority and joint configurations: committed index and
//! vote tallies. Pure functions over ids and a lookup; never touches state.

use crate::types::{Configuration, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Pending,
    Won,
    Lost,
}

/// The highest index acknowledged by a majority of `voters`.
/// An empty voter set commits everything (u64::MAX) so that a joint
/// configuration with one empty half reduces to the other half.
pub fn majority_committed(voters: &[NodeId], acked: impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut idx: Vec<u64> = voters.iter().map(|&v| acked(v)).collect();
    idx.sort_unstable_by(|a, b| b.cmp(a));
    idx[voters.len() / 2]
}

/// Committed index under a possibly joint configuration: both halves must agree.
pub fn joint_committed(c: &Configuration, acked: impl Fn(NodeId) -> u64) -> u64 {
    let a = majority_committed(&c.voters, &acked);
    let b = majority_committed(&c.voters_outgoing, &acked);
    let m = a.min(b);
    if m == u64::MAX { 0 } else { m }
}

/// Tally of a majority vote; `vote(id)` is Some(granted) once `id` answered.
pub fn majority_vote(voters: &[NodeId], vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &v in voters {
        match vote(v) {
            Some(true) => yes += 1,
            None => missing += 1,
            Some(false) => {}
        }
    }
    let q = voters.len() / 2 + 1;
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

pub fn joint_vote(c: &Configuration, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    let a = majority_vote(&c.voters, &vote);
    let b = majority_vote(&c.voters_outgoing, &vote);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// True when the ids for which `ok` holds form a quorum of `c`.
pub fn is_quorum(c: &Configuration, ok: impl Fn(NodeId) -> bool) -> bool {
    joint_vote(c, |id| Some(ok(id))) == VoteResult::Won
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked<'a>(m: &'a [(NodeId, u64)]) -> impl Fn(NodeId) -> u64 + 'a {
        move |id| m.iter().find(|(i, _)| *i == id).map_or(0, |(_, x)| *x)
    }

    #[test]
    fn majority_index() {
        assert_eq!(majority_committed(&[1], acked(&[(1, 5)])), 5);
        assert_eq!(majority_committed(&[1, 2], acked(&[(1, 5), (2, 3)])), 3);
        assert_eq!(majority_committed(&[1, 2, 3], acked(&[(1, 5), (2, 3), (3, 9)])), 5);
        assert_eq!(majority_committed(&[1, 2, 3, 4], acked(&[(1, 5), (2, 3), (3, 9), (4, 1)])), 3);
        assert_eq!(majority_committed(&[1, 2, 3, 4, 5], acked(&[(1, 5), (2, 3), (3, 9)])), 3);
    }

    #[test]
    fn joint_index_takes_the_minimum() {
        let c = Configuration {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![3, 4, 5],
            learners: vec![],
            ..Default::default()
        };
        let m = [(1, 10), (2, 10), (3, 10), (4, 2), (5, 1)];
        assert_eq!(joint_committed(&c, acked(&m)), 2);
        assert_eq!(joint_committed(&Configuration::new([1, 2, 3]), acked(&m)), 10);
        assert_eq!(joint_committed(&Configuration::default(), acked(&m)), 0);
    }

    #[test]
    fn votes() {
        let v = |m: &'static [(NodeId, bool)]| move |id| m.iter().find(|(i, _)| *i == id).map(|(_, g)| *g);
        assert_eq!(majority_vote(&[1, 2, 3], v(&[(1, true)])), VoteResult::Pending);
        assert_eq!(majority_vote(&[1, 2, 3], v(&[(1, true), (2, true)])), VoteResult::Won);
        assert_eq!(majority_vote(&[1, 2, 3], v(&[(1, true), (2, false), (3, false)])), VoteResult::Lost);
        assert_eq!(majority_vote(&[1, 2, 3, 4], v(&[(1, true), (2, true), (3, false)])), VoteResult::Pending);
        let c = Configuration {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![1, 4, 5],
            learners: vec![],
            ..Default::default()
        };
        assert_eq!(joint_vote(&c, v(&[(1, true), (2, true), (4, false), (5, false)])), VoteResult::Lost);
        assert_eq!(joint_vote(&c, v(&[(1, true), (2, true), (4, true)])), VoteResult::Won);
        assert_eq!(joint_vote(&c, v(&[(1, true), (2, true)])), VoteResult::Pending);
    }
}
