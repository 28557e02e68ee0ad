//! `cargo xtask <task>`: the commands README.md documents.
//!
//! Owns getting a fresh Debian machine with only rustup from nothing to a
//! green test run: the wasm32-wasip2 target, libclang for rocksdb's bindings,
//! the example and test guests. Must never leave a half-done step silent:
//! every failure says what to run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  demo     build what is needed, then run waft's demo on embedded defaults
  test     build what is needed, check formatting and lints, then run every test
  guests   build the example and test guests (wasm32-wasip2 components)
  bench    build what is needed, then run the benchmarks
  prereqs  install or check the prerequisites only";

/// The guest crates, built as components for wasm32-wasip2.
const GUESTS: [&str; 7] = [
    "waft-counter",
    "waft-atomic",
    "waft-atomic-kv",
    "waft-probe",
    "waft-kv-probe",
    "waft-counter-doubling",
    "waft-hostile",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("prereqs") => prereqs(),
        Some("guests") => prereqs().and_then(|()| guests()),
        Some("demo") => prereqs().and_then(|()| guests()).and_then(|()| demo(&args[1..])),
        Some("test") => prereqs().and_then(|()| guests()).and_then(|()| lint()).and_then(|()| test(&args[1..])),
        Some("bench") => prereqs().and_then(|()| guests()).and_then(|()| bench(&args[1..])),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn root() -> PathBuf {
    // xtask/ sits at the workspace root. `cargo run` names it when xtask
    // runs; the path baked in at compile time is stale when a target
    // directory is reused by a clone at another path (cargo reuses the binary).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() { Ok(()) } else { Err(format!("{what} failed ({status})")) }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Where the guest components land.
fn guest_dir() -> PathBuf {
    target_dir().join("wasm32-wasip2").join("release")
}

fn prereqs() -> Result<()> {
    wasm_target()?;
    libclang()
}

/// The wasm32-wasip2 standard library, for the pinned toolchain.
fn wasm_target() -> Result<()> {
    let out = Command::new("rustc")
        .current_dir(root())
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}; install Rust with rustup (https://rustup.rs)"))?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && Path::new(&libdir).is_dir() {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root()).args(["target", "add", "wasm32-wasip2"]);
    run(cmd, "installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)")
        .map_err(|e| format!("{e}; run `rustup target add wasm32-wasip2` in {}", root().display()))
}

/// libclang, which rocksdb's bindings generator loads at build time.
fn libclang() -> Result<()> {
    if let Some(dir) = std::env::var_os("LIBCLANG_PATH")
        && has_libclang(Path::new(&dir))
    {
        return Ok(());
    }
    let mut dirs = vec![
        PathBuf::from("/usr/lib/x86_64-linux-gnu"),
        PathBuf::from("/usr/lib/aarch64-linux-gnu"),
        PathBuf::from("/usr/lib"),
    ];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("llvm-") {
                dirs.push(entry.path().join("lib"));
            }
        }
    }
    if dirs.iter().any(|d| has_libclang(d)) {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let has_apt = Path::new("/usr/bin/apt-get").exists();
    if !(is_root && has_apt) {
        return Err("libclang is missing (rocksdb's bindings need it): run `sudo apt-get install -y libclang-dev`, \
                    or set LIBCLANG_PATH to the directory holding libclang.so"
            .into());
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive");
    run(update, "apt-get update (for libclang-dev)")?;
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-q", "libclang-dev"]).env("DEBIAN_FRONTEND", "noninteractive");
    run(install, "installing libclang-dev (rocksdb's bindings need it)")
        .map_err(|e| format!("{e}; run `apt-get install -y libclang-dev`"))
}

fn has_libclang(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        // libclang.so, libclang.so.1, libclang-14.so.1 — not libclang-cpp.
        name.starts_with("libclang.so")
            || (name.starts_with("libclang-")
                && name.as_bytes().get(9).is_some_and(u8::is_ascii_digit)
                && name.contains(".so"))
    })
}

fn guests() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"]);
    for g in GUESTS {
        cmd.args(["-p", g]);
    }
    run(cmd, "building the guest components (wasm32-wasip2)")?;
    for g in GUESTS {
        let path = guest_dir().join(format!("{}.wasm", g.replace('-', "_")));
        if !path.is_file() {
            return Err(format!("expected {} after the guest build", path.display()));
        }
    }
    Ok(())
}

fn demo(extra: &[String]) -> Result<()> {
    // Built exactly as `test` builds it (same packages, same features), so
    // switching between the two never recompiles wasmtime or rocksdb.
    let mut build = cargo();
    build.args(["test", "--release", "--no-run"]);
    run(build, "building waft")?;
    let mut cmd = Command::new(target_dir().join("release").join("waft"));
    cmd.current_dir(root()).arg("demo").arg("--modules").arg(guest_dir()).args(extra);
    run(cmd, "running the demo")
}

/// The tree follows rustfmt.toml and passes clippy with warnings as
/// errors, every target included (release profile: it shares the build's
/// compiled rocksdb instead of building it again).
fn lint() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt, "checking formatting").map_err(|e| format!("{e}; run `cargo fmt --all` and commit the result"))?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--release", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run(clippy, "running clippy").map_err(|e| format!("{e}; fix what it reports above"))
}

fn test(extra: &[String]) -> Result<()> {
    let mut cmd = cargo();
    // The default members: every host crate (the guests are built above).
    cmd.args(["test", "--release"]).args(extra).env("WAFT_GUEST_DIR", guest_dir());
    run(cmd, "running every test")
}

fn bench(extra: &[String]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench"]).args(extra).env("WAFT_GUEST_DIR", guest_dir());
    run(cmd, "running the benchmarks")
}
