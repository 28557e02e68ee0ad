//! Plain data the core exchanges with its runtime: entries, hard state,
//! snapshot metadata, configurations (with their wire codec), messages and errors.
//! Owns no behaviour beyond encoding; must never panic on bytes from the network.

use bytes::Bytes;

/// A node id inside one Raft group. `0` is reserved for "nobody".
pub type NodeId = u64;
/// Sentinel for "no node" (no leader known, no vote cast).
pub const NONE: NodeId = 0;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An application command (empty data = the leader's no-op on election).
    Normal,
    /// An encoded [`Configuration`]: the whole configuration in force from this entry on.
    Config,
}

/// One log entry. Invariant: within a log, indexes are consecutive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for against message and window limits.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + 24
    }
}

/// The durable vote state. Must be persisted before any message the same
/// `Ready` marks `after_persist` is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    /// The node voted for in `term`, or `NONE`.
    pub vote: NodeId,
    /// Highest index known committed. Invariant: never decreases.
    pub commit: u64,
}

/// A group configuration. Joint when `voters_outgoing` is non-empty: then a
/// decision needs a majority of `voters` AND a majority of `voters_outgoing`.
/// Invariant: the three lists are sorted, deduplicated, and learners are
/// disjoint from both voter lists; `addresses` is sorted by id, names each
/// member at most once and no one else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    pub voters: Vec<NodeId>,
    pub voters_outgoing: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Where members listen (`host:port`), for the runtime: the core carries
    /// them through the log and snapshots and never reads them. A member
    /// without one is reached however the runtime knows it.
    pub addresses: Vec<(NodeId, String)>,
}

impl Configuration {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let mut c = Configuration { voters: voters.into_iter().collect(), ..Default::default() };
        c.normalize();
        c
    }

    pub fn normalize(&mut self) {
        for l in [&mut self.voters, &mut self.voters_outgoing, &mut self.learners] {
            l.sort_unstable();
            l.dedup();
        }
        let (v, o) = (&self.voters, &self.voters_outgoing);
        self.learners.retain(|l| !v.contains(l) && !o.contains(l));
        // The first address given for an id wins (the sort is stable).
        self.addresses.sort_by_key(|(id, _)| *id);
        self.addresses.dedup_by_key(|(id, _)| *id);
        let (v, o, l) = (&self.voters, &self.voters_outgoing, &self.learners);
        self.addresses.retain(|(id, _)| v.contains(id) || o.contains(id) || l.contains(id));
    }

    /// The address recorded for `id`, if any.
    pub fn address_of(&self, id: NodeId) -> Option<&str> {
        self.addresses.iter().find(|(a, _)| *a == id).map(|(_, addr)| addr.as_str())
    }

    /// This configuration with `addresses` recorded over the ones it has
    /// (a given one replaces the recorded one of the same id); addresses of
    /// non-members are dropped.
    pub fn with_addresses(mut self, addresses: impl IntoIterator<Item = (NodeId, String)>) -> Configuration {
        let mut given: Vec<(NodeId, String)> = addresses.into_iter().collect();
        given.append(&mut self.addresses);
        self.addresses = given;
        self.normalize();
        self
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member (voters of both halves and learners), sorted, once.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Encodes as: version byte, then three lists of (u32 count, u64 ids),
    /// little endian. Version 2 (only when there are addresses) adds a u32
    /// count of (u64 id, u16 length, UTF-8 address) after them; a
    /// configuration without addresses stays version 1, readable by nodes
    /// that predate addresses.
    pub fn encode(&self) -> Bytes {
        let addressed: usize = self.addresses.iter().map(|(_, a)| 10 + a.len()).sum();
        let mut out = Vec::with_capacity(1 + 16 + 8 * self.members().len() + addressed);
        out.push(if self.addresses.is_empty() { CONFIG_CODEC_VERSION } else { CONFIG_CODEC_VERSION_ADDRESSES });
        for list in [&self.voters, &self.voters_outgoing, &self.learners] {
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for id in list {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        if !self.addresses.is_empty() {
            out.extend_from_slice(&(self.addresses.len() as u32).to_le_bytes());
            for (id, addr) in &self.addresses {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
                out.extend_from_slice(addr.as_bytes());
            }
        }
        Bytes::from(out)
    }

    /// Decodes bytes that came from a log entry (possibly from the network).
    pub fn decode(mut bytes: &[u8]) -> Result<Configuration, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if version != CONFIG_CODEC_VERSION && version != CONFIG_CODEC_VERSION_ADDRESSES {
            return Err(DecodeError::UnknownVersion(version));
        }
        bytes = rest;
        let mut lists: [Vec<NodeId>; 3] = Default::default();
        for list in &mut lists {
            let count = u32::from_le_bytes(take::<4>(&mut bytes)?) as usize;
            if count > CONFIG_MEMBERS_MAX {
                return Err(DecodeError::TooManyMembers(count));
            }
            for _ in 0..count {
                let id = u64::from_le_bytes(take::<8>(&mut bytes)?);
                if id == NONE {
                    return Err(DecodeError::ZeroId);
                }
                list.push(id);
            }
        }
        let mut addresses = Vec::new();
        if version == CONFIG_CODEC_VERSION_ADDRESSES {
            let count = u32::from_le_bytes(take::<4>(&mut bytes)?) as usize;
            if count == 0 || count > 3 * CONFIG_MEMBERS_MAX {
                return Err(DecodeError::TooManyMembers(count));
            }
            for _ in 0..count {
                let id = u64::from_le_bytes(take::<8>(&mut bytes)?);
                let len = u16::from_le_bytes(take::<2>(&mut bytes)?) as usize;
                if id == NONE {
                    return Err(DecodeError::ZeroId);
                }
                if len == 0 || len > ADDRESS_BYTES_MAX || bytes.len() < len {
                    return Err(DecodeError::BadAddress);
                }
                let (text, rest) = bytes.split_at(len);
                bytes = rest;
                let addr = std::str::from_utf8(text).map_err(|_| DecodeError::BadAddress)?;
                addresses.push((id, addr.to_string()));
            }
        }
        if !bytes.is_empty() {
            return Err(DecodeError::TrailingBytes(bytes.len()));
        }
        let [voters, voters_outgoing, learners] = lists;
        let mut c = Configuration { voters, voters_outgoing, learners, addresses };
        let before = c.clone();
        c.normalize();
        if c != before {
            return Err(DecodeError::NotCanonical);
        }
        Ok(c)
    }
}

/// Version tag of the configuration codec; bump on any layout change.
const CONFIG_CODEC_VERSION: u8 = 1;
/// Version 1 followed by members' addresses.
const CONFIG_CODEC_VERSION_ADDRESSES: u8 = 2;
/// A member's address (`host:port`) is at most this long, and not empty.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// A configuration lists at most this many ids per list (protects decoding).
pub const CONFIG_MEMBERS_MAX: usize = 1024;

fn take<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    if bytes.len() < N {
        return Err(DecodeError::Truncated);
    }
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok(out)
}

