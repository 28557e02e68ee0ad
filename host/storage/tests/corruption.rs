//! Damage on disk is detected when opened, reported with an error naming the
//! file (or group and index), and never loaded; nothing here may panic.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use waft_storage::{
    EntryKind, Error, LogEntry, LogStore, ModuleHash, ModuleStore, RocksLogStore, SnapshotId, SnapshotStore, WriteSet,
};

fn snapshot_with_file(scratch: &common::Scratch) -> (SnapshotStore, SnapshotId, PathBuf) {
    let store = SnapshotStore::open(scratch.join("snaps")).expect("open");
    let mut w = store.begin_save(1, 10, 1, Bytes::from_static(b"cfg"), ModuleHash::of(b"m")).expect("begin");
    w.append("state", &vec![7u8; 50_000]).expect("append");
    w.append("small", b"hello").expect("append");
    let id = w.commit().expect("commit").id();
    let file = store.snapshot_dir(1, id).join("state");
    (store, id, file)
}

fn assert_names(err: &Error, path: &Path) {
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "error {message:?} does not name {}", path.display());
}

#[test]
fn flipped_byte_in_snapshot_file() {
    let scratch = common::Scratch::new("corrupt-flip");
    let (store, id, file) = snapshot_with_file(&scratch);
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[31_337] ^= 0x01;
    std::fs::write(&file, &bytes).expect("write");
    let err = store.open_snapshot(1, id).err().expect("damage must be detected");
    assert!(matches!(err, Error::SnapshotChecksum { .. }), "{err}");
    assert_names(&err, &file);
    // Detected again after a restart, and never loaded.
    drop(store);
    let store = SnapshotStore::open(scratch.join("snaps")).expect("reopen");
    assert!(matches!(store.open_latest(1), Err(Error::SnapshotChecksum { .. })));
    // Sent to a follower, whose install refuses it as it commits (the
    // leader does not read the whole snapshot for every chunk it serves).
    let reader = store.open_for_transfer(1, id).expect("a transfer reads the meta only");
    let follower = SnapshotStore::open(scratch.join("follower")).expect("open");
    let mut w = follower.begin_install(1, reader.meta().clone()).expect("begin install");
    for f in &reader.meta().files {
        let data = reader.read_chunk(&f.name, 0, f.size as usize).expect("read");
        w.write_chunk(&f.name, 0, &data).expect("write");
    }
    let err = w.commit().expect_err("the follower must refuse the damaged file");
    assert!(matches!(err, Error::SnapshotChecksum { .. }), "{err}");
    assert!(follower.latest(1).is_none(), "nothing installed");
}

#[test]
fn snapshot_truncated_mid_write() {
    let scratch = common::Scratch::new("corrupt-trunc");
    let (store, id, file) = snapshot_with_file(&scratch);
    let f = std::fs::OpenOptions::new().write(true).open(&file).expect("open");
    f.set_len(20_000).expect("truncate");
    let err = store.open_snapshot(1, id).err().expect("truncation must be detected");
    assert!(matches!(err, Error::SnapshotFileSize { expected: 50_000, actual: 20_000, .. }), "{err}");
    assert_names(&err, &file);
}

#[test]
fn snapshot_missing_meta() {
    let scratch = common::Scratch::new("corrupt-nometa");
    let (store, id, _) = snapshot_with_file(&scratch);
    let meta = store.snapshot_dir(1, id).join("meta");
    std::fs::remove_file(&meta).expect("remove meta");
    let err = store.open_snapshot(1, id).err().expect("missing meta must be detected");
    assert!(matches!(err, Error::SnapshotMetaMissing { .. }), "{err}");
    assert_names(&err, &meta);
}

