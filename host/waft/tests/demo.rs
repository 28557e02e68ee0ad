//! The README's main command: `waft demo` starts its three-node cluster,
//! gets every expected answer, and stops cleanly (exit 0, no process left:
//! the nodes live inside the demo's own process).

mod common;

use std::process::Command;

#[test]
fn the_demo_runs_its_scenarios_and_stops_cleanly() {
    let modules = common::module("waft_counter").parent().unwrap().to_path_buf();
    let out = Command::new(env!("CARGO_BIN_EXE_waft")).arg("demo").arg("--modules").arg(&modules).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        r#"{"cas":{"key":"a","expect":1,"new":3}}     -> {"success":false}"#,
        "refused: ERROR_CODE_REJECTED",
        "linearizable read at node 3",
        "stale        read at node",
        "demo finished",
    ] {
        assert!(stdout.contains(line), "the demo's output lacks {line:?}:\n{stdout}");
    }
}
