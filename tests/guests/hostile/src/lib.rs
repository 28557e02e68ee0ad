//! A test-only state machine that tries, on command, every way a guest can
//! make replicas of a group diverge or make its host balloon:
//!
//! - it draws random bytes (`wasi:random`) and hashes with std's randomly
//!   seeded `RandomState`, and keeps what it saw in the replicated state;
//! - its queries and its leader hook mutate the instance they run on
//!   (a `Cell` counter, a leader-start counter), and a command copies the
//!   query counter into the state;
//! - it holds memory across snapshots in a way a restored replica lays out
//!   differently (freed holes are not re-created by `load`);
//! - it spams the host's log and stdout, spins forever, writes snapshots
//!   padded with hundreds of MiB of filler and returns huge results.
//!
//! The host must keep every replica's state byte-identical whatever it does,
//! and bound its own work and memory. The tests are in
//! `host/waft/tests/hostile.rs`.
//!
//! # Snapshot format
//!
//! All integers little-endian; the real state first, then (when
//! `snapshot_pad_mib` > 0) that many MiB of filler, which `load` ignores:
//!
//! ```text
//! magic            8 bytes  "HOSTILE1"
//! value            i64
//! draws            u64 count, then per draw: u64 length, UTF-8 hex
//! hashes           u64 count, then u64 each
//! seen_query_count u64
//! leader_starts    u64
//! reservations     u64 count, then u64 size in bytes each
//! snapshot_pad_mib u64
//! drawn            u64 count, then (u64 entry index, u64 value) sorted by index
//! filler           snapshot_pad_mib MiB
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use waft_guest::{Level, Position, StateMachine};

const MIB: u64 = 1024 * 1024;
const PAGE: usize = 4096;
const MAGIC: &[u8; 8] = b"HOSTILE1";
/// Filler is generated and written this many bytes at a time.
const PAD_CHUNK: usize = 64 * 1024;

#[derive(Default)]
pub struct Hostile {
    /// A plain counter (`incr`), for background load.
    value: i64,
    /// Hex of the random bytes each `draw` got.
    draws: Vec<String>,
    /// What `store_hash` computed with a fresh std `RandomState`.
    hashes: Vec<u64>,
    /// The query counter as `record_query_count` found it.
    seen_query_count: u64,
    /// Incremented by `on_leader_start`: must stay 0 in the replicated state.
    leader_starts: u64,
    /// Memory held by `reserve` (the blocks' capacities; their contents are
    /// never read); a freed one stays as an empty Vec so indexes are stable.
    /// Saved as sizes only.
    reservations: Vec<Vec<u8>>,
    /// MiB of filler `save` writes after the real state.
    snapshot_pad_mib: u64,
    /// Entry index -> first 8 random bytes of its draw (a randomly seeded
    /// std map; saved sorted by key).
    drawn: HashMap<u64, u64>,
    /// Queries answered by this instance: changed by `query(&self)`, never
    /// saved.
    queries: Cell<u64>,
}

#[derive(Serialize, Deserialize)]
pub struct Spam {
    pub calls: u64,
    pub bytes: u64,
}

/// The variants' order is their binary (postcard) form: the tests send
/// `big_result` as variant 9. Add new variants at the end.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Draw this many random bytes (`getrandom::fill`); replies their hex.
    Draw(u32),
    /// Hash the value with a fresh std `RandomState`; keep and reply the hash.
    StoreHash(u64),
    /// Copy the query counter into the state; reply it.
    RecordQueryCount,
    /// Hold this many MiB (every page touched); reply the MiB held in all.
    Reserve(u64),
    /// Release reservation `i` (its slot stays); reply the MiB held in all.
    Free(usize),
    /// Build one string of `bytes` bytes, then log it `calls` times.
    LogSpam(Spam),
    /// Build one string of `bytes` bytes, then `println!` it `calls` times.
    PrintSpam(Spam),
    /// Loop forever.
    Spin,
    /// Make every later snapshot carry this many MiB of filler.
    PadSnapshot(u64),
    /// Reply a string of this many bytes. (Send it in binary form for
    /// large sizes: a JSON reply is escape-checked byte by byte.)
    BigResult(u64),
    /// Add to the counter; reply the new value.
    Incr(i64),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// Count this query on the instance; answer the new count.
    Count,
    /// Build and iterate a std `HashMap` of 100 entries; answer its length.
    BuildHashmap,
    /// FNV-1a of what `save` writes, without the filler.
    StateDigest,
    /// The counter.
    Value,
}

