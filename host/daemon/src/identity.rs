//! Who this data directory is, and which data directory this node expects
//! behind each peer.
//!
//! A node's votes and acknowledgements are promises about what its disk
//! holds. A node whose data directory was lost (wiped, replaced by an empty
//! disk, restored from an old copy it did not make) restarts knowing no term
//! and no vote: let it vote and it may vote twice in one term, let it count
//! toward a quorum and an acknowledged write may rest on a copy that is gone.
//! So every data directory gets an incarnation, a random number chosen when
//! the directory is made ([`IDENTITY_FILE`]), and every peer stream says
//! which incarnation sends it. A node remembers the incarnation it first met
//! behind each peer ([`PEERS_FILE`]) and refuses streams from any other: a
//! wiped node's messages (its votes, its acknowledgements) then reach no one
//! and it counts toward no quorum, while it still hears the leader. An
//! operator who knows the node lost its data says so with `waft admin
//! replace-node`, which makes every other node forget the old incarnation
//! and take the next one it meets.
//!
//! Must never accept a stream whose incarnation differs from the one on
//! record, and must record a new one durably before accepting it.
//!
//! Layouts (text, one record per line):
//!
//! ```text
//! identity:          "waft-identity 1" | "node <id>" | "incarnation <16 hex digits>"
//! peer-incarnations: "<node id> <16 hex digits>" per peer met
//! ```

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use waft_raft::NodeId;

/// The data directory's identity (see the module docs).
pub const IDENTITY_FILE: &str = "identity";
/// The incarnation this node met behind each peer.
pub const PEERS_FILE: &str = "peer-incarnations";
/// gRPC metadata on every peer stream: the sending node's id.
pub const NODE_HEADER: &str = "waft-node";
/// gRPC metadata on every peer stream: the sending data directory's incarnation.
pub const INCARNATION_HEADER: &str = "waft-incarnation";
/// Peers a book records at most; more is a damaged file.
pub const PEERS_MAX: usize = 4096;

const IDENTITY_MAGIC: &str = "waft-identity 1";

/// This data directory's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node: NodeId,
    pub incarnation: u64,
    /// The directory was made by this start: it holds no state yet.
    pub fresh: bool,
}

impl Identity {
    /// Reads the identity of the data directory at `dir`, or makes one for a
    /// directory that has none. `had_state` says whether the directory held
    /// a log already: an identity without its log is replaced by a new one
    /// (the log it vouched for is gone). Refuses a directory made for
    /// another node id.
    pub fn open(dir: &Path, node: NodeId, had_state: bool) -> Result<Identity, String> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (recorded, incarnation) = parse_identity(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                if recorded != node {
                    return Err(format!(
                        "{} belongs to node {recorded}, not node {node}: point --data-dir at this node's own directory",
                        dir.display()
                    ));
                }
                if had_state {
                    return Ok(Identity { node, incarnation, fresh: false });
                }
                // The identity outlived the log it vouched for (the log
                // directory was wiped or replaced): what this node promised
                // is gone, so it is a new incarnation.
                tracing::warn!(
                    node,
                    old = format!("{incarnation:016x}"),
                    "the data directory has an identity but no log: a new incarnation"
                );
                Identity::create(&path, node, incarnation)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Identity::create(&path, node, 0),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Makes and records a new incarnation (never `old`).
    fn create(path: &Path, node: NodeId, old: u64) -> Result<Identity, String> {
        let mut incarnation = random_incarnation();
        while incarnation == old {
            incarnation = random_incarnation();
        }
        let text = format!("{IDENTITY_MAGIC}\nnode {node}\nincarnation {incarnation:016x}\n");
        write_durably(path, text.as_bytes())?;
        Ok(Identity { node, incarnation, fresh: true })
    }
}

pub(crate) fn parse_identity(text: &str) -> Result<(NodeId, u64), String> {
    let mut lines = text.lines();
    if lines.next() != Some(IDENTITY_MAGIC) {
        return Err(format!("not an identity file (its first line is not `{IDENTITY_MAGIC}`)"));
    }
    let node = lines
        .next()
        .and_then(|l| l.strip_prefix("node "))
        .and_then(|v| v.parse().ok())
        .ok_or("the second line is not `node <id>`")?;
    let incarnation = lines
        .next()
        .and_then(|l| l.strip_prefix("incarnation "))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or("the third line is not `incarnation <hex>`")?;
    Ok((node, incarnation))
}

/// A random 64-bit number from the OS's randomness (std seeds every
/// `RandomState` from it), never 0.
fn random_incarnation() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a torn one: a temporary file, synced, renamed over, and the
/// directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let shown = path.display();
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {shown}: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// The incarnation this node met behind each peer, on disk.
pub struct PeerBook {
    path: PathBuf,
    /// Invariant: equal to the file's contents once a call returns.
    known: Mutex<BTreeMap<NodeId, u64>>,
}

/// Why a peer stream is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The sender's data directory is not the one this node met before.
    Replaced { node: NodeId, expected: u64, got: u64 },
    /// The book could not be written: nothing was accepted.
    Io(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Replaced { node, expected, got } => write!(
                f,
                "node {node} speaks from data directory incarnation {got:016x}, but this node knows it as \
                 {expected:016x}: its data directory was lost or replaced, so its votes and acknowledgements \
                 may promise what it no longer holds. It takes no part until an operator who knows it lost its \
                 data runs `waft admin replace-node --node {node}`"
            ),
            Refusal::Io(why) => write!(f, "cannot record a peer's incarnation: {why}"),
        }
    }
}

