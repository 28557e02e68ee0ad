//! The group's key-value store as a guest sees it (`waft:fsm/kv`): the
//! store trait a node backs it with, the per-call overlay that makes an
//! entry's writes all-or-nothing, and the host functions.
//!
//! Owns the rules of a *kv state machine* (a guest that imports
//! `waft:fsm/kv`): its state is the store and only the store. Every entry,
//! query and configuration hook runs on a fresh instance (see
//! `machine`), so nothing a guest keeps in memory outlives a call, and what
//! an entry sees is the store as the entries before it left it, whatever
//! the batching, restarts or faults. An entry's writes go into an overlay
//! ([`KvWrites`]) that reads see first; only an entry that returns `ok`
//! hands it to the store, so a trap, fuel exhaustion, a memory-limit hit or
//! an error result leaves nothing behind. Queries get a read-only call: a
//! write returns an error, so no query can change the store.
//!
//! Must never hand the guest anything that differs between replicas (a
//! scan's cut depends only on the pairs and the bounds below), never copy a
//! guest's bytes before charging its fuel for them, and never report a
//! failure of the store itself as an entry's outcome: that stops the group
//! on this replica ([`crate::RuntimeError::Store`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmList};

use crate::host::{FUEL_PER_HOST_BYTE, HostState, charge};
use crate::module::KV_INTERFACE;

/// Longest key, in bytes.
pub const KV_KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value, in bytes.
pub const KV_VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Longest bound of a scan: a longest key with a 0 byte appended, to
/// continue after it.
pub const KV_SCAN_BOUND_BYTES_MAX: usize = KV_KEY_BYTES_MAX + 1;
/// Most bytes (keys and values) one entry's writes may hold at once.
pub const KV_ENTRY_WRITE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most keys one entry may write (puts and deletes together).
pub const KV_ENTRY_WRITE_KEYS_MAX: usize = 65_536;
/// Most bytes (keys and values) one scan returns; at least one pair is
/// returned when there is one, however large.
pub const KV_SCAN_BYTES_MAX: usize = 1024 * 1024;
/// Most pairs one scan returns.
pub const KV_SCAN_PAIRS_MAX: u32 = 4096;
/// Fuel per pair a scan returns, on top of the bytes.
pub const KV_SCAN_PAIR_FUEL: u64 = 100;

/// Key-value pairs, in key order.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A failure of the store itself (a disk error), never of the guest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the group's key-value store failed: {0}")]
pub struct KvError(pub String);

/// One group's key-value store, as a node keeps it: the guest's pairs, and
/// beside them the host's own records (what the node needs to resume from
/// the store: the applied index, the session table; opaque here). Keys
/// are the guest's own (an implementation keeps each group's apart). Reads
/// see every `commit` made before them.
pub trait KvStore: Send {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Visits the pairs with `start <= key < end` (no end: to the last
    /// key), in ascending key order, until `visit` returns false.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError>;

    /// Applies the guest's `writes` and the host's `records` (puts, and
    /// deletes as `None`) all together: after a crash, either all of them
    /// or none are there.
    fn commit(&mut self, writes: &KvWrites, records: &KvWrites) -> Result<(), KvError>;

    /// One of the host's records.
    fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Visits the host's records whose key starts with `prefix`, in key
    /// order, until `visit` returns false.
    fn records(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError>;

    /// Removes every pair and every record.
    fn clear(&mut self) -> Result<(), KvError>;

    /// Makes every commit so far durable (a store may keep recent commits
    /// in memory only: the log they came from can replay them).
    fn sync(&mut self) -> Result<(), KvError>;

    /// The pairs as they are now, readable from another thread while
    /// commits go on (for a snapshot written beside the apply path): as
    /// pairs to stream, or as files the store keeps itself in (a
    /// checkpoint, which a store of the same kind can `restore`).
    fn capture(&self) -> Result<KvCapture, KvError>;

    /// Replaces every pair and record with a checkpoint's files (name in
    /// the checkpoint, path now; see `capture`). On an error the store is
    /// as it was.
    fn restore(&mut self, files: &[(String, PathBuf)]) -> Result<(), KvError> {
        let _ = files;
        Err(KvError("this store cannot restore from a checkpoint's files".into()))
    }
}

/// A store at one moment (see [`KvStore::capture`]).
pub enum KvCapture {
    Pairs(Box<dyn KvView>),
    Files(Box<dyn KvFiles>),
}

/// A store at one moment as the files it keeps itself in.
pub trait KvFiles: Send {
    /// The files, with their sizes and checksums (may read them: call off
    /// the apply path).
    fn files(&self) -> Result<Vec<KvFile>, KvError>;
}

/// One file of a [`KvFiles`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub crc32: u32,
}

/// A store's pairs at one moment (see [`KvStore::view`]).
pub trait KvView: Send {
    /// As [`KvStore::scan`], over the pairs when the view was taken.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError>;
}

/// An in-memory store's view: a copy.
struct MemView(BTreeMap<Vec<u8>, Vec<u8>>);

impl KvView for MemView {
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        visit_range(&self.0, start, end, visit);
        Ok(())
    }
}

