//! The counter and atomic example components, run through the real runtime.

mod common;

use common::*;
use serde::{Deserialize, Serialize};
use waft_guest::codec::{self, Format};
use waft_runtime::Limits;

#[test]
fn counter_scripted_sequence() {
    let mut sm = machine("waft_counter", Limits::default());
    let results = sm.apply(&entries(1, &[r#"{"incr":5}"#, r#"{"incr":-2}"#, r#""get""#, r#"{"incr":10}"#])).unwrap();
    assert_eq!(texts(&results), ["5", "3", "3", "13"]);
    assert_eq!(&sm.query(br#""get""#).unwrap()[..], b"13");
}

/// The counter's command type as a Rust client would mirror it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CounterCommand {
    Incr(i64),
    Get,
}

/// The counter's query type, mirrored the same way.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CounterQuery {
    Get,
}

#[test]
fn counter_speaks_the_binary_form_too() {
    let mut sm = machine("waft_counter", Limits::default());
    let cmd = codec::encode(&CounterCommand::Incr(7), Format::Binary).unwrap();
    let results = sm.apply(&[waft_runtime::Entry::new(1, 1, cmd)]).unwrap();
    let reply = results[0].as_ref().unwrap();
    assert_eq!(codec::decode::<i64>(reply).unwrap(), (7, Format::Binary));
    let get = codec::encode(&CounterCommand::Get, Format::Binary).unwrap();
    let results = sm.apply(&[waft_runtime::Entry::new(2, 1, get)]).unwrap();
    assert_eq!(codec::decode::<i64>(results[0].as_ref().unwrap()).unwrap().0, 7);
    let query = codec::encode(&CounterQuery::Get, Format::Binary).unwrap();
    assert_eq!(codec::decode::<i64>(&sm.query(&query).unwrap()).unwrap(), (7, Format::Binary));
}

#[test]
fn counter_rejects_malformed_commands_without_changing_state() {
    let mut sm = machine("waft_counter", Limits::default());
    let results = sm.apply(&entries(1, &[r#"{"incr":1}"#, r#"{"decr":1}"#, "not json", r#"{"incr":1}"#])).unwrap();
    assert_eq!(texts(&results), ["1", "ERR", "ERR", "2"]);
    match &results[1] {
        Err(waft_runtime::ApplyError::Rejected(msg)) => assert!(msg.contains("malformed JSON"), "{msg}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let overflow = sm.apply(&entries(5, &[&format!(r#"{{"incr":{}}}"#, i64::MAX)])).unwrap();
    assert!(matches!(&overflow[0], Err(waft_runtime::ApplyError::Rejected(m)) if m.contains("overflow")));
    assert_eq!(&sm.query(br#""get""#).unwrap()[..], b"2");
}

#[test]
fn atomic_scripted_sequence_with_cas_success_and_failure() {
    let mut sm = machine("waft_atomic", Limits::default());
    let results = sm
        .apply(&entries(
            1,
            &[
                r#"{"set":{"key":"a","value":1}}"#,
                r#"{"cas":{"key":"a","expect":1,"new":2}}"#,
                r#"{"cas":{"key":"a","expect":1,"new":3}}"#,
                r#"{"get":{"key":"a"}}"#,
                r#"{"incr":{"key":"a","delta":5}}"#,
                r#"{"incr":{"key":"b","delta":-4}}"#,
                r#"{"get":{"key":"missing"}}"#,
            ],
        ))
        .unwrap();
    assert_eq!(
        texts(&results),
        [
            r#"{"success":true}"#,
            r#"{"success":true}"#,
            r#"{"success":false}"#,
            r#"{"value":2}"#,
            r#"{"value":7}"#,
            r#"{"value":-4}"#,
            r#"{"value":0}"#
        ]
    );
    assert_eq!(&sm.query(br#"{"get":{"key":"a"}}"#).unwrap()[..], b"7");
    assert_eq!(&sm.query(br#"{"get":{"key":"b"}}"#).unwrap()[..], b"-4");
}

#[test]
fn snapshots_round_trip_to_identical_queries_and_bytes() {
    for (name, commands, queries) in [
        ("waft_counter", vec![r#"{"incr":41}"#, r#"{"incr":1}"#], vec![r#""get""#]),
        (
            "waft_atomic",
            vec![
                r#"{"set":{"key":"x","value":9}}"#,
                r#"{"incr":{"key":"line\nbreak \\ key","delta":3}}"#,
                r#"{"incr":{"key":"y","delta":-1}}"#,
            ],
            vec![r#"{"get":{"key":"x"}}"#, r#"{"get":{"key":"line\nbreak \\ key"}}"#, r#"{"get":{"key":"y"}}"#],
        ),
    ] {
        let mut first = machine(name, Limits::default());
        first.apply(&entries(1, &commands)).unwrap();
        let bytes = snapshot(&mut first);
        assert!(!bytes.is_empty());

        let mut second = machine(name, Limits::default());
        second.load_snapshot(std::io::Cursor::new(bytes.clone())).unwrap();
        for q in &queries {
            assert_eq!(first.query(q.as_bytes()).unwrap(), second.query(q.as_bytes()).unwrap(), "{name} {q}");
        }
        assert_eq!(snapshot(&mut second), bytes, "{name}: snapshot bytes differ after a round trip");
    }
}

#[test]
fn a_large_state_moves_through_the_snapshot_stream_in_chunks() {
    let mut sm = machine("waft_atomic", Limits::default());
    // About 2 MB of snapshot: far more than one 64 KiB chunk.
    let commands: Vec<String> =
        (0..40_000).map(|i| format!(r#"{{"set":{{"key":"key-{i:08}-padding-padding","value":{i}}}}}"#)).collect();
    let refs: Vec<&str> = commands.iter().map(String::as_str).collect();
    for (n, chunk) in refs.chunks(1000).enumerate() {
        sm.apply(&entries(1 + n as u64 * 1000, chunk)).unwrap();
    }
    let (bytes, written) = sm.save_snapshot(Vec::new()).unwrap();
    assert_eq!(bytes.len() as u64, written);
    assert!(written > 1_000_000, "snapshot only {written} bytes");
    let mut other = machine("waft_atomic", Limits::default());
    other.load_snapshot(std::io::Cursor::new(bytes.clone())).unwrap();
    assert_eq!(&other.query(br#"{"get":{"key":"key-00039999-padding-padding"}}"#).unwrap()[..], b"39999");
    assert_eq!(snapshot(&mut other), bytes);
}

#[test]
fn a_corrupt_snapshot_is_refused_and_the_state_kept() {
    let mut sm = machine("waft_atomic", Limits::default());
    sm.apply(&entries(1, &[r#"{"set":{"key":"k","value":5}}"#])).unwrap();
    let err = sm.load_snapshot(std::io::Cursor::new(b"garbage without a space\n".to_vec())).unwrap_err();
    assert!(err.to_string().contains("snapshot load failed"), "{err}");
    assert_eq!(&sm.query(br#"{"get":{"key":"k"}}"#).unwrap()[..], b"5");
}

/// The bench-only native atomic machine is the guest's logic and formats to
/// the byte: the same replies (binary and JSON forms, rejections included),
/// query answers and snapshots, and each loads the other's snapshot.
#[test]
fn the_native_atomic_machine_matches_the_guest_byte_for_byte() {
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum AtomicCommand {
        Cas { key: String, expect: i64, new: i64 },
    }
    let binary_cas = codec::encode(&AtomicCommand::Cas { key: "a".into(), expect: 7, new: 8 }, Format::Binary).unwrap();
    let long_key = format!(r#"{{"set":{{"key":"{}","value":1}}}}"#, "k".repeat(5000));
    let mut commands: Vec<Vec<u8>> = [
        r#"{"set":{"key":"a","value":1}}"#,
        r#"{"cas":{"key":"a","expect":1,"new":2}}"#,
        r#"{"cas":{"key":"a","expect":1,"new":3}}"#,
        r#"{"incr":{"key":"a","delta":5}}"#,
        r#"{"incr":{"key":"line\nbreak \\ key","delta":-4}}"#,
        r#"{"get":{"key":"missing"}}"#,
        r#"{"decr":{"key":"a"}}"#,
        "not json",
        r#"{"set":{"key":"max","value":9223372036854775807}}"#,
        r#"{"incr":{"key":"max","delta":1}}"#,
    ]
    .iter()
    .map(|c| c.as_bytes().to_vec())
    .collect();
    commands.push(binary_cas);
    commands.push(long_key.into_bytes());
    let entries: Vec<waft_runtime::Entry> =
        commands.into_iter().enumerate().map(|(i, c)| waft_runtime::Entry::new(1 + i as u64, 1, c)).collect();

    let mut wasm = machine("waft_atomic", Limits::default());
    let native_module = waft_runtime::Module::native(waft_runtime::native::NativeKind::Atomic);
    assert!(native_module.is_native());
    let mut native = waft_runtime::StateMachine::new(&native_module, Limits::default(), "native").unwrap();
    let from_wasm = wasm.apply(&entries).unwrap();
    let from_native = native.apply(&entries).unwrap();
    assert_eq!(from_native, from_wasm);
    assert_eq!(
        texts(&from_native)[..4],
        [r#"{"success":true}"#, r#"{"success":true}"#, r#"{"success":false}"#, r#"{"value":7}"#]
    );
    assert!(from_native.iter().filter(|r| r.is_err()).count() >= 4, "{from_native:?}");
    for q in [&br#"{"get":{"key":"a"}}"#[..], br#"{"get":{"key":"line\nbreak \\ key"}}"#, b"{bad", b""] {
        assert_eq!(
            native.query(q).map_err(|e| e.to_string()),
            wasm.query(q).map_err(|e| e.to_string()),
            "{}",
            String::from_utf8_lossy(q)
        );
    }
    let bytes = snapshot(&mut wasm);
    assert_eq!(snapshot(&mut native), bytes);
    let mut restored = waft_runtime::StateMachine::new(&native_module, Limits::default(), "restored").unwrap();
    restored.load_snapshot(std::io::Cursor::new(bytes.clone())).unwrap();
    assert_eq!(&restored.query(br#"{"get":{"key":"a"}}"#).unwrap()[..], b"7");
    let mut back = machine("waft_atomic", Limits::default());
    back.load_snapshot(std::io::Cursor::new(snapshot(&mut restored))).unwrap();
    assert_eq!(snapshot(&mut back), bytes);
}

/// A module file naming a native machine loads only in a bench-native
/// build, and names what to do otherwise.
#[test]
fn a_native_module_file_needs_the_bench_native_feature() {
    let engine = waft_runtime::Engine::new().unwrap();
    let loaded = waft_runtime::Module::load(&engine, b"waft-bench-native:atomic\n");
    if cfg!(feature = "bench-native") {
        assert!(loaded.is_ok_and(|m| m.is_native()));
    } else {
        let err = loaded.err().expect("refused without the feature").to_string();
        assert!(err.contains("--features bench-native"), "{err}");
    }
    let unknown = waft_runtime::Module::load(&engine, b"waft-bench-native:counter").err().expect("unknown name");
    assert!(unknown.to_string().contains("`counter`"), "{unknown}");
}
