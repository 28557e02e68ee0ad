//! Linearizability checker (Wing & Gong search with Lowe's memoization),
//! partitioned by key, over the per-key register model of `model.rs`.
//! Operations whose outcome is unknown (timed out) may be linearized anywhere
//! after their invocation, or not at all. A command a session client sent
//! several times is one operation: invoked at its first send, returning with
//! the one answer the client accepted (any copy may be the one that applied).
//! Must never consult wall-clock time.

use crate::model::Op;
use std::collections::HashSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistOp {
    pub key: u8,
    pub op: Op,
    pub invoke: u64,
    /// None: outcome unknown (possibly applied, at any time after `invoke`).
    pub response: Option<u64>,
    /// The value the operation returned, when `response` is known.
    pub output: u64,
}

/// Search states explored per key before the checker gives up (reported as an error).
/// Characters of a failing history printed in the error.
const HISTORY_PRINT_MAX: usize = 4000;

pub const SEARCH_STATES_MAX: usize = 2_000_000;

fn step(state: u64, op: Op) -> (u64, u64) {
    match op {
        Op::Put(x) => (x, x),
        Op::Incr => (state + 1, state + 1),
        Op::Get => (state, state),
    }
}

/// Checks a whole history; the error names the key and a summary of its history.
pub fn check(history: &[HistOp]) -> Result<(), String> {
    let mut keys: Vec<u8> = history.iter().map(|o| o.key).collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        let ops: Vec<HistOp> = history.iter().copied().filter(|o| o.key == k).collect();
        check_key(&ops).map_err(|e| {
            let mut h = format!("{ops:?}");
            h.truncate(HISTORY_PRINT_MAX);
            format!("key {k}: {e}; {} ops: {h}", ops.len())
        })?;
    }
    Ok(())
}

/// Checks one key's history starting from value 0.
pub fn check_key(ops: &[HistOp]) -> Result<(), String> {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| (o.invoke, o.response.unwrap_or(u64::MAX)));
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut s = Search { ops: &ops, memo: HashSet::new(), states: 0 };
    let mut bits = vec![0u64; words];
    let completed = ops.iter().filter(|o| o.response.is_some()).count();
    match s.dfs(&mut bits, 0, completed) {
        Some(true) => Ok(()),
        Some(false) => Err("not linearizable".into()),
        None => Err(format!("search exceeded {SEARCH_STATES_MAX} states (inconclusive)")),
    }
}

struct Search<'a> {
    ops: &'a [HistOp],
    memo: HashSet<(Vec<u64>, u64)>,
    states: usize,
}

impl Search<'_> {
    fn dfs(&mut self, bits: &mut Vec<u64>, state: u64, completed_left: usize) -> Option<bool> {
        if completed_left == 0 {
            return Some(true);
        }
        if !self.memo.insert((bits.clone(), state)) {
            return Some(false);
        }
        self.states += 1;
        if self.states > SEARCH_STATES_MAX {
            return None;
        }
        let done = |bits: &Vec<u64>, i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
        let min_ret = (0..self.ops.len())
            .filter(|&i| !done(bits, i))
            .filter_map(|i| self.ops[i].response)
            .min()
            .unwrap_or(u64::MAX);
        for j in 0..self.ops.len() {
            let o = self.ops[j];
            if o.invoke > min_ret {
                break; // sorted by invoke: everything later must follow an unlinearized op
            }
            if done(bits, j) {
                continue;
            }
            let (next, out) = step(state, o.op);
            if o.response.is_some() && out != o.output {
                continue;
            }
            bits[j / 64] |= 1 << (j % 64);
            let left = completed_left - o.response.is_some() as usize;
            let r = self.dfs(bits, next, left);
            bits[j / 64] &= !(1 << (j % 64));
            match r {
                Some(true) => return Some(true),
                None => return None,
                Some(false) => {}
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: Op, invoke: u64, response: Option<u64>, output: u64) -> HistOp {
        HistOp { key: 0, op, invoke, response, output }
    }

    #[test]
    fn sequential_and_concurrent() {
        let h = [op(Op::Put(5), 0, Some(1), 5), op(Op::Get, 2, Some(3), 5)];
        assert!(check(&h).is_ok());
        let stale = [op(Op::Put(5), 0, Some(1), 5), op(Op::Get, 2, Some(3), 0)];
        assert!(check(&stale).is_err(), "a read after a completed write must see it");
        let concurrent = [op(Op::Put(5), 0, Some(10), 5), op(Op::Get, 2, Some(3), 0), op(Op::Get, 4, Some(5), 5)];
        assert!(check(&concurrent).is_ok());
        let back = [op(Op::Put(5), 0, Some(10), 5), op(Op::Get, 2, Some(3), 5), op(Op::Get, 4, Some(5), 0)];
        assert!(check(&back).is_err(), "values never go back in time");
    }

    #[test]
    fn unknown_outcomes() {
        // A timed-out increment may have happened, late.
        let h = [op(Op::Incr, 0, None, 0), op(Op::Get, 5, Some(6), 0), op(Op::Get, 7, Some(8), 1)];
        assert!(check(&h).is_ok());
        // ... but only once.
        let twice = [op(Op::Incr, 0, None, 0), op(Op::Get, 5, Some(6), 2)];
        assert!(check(&twice).is_err());
        // A double-applied increment is caught.
        let dup = [op(Op::Incr, 0, Some(1), 1), op(Op::Get, 2, Some(3), 2)];
        assert!(check(&dup).is_err());
    }

    #[test]
    fn a_retried_command_is_one_operation_from_its_first_send() {
        // An increment sent at 0, applied at once, its answer lost; sent again at
        // 10 and answered (from the saved reply) at 20. A read at 5 sees it.
        let read = op(Op::Get, 5, Some(6), 1);
        let whole = [op(Op::Incr, 0, Some(20), 1), read];
        assert!(check(&whole).is_ok());
        // Dating the operation from its last send would call the read a lie.
        let last_send = [op(Op::Incr, 10, Some(20), 1), read];
        assert!(check(&last_send).is_err());
        // Had the retry applied again, its answer (2) betrays the second apply.
        let twice = [op(Op::Incr, 0, Some(20), 2), read];
        assert!(check(&twice).is_err());
    }
}