#[test]
fn snapshot_damaged_meta_or_missing_file() {
    let scratch = common::Scratch::new("corrupt-meta");
    let (store, id, _) = snapshot_with_file(&scratch);
    let dir = store.snapshot_dir(1, id);
    let meta = dir.join("meta");
    let mut bytes = std::fs::read(&meta).expect("read");
    bytes[20] ^= 0x80;
    std::fs::write(&meta, &bytes).expect("write");
    let err = store.open_snapshot(1, id).err().expect("meta damage must be detected");
    assert!(matches!(err, Error::SnapshotMetaCorrupt { .. }), "{err}");
    assert_names(&err, &meta);
    bytes[20] ^= 0x80;
    std::fs::write(&meta, &bytes).expect("restore");
    std::fs::remove_file(dir.join("small")).expect("remove");
    let err = store.open_snapshot(1, id).err().expect("missing file must be detected");
    assert!(matches!(err, Error::SnapshotFileMissing { .. }), "{err}");
    assert_names(&err, &dir.join("small"));
    // A damaged snapshot can be discarded so a good one can be installed.
    store.discard(1, id).expect("discard");
    assert!(store.latest(1).is_none());
}

#[test]
fn module_store_verifies_hash() {
    let scratch = common::Scratch::new("corrupt-module");
    let store = ModuleStore::open(scratch.join("modules")).expect("open");
    let wasm = b"\0asm\x01\0\0\0 pretend module".to_vec();
    let hash = store.put(&wasm).expect("put");
    assert_eq!(hash, ModuleHash::of(&wasm));
    assert_eq!(store.put(&wasm).expect("idempotent"), hash);
    assert_eq!(store.get(&hash).expect("get"), wasm);
    assert_eq!(store.list().expect("list"), vec![hash]);
    assert_eq!(hash.to_hex().parse::<ModuleHash>(), Ok(hash));
    let path = store.path_of(&hash);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[3] ^= 0x10;
    std::fs::write(&path, &bytes).expect("write");
    let err = store.get(&hash).expect_err("damage must be detected");
    assert!(matches!(err, Error::ModuleHashMismatch { .. }), "{err}");
    assert_names(&err, &path);
    // Putting the module again repairs it.
    store.put(&wasm).expect("re-put");
    assert_eq!(store.get(&hash).expect("get"), wasm);
    assert!(matches!(store.get(&ModuleHash::of(b"absent")), Err(Error::ModuleNotFound { .. })));
    // Temp files from a crashed put are removed at open.
    std::fs::write(scratch.join("modules").join("tmp-x.wasm-1-2-3"), b"partial").expect("write tmp");
    let store = ModuleStore::open(scratch.join("modules")).expect("reopen");
    assert_eq!(std::fs::read_dir(scratch.join("modules")).expect("list").count(), 1);
    store.remove(&hash).expect("remove");
    assert!(!store.contains(&hash));
}

/// Found by the module_store fuzz target: a file named with upper-case hex
/// digits was listed as a module that `get` and `contains` never find.
#[test]
fn module_store_lists_only_names_it_would_read() {
    let scratch = common::Scratch::new("module-names");
    let store = ModuleStore::open(scratch.join("modules")).expect("open");
    let hash = store.put(b"\0asm\x01\0\0\0 a module").expect("put");
    let upper = format!("{}.wasm", "bbbbE".to_string() + &"b".repeat(59));
    std::fs::write(scratch.join("modules").join(upper), b"stray").expect("write");
    std::fs::write(scratch.join("modules").join("notes.txt"), b"stray").expect("write");
    let listed = store.list().expect("list");
    assert_eq!(listed, vec![hash]);
    assert!(listed.iter().all(|h| store.contains(h)));
}

/// A populated RocksDB directory with at least one SST file (reopening replays
/// the WAL into an SST).
fn populated_db(dir: &Path) {
    {
        let mut store = RocksLogStore::open(dir).expect("open");
        let mut set = WriteSet::new();
        set.append(1, (1..=500).map(|i| LogEntry::new(i, 1, EntryKind::Normal, vec![i as u8; 200])).collect());
        store.write(set).expect("write");
    }
    drop(RocksLogStore::open(dir).expect("reopen"));
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).map(&pred).unwrap_or(false))
        .collect();
    out.sort();
    out
}