/// The record in which the runtime keeps a store's [`KvSum`], beside the
/// host's own records (it commits with the writes it sums).
pub const KV_SUM_RECORD: &[u8] = b"kv-sum";

/// A digest of a store's pairs that moves with every write: the sum, lane
/// by lane (four wrapping u64s), of each pair's sha256, and the number of
/// pairs. The same pairs give the same sum whatever order they were
/// written in, and a write updates it in O(1) (less the pair it replaces,
/// plus the new one), so digesting a state costs nothing that grows with
/// it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvSum {
    lanes: [u64; 4],
    pairs: u64,
    /// Bytes of every key and value.
    bytes: u64,
}

/// Bytes of a [`KvSum`] as recorded and digested.
pub const KV_SUM_BYTES: usize = 48;

impl KvSum {
    fn lanes(key: &[u8], value: &[u8]) -> [u64; 4] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"waft kv pair\0");
        h.update((key.len() as u32).to_le_bytes());
        h.update(key);
        h.update(value);
        let d: [u8; 32] = h.finalize().into();
        let lane = |i: usize| u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        [lane(0), lane(1), lane(2), lane(3)]
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        for (a, b) in self.lanes.iter_mut().zip(Self::lanes(key, value)) {
            *a = a.wrapping_add(b);
        }
        self.pairs = self.pairs.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add((key.len() + value.len()) as u64);
    }

    pub fn sub(&mut self, key: &[u8], value: &[u8]) {
        for (a, b) in self.lanes.iter_mut().zip(Self::lanes(key, value)) {
            *a = a.wrapping_sub(b);
        }
        self.pairs = self.pairs.wrapping_sub(1);
        self.bytes = self.bytes.wrapping_sub((key.len() + value.len()) as u64);
    }

    /// Pairs in the store.
    pub fn pairs(&self) -> u64 {
        self.pairs
    }

    /// Bytes of every key and value in the store.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn to_bytes(self) -> [u8; KV_SUM_BYTES] {
        let mut out = [0u8; KV_SUM_BYTES];
        for (i, lane) in self.lanes.iter().chain([&self.pairs, &self.bytes]).enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&lane.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<KvSum> {
        if bytes.len() != KV_SUM_BYTES {
            return None;
        }
        let word = |i: usize| bytes[i * 8..i * 8 + 8].try_into().ok().map(u64::from_le_bytes);
        Some(KvSum { lanes: [word(0)?, word(1)?, word(2)?, word(3)?], pairs: word(4)?, bytes: word(5)? })
    }
}

/// A store shared by the state machines a group runs in turn (a deploy
/// hands the new module the same store).
pub type KvHandle = Arc<Mutex<dyn KvStore>>;

/// Makes a group's store: what a node passes to its replicas.
pub type KvProvider = Arc<dyn Fn(u64) -> Result<KvHandle, KvError> + Send + Sync>;

