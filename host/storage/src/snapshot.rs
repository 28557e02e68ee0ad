//! The snapshot store: one directory per group, one subdirectory per complete
//! snapshot, each holding the state machine's files and a `meta` file.
//!
//! Owns the snapshot directories and the count of open readers per snapshot.
//! Must never expose a snapshot before all of its files and its meta are durable
//! (writers build under a temporary name and rename into place), never load one
//! whose files disagree with its meta, and never delete one a reader holds.
//!
//! Layout: `<root>/group-<g>/snap-<index>-<term>/{meta, <files>...}`. Temporary
//! names start with `tmp-` and are removed at open: they are writes or deletions
//! a crash interrupted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::module::ModuleHash;

/// Most files one snapshot may hold: a kv store's checkpoint has one per
/// table file (64 MiB each, so about 1 TiB). A writer keeps a file open
/// only while it fills it.
pub const SNAPSHOT_FILES_MAX: usize = 16_384;
/// Largest chunk a writer accepts or a reader returns in one call.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest meta file read back (configuration bytes plus the file list).
const META_BYTES_MAX: u64 = 64 * 1024 * 1024;
const FILE_NAME_BYTES_MAX: usize = 255;
/// Buffer for streaming a file through its checksum.
const VERIFY_BUFFER_BYTES: usize = 256 * 1024;
const META_NAME: &str = "meta";
const META_MAGIC: &[u8; 8] = b"WAFTSNAP";
const META_VERSION: u32 = 1;

/// A snapshot is named by the last log entry it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId {
    pub index: u64,
    pub term: u64,
}

impl SnapshotId {
    fn dir_name(&self) -> String {
        format!("snap-{:020}-{:020}", self.index, self.term)
    }

    fn parse(name: &str) -> Option<SnapshotId> {
        let rest = name.strip_prefix("snap-")?;
        let (index, term) = rest.split_once('-')?;
        Some(SnapshotId { index: index.parse().ok()?, term: term.parse().ok()? })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub name: String,
    pub size: u64,
    pub crc32: u32,
}

/// What a snapshot is, written last inside it and sent first to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index and term the snapshot covers.
    pub index: u64,
    pub term: u64,
    /// The group configuration as of `index`, opaque to storage.
    pub config: Bytes,
    /// The state machine module that produced the files.
    pub module_hash: ModuleHash,
    pub files: Vec<SnapshotFile>,
}

impl SnapshotMeta {
    pub fn id(&self) -> SnapshotId {
        SnapshotId { index: self.index, term: self.term }
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The on-disk (and on-wire) form, ending in a crc32 of everything before.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.config.len());
        out.extend_from_slice(META_MAGIC);
        out.extend_from_slice(&META_VERSION.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&self.module_hash.0);
        out.extend_from_slice(&(self.config.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.config);
        out.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for file in &self.files {
            out.extend_from_slice(&(file.name.len() as u16).to_be_bytes());
            out.extend_from_slice(file.name.as_bytes());
            out.extend_from_slice(&file.size.to_be_bytes());
            out.extend_from_slice(&file.crc32.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotMeta, String> {
        if bytes.len() < 4 {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let actual = crc32fast::hash(body);
        if stored != actual {
            return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
        }
        let mut r = Cursor { bytes: body };
        if r.take(8)? != META_MAGIC {
            return Err("not a waft snapshot meta (bad magic)".to_string());
        }
        let version = r.u32()?;
        if version != META_VERSION {
            return Err(format!("unknown meta version {version}"));
        }
        let index = r.u64()?;
        let term = r.u64()?;
        let mut module_hash = [0u8; 32];
        module_hash.copy_from_slice(r.take(32)?);
        let config_len = r.u32()? as usize;
        let config = Bytes::copy_from_slice(r.take(config_len)?);
        let file_count = r.u32()? as usize;
        if file_count > SNAPSHOT_FILES_MAX {
            return Err(format!("{file_count} files exceeds the limit of {SNAPSHOT_FILES_MAX}"));
        }
        let mut files = Vec::with_capacity(file_count);
        for _ in 0..file_count {
            let name_len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(name_len)?).map_err(|e| format!("file name: {e}"))?;
            check_file_name(name)?;
            files.push(SnapshotFile { name: name.to_string(), size: r.u64()?, crc32: r.u32()? });
        }
        if !r.bytes.is_empty() {
            return Err(format!("{} trailing bytes", r.bytes.len()));
        }
        Ok(SnapshotMeta { index, term, config, module_hash: ModuleHash(module_hash), files })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!("ends early: wanted {n} more bytes, {} left", self.bytes.len()));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(buf))
    }
}

/// Snapshot file names are plain names inside the snapshot directory.
fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= FILE_NAME_BYTES_MAX
        && name != META_NAME
        && name != "."
        && name != ".."
        && !name.starts_with(fsutil::TMP_PREFIX)
        && !name.contains(['/', '\\', '\0']);
    if ok { Ok(()) } else { Err(format!("invalid snapshot file name {name:?}")) }
}