/// Why configuration bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    UnknownVersion(u8),
    TooManyMembers(usize),
    ZeroId,
    TrailingBytes(usize),
    /// Lists unsorted, duplicated, or a learner that is also a voter.
    NotCanonical,
    /// An address empty, too long or not UTF-8.
    BadAddress,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration entry could not be decoded: {self:?}")
    }
}
impl std::error::Error for DecodeError {}

/// Metadata of a state-machine snapshot: everything up to `index` (inclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    /// The configuration in force at `index`.
    pub config: Configuration,
}

/// A message between two nodes of one group. The daemon adds the group id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: u64,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me in `term`?" Changes no state on either side.
    PreVote {
        last_index: u64,
        last_term: u64,
    },
    PreVoteResponse {
        reject: bool,
    },
    /// `transfer`: campaign triggered by TimeoutNow, voters ignore their leader lease.
    Vote {
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        reject: bool,
    },
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// Accepted: `index` is the follower's new match index. Rejected: `index` is the
    /// rejected `prev_index`, and (`hint_index`, `hint_term`) is the follower's
    /// last entry at or below it with term <= the leader's `prev_term`.
    AppendResponse {
        reject: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    },
    /// `round` numbers the leader's confirmation rounds (reads and lease).
    /// `quiesce`: the group has nothing to do; the follower stops its
    /// election timer until something wakes it.
    Heartbeat {
        commit: u64,
        round: u64,
        quiesce: bool,
    },
    HeartbeatResponse {
        round: u64,
    },
    /// The follower must load this snapshot (fetched from the sender by the runtime).
    InstallSnapshot {
        meta: SnapshotMeta,
    },
    /// "Campaign now": sent by a leader to its transfer target once it caught up.
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its reads.
    ReadIndex {
        ids: Vec<u64>,
    },
    ReadIndexResponse {
        ids: Vec<u64>,
        index: u64,
    },
    /// Not the protocol's: a replica's digest of its state after entry
    /// `index`, for its leader. The host layer above the core carries and
    /// reads it (waft-node compares replicas with it); the core drops it.
    StateDigest {
        index: u64,
        digest: [u8; 32],
    },
}

/// Why a proposal or an admin command was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaftError {
    /// Retry on the leader (when one is known).
    NotLeader { leader_hint: Option<NodeId> },
    /// A leader transfer is running; retry after it finishes.
    TransferInProgress,
    /// A configuration change is not yet committed (or still catching up).
    ConfChangeInProgress,
    /// The payload exceeds `Config::proposal_bytes_max`.
    ProposalTooLarge { bytes: u64, max: u64 },
    /// Too many uncommitted entries; retry once replication catches up.
    Busy,
    /// The admin command makes no sense for the current configuration.
    InvalidConfChange(&'static str),
    /// The leader has not yet committed an entry of its term; retry shortly.
    NotReady,
}