/// A reply or an answer: a number or a string, as plain JSON.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Reply {
    Unsigned(u64),
    Signed(i64),
    Text(String),
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A block of `bytes` bytes (its capacity; its length stays 0) whose every
/// page has been written, so it is really backed by memory. Not filled as a
/// whole: a byte-by-byte fill of 100 MiB would spend far more fuel than an
/// entry has; one write per page costs a few instructions per 4 KiB.
fn touched_block(bytes: usize) -> Vec<u8> {
    let mut block: Vec<u8> = Vec::with_capacity(bytes);
    let spare = block.spare_capacity_mut();
    for offset in (0..bytes).step_by(PAGE) {
        spare[offset].write(0);
    }
    // Opaque to the optimizer, so the page writes are kept.
    std::hint::black_box(&mut block);
    block
}

fn mib_to_bytes(mib: u64) -> Result<usize, String> {
    mib.checked_mul(MIB)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{mib} MiB does not fit in memory"))
}

/// A string of `bytes` `x`s, built by doubling (`extend_from_within`, a
/// memory copy) rather than filled byte by byte, so building even 100 MiB
/// costs the entry little fuel: what burns fuel must be what the string is
/// used for.
fn spam_string(bytes: u64) -> Result<String, String> {
    let bytes = usize::try_from(bytes).map_err(|_| format!("{bytes} bytes do not fit in memory"))?;
    let mut s: Vec<u8> = Vec::with_capacity(bytes);
    if bytes > 0 {
        s.push(b'x');
    }
    while s.len() < bytes {
        let more = s.len().min(bytes - s.len());
        s.extend_from_within(..more);
    }
    // SAFETY: every byte is b'x', so the bytes are UTF-8. (`from_utf8`
    // would check them one word at a time: more fuel than the copies.)
    Ok(unsafe { String::from_utf8_unchecked(s) })
}

/// FNV-1a (64-bit) over everything written to it.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Write for Fnv {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for b in buf {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn put_u64(out: &mut impl Write, n: u64) -> io::Result<()> {
    out.write_all(&n.to_le_bytes())
}

fn get_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    input.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad hostile snapshot: {why}"))
}

/// A capacity to reserve for `count` items read from a snapshot: never more
/// than a small bound, so a corrupt count cannot allocate by itself.
fn capacity(count: u64) -> usize {
    count.min(4096) as usize
}

impl Hostile {
    fn reserved_mib(&self) -> u64 {
        self.reservations.iter().map(|r| r.capacity() as u64).sum::<u64>() / MIB
    }

    /// The real state, in the snapshot format (without the filler).
    fn encode(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        put_u64(out, self.value as u64)?;
        put_u64(out, self.draws.len() as u64)?;
        for d in &self.draws {
            put_u64(out, d.len() as u64)?;
            out.write_all(d.as_bytes())?;
        }
        put_u64(out, self.hashes.len() as u64)?;
        for h in &self.hashes {
            put_u64(out, *h)?;
        }
        put_u64(out, self.seen_query_count)?;
        put_u64(out, self.leader_starts)?;
        put_u64(out, self.reservations.len() as u64)?;
        for r in &self.reservations {
            put_u64(out, r.capacity() as u64)?;
        }
        put_u64(out, self.snapshot_pad_mib)?;
        let mut drawn: Vec<(u64, u64)> = self.drawn.iter().map(|(k, v)| (*k, *v)).collect();
        drawn.sort_unstable();
        put_u64(out, drawn.len() as u64)?;
        for (k, v) in drawn {
            put_u64(out, k)?;
            put_u64(out, v)?;
        }
        Ok(())
    }

    fn digest(&self) -> u64 {
        let mut fnv = Fnv::new();
        self.encode(&mut fnv).expect("hashing cannot fail");
        fnv.0
    }
}

impl StateMachine for Hostile {
    type Command = Command;
    type Response = Reply;
    type Query = Query;
    type Answer = Reply;