/// A provider of in-memory stores: for tests, the simulator, and nodes that
/// run no kv state machine.
pub fn mem_provider() -> KvProvider {
    Arc::new(|_group| Ok(Arc::new(Mutex::new(MemKv::default())) as KvHandle))
}

/// An in-memory store.
#[derive(Default, Debug)]
pub struct MemKv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    records: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn apply_to(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, writes: &KvWrites) {
    for (k, v) in &writes.map {
        match v {
            Some(v) => map.insert(k.clone(), v.clone()),
            None => map.remove(k),
        };
    }
}

fn visit_range(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) {
    for (k, v) in map.range::<[u8], _>((Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded))) {
        if !visit(k, v) {
            break;
        }
    }
}

impl KvStore for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        visit_range(&self.map, start, end, visit);
        Ok(())
    }

    fn commit(&mut self, writes: &KvWrites, records: &KvWrites) -> Result<(), KvError> {
        apply_to(&mut self.map, writes);
        apply_to(&mut self.records, records);
        Ok(())
    }

    fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.records.get(key).cloned())
    }

    fn records(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError> {
        for (k, v) in self.records.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded)) {
            if !k.starts_with(prefix) || !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), KvError> {
        self.map.clear();
        self.records.clear();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), KvError> {
        Ok(())
    }

    fn capture(&self) -> Result<KvCapture, KvError> {
        Ok(KvCapture::Pairs(Box::new(MemView(self.map.clone()))))
    }
}

/// Starts a store's snapshot (see [`write_snapshot`]).
pub const KV_SNAPSHOT_MAGIC: &[u8; 8] = b"WAFTKV1\n";
/// Ends it: no key is this long.
pub(crate) const KV_SNAPSHOT_END: u32 = u32::MAX;

/// Writes the pairs `scan` visits as a snapshot of the store: a magic
/// line, then each pair as a 4-byte little-endian key length, the key, a
/// 4-byte value length and the value, in key order; then a key length of
/// `u32::MAX`. Returns `out` and the bytes written.
pub(crate) fn write_snapshot<W: std::io::Write>(
    scan: impl FnOnce(&mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError>,
    mut out: W,
) -> Result<(W, u64), String> {
    let io = |e: std::io::Error| format!("writing the store's snapshot: {e}");
    let mut bytes = KV_SNAPSHOT_MAGIC.len() as u64;
    let mut failed = None;
    out.write_all(KV_SNAPSHOT_MAGIC).map_err(io)?;
    scan(&mut |k, v| {
        let frame = out
            .write_all(&(k.len() as u32).to_le_bytes())
            .and_then(|()| out.write_all(k))
            .and_then(|()| out.write_all(&(v.len() as u32).to_le_bytes()))
            .and_then(|()| out.write_all(v));
        bytes += 8 + k.len() as u64 + v.len() as u64;
        match frame {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        return Err(io(e));
    }
    out.write_all(&KV_SNAPSHOT_END.to_le_bytes()).map_err(io)?;
    Ok((out, bytes + 4))
}

/// A kv state machine's store at one applied index, to write as a snapshot
/// on another thread while applies go on (`StateMachine::kv_snapshot`).
pub struct KvSnapshot {
    capture: KvCapture,
}

impl KvSnapshot {
    pub(crate) fn new(capture: KvCapture) -> KvSnapshot {
        KvSnapshot { capture }
    }

    /// The store's files, when it was captured as files.
    pub fn files(&self) -> Option<Result<Vec<KvFile>, String>> {
        match &self.capture {
            KvCapture::Files(files) => Some(files.files().map_err(|e| e.to_string())),
            KvCapture::Pairs(_) => None,
        }
    }

    /// Writes the pairs as `StateMachine::save_snapshot` would have at the
    /// moment the view was taken; returns `out` and the bytes written. A
    /// store captured as files is read through `files` instead.
    pub fn write_to<W: std::io::Write>(&self, out: W) -> Result<(W, u64), String> {
        match &self.capture {
            KvCapture::Pairs(view) => write_snapshot(|visit| view.scan(&[], None, visit), out),
            KvCapture::Files(_) => Err("a store captured as files has no stream of pairs".into()),
        }
    }
}

/// One entry's writes, in key order: a value to put, or `None` to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvWrites {
    map: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of every key and value in `map`.
    bytes: usize,
}

impl KvWrites {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes of every key and value held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The writes in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// Records a put (`Some`) or delete, within the per-entry bounds.
    pub fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), String> {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        let old = self.map.get(&key).map(|v| key.len() + v.as_ref().map_or(0, Vec::len));
        if old.is_none() && self.map.len() >= KV_ENTRY_WRITE_KEYS_MAX {
            return Err(format!("an entry may write at most {KV_ENTRY_WRITE_KEYS_MAX} keys"));
        }
        let bytes = self.bytes - old.unwrap_or(0) + size;
        if bytes > KV_ENTRY_WRITE_BYTES_MAX {
            return Err(format!("an entry may write at most {KV_ENTRY_WRITE_BYTES_MAX} bytes of keys and values"));
        }
        self.bytes = bytes;
        self.map.insert(key, value);
        Ok(())
    }

    /// Adds `other`'s writes over these (no bounds: each entry kept to its own).
    pub fn merge(&mut self, other: KvWrites) {
        for (k, v) in other.map {
            self.insert(k, v);
        }
    }

    /// Adds one write with no bounds: a snapshot's pairs, or the host's own
    /// records.
    pub fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if let Some(old) = self.map.get(&key) {
            self.bytes -= key.len() + old.as_ref().map_or(0, Vec::len);
        }
        self.bytes += size;
        self.map.insert(key, value);
    }

    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.map.get(key)
    }
}

