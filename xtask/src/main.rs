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
  guests   build the example and test guests (wasm32-wasip2 components: Rust,
           Python with componentize-py, JavaScript with componentize-js)
  python-client
           make the Python client example's environment (a venv with grpcio,
           and stubs generated from proto/)
  bench    build what is needed, then run the benchmarks
  prereqs  install or check the prerequisites only";

/// The guest crates, built as components for wasm32-wasip2.
const GUESTS: [&str; 8] = [
    "waft-counter",
    "waft-counter-wit",
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
        Some("guests") => prereqs().and_then(|()| guests()).and_then(|()| match python_and_node() {
            Ok(()) => python_guests().and_then(|()| js_guests()),
            // Only the test command needs them (it stops here instead).
            Err(why) => {
                eprintln!("xtask: skipping the Python and JavaScript guests: {why}");
                Ok(())
            }
        }),
        Some("demo") => prereqs().and_then(|()| guests()).and_then(|()| demo(&args[1..])),
        Some("python-client") => python_client(),
        Some("test") => prereqs()
            .and_then(|()| python_and_node())
            .and_then(|()| guests())
            .and_then(|()| python_guests())
            .and_then(|()| js_guests())
            .and_then(|()| python_client())
            .and_then(|()| lint())
            .and_then(|()| test(&args[1..])),
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

/// Python 3 (with venv and pip) and Node.js 20 or later (with npm): the
/// Python and JavaScript guests are built with tools from PyPI and npm, and
/// the Python client example runs on grpcio. Checked first, so a missing
/// one fails at once rather than after the Rust build.
fn python_and_node() -> Result<()> {
    let version = |program: &str, args: &[&str]| -> Option<String> {
        let out = Command::new(program).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if version("python3", &["-c", "import venv, ensurepip; print('ok')"]).is_none() {
        return Err("Python 3 with venv and pip is missing (the Python guests and client example need it): run `apt-get install -y python3 python3-venv`"
            .into());
    }
    let node = version("node", &["--version"]).unwrap_or_default();
    let major: u32 = node.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < 20 || version("npm", &["--version"]).is_none() {
        return Err(format!(
            "Node.js 20 or later with npm is missing (found {:?}; the JavaScript guests are built with \
             componentize-js): install it, e.g. `apt-get install -y nodejs npm` on a release that ships Node.js \
             20, or from https://nodejs.org",
            if node.is_empty() { "none" } else { &node }
        ));
    }
    Ok(())
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

/// The Python guests: (example directory, module name, component name).
/// Each is built with waft's Python SDK (guest-sdk/python) by
/// componentize-py, against the WIT world `memory-state-machine`.
const PYTHON_GUESTS: [(&str, &str, &str); 1] = [("examples/counter-py", "counter", "waft_counter_py")];
/// The componentize-py the Python guests are built with (from PyPI).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Builds the Python guests into the guest directory, with componentize-py
/// installed into `target/python-guest/venv` the first time. A guest whose
/// sources, SDK and WIT did not change since its last build is not built
/// again (a build takes a core for about 15 s).
fn python_guests() -> Result<()> {
    let dir = target_dir().join("python-guest");
    let venv = dir.join("venv");
    let tool = venv.join("bin").join("componentize-py");
    let stamp = dir.join("installed");
    if !tool.is_file() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(COMPONENTIZE_PY) {
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        pip_venv(&venv, "the Python guests", &[COMPONENTIZE_PY.as_ref()])?;
        std::fs::write(&stamp, COMPONENTIZE_PY).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    let sdk = root().join("guest-sdk/python");
    let wit = root().join("wit");
    for (example, app, name) in PYTHON_GUESTS {
        let src = root().join(example);
        let out = guest_dir().join(format!("{name}.wasm"));
        let mut fingerprint = COMPONENTIZE_PY.as_bytes().to_vec();
        fingerprint.extend(sources(&[&src, &sdk, &wit], &["py", "wit"])?);
        let mut cmd = Command::new(&tool);
        cmd.current_dir(&dir)
            .arg("-d")
            .arg(&wit)
            .args(["-w", "memory-state-machine", "componentize", "--stub-wasi", "-p"])
            .arg(&sdk)
            .arg("-p")
            .arg(&src)
            .arg(app)
            .arg("-o")
            .arg(&out);
        build_if_changed(&dir, name, fingerprint, cmd, &format!("building the Python guest {name} (componentize-py)"))?;
    }
    Ok(())
}

/// Runs `cmd`, which builds guest `name` into the guest directory, unless
/// the guest is there from sources with this `fingerprint` already (kept
/// in `stamps`).
fn build_if_changed(stamps: &Path, name: &str, fingerprint: Vec<u8>, cmd: Command, what: &str) -> Result<()> {
    let out = guest_dir().join(format!("{name}.wasm"));
    let built = stamps.join(format!("{name}.sources"));
    if out.is_file() && std::fs::read(&built).is_ok_and(|b| b == fingerprint) {
        return Ok(());
    }
    std::fs::create_dir_all(guest_dir()).map_err(|e| format!("{}: {e}", guest_dir().display()))?;
    run(cmd, what)?;
    std::fs::write(&built, fingerprint).map_err(|e| format!("{}: {e}", built.display()))
}

/// The names and contents of the files in `dirs` whose extension is one of
/// `extensions`: what a guest built from them depends on.
fn sources(dirs: &[&Path], extensions: &[&str]) -> Result<Vec<u8>> {
    let mut fingerprint = Vec::new();
    for d in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| extensions.iter().any(|e| x == *e)))
            .collect();
        files.sort();
        for f in files {
            fingerprint.extend(f.display().to_string().into_bytes());
            fingerprint.extend(std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?);
        }
    }
    Ok(fingerprint)
}

/// The JavaScript guests: (source file, component name). Each is built with
/// waft's JavaScript SDK (guest-sdk/js) by componentize-js, against the WIT
/// world `memory-state-machine`, with every WASI feature disabled.
const JS_GUESTS: [(&str, &str); 1] = [("examples/counter-js/counter.js", "waft_counter_js")];
/// The componentize-js the JavaScript guests are built with (from npm).
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

/// Builds the JavaScript guests into the guest directory, with
/// componentize-js installed into `target/js-guest` (npm) the first time.
/// A guest whose sources, SDK and WIT did not change is not built again.
fn js_guests() -> Result<()> {
    let dir = target_dir().join("js-guest");
    let tool = dir.join("node_modules").join(".bin").join("componentize-js");
    let stamp = dir.join("installed");
    if !tool.is_file() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(COMPONENTIZE_JS) {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut install = Command::new("npm");
        install
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
            .arg(&dir)
            .arg(COMPONENTIZE_JS);
        run(install, "installing componentize-js (npm)").map_err(|e| {
            format!("{e}; the JavaScript guests need Node.js 20 or later and npm: run `apt-get install -y nodejs npm`")
        })?;
        std::fs::write(&stamp, COMPONENTIZE_JS).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    let sdk = root().join("guest-sdk/js");
    let wit = root().join("wit");
    for (source, name) in JS_GUESTS {
        let src = root().join(source);
        let example = src.parent().unwrap_or(&src).to_path_buf();
        let out = guest_dir().join(format!("{name}.wasm"));
        let mut fingerprint = COMPONENTIZE_JS.as_bytes().to_vec();
        fingerprint.extend(sources(&[&example, &sdk, &wit], &["js", "wit"])?);
        // From the repository's root: the engine resolves the source's
        // imports (the SDK) against the working directory.
        let mut cmd = Command::new(&tool);
        cmd.current_dir(root())
            .arg(source)
            .args(["--wit", "wit", "--world-name", "memory-state-machine", "--disable"])
            .args(["stdio", "random", "clocks", "http", "fetch-event", "-o"])
            .arg(&out);
        build_if_changed(
            &dir,
            name,
            fingerprint,
            cmd,
            &format!("building the JavaScript guest {name} (componentize-js)"),
        )?;
    }
    Ok(())
}

/// Makes a Python venv at `venv` for `what` and has pip install `packages`
/// (pip's arguments) into it, from PyPI.
fn pip_venv(venv: &Path, what: &str, packages: &[&std::ffi::OsStr]) -> Result<()> {
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(venv);
    run(make, &format!("making a venv for {what} (python3 -m venv)")).map_err(|e| {
        format!("{e}; {what}: Python 3 with venv and pip is needed: run `apt-get install -y python3 python3-venv`")
    })?;
    let mut install = Command::new(venv.join("bin").join("python"));
    install.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(packages);
    run(install, &format!("installing packages for {what} (pip, from PyPI)"))
}

/// Where the Python client example's environment lives: `venv/` (grpcio,
/// from examples/python-client/requirements.txt) and `gen/` (stubs from
/// proto/). Tests find it here.
fn python_client_dir() -> PathBuf {
    target_dir().join("python-client")
}

/// Makes the Python client example's environment, unless it is there for
/// the same requirements and protos already.
fn python_client() -> Result<()> {
    let dir = python_client_dir();
    let venv = dir.join("venv");
    let python = venv.join("bin").join("python");
    let requirements = root().join("examples/python-client/requirements.txt");
    let protos = ["proto/waft/client.proto", "proto/waft/admin.proto"];
    let mut fingerprint = std::fs::read(&requirements).map_err(|e| format!("{}: {e}", requirements.display()))?;
    for p in protos {
        fingerprint.extend(std::fs::read(root().join(p)).map_err(|e| format!("{p}: {e}"))?);
    }
    let stamp = dir.join("stamp");
    if python.is_file() && std::fs::read(&stamp).is_ok_and(|s| s == fingerprint) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    pip_venv(&venv, "the Python client example", &["-r".as_ref(), requirements.as_os_str()])?;
    let gen_dir = dir.join("gen");
    std::fs::create_dir_all(&gen_dir).map_err(|e| format!("{}: {e}", gen_dir.display()))?;
    let mut protoc = Command::new(&python);
    protoc
        .current_dir(root())
        .args(["-m", "grpc_tools.protoc", "-Iproto"])
        .arg(format!("--python_out={}", gen_dir.display()))
        .arg(format!("--grpc_python_out={}", gen_dir.display()))
        .args(protos);
    run(protoc, "generating the Python client's stubs from proto/")?;
    std::fs::write(&stamp, fingerprint).map_err(|e| format!("{}: {e}", stamp.display()))
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