impl std::fmt::Display for RaftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaftError::NotLeader { leader_hint: Some(l) } => write!(f, "not the leader; try node {l}"),
            RaftError::NotLeader { leader_hint: None } => {
                write!(f, "not the leader and no leader known; retry later")
            }
            RaftError::TransferInProgress => {
                write!(f, "leader transfer in progress; retry after it finishes")
            }
            RaftError::ConfChangeInProgress => write!(f, "a configuration change is in flight; retry after it commits"),
            RaftError::ProposalTooLarge { bytes, max } => {
                write!(f, "proposal of {bytes} bytes exceeds the {max}-byte limit")
            }
            RaftError::Busy => write!(f, "too many uncommitted entries; retry later"),
            RaftError::InvalidConfChange(why) => write!(f, "invalid configuration change: {why}"),
            RaftError::NotReady => write!(f, "leader has not committed an entry of its term yet; retry shortly"),
        }
    }
}
impl std::error::Error for RaftError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_roundtrip_and_errors() {
        let c = Configuration {
            voters: vec![1, 2, 3],
            voters_outgoing: vec![1, 4],
            learners: vec![9],
            ..Default::default()
        };
        let b = c.encode();
        assert_eq!(b[0], 1, "without addresses the configuration stays version 1");
        assert_eq!(Configuration::decode(&b), Ok(c));
        for cut in 0..b.len() {
            assert!(Configuration::decode(&b[..cut]).is_err());
        }
        let mut extra = b.to_vec();
        extra.push(0);
        assert_eq!(Configuration::decode(&extra), Err(DecodeError::TrailingBytes(1)));
        let mut bad = b.to_vec();
        bad[0] = 7;
        assert_eq!(Configuration::decode(&bad), Err(DecodeError::UnknownVersion(7)));
        let unsorted = Configuration { voters: vec![3, 1], ..Default::default() }.encode();
        assert_eq!(Configuration::decode(&unsorted), Err(DecodeError::NotCanonical));
        let huge = [1u8, 255, 255, 255, 255];
        assert!(matches!(Configuration::decode(&huge), Err(DecodeError::TooManyMembers(_))));
    }

    #[test]
    fn addresses_travel_with_the_configuration() {
        let c = Configuration { voters: vec![1, 2], learners: vec![7], ..Default::default() }.with_addresses([
            (7, "10.0.0.7:7001".to_string()),
            (2, "b:2".to_string()),
            (5, "not-a-member:1".to_string()),
            (2, "ignored:2".to_string()),
        ]);
        assert_eq!(c.addresses, vec![(2, "b:2".to_string()), (7, "10.0.0.7:7001".to_string())]);
        assert_eq!(c.address_of(7), Some("10.0.0.7:7001"));
        assert_eq!(c.address_of(1), None);
        let b = c.encode();
        assert_eq!(b[0], 2);
        assert_eq!(Configuration::decode(&b), Ok(c.clone()));
        for cut in 0..b.len() {
            assert!(Configuration::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        // A later address for a member replaces the recorded one; removing
        // the member forgets it.
        let moved = c.clone().with_addresses([(2, "b:3".to_string())]);
        assert_eq!(moved.address_of(2), Some("b:3"));
        let mut removed = moved.clone();
        removed.learners.clear();
        removed.normalize();
        assert_eq!(removed.addresses, vec![(2, "b:3".to_string())]);
        // Damaged addresses are refused, not guessed at.
        let mut bad_utf8 = b.to_vec();
        let last = bad_utf8.len() - 1;
        bad_utf8[last] = 0xff;
        assert_eq!(Configuration::decode(&bad_utf8), Err(DecodeError::BadAddress));
        let not_member = {
            let mut raw = Configuration::new([1]).encode().to_vec();
            raw[0] = 2;
            raw.extend_from_slice(&1u32.to_le_bytes());
            raw.extend_from_slice(&9u64.to_le_bytes());
            raw.extend_from_slice(&3u16.to_le_bytes());
            raw.extend_from_slice(b"a:1");
            raw
        };
        assert_eq!(Configuration::decode(&not_member), Err(DecodeError::NotCanonical));
        let mut too_long = Configuration::new([1]).encode().to_vec();
        too_long[0] = 2;
        too_long.extend_from_slice(&1u32.to_le_bytes());
        too_long.extend_from_slice(&1u64.to_le_bytes());
        too_long.extend_from_slice(&((ADDRESS_BYTES_MAX + 1) as u16).to_le_bytes());
        too_long.extend(std::iter::repeat_n(b'a', ADDRESS_BYTES_MAX + 1));
        assert_eq!(Configuration::decode(&too_long), Err(DecodeError::BadAddress));
    }
}