fn assert_open_fails_naming(dir: &Path) {
    match RocksLogStore::open(dir) {
        Ok(_) => panic!("opening a damaged RocksDB directory succeeded"),
        Err(err) => {
            eprintln!("as expected: {err}");
            assert!(matches!(err, Error::Open { .. } | Error::OpenLayout { .. }), "{err}");
            assert_names(&err, dir);
        }
    }
}

#[test]
fn rocksdb_garbage_current() {
    let scratch = common::Scratch::new("corrupt-current");
    let dir = scratch.join("db");
    populated_db(&dir);
    std::fs::write(dir.join("CURRENT"), b"\x00\xffgarbage without newline").expect("write");
    assert_open_fails_naming(&dir);
}

#[test]
fn rocksdb_garbage_manifest() {
    let scratch = common::Scratch::new("corrupt-manifest");
    let dir = scratch.join("db");
    populated_db(&dir);
    for manifest in files_with(&dir, |n| n.starts_with("MANIFEST-")) {
        let len = std::fs::metadata(&manifest).expect("stat").len() as usize;
        std::fs::write(&manifest, vec![0xA5u8; len]).expect("write");
    }
    assert_open_fails_naming(&dir);
}

#[test]
fn rocksdb_garbage_sst() {
    let scratch = common::Scratch::new("corrupt-sst");
    let dir = scratch.join("db");
    populated_db(&dir);
    let ssts = files_with(&dir, |n| n.ends_with(".sst"));
    assert!(!ssts.is_empty(), "expected an SST file");
    for sst in ssts {
        let len = std::fs::metadata(&sst).expect("stat").len() as usize;
        std::fs::write(&sst, vec![0x5Au8; len]).expect("write");
    }
    assert_open_fails_naming(&dir);
}

#[test]
fn rocksdb_missing_current() {
    let scratch = common::Scratch::new("corrupt-nocurrent");
    let dir = scratch.join("db");
    populated_db(&dir);
    std::fs::remove_file(dir.join("CURRENT")).expect("remove");
    assert_open_fails_naming(&dir);
}

/// A value that fails its checksum (written behind the store's back) is an
/// error naming group and index, at open for the log's ends and on read inside.
#[test]
fn damaged_entry_value_names_group_and_index() {
    let scratch = common::Scratch::new("corrupt-entry");
    let dir = scratch.join("db");
    populated_db(&dir);
    let key = |index: u64| {
        let mut k = vec![0x10u8];
        k.extend_from_slice(&1u64.to_be_bytes());
        k.extend_from_slice(&index.to_be_bytes());
        k
    };
    {
        let db = rocksdb::DB::open_default(&dir).expect("raw open");
        let mut value = db.get(key(250)).expect("get").expect("present");
        value[5] ^= 0x01;
        db.put(key(250), &value).expect("put");
    }
    let store = RocksLogStore::open(&dir).expect("open: the damage is mid-log");
    let err = store.entries(1, 1, 501, u64::MAX).expect_err("damage must be detected");
    assert!(matches!(err, Error::CorruptEntry { group: 1, index: 250, .. }), "{err}");
    assert!(store.term(1, 250).is_err());
    assert_eq!(store.entries(1, 1, 250, u64::MAX).expect("before the damage").len(), 249);
    drop(store);
    {
        let db = rocksdb::DB::open_default(&dir).expect("raw open");
        db.put(key(500), b"torn").expect("put");
    }
    match RocksLogStore::open(&dir) {
        Ok(_) => panic!("a damaged last entry must fail the open"),
        Err(err) => assert!(matches!(err, Error::CorruptEntry { group: 1, index: 500, .. }), "{err}"),
    }
}
