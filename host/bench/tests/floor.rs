//! `waft-floor` measures syncs and loopback round trips, writes what it
//! printed as JSON, leaves nothing behind, and refuses nonsense counts.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_floor_is_two_syncs_and_two_round_trips() {
    let dir = scratch("floor");
    let json = dir.join("floor.json");
    let out = Command::new(env!("CARGO_BIN_EXE_waft-floor"))
        .args(["--syncs", "20", "--round-trips", "200", "--dir"])
        .arg(&dir)
        .arg("--json-out")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(f("fdatasync_p50_us") > 0.0 && f("fdatasync_p99_us") >= f("fdatasync_p50_us"), "{v}");
    assert!(f("round_trip_p50_us") > 0.0 && f("round_trip_p99_us") >= f("round_trip_p50_us"), "{v}");
    let floor = 2.0 * (f("fdatasync_p50_us") + f("round_trip_p50_us")) / 1000.0;
    assert!((f("floor_ms") - floor).abs() < 1e-9, "{v}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("floor (2 syncs + 2 round trips, medians)"), "{stdout}");
    // Only the JSON is left in the directory.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("floor.json")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn counts_out_of_bounds_are_refused() {
    for args in [["--syncs", "0"], ["--round-trips", "0"], ["--append-bytes", "0"], ["--syncs", "2000000"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_waft-floor")).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was taken");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[0]) || stderr.contains("--append-bytes"), "{args:?}: {stderr}");
    }
}
