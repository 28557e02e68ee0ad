//! Generates the Rust code for proto/waft/*.proto at build time.
//! protox parses the files in pure Rust, so building needs no system protoc.

use std::path::Path;

const PROTOS: &[&str] = &["waft/peer.proto", "waft/client.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [root])?;
    tonic_prost_build::configure()
        // Payloads as `bytes::Bytes`: entry data and snapshot chunks are handed
        // on without a copy, and waft-raft's `Entry::data` is `Bytes` already.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
