//! The state machine module a replica runs, and its file in every snapshot.
//!
//! Owns the `module` snapshot file's layout. A group's module changes only
//! through its log (a deploy entry), so every snapshot carries the module its
//! state was made by: a replica restarted or restored from a snapshot runs
//! exactly that module, whatever file the operator named at start. Must never
//! trust the file's bytes: their hash must match the snapshot's meta.
//!
//! Layout of [`MODULE_FILE`]:
//!
//! ```text
//! magic "WAFTMOD1" | index u64 (big endian): the entry the module took effect at (0: founded with it) | component bytes
//! ```

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use waft_runtime::{Engine, LoadError, Module};
use waft_storage::ModuleHash;

/// The snapshot file holding the module (see the module docs).
pub const MODULE_FILE: &str = "module";
/// The largest component a snapshot's module file may hold. Deploys are
/// bounded far lower by the proposal limit; this bounds what a damaged or
/// hostile file can make a replica read.
pub const MODULE_BYTES_MAX: u64 = 64 << 20;

const MAGIC: &[u8; 8] = b"WAFTMOD1";
const HEADER_BYTES: usize = 16;

/// A validated, compiled state machine component with its bytes and hash.
/// Cheap to clone (the compiled module and the bytes are shared).
#[derive(Clone)]
pub struct GuestModule {
    engine: Engine,
    module: Module,
    hash: ModuleHash,
    bytes: Bytes,
}

impl std::fmt::Debug for GuestModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestModule").field("hash", &self.hash.to_hex()).field("bytes", &self.bytes.len()).finish()
    }
}

impl GuestModule {
    /// Validates and compiles `bytes` (the runtime's checks, and one
    /// instantiation). Takes a few hundred milliseconds for a typical
    /// component: keep it off async threads.
    pub fn load(engine: &Engine, bytes: impl Into<Bytes>) -> Result<GuestModule, LoadError> {
        let bytes = bytes.into();
        let module = Module::load(engine, &bytes)?;
        Ok(GuestModule { engine: engine.clone(), module, hash: ModuleHash::of(&bytes), bytes })
    }

    /// As `load`, for bytes the caller has just checked hash to `hash` (a
    /// module store's read, a pull's check): tens of MiB are not hashed
    /// twice.
    pub fn load_verified(engine: &Engine, bytes: Bytes, hash: ModuleHash) -> Result<GuestModule, LoadError> {
        let module = Module::load(engine, &bytes)?;
        debug_assert_eq!(ModuleHash::of(&bytes), hash);
        Ok(GuestModule { engine: engine.clone(), module, hash, bytes })
    }

    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn module(&self) -> &Module {
        &self.module
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The header of a module file for a module in force since `index`.
pub(crate) fn file_header(index: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&index.to_be_bytes());
    h
}

/// What a snapshot's module file says.
pub(crate) struct ModuleFile {
    /// The entry the module took effect at.
    pub index: u64,
    /// The component, when the caller asked for it (its hash checked).
    pub bytes: Option<Bytes>,
}

/// Reads the module file at `path`: its header always, the component only
/// when `want_bytes`, checked against `expected`. Errors say what is wrong.
pub(crate) fn read_file(path: &Path, expected: &ModuleHash, want_bytes: bool) -> Result<ModuleFile, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {shown}: {e}"))?;
    let mut file = file.take(HEADER_BYTES as u64 + MODULE_BYTES_MAX + 1);
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact(&mut header).map_err(|e| format!("{shown}: cannot read its header: {e}"))?;
    if &header[..8] != MAGIC {
        return Err(format!("{shown} is not a module file (bad magic)"));
    }
    let mut index_bytes = [0u8; 8];
    index_bytes.copy_from_slice(&header[8..]);
    let index = u64::from_be_bytes(index_bytes);
    if !want_bytes {
        return Ok(ModuleFile { index, bytes: None });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MODULE_BYTES_MAX {
        return Err(format!("{shown} holds more than {MODULE_BYTES_MAX} bytes of module"));
    }
    let found = ModuleHash::of(&bytes);
    if &found != expected {
        return Err(format!(
            "{shown} holds module {}, but the snapshot names module {}",
            found.to_hex(),
            expected.to_hex()
        ));
    }
    Ok(ModuleFile { index, bytes: Some(Bytes::from(bytes)) })
}
