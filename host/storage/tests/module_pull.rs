//! A module pulled in parts: what was pulled survives a reopen (a restart),
//! the pull resumes at its end, and only bytes that hash to the module's
//! name ever reach its final place.

mod common;

use waft_storage::{ModuleHash, ModuleStore};

fn module(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn a_pull_resumes_after_a_reopen_and_finishes_in_place() {
    let scratch = common::Scratch::new("module-pull-resume");
    let bytes = module(9 << 20);
    let hash = ModuleHash::of(&bytes);
    let store = ModuleStore::open(scratch.join("modules")).expect("open");
    assert_eq!(store.partial_len(&hash).expect("len"), 0);
    let (first, rest) = bytes.split_at(5 << 20);
    for (at, chunk) in first.chunks(1 << 20).enumerate() {
        store.append_partial(&hash, (at << 20) as u64, chunk).expect("append");
    }
    // Out of place: refused, and nothing changes.
    assert!(store.append_partial(&hash, 3 << 20, &rest[..10]).is_err());
    assert!(store.append_partial(&hash, 6 << 20, &rest[..10]).is_err());
    drop(store);

    let store = ModuleStore::open(scratch.join("modules")).expect("reopen");
    assert_eq!(store.partial_len(&hash).expect("len"), first.len() as u64);
    assert!(!store.contains(&hash), "a partial module is not a module");
    assert!(store.list().expect("list").is_empty());
    store.append_partial(&hash, first.len() as u64, rest).expect("append the rest");
    let got = store.finish_partial(&hash, bytes.len() as u64).expect("finish");
    assert!(got == bytes);
    assert_eq!(store.get(&hash).expect("get"), bytes);
    assert_eq!(store.partial_len(&hash).expect("len"), 0);
}

#[test]
fn a_partial_module_that_does_not_hash_to_its_name_is_discarded() {
    let scratch = common::Scratch::new("module-pull-bad");
    let bytes = module(3 << 20);
    let hash = ModuleHash::of(&bytes);
    let store = ModuleStore::open(scratch.join("modules")).expect("open");
    let mut damaged = bytes.clone();
    damaged[12_345] ^= 1;
    store.append_partial(&hash, 0, &damaged).expect("append");
    assert!(store.finish_partial(&hash, bytes.len() as u64).is_err());
    assert_eq!(store.partial_len(&hash).expect("len"), 0, "the damaged pull is gone");
    assert!(!store.contains(&hash));
    // Short of its size: refused too, and discarded.
    store.append_partial(&hash, 0, &bytes[..100]).expect("append");
    assert!(store.finish_partial(&hash, bytes.len() as u64).is_err());
    assert_eq!(store.partial_len(&hash).expect("len"), 0);
    // Pulled again, whole: in place.
    store.append_partial(&hash, 0, &bytes).expect("append");
    store.finish_partial(&hash, bytes.len() as u64).expect("finish");
    assert_eq!(store.get(&hash).expect("get"), bytes);
}

#[test]
fn starting_a_pull_removes_every_other_partial_module() {
    let scratch = common::Scratch::new("module-pull-one");
    let store = ModuleStore::open(scratch.join("modules")).expect("open");
    let (a, b) = (module(1000), module(2000));
    let (ha, hb) = (ModuleHash::of(&a), ModuleHash::of(&b));
    store.append_partial(&ha, 0, &a[..500]).expect("append");
    store.append_partial(&hb, 0, &b[..700]).expect("append");
    store.put(&module(10)).expect("a whole module");
    assert_eq!(store.remove_partials_except(&hb).expect("remove"), 1);
    assert_eq!((store.partial_len(&ha).unwrap(), store.partial_len(&hb).unwrap()), (0, 700));
    assert_eq!(store.list().expect("list").len(), 1, "whole modules stay");
}

#[test]
fn a_module_checked_by_its_caller_is_stored_without_hashing_again() {
    let scratch = common::Scratch::new("module-put-verified");
    let store = ModuleStore::open(scratch.join("modules")).expect("open");
    let bytes = module(2 << 20);
    let hash = ModuleHash::of(&bytes);
    store.put_verified(&bytes, &hash).expect("put");
    assert_eq!(store.get(&hash).expect("get"), bytes);
    // Again (an upload repeated): replaced, still whole.
    store.put_verified(&bytes, &hash).expect("put again");
    assert_eq!(store.list().expect("list"), vec![hash]);
    assert_eq!(store.get(&hash).expect("get"), bytes);
}