/// What one guest call may do with the store, and what it did.
pub(crate) struct KvCall {
    pub(crate) store: KvHandle,
    /// Whether the call may write (an entry or a configuration hook).
    pub(crate) writable: bool,
    /// Writes of earlier entries not yet committed to the store, seen by
    /// this call's reads under its own.
    pub(crate) base: KvWrites,
    /// The call's writes, seen by its own reads.
    pub(crate) writes: KvWrites,
    /// A failure of the store itself during the call: the call's outcome
    /// cannot be trusted, and the group must stop on this replica.
    pub(crate) failed: Option<KvError>,
}

impl KvCall {
    pub(crate) fn new(store: KvHandle, writable: bool, base: KvWrites) -> KvCall {
        KvCall { store, writable, base, writes: KvWrites::default(), failed: None }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(v) = self.writes.get(key).or_else(|| self.base.get(key)) {
            return Ok(v.clone());
        }
        let store = self.store.lock().map_err(|_| KvError("the store's lock is poisoned".into()))?;
        store.get(key)
    }

    /// The store's pairs in range with the uncommitted writes and this
    /// call's laid over them, cut by `limit` and [`KV_SCAN_BYTES_MAX`].
    pub(crate) fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, KvError> {
        let mut cut = Cut { out: Vec::new(), bytes: 0, limit, full: false };
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(cut.out);
        }
        let range = (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        let mut overlay = Layered {
            top: self.writes.map.range::<[u8], _>(range).peekable(),
            below: self.base.map.range::<[u8], _>(range).peekable(),
        }
        .peekable();
        {
            let store = self.store.lock().map_err(|_| KvError("the store's lock is poisoned".into()))?;
            store.scan(start, end, &mut |key, value| {
                // Overlay writes that come first.
                while let Some((k, v)) = overlay.next_if(|(k, _)| *k < key) {
                    if let Some(v) = v
                        && !cut.push(k, v)
                    {
                        return false;
                    }
                }
                match overlay.next_if(|(k, _)| *k == key) {
                    Some((_, Some(v))) => cut.push(key, v),
                    Some((_, None)) => true,
                    None => cut.push(key, value),
                }
            })?;
        }
        if !cut.full {
            for (k, v) in overlay {
                if let Some(v) = v
                    && !cut.push(k, v)
                {
                    break;
                }
            }
        }
        Ok(cut.out)
    }
}

type Writes<'a> = std::iter::Peekable<std::collections::btree_map::Range<'a, Vec<u8>, Option<Vec<u8>>>>;