    fn apply(&mut self, command: Command, at: Position) -> Result<Reply, String> {
        Ok(match command {
            Command::Draw(n) => {
                let mut bytes = vec![0u8; n as usize];
                getrandom::fill(&mut bytes).map_err(|e| format!("getrandom failed: {e}"))?;
                let mut first = [0u8; 8];
                let k = bytes.len().min(8);
                first[..k].copy_from_slice(&bytes[..k]);
                let drawn = hex(&bytes);
                self.draws.push(drawn.clone());
                self.drawn.insert(at.index, u64::from_le_bytes(first));
                Reply::Text(drawn)
            }
            Command::StoreHash(x) => {
                let h = RandomState::new().hash_one(x);
                self.hashes.push(h);
                Reply::Unsigned(h)
            }
            Command::RecordQueryCount => {
                self.seen_query_count = self.queries.get();
                Reply::Unsigned(self.seen_query_count)
            }
            Command::Reserve(mib) => {
                let block = touched_block(mib_to_bytes(mib)?);
                self.reservations.push(std::hint::black_box(block));
                Reply::Unsigned(self.reserved_mib())
            }
            Command::Free(i) => {
                let slot = self.reservations.get_mut(i).ok_or_else(|| format!("no reservation {i}"))?;
                *slot = Vec::new();
                Reply::Unsigned(self.reserved_mib())
            }
            Command::LogSpam(Spam { calls, bytes }) => {
                let s = spam_string(bytes)?;
                for _ in 0..calls {
                    waft_guest::log(Level::Info, &s);
                }
                Reply::Unsigned(calls)
            }
            Command::PrintSpam(Spam { calls, bytes }) => {
                let s = spam_string(bytes)?;
                for _ in 0..calls {
                    println!("{s}");
                }
                Reply::Unsigned(calls)
            }
            Command::Spin => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Command::PadSnapshot(mib) => {
                self.snapshot_pad_mib = mib;
                Reply::Unsigned(mib)
            }
            Command::BigResult(bytes) => Reply::Text(spam_string(bytes)?),
            Command::Incr(delta) => {
                self.value = self.value.wrapping_add(delta);
                Reply::Signed(self.value)
            }
        })
    }

    fn query(&self, query: Query) -> Result<Reply, String> {
        Ok(match query {
            Query::Count => {
                self.queries.set(self.queries.get() + 1);
                Reply::Unsigned(self.queries.get())
            }
            Query::BuildHashmap => {
                let map: HashMap<u64, u64> = (0..100u64).map(|i| (i, i * i)).collect();
                // Walking the map is the point: iteration order is what the
                // seeded hasher shapes.
                #[allow(clippy::iter_count)]
                let len = std::hint::black_box(map.iter().count());
                Reply::Unsigned(len as u64)
            }
            Query::StateDigest => Reply::Unsigned(self.digest()),
            Query::Value => Reply::Signed(self.value),
        })
    }

    fn save(&self, mut out: impl Write) -> io::Result<()> {
        self.encode(&mut out)?;
        if self.snapshot_pad_mib > 0 {
            // One chunk, written over and over: the filler is never held.
            let chunk: Vec<u8> = (0..PAD_CHUNK).map(|i| (i % 251) as u8).collect();
            let chunks = self.snapshot_pad_mib * (MIB / PAD_CHUNK as u64);
            for _ in 0..chunks {
                out.write_all(&chunk)?;
            }
        }
        out.flush()
    }

    fn load(&mut self, mut input: impl Read) -> io::Result<()> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("wrong magic"));
        }
        self.value = get_u64(&mut input)? as i64;
        let n = get_u64(&mut input)?;
        self.draws = Vec::with_capacity(capacity(n));
        for _ in 0..n {
            let len = get_u64(&mut input)?;
            let mut bytes = Vec::new();
            (&mut input).take(len).read_to_end(&mut bytes)?;
            if bytes.len() as u64 != len {
                return Err(bad("truncated draw"));
            }
            self.draws.push(String::from_utf8(bytes).map_err(|_| bad("draw is not UTF-8"))?);
        }
        let n = get_u64(&mut input)?;
        self.hashes = Vec::with_capacity(capacity(n));
        for _ in 0..n {
            self.hashes.push(get_u64(&mut input)?);
        }
        self.seen_query_count = get_u64(&mut input)?;
        self.leader_starts = get_u64(&mut input)?;
        let n = get_u64(&mut input)?;
        self.reservations = Vec::with_capacity(capacity(n));
        for _ in 0..n {
            let size = get_u64(&mut input)?;
            let size = usize::try_from(size).map_err(|_| bad("reservation too large"))?;
            self.reservations.push(touched_block(size));
        }
        self.snapshot_pad_mib = get_u64(&mut input)?;
        let n = get_u64(&mut input)?;
        self.drawn.clear();
        for _ in 0..n {
            let k = get_u64(&mut input)?;
            let v = get_u64(&mut input)?;
            self.drawn.insert(k, v);
        }
        // The filler (if any) follows; it is not state: leave it unread.
        self.queries.set(0);
        Ok(())
    }

    fn on_leader_start(&mut self, _term: u64) {
        self.leader_starts += 1;
    }
}

waft_guest::export!(Hostile);
