//! Every way a module can be wrong gets its own clear refusal.

mod common;

use waft_runtime::{Engine, LoadError, Module};

fn load(bytes: &[u8]) -> Result<Module, LoadError> {
    Module::load(&Engine::new().unwrap(), bytes)
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

/// A component exporting an instance `name` with the given functions, each a
/// lifted `() -> ()`.
fn component_exporting(name: &str, funcs: &[&str]) -> Vec<u8> {
    let exports: String = funcs.iter().map(|f| format!(r#"(export "{f}" (func $f))"#)).collect();
    wat(&format!(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (instance $x {exports})
             (export "{name}" (instance $x)))"#
    ))
}

const ALL: [&str; 7] = waft_runtime::REQUIRED_EXPORTS;

#[test]
fn bytes_that_are_not_wasm() {
    let err = load(b"#!/bin/sh\necho hello\n").err().unwrap();
    assert_eq!(err, LoadError::NotWasm);
    assert!(err.to_string().contains("not a WebAssembly binary"));
}

#[test]
fn a_core_module_instead_of_a_component() {
    let err = load(&wat("(module (func (export \"on-apply\")))")).err().unwrap();
    assert_eq!(err, LoadError::CoreModule);
    assert!(err.to_string().contains("wasm32-wasip2"));
}

#[test]
fn a_truncated_component() {
    let bytes = common::guest_bytes("waft_counter");
    let err = load(&bytes[..bytes.len() / 2]).err().unwrap();
    assert!(matches!(err, LoadError::Malformed(_)), "{err:?}");
}

#[test]
fn a_component_for_another_world() {
    let err = load(&component_exporting("wasi:cli/run@0.2.0", &["run"])).err().unwrap();
    assert_eq!(err, LoadError::WrongWorld { exports: "wasi:cli/run@0.2.0".into() });
    assert!(err.to_string().contains("does not implement"));
}

#[test]
fn a_component_for_another_wit_version() {
    let err = load(&component_exporting("waft:fsm/machine@0.2.0", &ALL)).err().unwrap();
    assert_eq!(err, LoadError::WrongVersion { found: "waft:fsm/machine@0.2.0".into() });
    let imports_new_host = wat(r#"(component (import "waft:fsm/host@0.3.0" (instance)))"#);
    assert_eq!(load(&imports_new_host).err().unwrap(), LoadError::WrongVersion { found: "waft:fsm/host@0.3.0".into() });
}

#[test]
fn a_component_missing_exports() {
    let err = load(&component_exporting("waft:fsm/machine@0.1.0", &["on-apply", "query"])).err().unwrap();
    assert_eq!(err, LoadError::MissingExport { name: "on-snapshot-save".into() });
}

#[test]
fn a_component_with_the_wrong_signatures() {
    let err = load(&component_exporting("waft:fsm/machine@0.1.0", &ALL)).err().unwrap();
    assert!(matches!(&err, LoadError::Incompatible(m) if m.contains("wrong signature")), "{err:?}");
}

#[test]
fn a_component_importing_what_the_host_does_not_allow() {
    for name in
        ["wasi:sockets/tcp@0.2.0", "wasi:http/outgoing-handler@0.2.0", "evil:net/socket@1.0.0", "waft:fsm/secret@0.1.0"]
    {
        let bytes = wat(&format!(r#"(component (import "{name}" (instance)))"#));
        let err = load(&bytes).err().unwrap();
        assert_eq!(err, LoadError::ImportNotAllowed { name: name.into() });
        assert!(err.to_string().contains("does not provide"));
    }
}

#[test]
fn the_real_examples_load() {
    for name in ["waft_counter", "waft_atomic", "waft_probe"] {
        load(&common::guest_bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
