//! Snapshot store behaviour: save, read by chunk, install by pulled chunks with
//! resume, retention with reader counts, and cleanup of crash leftovers.

mod common;

use bytes::Bytes;
use waft_storage::{Error, ModuleHash, SnapshotId, SnapshotStore};

fn data(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
}

fn save(store: &SnapshotStore, group: u64, index: u64, files: &[(&str, Vec<u8>)]) -> SnapshotId {
    let mut w = store
        .begin_save(group, index, 2, Bytes::from_static(b"peers=1,2,3"), ModuleHash::of(b"module"))
        .expect("begin");
    for (name, bytes) in files {
        for chunk in bytes.chunks(1000) {
            w.append(name, chunk).expect("append");
        }
        if bytes.is_empty() {
            w.append(name, &[]).expect("empty file");
        }
    }
    w.commit().expect("commit").id()
}

fn read_all(r: &waft_storage::SnapshotReader, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = r.read_chunk(name, out.len() as u64, 777).expect("chunk");
        if chunk.is_empty() {
            return out;
        }
        out.extend_from_slice(&chunk);
    }
}

#[test]
fn save_then_read_by_chunks() {
    let scratch = common::Scratch::new("snap-save");
    let store = SnapshotStore::open(scratch.join("snaps")).expect("open");
    assert!(store.latest(1).is_none());
    assert!(store.open_latest(1).expect("none").is_none());
    let id = save(&store, 1, 100, &[("state", data(10_000, 1)), ("empty", Vec::new())]);
    assert_eq!(id, SnapshotId { index: 100, term: 2 });
    drop(store);
    let store = SnapshotStore::open(scratch.join("snaps")).expect("reopen");
    let r = store.open_latest(1).expect("open").expect("present");
    assert_eq!(r.meta().index, 100);
    assert_eq!(&r.meta().config[..], b"peers=1,2,3");
    assert_eq!(r.meta().module_hash, ModuleHash::of(b"module"));
    assert_eq!(r.meta().files.len(), 2);
    assert_eq!(read_all(&r, "state"), data(10_000, 1));
    assert_eq!(read_all(&r, "empty"), Vec::<u8>::new());
    assert_eq!(r.read_chunk("state", 9_990, 100).expect("tail").len(), 10);
    assert!(r.read_chunk("nope", 0, 10).is_err());
}

#[test]
fn install_pulls_chunks_and_resumes() {
    let scratch = common::Scratch::new("snap-install");
    let leader = SnapshotStore::open(scratch.join("leader")).expect("open");
    let follower = SnapshotStore::open(scratch.join("follower")).expect("open");
    save(&leader, 1, 50, &[("a", data(5_000, 3)), ("b", data(123, 4)), ("z", Vec::new())]);
    let source = leader.open_latest(1).expect("open").expect("present");
    let meta = snapshot_meta_roundtrip(source.meta());
    let mut w = follower.begin_install(1, meta.clone()).expect("begin install");
    for file in &meta.files {
        let mut lost_one = false;
        loop {
            let offset = w.next_offset(&file.name);
            let chunk = source.read_chunk(&file.name, offset, 700).expect("chunk");
            if chunk.is_empty() {
                break;
            }
            if !lost_one && offset > 0 {
                // A chunk lost in transit: the puller asks again from next_offset.
                lost_one = true;
                continue;
            }
            // A duplicate delivery is refused, not appended twice.
            w.write_chunk(&file.name, offset, &chunk).expect("chunk");
            assert!(w.write_chunk(&file.name, offset, &chunk).is_err());
        }
    }
    w.commit().expect("commit install");
    let r = follower.open_latest(1).expect("open").expect("present");
    assert_eq!(r.meta(), source.meta());
    assert_eq!(read_all(&r, "a"), data(5_000, 3));
}

fn snapshot_meta_roundtrip(meta: &waft_storage::SnapshotMeta) -> waft_storage::SnapshotMeta {
    // What a follower receives is the encoded meta.
    waft_storage::SnapshotMeta::decode(&meta.encode()).expect("decode")
}