#[derive(Default)]
struct GroupSnaps {
    complete: BTreeSet<SnapshotId>,
    /// Open readers per snapshot. Invariant: no entry holds 0.
    readers: BTreeMap<SnapshotId, usize>,
}

struct Shared {
    root: PathBuf,
    groups: Mutex<BTreeMap<u64, GroupSnaps>>,
}

/// Cheap to clone; clones share the reader counts.
#[derive(Clone)]
pub struct SnapshotStore {
    shared: Arc<Shared>,
}

impl SnapshotStore {
    /// Opens (creating if needed) the store under `root`: removes what crashed
    /// writes and deletions left, registers complete snapshots, and deletes all
    /// but the newest of each group (a crash can come between a new snapshot's
    /// rename and the old one's deletion). Snapshots are verified when opened
    /// for reading, not here.
    pub fn open(root: impl AsRef<Path>) -> Result<SnapshotStore> {
        let root = root.as_ref().to_path_buf();
        fsutil::create_dir_durable(&root)?;
        let mut groups = BTreeMap::new();
        for entry in std::fs::read_dir(&root).map_err(Error::io("listing", &root))? {
            let entry = entry.map_err(Error::io("listing", &root))?;
            let name = entry.file_name();
            let Some(group) = name.to_str().and_then(|n| n.strip_prefix("group-")).and_then(|g| g.parse().ok()) else {
                continue;
            };
            let dir = entry.path();
            fsutil::remove_tmp_entries(&dir)?;
            let mut snaps = GroupSnaps::default();
            for entry in std::fs::read_dir(&dir).map_err(Error::io("listing", &dir))? {
                let entry = entry.map_err(Error::io("listing", &dir))?;
                if let Some(id) = entry.file_name().to_str().and_then(SnapshotId::parse) {
                    snaps.complete.insert(id);
                }
            }
            groups.insert(group, snaps);
        }
        let store = SnapshotStore { shared: Arc::new(Shared { root, groups: Mutex::new(groups) }) };
        let group_ids: Vec<u64> = store.lock().keys().copied().collect();
        for group in group_ids {
            store.collect_garbage(group)?;
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, GroupSnaps>> {
        // A panic elsewhere while holding the lock cannot leave the counts
        // half-updated (every update is a single step), so poisoning is ignored.
        self.shared.groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    pub fn group_dir(&self, group: u64) -> PathBuf {
        self.shared.root.join(format!("group-{group:020}"))
    }

    pub fn snapshot_dir(&self, group: u64, id: SnapshotId) -> PathBuf {
        self.group_dir(group).join(id.dir_name())
    }

    /// The newest complete snapshot of `group`.
    pub fn latest(&self, group: u64) -> Option<SnapshotId> {
        self.lock().get(&group).and_then(|g| g.complete.last().copied())
    }

    /// Every complete snapshot of `group` still on disk, ascending.
    pub fn list(&self, group: u64) -> Vec<SnapshotId> {
        self.lock().get(&group).map(|g| g.complete.iter().copied().collect()).unwrap_or_default()
    }

    /// Opens a snapshot for reading after verifying its meta and every file's
    /// size and checksum. The snapshot stays on disk while the reader lives.
    pub fn open_snapshot(&self, group: u64, id: SnapshotId) -> Result<SnapshotReader> {
        self.open_with(group, id, true)
    }

    /// Opens a snapshot to send to a follower: verifies its meta but not
    /// its files, which would read the whole snapshot for every chunk
    /// served. The follower checks every file's size and checksum against
    /// the meta as it commits, so what the leader's disk damaged is refused
    /// there.
    pub fn open_for_transfer(&self, group: u64, id: SnapshotId) -> Result<SnapshotReader> {
        self.open_with(group, id, false)
    }

    fn open_with(&self, group: u64, id: SnapshotId, verify_files: bool) -> Result<SnapshotReader> {
        {
            let mut groups = self.lock();
            let snaps = groups.get_mut(&group).filter(|g| g.complete.contains(&id));
            let Some(snaps) = snaps else {
                return Err(Error::SnapshotNotFound { group, index: id.index, term: id.term });
            };
            *snaps.readers.entry(id).or_insert(0) += 1;
        }
        // From here the hold is released by the guard's Drop, also on error.
        let hold = Hold { store: self.clone(), group, id };
        let dir = self.snapshot_dir(group, id);
        let meta = read_meta(&dir, id)?;
        if verify_files {
            verify_files_of(&dir, &meta)?;
        }
        Ok(SnapshotReader { hold, dir, meta })
    }

    /// Opens the newest snapshot of `group`, if it has one.
    pub fn open_latest(&self, group: u64) -> Result<Option<SnapshotReader>> {
        match self.latest(group) {
            None => Ok(None),
            Some(id) => self.open_snapshot(group, id).map(Some),
        }
    }

    /// Starts a local snapshot: the caller streams files in and `commit` computes
    /// their sizes and checksums into the meta.
    pub fn begin_save(
        &self,
        group: u64,
        index: u64,
        term: u64,
        config: Bytes,
        module_hash: ModuleHash,
    ) -> Result<SnapshotWriter> {
        let meta = SnapshotMeta { index, term, config, module_hash, files: Vec::new() };
        self.begin(group, meta, None)
    }

    /// Starts receiving a snapshot from a leader whose `meta` arrived first; the
    /// caller pulls chunks (resuming at `next_offset` after a failure) and
    /// `commit` refuses unless every file matches `meta` exactly.
    pub fn begin_install(&self, group: u64, meta: SnapshotMeta) -> Result<SnapshotWriter> {
        if meta.files.len() > SNAPSHOT_FILES_MAX {
            return Err(Error::SnapshotWrite {
                reason: format!("{} files exceeds the limit of {SNAPSHOT_FILES_MAX}", meta.files.len()),
            });
        }
        let mut expected = BTreeMap::new();
        for file in &meta.files {
            check_file_name(&file.name).map_err(|reason| Error::SnapshotWrite { reason })?;
            if expected.insert(file.name.clone(), file.clone()).is_some() {
                return Err(Error::SnapshotWrite { reason: format!("file {:?} listed twice", file.name) });
            }
        }
        self.begin(group, meta, Some(expected))
    }

    fn begin(
        &self,
        group: u64,
        meta: SnapshotMeta,
        expected: Option<BTreeMap<String, SnapshotFile>>,
    ) -> Result<SnapshotWriter> {
        if meta.config.len() as u64 > META_BYTES_MAX / 2 {
            return Err(Error::SnapshotWrite {
                reason: format!("configuration of {} bytes is too large", meta.config.len()),
            });
        }
        if let Some(latest) = self.latest(group)
            && meta.id() <= latest
        {
            return Err(Error::SnapshotWrite {
                reason: format!(
                    "group {group} already has snapshot {}/{}, not older than {}/{}",
                    latest.index, latest.term, meta.index, meta.term
                ),
            });
        }
        let group_dir = self.group_dir(group);
        fsutil::create_dir_durable(&group_dir)?;
        let tmp_dir = group_dir.join(fsutil::tmp_name("snap"));
        std::fs::create_dir(&tmp_dir).map_err(Error::io("creating", &tmp_dir))?;
        Ok(SnapshotWriter {
            store: self.clone(),
            group,
            tmp_dir,
            meta,
            expected,
            files: BTreeMap::new(),
            finished: false,
        })
    }

    /// Removes a snapshot now (e.g. one found damaged), unless a reader holds it.
    pub fn discard(&self, group: u64, id: SnapshotId) -> Result<()> {
        {
            let mut groups = self.lock();
            let Some(snaps) = groups.get_mut(&group) else {
                return Ok(());
            };
            if snaps.readers.contains_key(&id) {
                return Err(Error::SnapshotWrite {
                    reason: format!("snapshot {}/{} is open by a reader", id.index, id.term),
                });
            }
            if !snaps.complete.remove(&id) {
                return Ok(());
            }
        }
        self.delete_dir(group, id)
    }

    /// Deletes every snapshot of `group` older than the newest that no reader
    /// holds.
    fn collect_garbage(&self, group: u64) -> Result<()> {
        let victims: Vec<SnapshotId> = {
            let mut groups = self.lock();
            let Some(snaps) = groups.get_mut(&group) else {
                return Ok(());
            };
            let Some(latest) = snaps.complete.last().copied() else {
                return Ok(());
            };
            let victims: Vec<SnapshotId> =
                snaps.complete.iter().copied().filter(|id| *id < latest && !snaps.readers.contains_key(id)).collect();
            for id in &victims {
                snaps.complete.remove(id);
            }
            victims
        };
        for id in victims {
            self.delete_dir(group, id)?;
        }
        Ok(())
    }

    /// Renames first, so a crash mid-deletion leaves a `tmp-` name that open
    /// removes, never a `snap-` directory with files missing.
    fn delete_dir(&self, group: u64, id: SnapshotId) -> Result<()> {
        let group_dir = self.group_dir(group);
        let dir = group_dir.join(id.dir_name());
        let doomed = group_dir.join(fsutil::tmp_name("del"));
        std::fs::rename(&dir, &doomed).map_err(Error::io("renaming for deletion", &dir))?;
        fsutil::sync_dir(&group_dir)?;
        std::fs::remove_dir_all(&doomed).map_err(Error::io("deleting", &doomed))
    }

    fn release(&self, group: u64, id: SnapshotId) {
        {
            let mut groups = self.lock();
            let Some(snaps) = groups.get_mut(&group) else {
                return;
            };
            if let Some(count) = snaps.readers.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    snaps.readers.remove(&id);
                }
            }
        }
        // Best effort: Drop cannot report an error, and whatever stays behind is
        // removed by the next commit or the next open.
        let _ = self.collect_garbage(group);
    }
}

/// Reads a snapshot's meta and checks every file against it.
fn read_meta(dir: &Path, id: SnapshotId) -> Result<SnapshotMeta> {
    let meta_path = dir.join(META_NAME);
    let file = match File::open(&meta_path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::SnapshotMetaMissing { path: meta_path });
        }
        Err(e) => return Err(Error::io("opening", &meta_path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(META_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(Error::io("reading", &meta_path))?;
    if bytes.len() as u64 > META_BYTES_MAX {
        return Err(Error::SnapshotMetaCorrupt {
            path: meta_path,
            reason: format!("larger than {META_BYTES_MAX} bytes"),
        });
    }
    let meta = SnapshotMeta::decode(&bytes)
        .map_err(|reason| Error::SnapshotMetaCorrupt { path: meta_path.clone(), reason })?;
    if meta.id() != id {
        return Err(Error::SnapshotMetaCorrupt {
            path: meta_path,
            reason: format!(
                "describes {}/{} but sits in the directory of {}/{}",
                meta.index, meta.term, id.index, id.term
            ),
        });
    }
    Ok(meta)
}

/// Checks every file of a snapshot against its meta: size and checksum.
fn verify_files_of(dir: &Path, meta: &SnapshotMeta) -> Result<()> {
    let mut buffer = vec![0u8; VERIFY_BUFFER_BYTES];
    for expected in &meta.files {
        let path = dir.join(&expected.name);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::SnapshotFileMissing { path });
            }
            Err(e) => return Err(Error::io("opening", &path)(e)),
        };
        let actual = file.metadata().map_err(Error::io("inspecting", &path))?.len();
        if actual != expected.size {
            return Err(Error::SnapshotFileSize { path, expected: expected.size, actual });
        }
        let mut hasher = crc32fast::Hasher::new();
        loop {
            let n = file.read(&mut buffer).map_err(Error::io("reading", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        let actual = hasher.finalize();
        if actual != expected.crc32 {
            return Err(Error::SnapshotChecksum { path, expected: expected.crc32, actual });
        }
    }
    Ok(())
}

/// One reader's claim on a snapshot; dropping it may let the snapshot go.
struct Hold {
    store: SnapshotStore,
    group: u64,
    id: SnapshotId,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.store.release(self.group, self.id);
    }
}

/// A verified, complete snapshot held open for loading or for transfer.
pub struct SnapshotReader {
    hold: Hold,
    dir: PathBuf,
    meta: SnapshotMeta,
}

impl SnapshotReader {
    pub fn group(&self) -> u64 {
        self.hold.group
    }

    pub fn id(&self) -> SnapshotId {
        self.hold.id
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> Result<&SnapshotFile> {
        self.meta.files.iter().find(|f| f.name == name).ok_or_else(|| Error::SnapshotWrite {
            reason: format!("snapshot {}/{} has no file {name:?}", self.meta.index, self.meta.term),
        })
    }

    /// Path of one of the snapshot's files, for streaming it into a state machine.
    pub fn file_path(&self, name: &str) -> Result<PathBuf> {
        self.file(name)?;
        Ok(self.dir.join(name))
    }

    /// Up to `max_len` bytes (capped at `SNAPSHOT_CHUNK_BYTES_MAX`) of `name` from
    /// `offset`; empty at or past the end.
    pub fn read_chunk(&self, name: &str, offset: u64, max_len: usize) -> Result<Bytes> {
        let size = self.file(name)?.size;
        if offset >= size {
            return Ok(Bytes::new());
        }
        let len = (size - offset).min(max_len.min(SNAPSHOT_CHUNK_BYTES_MAX) as u64) as usize;
        let path = self.dir.join(name);
        let mut file = File::open(&path).map_err(Error::io("opening", &path))?;
        file.seek(SeekFrom::Start(offset)).map_err(Error::io("seeking in", &path))?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).map_err(Error::io("reading", &path))?;
        Ok(Bytes::from(buf))
    }
}

struct PartFile {
    /// Open while it is being written; closed (synced) once an install's
    /// file holds every byte its meta promised, and never open for a file
    /// moved in whole, so a snapshot of many files holds few descriptors.
    file: Option<File>,
    len: u64,
    hasher: crc32fast::Hasher,
    /// Bytes written since the file was last synced.
    unsynced: u64,
    /// The checksum of a file moved in whole (`adopt`), known already.
    adopted_crc: Option<u32>,
}

/// Bytes of a snapshot file written before it is synced on the way, so a
/// large snapshot reaches the disk a little at a time instead of in one
/// burst at commit, which would hold up the log's syncs behind it.
pub const SNAPSHOT_SYNC_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// Builds one snapshot under a temporary directory; nothing is visible until
/// `commit`. Dropping an uncommitted writer removes its temporary directory.
pub struct SnapshotWriter {
    store: SnapshotStore,
    group: u64,
    tmp_dir: PathBuf,
    /// `files` is filled in at commit.
    meta: SnapshotMeta,
    /// For installs: the files the leader's meta promises.
    expected: Option<BTreeMap<String, SnapshotFile>>,
    files: BTreeMap<String, PartFile>,
    finished: bool,
}

impl SnapshotWriter {
    pub fn id(&self) -> SnapshotId {
        self.meta.id()
    }

    /// Where the next chunk of `name` must start: a resumed transfer asks here.
    pub fn next_offset(&self, name: &str) -> u64 {
        self.files.get(name).map(|f| f.len).unwrap_or(0)
    }

    /// Appends `data` to `name` at `offset`, which must equal `next_offset(name)`.
    pub fn write_chunk(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        let refuse = |reason: String| Error::SnapshotWrite { reason };
        check_file_name(name).map_err(refuse)?;
        if data.len() > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(refuse(format!("chunk of {} bytes exceeds {SNAPSHOT_CHUNK_BYTES_MAX}", data.len())));
        }
        if let Some(expected) = &self.expected {
            let Some(file) = expected.get(name) else {
                return Err(refuse(format!("file {name:?} is not in the snapshot's meta")));
            };
            if offset + data.len() as u64 > file.size {
                return Err(refuse(format!(
                    "chunk {offset}+{} overruns {name:?}, which has {} bytes",
                    data.len(),
                    file.size
                )));
            }
        }
        if !self.files.contains_key(name) {
            if self.files.len() >= SNAPSHOT_FILES_MAX {
                return Err(refuse(format!("more than {SNAPSHOT_FILES_MAX} files")));
            }
            self.create_part(name)?;
        }
        let Some(part) = self.files.get_mut(name) else { unreachable!("inserted above") };
        if part.adopted_crc.is_some() {
            return Err(refuse(format!("file {name:?} was moved in whole")));
        }
        if offset != part.len {
            return Err(refuse(format!("chunk of {name:?} at offset {offset}, but the next offset is {}", part.len)));
        }
        let path = self.tmp_dir.join(name);
        let Some(file) = part.file.as_mut() else {
            return Err(refuse(format!("file {name:?} is complete")));
        };
        file.write_all(data).map_err(Error::io("writing", &path))?;
        part.hasher.update(data);
        part.len += data.len() as u64;
        part.unsynced += data.len() as u64;
        let complete = self.expected.as_ref().and_then(|e| e.get(name)).is_some_and(|f| f.size == part.len);
        if complete {
            file.sync_all().map_err(Error::io("fsyncing", &path))?;
            part.file = None;
            part.unsynced = 0;
        } else if part.unsynced >= SNAPSHOT_SYNC_EVERY_BYTES {
            file.sync_data().map_err(Error::io("fsyncing", &path))?;
            part.unsynced = 0;
        }
        Ok(())
    }

    /// Create the temporary file behind `name`, empty.
    fn create_part(&mut self, name: &str) -> Result<()> {
        let path = self.tmp_dir.join(name);
        // A new file, never one already there (it could be a link to
        // another snapshot's file, which truncating would damage).
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("replacing", &path)(e)),
            _ => {}
        }
        let file = File::options().write(true).create_new(true).open(&path).map_err(Error::io("creating", &path))?;
        let part =
            PartFile { file: Some(file), len: 0, hasher: crc32fast::Hasher::new(), unsynced: 0, adopted_crc: None };
        self.files.insert(name.to_string(), part);
        Ok(())
    }

    /// Moves the file at `from` into the snapshot as `name`, whole: its
    /// size and checksum are `size` and `crc32` (what the caller read of it;
    /// a follower's copy is checked against them). Renamed where it can be,
    /// copied where not (another file system).
    pub fn adopt(&mut self, name: &str, from: &Path, size: u64, crc32: u32) -> Result<()> {
        self.take_whole(name, from, size, crc32, false)
    }

    /// Shares the file at `from`, one of a committed snapshot's (which never
    /// change), as `name` by a hard link, without writing its bytes again;
    /// copied where it cannot be linked. `size` and `crc32`: what that
    /// snapshot's meta says of it.
    pub fn link(&mut self, name: &str, from: &Path, size: u64, crc32: u32) -> Result<()> {
        self.take_whole(name, from, size, crc32, true)
    }

    fn take_whole(&mut self, name: &str, from: &Path, size: u64, crc32: u32, link: bool) -> Result<()> {
        let refuse = |reason: String| Error::SnapshotWrite { reason };
        check_file_name(name).map_err(refuse)?;
        if self.expected.is_some() {
            return Err(refuse(format!("file {name:?}: an install takes chunks, not whole files")));
        }
        if self.files.contains_key(name) {
            return Err(refuse(format!("file {name:?} is written already")));
        }
        if self.files.len() >= SNAPSHOT_FILES_MAX {
            return Err(refuse(format!("more than {SNAPSHOT_FILES_MAX} files")));
        }
        let to = self.tmp_dir.join(name);
        let moved = if link { std::fs::hard_link(from, &to) } else { std::fs::rename(from, &to) };
        if moved.is_err() {
            std::fs::copy(from, &to).map_err(Error::io("copying into a snapshot", &to))?;
        }
        let len = match std::fs::metadata(&to) {
            Ok(m) if m.len() == size => m.len(),
            // Not taken: the name is left free (a linked file is another
            // snapshot's, which a later write of this name must not touch).
            Ok(m) => {
                let _ = std::fs::remove_file(&to);
                return Err(Error::SnapshotFileSize { path: to, expected: size, actual: m.len() });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&to);
                return Err(Error::io("inspecting", &to)(e));
            }
        };
        // Synced at commit (the table files RocksDB synced already; its
        // copies maybe not).
        let part =
            PartFile { file: None, len, hasher: crc32fast::Hasher::new(), unsynced: 0, adopted_crc: Some(crc32) };
        self.files.insert(name.to_string(), part);
        Ok(())
    }

    /// Appends `data` at the end of `name`.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.write_chunk(name, self.next_offset(name), data)
    }

    /// Makes the snapshot durable and visible: fsync every file, write and fsync
    /// the meta, fsync the directory, rename it into place, fsync the parent.
    /// Older snapshots no reader holds are deleted afterwards.
    pub fn commit(mut self) -> Result<SnapshotMeta> {
        let unwritten: Vec<String> = match &self.expected {
            Some(expected) => expected.keys().filter(|n| !self.files.contains_key(*n)).cloned().collect(),
            None => Vec::new(),
        };
        for name in unwritten {
            // A file never written to is created empty; if the meta promised
            // bytes, the size check below refuses it.
            self.create_part(&name)?;
        }
        let mut files = Vec::with_capacity(self.files.len());
        for (name, part) in &self.files {
            let path = self.tmp_dir.join(name);
            match &part.file {
                Some(file) => file.sync_all().map_err(Error::io("fsyncing", &path))?,
                // Moved in whole: open it to sync (an install's file closed
                // when complete was synced then).
                None if part.adopted_crc.is_some() => {
                    File::open(&path).and_then(|f| f.sync_all()).map_err(Error::io("fsyncing", &path))?
                }
                None => {}
            }
            let crc32 = part.adopted_crc.unwrap_or_else(|| part.hasher.clone().finalize());
            let file = SnapshotFile { name: name.clone(), size: part.len, crc32 };
            if let Some(want) = self.expected.as_ref().and_then(|e| e.get(name)) {
                if want.size != file.size {
                    return Err(Error::SnapshotFileSize { path, expected: want.size, actual: file.size });
                }
                if want.crc32 != file.crc32 {
                    return Err(Error::SnapshotChecksum { path, expected: want.crc32, actual: file.crc32 });
                }
            }
            files.push(file);
        }
        self.files.clear();
        let mut meta = self.meta.clone();
        meta.files = files;
        let meta_path = self.tmp_dir.join(META_NAME);
        let mut file = File::create(&meta_path).map_err(Error::io("creating", &meta_path))?;
        file.write_all(&meta.encode()).map_err(Error::io("writing", &meta_path))?;
        file.sync_all().map_err(Error::io("fsyncing", &meta_path))?;
        fsutil::sync_dir(&self.tmp_dir)?;

        let id = meta.id();
        let group_dir = self.store.group_dir(self.group);
        let target = group_dir.join(id.dir_name());
        {
            // Hold the lock across the rename so no concurrent commit of the same
            // group can interleave between the check and the registration.
            let mut groups = self.store.lock();
            let snaps = groups.entry(self.group).or_default();
            if let Some(latest) = snaps.complete.last()
                && id <= *latest
            {
                return Err(Error::SnapshotWrite {
                    reason: format!("a snapshot {}/{} was committed meanwhile", latest.index, latest.term),
                });
            }
            std::fs::rename(&self.tmp_dir, &target).map_err(Error::io("renaming into place", &target))?;
            self.finished = true;
            fsutil::sync_dir(&group_dir)?;
            snaps.complete.insert(id);
        }
        self.store.collect_garbage(self.group)?;
        Ok(meta)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: the next open removes any `tmp-` directory left over.
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
    }
}