/// Two ranges of writes merged in key order, the top one's winning a key
/// both hold.
struct Layered<'a> {
    top: Writes<'a>,
    below: Writes<'a>,
}

impl<'a> Iterator for Layered<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let item = |(k, v): (&'a Vec<u8>, &'a Option<Vec<u8>>)| (k.as_slice(), v.as_deref());
        match (self.top.peek(), self.below.peek()) {
            (Some((t, _)), Some((b, _))) if t == b => {
                self.below.next();
                self.top.next().map(item)
            }
            (Some((t, _)), Some((b, _))) if b < t => self.below.next().map(item),
            (Some(_), _) => self.top.next().map(item),
            (None, _) => self.below.next().map(item),
        }
    }
}

/// A scan's result, cut at its bounds.
struct Cut {
    out: KvPairs,
    bytes: usize,
    limit: usize,
    full: bool,
}

impl Cut {
    /// Adds a pair; false (and nothing added) once the result is full.
    fn push(&mut self, key: &[u8], value: &[u8]) -> bool {
        let size = key.len() + value.len();
        if self.out.len() >= self.limit || (!self.out.is_empty() && self.bytes + size > KV_SCAN_BYTES_MAX) {
            self.full = true;
            return false;
        }
        self.bytes += size;
        self.out.push((key.to_vec(), value.to_vec()));
        true
    }
}

/// Host functions of `waft:fsm/kv`. A call outside a kv call (a guest that
/// is not run as a kv state machine cannot import them) traps.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut kv = linker.instance(KV_INTERFACE)?;
    kv.func_wrap("get", |mut store: StoreContextMut<'_, HostState>, (key,): (WasmList<u8>,)| {
        if key.len() > KV_KEY_BYTES_MAX {
            // No such key can exist.
            charge(&mut store, (key.len() as u64).saturating_mul(FUEL_PER_HOST_BYTE))?;
            return Ok((None,));
        }
        let key = take_key(&mut store, &key, KV_KEY_BYTES_MAX)?;
        let value = with_call(&mut store, |call| call.get(&key))?;
        if let Some(v) = &value {
            charge(&mut store, (v.len() as u64).saturating_mul(FUEL_PER_HOST_BYTE))?;
        }
        Ok((value,))
    })?;
    kv.func_wrap("put", |mut store: StoreContextMut<'_, HostState>, (key, value): (WasmList<u8>, WasmList<u8>)| {
        if let Some(refused) = refuse_write(&mut store, key.len(), Some(value.len())) {
            return Ok((Err(refused),));
        }
        let key = take_key(&mut store, &key, KV_KEY_BYTES_MAX)?;
        charge(&mut store, (value.len() as u64).saturating_mul(FUEL_PER_HOST_BYTE))?;
        let value = value.as_le_slice(&store).to_vec();
        Ok((record(&mut store, key, Some(value)),))
    })?;
    kv.func_wrap("delete", |mut store: StoreContextMut<'_, HostState>, (key,): (WasmList<u8>,)| {
        if let Some(refused) = refuse_write(&mut store, key.len(), None) {
            return Ok((Err(refused),));
        }
        let key = take_key(&mut store, &key, KV_KEY_BYTES_MAX)?;
        Ok((record(&mut store, key, None),))
    })?;
    kv.func_wrap(
        "scan",
        |mut store: StoreContextMut<'_, HostState>, (start, end, limit): (WasmList<u8>, Option<WasmList<u8>>, u32)| {
            let start = take_key(&mut store, &start, KV_SCAN_BOUND_BYTES_MAX)?;
            let end = match end {
                Some(end) => Some(take_key(&mut store, &end, KV_SCAN_BOUND_BYTES_MAX)?),
                None => None,
            };
            let limit = limit.min(KV_SCAN_PAIRS_MAX) as usize;
            let pairs = with_call(&mut store, |call| call.scan(&start, end.as_deref(), limit))?;
            let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            let fuel = (bytes as u64)
                .saturating_mul(FUEL_PER_HOST_BYTE)
                .saturating_add((pairs.len() as u64).saturating_mul(KV_SCAN_PAIR_FUEL));
            charge(&mut store, fuel)?;
            Ok((pairs,))
        },
    )?;
    Ok(())
}