#[test]
fn install_refuses_data_that_does_not_match_meta() {
    let scratch = common::Scratch::new("snap-install-bad");
    let leader = SnapshotStore::open(scratch.join("leader")).expect("open");
    let follower = SnapshotStore::open(scratch.join("follower")).expect("open");
    save(&leader, 1, 50, &[("a", data(2_000, 3))]);
    let meta = leader.open_latest(1).expect("open").expect("present").meta().clone();

    let mut w = follower.begin_install(1, meta.clone()).expect("begin");
    assert!(w.write_chunk("other", 0, b"x").is_err(), "file not in meta");
    assert!(w.write_chunk("a", 10, b"x").is_err(), "offset gap");
    assert!(w.write_chunk("a", 0, &data(2_001, 3)).is_err(), "overrun");
    let mut wrong = data(2_000, 3);
    wrong[1_000] ^= 1;
    w.write_chunk("a", 0, &wrong).expect("chunk");
    assert!(matches!(w.commit(), Err(Error::SnapshotChecksum { .. })));

    let mut w = follower.begin_install(1, meta.clone()).expect("begin");
    w.write_chunk("a", 0, &data(1_500, 3)).expect("chunk");
    assert!(matches!(w.commit(), Err(Error::SnapshotFileSize { .. })));
    assert!(follower.latest(1).is_none(), "nothing refused became visible");
    let group_dir = follower.group_dir(1);
    assert_eq!(std::fs::read_dir(&group_dir).expect("list").count(), 0, "refused writers cleaned up");
}

#[test]
fn older_snapshot_goes_once_newer_is_complete_and_unread() {
    let scratch = common::Scratch::new("snap-retain");
    let store = SnapshotStore::open(scratch.join("snaps")).expect("open");
    let s1 = save(&store, 1, 10, &[("f", data(100, 1))]);
    let reader = store.open_snapshot(1, s1).expect("open s1");
    let s2 = save(&store, 1, 20, &[("f", data(100, 2))]);
    assert_eq!(store.list(1), vec![s1, s2], "s1 is held by a reader");
    assert!(store.snapshot_dir(1, s1).is_dir());
    assert_eq!(read_all(&reader, "f"), data(100, 1), "the held snapshot still reads");
    let second = store.open_snapshot(1, s1).expect("a second reader of s1");
    drop(reader);
    assert!(store.snapshot_dir(1, s1).is_dir(), "still one reader");
    drop(second);
    assert_eq!(store.list(1), vec![s2]);
    assert!(!store.snapshot_dir(1, s1).exists(), "released and older: deleted");
    assert!(matches!(store.open_snapshot(1, s1), Err(Error::SnapshotNotFound { .. })));
    let s3 = save(&store, 1, 30, &[("f", data(100, 3))]);
    assert_eq!(store.list(1), vec![s3], "no reader: deleted at commit");
    // Groups are independent.
    let other = save(&store, 2, 5, &[("f", data(10, 9))]);
    assert_eq!(store.list(1), vec![s3]);
    assert_eq!(store.list(2), vec![other]);
    // Snapshot ids only move forward.
    assert!(store.begin_save(1, 30, 2, Bytes::new(), ModuleHash::default()).is_err());
    assert!(store.begin_save(1, 29, 9, Bytes::new(), ModuleHash::default()).is_err());
}

#[test]
fn crash_leftovers_are_cleaned_at_open() {
    let scratch = common::Scratch::new("snap-leftovers");
    let root = scratch.join("snaps");
    let store = SnapshotStore::open(&root).expect("open");
    let s1 = save(&store, 1, 10, &[("f", data(100, 1))]);
    let s2 = save(&store, 1, 20, &[("f", data(100, 2))]);
    // A writer that dies mid-way (no Drop runs in a crash).
    let mut w = store.begin_save(1, 30, 2, Bytes::new(), ModuleHash::default()).expect("begin");
    w.append("f", b"partial").expect("append");
    std::mem::forget(w);
    // A crash between the newer rename and the older deletion leaves both.
    let old_dir = store.snapshot_dir(1, s1);
    std::fs::create_dir(&old_dir).expect("recreate s1 dir");
    drop(store);
    let tmp_count = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .expect("list")
            .filter(|e| e.as_ref().expect("entry").file_name().to_string_lossy().starts_with("tmp-"))
            .count()
    };
    assert_eq!(tmp_count(&root.join("group-00000000000000000001")), 1);
    let store = SnapshotStore::open(&root).expect("reopen");
    assert_eq!(tmp_count(&store.group_dir(1)), 0, "temp dir removed");
    assert!(!old_dir.exists(), "superseded snapshot removed");
    assert_eq!(store.list(1), vec![s2]);
    assert!(store.open_snapshot(1, s2).is_ok());
}

