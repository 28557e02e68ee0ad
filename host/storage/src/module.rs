//! The module store: deployed WebAssembly modules kept by sha256 content hash.
//!
//! Owns the directory of `.wasm` files. Must never hand out bytes whose hash does
//! not match the name they were asked for, and never expose a half-written file
//! under a final name (writes go through `fsutil::write_atomic`).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil;

/// Largest module the store accepts or reads back; a bigger file on disk is
/// damage or a mistake, and reading it must not exhaust memory.
pub const MODULE_BYTES_MAX: u64 = 256 * 1024 * 1024;

const SUFFIX: &str = ".wasm";

/// sha256 of a module's bytes; its lowercase hex form is the file name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    pub fn of(bytes: &[u8]) -> ModuleHash {
        ModuleHash(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({})", self.to_hex())
    }
}

impl FromStr for ModuleHash {
    type Err = String;

    fn from_str(s: &str) -> Result<ModuleHash, String> {
        if s.len() != 64 || !s.is_ascii() {
            return Err(format!("a module hash is 64 hex digits, got {s:?}"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| format!("{s:?}: {e}"))?;
        }
        Ok(ModuleHash(out))
    }
}

#[derive(Clone, Debug)]
pub struct ModuleStore {
    dir: PathBuf,
}

impl ModuleStore {
    /// Opens (creating if needed) the store in `dir` and removes temp files a
    /// crash left behind.
    pub fn open(dir: impl AsRef<Path>) -> Result<ModuleStore> {
        let dir = dir.as_ref().to_path_buf();
        fsutil::create_dir_durable(&dir)?;
        fsutil::remove_tmp_entries(&dir)?;
        Ok(ModuleStore { dir })
    }

    pub fn path_of(&self, hash: &ModuleHash) -> PathBuf {
        self.dir.join(format!("{hash}{SUFFIX}"))
    }

    /// Stores `bytes` durably and returns their hash. Storing a module that is
    /// already present (and intact) writes nothing.
    pub fn put(&self, bytes: &[u8]) -> Result<ModuleHash> {
        if bytes.len() as u64 > MODULE_BYTES_MAX {
            return Err(Error::ModuleTooLarge { bytes: bytes.len() as u64, limit: MODULE_BYTES_MAX });
        }
        let hash = ModuleHash::of(bytes);
        if self.get(&hash).is_ok() {
            return Ok(hash);
        }
        fsutil::write_atomic(&self.dir, &format!("{hash}{SUFFIX}"), bytes)?;
        Ok(hash)
    }

    /// Reads a module back, verifying its bytes still hash to `hash`.
    pub fn get(&self, hash: &ModuleHash) -> Result<Vec<u8>> {
        let path = self.path_of(hash);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ModuleNotFound { hash: hash.to_hex() });
            }
            Err(e) => return Err(Error::io("opening", &path)(e)),
        };
        let len = file.metadata().map_err(Error::io("inspecting", &path))?.len();
        if len > MODULE_BYTES_MAX {
            return Err(Error::ModuleTooLarge { bytes: len, limit: MODULE_BYTES_MAX });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(MODULE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(Error::io("reading", &path))?;
        let actual = ModuleHash::of(&bytes);
        if actual != *hash {
            return Err(Error::ModuleHashMismatch { path, actual: actual.to_hex() });
        }
        Ok(bytes)
    }

    pub fn contains(&self, hash: &ModuleHash) -> bool {
        self.path_of(hash).is_file()
    }

    /// Every stored module's hash, ascending. Names that are not `<hash>.wasm`
    /// are ignored.
    pub fn list(&self) -> Result<Vec<ModuleHash>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(Error::io("listing", &self.dir))? {
            let entry = entry.map_err(Error::io("listing", &self.dir))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            // Only the name `path_of` gives: `ABCD...` parses to a hash too,
            // but `get` would look for `abcd...` and not find it.
            if let Ok(hash) = hex.parse::<ModuleHash>()
                && hash.to_hex() == hex
            {
                out.push(hash);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a module durably; removing an absent module is not an error.
    pub fn remove(&self, hash: &ModuleHash) -> Result<()> {
        let path = self.path_of(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &path)(e)),
        }
    }
}
