//! Shared by the runtime's integration tests: finding and loading the real
//! guest components built from examples/ and tests/guests/.

#![allow(dead_code)]

use std::path::PathBuf;

use waft_runtime::{Engine, Entry, Limits, Module, StateMachine};

/// Where `cargo xtask guests` puts the components.
pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WAFT_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("wasm32-wasip2/release")
}

pub fn guest_bytes(name: &str) -> Vec<u8> {
    let path = guest_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read {}: {e}; build the guests first with `cargo xtask guests`", path.display())
    })
}

pub fn load(engine: &Engine, name: &str) -> Module {
    Module::load(engine, &guest_bytes(name)).unwrap_or_else(|e| panic!("{name} failed to load: {e}"))
}

pub fn machine(name: &str, limits: Limits) -> StateMachine {
    let engine = Engine::new().unwrap();
    StateMachine::new(&load(&engine, name), limits, name).unwrap()
}

/// Entries numbered from `first`, term 1, with JSON commands.
pub fn entries(first: u64, commands: &[&str]) -> Vec<Entry> {
    commands.iter().enumerate().map(|(i, c)| Entry::new(first + i as u64, 1, c.as_bytes().to_vec())).collect()
}

/// The successful results as strings; faults and rejections as "ERR".
pub fn texts(results: &[waft_runtime::ApplyResult]) -> Vec<String> {
    results
        .iter()
        .map(|r| match r {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err(_) => "ERR".to_string(),
        })
        .collect()
}

pub fn snapshot(sm: &mut StateMachine) -> Vec<u8> {
    sm.save_snapshot(Vec::new()).unwrap().0
}