/// Copies a key out of guest memory after charging for it; one past `max`
/// bytes traps (nothing is copied).
fn take_key(store: &mut StoreContextMut<'_, HostState>, key: &WasmList<u8>, max: usize) -> wasmtime::Result<Vec<u8>> {
    if key.len() > max {
        wasmtime::bail!("a key of {} bytes exceeds the {max}-byte limit", key.len());
    }
    charge(store, (key.len() as u64).saturating_mul(FUEL_PER_HOST_BYTE))?;
    Ok(key.as_le_slice(&*store).to_vec())
}

/// Why a write of this size may not happen in this call, if it may not.
fn refuse_write(store: &mut StoreContextMut<'_, HostState>, key: usize, value: Option<usize>) -> Option<String> {
    let call = store.data().kv.as_ref()?;
    if !call.writable {
        return Some("the store is read-only here: only an entry (on-apply) or a configuration hook may write".into());
    }
    if key > KV_KEY_BYTES_MAX {
        return Some(format!("a key of {key} bytes exceeds the {KV_KEY_BYTES_MAX}-byte limit"));
    }
    match value {
        Some(value) if value > KV_VALUE_BYTES_MAX => {
            Some(format!("a value of {value} bytes exceeds the {KV_VALUE_BYTES_MAX}-byte limit"))
        }
        _ => None,
    }
}

fn record(store: &mut StoreContextMut<'_, HostState>, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), String> {
    match store.data_mut().kv.as_mut() {
        Some(call) => call.writes.set(key, value),
        None => Err("no key-value store in this call".into()),
    }
}

