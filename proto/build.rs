//! Generates the Rust code for proto/waft/*.proto at build time.
//! protox parses the files in pure Rust, so building needs no system protoc.

use std::path::Path;

const PROTOS: &[&str] = &["waft/peer.proto", "waft/client.proto"];
/// Generated in a second pass: it imports client.proto, whose types it must
/// name as `crate::client::...` (the modules here are flat, not nested by
/// package), and must not generate again.
const ADMIN_PROTO: &str = "waft/admin.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it compiled: a target
    // directory reused by a clone at another path reuses this script too.
    let root =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo did not set CARGO_MANIFEST_DIR")?);
    let root = root.as_path();
    for proto in PROTOS.iter().chain([&ADMIN_PROTO]) {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [root])?;
    tonic_prost_build::configure()
        // Payloads as `bytes::Bytes`: entry data and snapshot chunks are handed
        // on without a copy, and waft-raft's `Entry::data` is `Bytes` already.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    let admin = protox::compile([ADMIN_PROTO], [root])?;
    // Its own directory, so this pass's (empty) output for the imported
    // package never replaces the first pass's.
    let admin_out = Path::new(&std::env::var("OUT_DIR")?).join("admin");
    std::fs::create_dir_all(&admin_out)?;
    tonic_prost_build::configure()
        .bytes(".")
        .out_dir(admin_out)
        .extern_path(".waft.client.v1", "crate::client")
        .emit_rerun_if_changed(false)
        .compile_fds(admin)?;
    Ok(())
}
