//! Generates the etcd KV client from proto/ (etcd's own package and field
//! numbers, trimmed to Put and Range) at build time. protox parses the files
//! in pure Rust, so building needs no system protoc.

use std::path::Path;

const PROTOS: &[&str] = &["etcdserverpb/rpc.proto", "mvccpb/kv.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it compiled: a target
    // directory reused by a clone at another path reuses this script too.
    let root =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").ok_or("cargo did not set CARGO_MANIFEST_DIR")?).join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        // The bench only calls etcd; it serves nothing.
        .build_server(false)
        // Keys and values as `bytes::Bytes`: one value buffer is shared by
        // every put instead of copied into each request.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