impl PeerBook {
    /// Reads the book in `dir` (empty when there is none).
    pub fn open(dir: &Path) -> Result<PeerBook, String> {
        let path = dir.join(PEERS_FILE);
        let known = match std::fs::read_to_string(&path) {
            Ok(text) => parse_book(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(PeerBook { path, known: Mutex::new(known) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, u64>> {
        // The map is only ever replaced whole after a successful write.
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a stream from `node` speaking as `incarnation`: the one on
    /// record, or, for a node never met (or forgotten by `replace-node`),
    /// recorded durably first.
    pub fn admit(&self, node: NodeId, incarnation: u64) -> Result<(), Refusal> {
        let mut known = self.lock();
        match known.get(&node) {
            Some(&expected) if expected == incarnation => Ok(()),
            Some(&expected) => Err(Refusal::Replaced { node, expected, got: incarnation }),
            None => {
                if known.len() >= PEERS_MAX {
                    return Err(Refusal::Io(format!("more than {PEERS_MAX} peers recorded")));
                }
                let mut next = known.clone();
                next.insert(node, incarnation);
                write_durably(&self.path, render_book(&next).as_bytes()).map_err(Refusal::Io)?;
                *known = next;
                tracing::info!(peer = node, incarnation = format!("{incarnation:016x}"), "met a peer's data directory");
                Ok(())
            }
        }
    }

    /// Forgets the incarnation on record for `node` (an operator replaced
    /// its data directory); returns it, if there was one.
    pub fn forget(&self, node: NodeId) -> Result<Option<u64>, String> {
        let mut known = self.lock();
        let Some(&old) = known.get(&node) else { return Ok(None) };
        let mut next = known.clone();
        next.remove(&node);
        write_durably(&self.path, render_book(&next).as_bytes())?;
        *known = next;
        Ok(Some(old))
    }

    /// The incarnation on record for `node`.
    pub fn known(&self, node: NodeId) -> Option<u64> {
        self.lock().get(&node).copied()
    }
}

pub(crate) fn parse_book(text: &str) -> Result<BTreeMap<NodeId, u64>, String> {
    let mut known = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || format!("line {} is not `<node id> <hex incarnation>`", i + 1);
        let (node, inc) = line.split_once(' ').ok_or_else(bad)?;
        let node: NodeId = node.parse().map_err(|_| bad())?;
        let inc = u64::from_str_radix(inc, 16).map_err(|_| bad())?;
        if known.insert(node, inc).is_some() {
            return Err(format!("node {node} is recorded twice"));
        }
        if known.len() > PEERS_MAX {
            return Err(format!("more than {PEERS_MAX} peers recorded"));
        }
    }
    Ok(known)
}

fn render_book(known: &BTreeMap<NodeId, u64>) -> String {
    known.iter().map(|(n, i)| format!("{n} {i:016x}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("waft-identity-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let d = dir("kept");
        let first = Identity::open(&d, 3, false).unwrap();
        assert!(first.fresh);
        let again = Identity::open(&d, 3, true).unwrap();
        assert_eq!(again, Identity { fresh: false, ..first });
        let log_gone = Identity::open(&d, 3, false).unwrap();
        assert!(log_gone.fresh && log_gone.incarnation != first.incarnation, "an identity without its log is new");
        assert_eq!(Identity::open(&d, 3, true).unwrap().incarnation, log_gone.incarnation);
        let e = Identity::open(&d, 4, true).unwrap_err();
        assert!(e.contains("belongs to node 3"), "{e}");
        std::fs::write(d.join(IDENTITY_FILE), "garbage").unwrap();
        assert!(Identity::open(&d, 3, true).unwrap_err().contains("not an identity file"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_wiped_directory_gets_a_new_incarnation() {
        let d = dir("wiped");
        let first = Identity::open(&d, 1, false).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::create_dir_all(&d).unwrap();
        let second = Identity::open(&d, 1, false).unwrap();
        assert_ne!(first.incarnation, second.incarnation);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_book_refuses_another_incarnation_until_it_is_forgotten() {
        let d = dir("book");
        let book = PeerBook::open(&d).unwrap();
        book.admit(2, 0xaa).unwrap();
        book.admit(2, 0xaa).unwrap();
        let refused = book.admit(2, 0xbb).unwrap_err();
        assert_eq!(refused, Refusal::Replaced { node: 2, expected: 0xaa, got: 0xbb });
        assert!(refused.to_string().contains("waft admin replace-node --node 2"));
        // What was met survives a restart.
        let reopened = PeerBook::open(&d).unwrap();
        assert_eq!(reopened.known(2), Some(0xaa));
        assert!(reopened.admit(2, 0xbb).is_err());
        assert_eq!(reopened.forget(2).unwrap(), Some(0xaa));
        reopened.admit(2, 0xbb).unwrap();
        assert_eq!(PeerBook::open(&d).unwrap().known(2), Some(0xbb));
        std::fs::write(d.join(PEERS_FILE), "2 zz\n").unwrap();
        assert!(PeerBook::open(&d).is_err(), "a damaged book is refused, not guessed at");
        let _ = std::fs::remove_dir_all(&d);
    }
}