/// Runs a read against the call's store; a failure of the store is kept for
/// the runtime (which stops the group) and traps the call.
fn with_call<T>(
    store: &mut StoreContextMut<'_, HostState>,
    read: impl FnOnce(&KvCall) -> Result<T, KvError>,
) -> wasmtime::Result<T> {
    let Some(call) = store.data_mut().kv.as_mut() else {
        wasmtime::bail!("the key-value store is not available in this call");
    };
    match read(call) {
        Ok(value) => Ok(value),
        Err(e) => {
            let message = e.to_string();
            call.failed = Some(e);
            Err(wasmtime::Error::msg(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> KvWrites {
        let mut w = KvWrites::default();
        for (k, v) in pairs {
            w.set(k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())).unwrap();
        }
        w
    }

    fn call_over(pairs: &[(&str, &str)]) -> KvCall {
        let mut mem = MemKv::default();
        let w = writes(&pairs.iter().map(|&(k, v)| (k, Some(v))).collect::<Vec<_>>());
        mem.commit(&w, &KvWrites::default()).unwrap();
        KvCall::new(Arc::new(Mutex::new(mem)), true, KvWrites::default())
    }

    #[test]
    fn a_calls_writes_lie_over_earlier_uncommitted_ones_which_lie_over_the_store() {
        let mut call = call_over(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
        call.base = writes(&[("a", None), ("b", Some("22")), ("e", Some("5")), ("f", Some("6"))]);
        call.writes = writes(&[("b", Some("222")), ("c", None), ("e", None), ("g", Some("7"))]);
        assert_eq!(keys(&call.scan(b"", None, 100).unwrap()), ["b=222", "d=4", "f=6", "g=7"]);
        assert_eq!(call.get(b"a").unwrap(), None);
        assert_eq!(call.get(b"b").unwrap(), Some(b"222".to_vec()));
        assert_eq!(call.get(b"f").unwrap(), Some(b"6".to_vec()));
        assert_eq!(keys(&call.scan(b"b", None, 2).unwrap()), ["b=222", "d=4"]);
    }

    fn keys(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
        pairs.iter().map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), String::from_utf8_lossy(v))).collect()
    }

    #[test]
    fn a_scan_lays_the_calls_writes_over_the_store_in_key_order() {
        let mut call = call_over(&[("a", "1"), ("c", "3"), ("e", "5"), ("g", "7")]);
        call.writes.set(b"b".to_vec(), Some(b"2".to_vec())).unwrap();
        call.writes.set(b"c".to_vec(), None).unwrap();
        call.writes.set(b"e".to_vec(), Some(b"55".to_vec())).unwrap();
        call.writes.set(b"h".to_vec(), Some(b"8".to_vec())).unwrap();
        assert_eq!(keys(&call.scan(b"", None, 100).unwrap()), ["a=1", "b=2", "e=55", "g=7", "h=8"]);
        assert_eq!(keys(&call.scan(b"b", Some(b"g"), 100).unwrap()), ["b=2", "e=55"]);
        assert_eq!(keys(&call.scan(b"", None, 2).unwrap()), ["a=1", "b=2"]);
        assert_eq!(keys(&call.scan(b"c", None, 2).unwrap()), ["e=55", "g=7"]);
        assert!(call.scan(b"g", Some(b"a"), 100).unwrap().is_empty());
        assert_eq!(call.get(b"c").unwrap(), None);
        assert_eq!(call.get(b"g").unwrap(), Some(b"7".to_vec()));
    }

    #[test]
    fn a_sum_depends_on_the_pairs_not_on_the_order_of_the_writes() {
        let mut a = KvSum::default();
        a.add(b"x", b"1");
        a.add(b"y", b"2");
        let mut b = KvSum::default();
        b.add(b"y", b"2");
        b.add(b"z", b"3");
        b.add(b"x", b"0");
        b.sub(b"z", b"3");
        b.sub(b"x", b"0");
        b.add(b"x", b"1");
        assert_eq!(a, b);
        assert_eq!(KvSum::from_bytes(&a.to_bytes()), Some(a));
        let mut c = a;
        c.sub(b"y", b"2");
        c.add(b"y", b"3");
        assert_ne!(a, c, "a changed value changes the sum");
        let mut d = KvSum::default();
        d.add(b"xy", b"");
        let mut e = KvSum::default();
        e.add(b"x", b"y");
        assert_ne!(d, e, "the key's length is part of the pair");
        assert_eq!(KvSum::from_bytes(&[0; 31]), None);
        assert_eq!((a.pairs(), b.pairs(), d.pairs()), (2, 2, 1));
        assert_eq!((a.bytes(), d.bytes()), (4, 2));
    }

    #[test]
    fn a_scan_is_cut_by_bytes_but_returns_at_least_one_pair() {
        let big = "x".repeat(KV_SCAN_BYTES_MAX);
        let call = call_over(&[("a", &big), ("b", "1")]);
        assert_eq!(call.scan(b"", None, 10).unwrap().len(), 1, "one pair past the byte bound still comes back");
        let half = "y".repeat(KV_SCAN_BYTES_MAX / 2);
        let call = call_over(&[("a", &half), ("b", &half), ("c", "1")]);
        assert_eq!(call.scan(b"", None, 10).unwrap().len(), 1, "a second half-MiB value would pass the bound");
    }

    #[test]
    fn an_entrys_writes_are_bounded() {
        let mut w = KvWrites::default();
        let value = vec![0u8; KV_VALUE_BYTES_MAX];
        for i in 0..15 {
            w.set(vec![i], Some(value.clone())).unwrap();
        }
        assert!(w.set(vec![99], Some(value.clone())).unwrap_err().contains("at most"));
        // Replacing a value counts the new size, not both.
        w.set(vec![0], Some(vec![1])).unwrap();
        w.set(vec![99], Some(value)).unwrap();
        let mut w = KvWrites::default();
        for i in 0..KV_ENTRY_WRITE_KEYS_MAX as u32 {
            w.set(i.to_be_bytes().to_vec(), None).unwrap();
        }
        assert!(w.set(b"one more".to_vec(), None).is_err());
        w.set(0u32.to_be_bytes().to_vec(), Some(vec![1])).unwrap();
    }
}