/// A kv store's checkpoint has a file per table file: a snapshot of more
/// files than a node may hold open is saved (files moved in whole) and
/// installed (each closed once complete), and every byte arrives.
#[test]
fn a_snapshot_of_thousands_of_files_saves_and_installs() {
    let scratch = common::Scratch::new("snap-many-files");
    let leader = SnapshotStore::open(scratch.join("leader")).expect("open");
    let follower = SnapshotStore::open(scratch.join("follower")).expect("open");
    let loose = scratch.join("loose");
    std::fs::create_dir_all(&loose).expect("mkdir");
    let mut w = leader.begin_save(1, 9, 1, Bytes::from_static(b"cfg"), ModuleHash::of(b"m")).expect("begin");
    for i in 0..3_000u32 {
        let bytes = data(100 + i as usize % 50, i as u8);
        let path = loose.join(format!("{i}.sst"));
        std::fs::write(&path, &bytes).expect("write");
        w.adopt(&format!("kv-{i}.sst"), &path, bytes.len() as u64, crc32fast::hash(&bytes)).expect("adopt");
        assert!(!path.exists(), "moved, not copied");
    }
    assert!(w.adopt("kv-0.sst", &loose.join("none"), 0, 0).is_err(), "a name twice is refused");
    w.commit().expect("commit");
    let source = leader.open_latest(1).expect("open").expect("present");
    assert_eq!(source.meta().files.len(), 3_000);
    let meta = snapshot_meta_roundtrip(source.meta());
    let mut w = follower.begin_install(1, meta.clone()).expect("begin install");
    for file in &meta.files {
        let chunk = source.read_chunk(&file.name, 0, file.size as usize).expect("chunk");
        w.write_chunk(&file.name, 0, &chunk).expect("write");
        assert!(w.write_chunk(&file.name, file.size, b"x").is_err(), "nothing past a complete file");
    }
    w.commit().expect("commit");
    let installed = follower.open_latest(1).expect("open").expect("present");
    assert_eq!(installed.meta().files, source.meta().files);
    assert_eq!(read_all(&installed, "kv-2999.sst"), data(100 + 2_999 % 50, (2_999u32 % 256) as u8));
}

/// A file linked from a committed snapshot is the same bytes under another
/// name: the new snapshot verifies and keeps them after the first one is
/// deleted.
#[test]
fn a_linked_file_outlives_the_snapshot_it_came_from() {
    let scratch = common::Scratch::new("snap-link");
    let store = SnapshotStore::open(scratch.join("snaps")).expect("open");
    let bytes = vec![42u8; 300_000];
    let mut w = store.begin_save(1, 10, 1, Bytes::from_static(b"cfg"), ModuleHash::of(b"m")).expect("begin");
    w.append("module", &bytes).expect("append");
    let first = w.commit().expect("commit");
    let file = first.files.iter().find(|f| f.name == "module").expect("module file").clone();
    let reader = store.open_snapshot(1, first.id()).expect("open first");
    let mut w = store.begin_save(1, 20, 1, Bytes::from_static(b"cfg"), ModuleHash::of(b"m")).expect("begin");
    w.link("module", &reader.file_path("module").expect("path"), file.size, file.crc32).expect("link");
    assert!(w.link("module", &reader.file_path("module").expect("path"), file.size, file.crc32).is_err(), "twice");
    let second = w.commit().expect("commit");
    drop(reader);
    store.discard(1, first.id()).expect("discard the first");
    let reader = store.open_snapshot(1, second.id()).expect("the second verifies");
    assert_eq!(std::fs::read(reader.file_path("module").expect("path")).expect("read"), bytes);
    // A wrong size is refused, and the name is left free: writing it then
    // makes a new file, never touching the one that was linked.
    let mut w = store.begin_save(1, 30, 1, Bytes::from_static(b"cfg"), ModuleHash::of(b"m")).expect("begin");
    assert!(w.link("module", &reader.file_path("module").expect("path"), file.size + 1, file.crc32).is_err());
    w.append("module", b"other bytes").expect("append");
    w.commit().expect("commit");
    assert_eq!(std::fs::read(reader.file_path("module").expect("path")).expect("read"), bytes);
}
