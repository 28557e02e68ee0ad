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
/// A module pulled in part: `<hash>.part`, kept across restarts so that a
/// pull that broke off resumes where it stopped.
const PARTIAL_SUFFIX: &str = ".part";

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
    /// Held by each operation on partial modules, so that one a cancelled
    /// pull left running and the next pull's never interleave.
    partials: std::sync::Arc<std::sync::Mutex<()>>,
}

impl ModuleStore {
    /// Opens (creating if needed) the store in `dir` and removes temp files a
    /// crash left behind.
    pub fn open(dir: impl AsRef<Path>) -> Result<ModuleStore> {
        let dir = dir.as_ref().to_path_buf();
        fsutil::create_dir_durable(&dir)?;
        fsutil::remove_tmp_entries(&dir)?;
        Ok(ModuleStore { dir, partials: Default::default() })
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

    /// Stores `bytes`, which the caller has just checked hash to `hash`,
    /// durably (replacing any file of that name, intact or not) without
    /// hashing them again.
    pub fn put_verified(&self, bytes: &[u8], hash: &ModuleHash) -> Result<()> {
        if bytes.len() as u64 > MODULE_BYTES_MAX {
            return Err(Error::ModuleTooLarge { bytes: bytes.len() as u64, limit: MODULE_BYTES_MAX });
        }
        debug_assert_eq!(ModuleHash::of(bytes), *hash);
        fsutil::write_atomic(&self.dir, &format!("{hash}{SUFFIX}"), bytes)?;
        Ok(())
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

    fn partial_path(&self, hash: &ModuleHash) -> PathBuf {
        self.dir.join(format!("{hash}{PARTIAL_SUFFIX}"))
    }

    /// How many bytes of module `hash` an earlier pull left (0: none).
    pub fn partial_len(&self, hash: &ModuleHash) -> Result<u64> {
        let path = self.partial_path(hash);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io("inspecting", &path)(e)),
        }
    }

    /// Appends `data`, the module's bytes from `offset`, to what was pulled
    /// of module `hash`; `offset` must be the length pulled so far. Synced
    /// whenever it crosses a multiple of `WRITE_SYNC_EVERY_BYTES`, so that
    /// no single sync is large. Nothing here is trusted: `finish_partial`
    /// checks the whole.
    pub fn append_partial(&self, hash: &ModuleHash, offset: u64, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let _one = self.partials_lock();
        let end = offset.saturating_add(data.len() as u64);
        if end > MODULE_BYTES_MAX {
            return Err(Error::ModuleTooLarge { bytes: end, limit: MODULE_BYTES_MAX });
        }
        let path = self.partial_path(hash);
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(Error::io("opening", &path))?;
        let len = file.metadata().map_err(Error::io("inspecting", &path))?.len();
        if len != offset {
            return Err(Error::io("appending to", &path)(std::io::Error::other(format!(
                "{len} bytes pulled so far, not {offset}"
            ))));
        }
        file.write_all(data).map_err(Error::io("writing", &path))?;
        let every = fsutil::WRITE_SYNC_EVERY_BYTES as u64;
        if offset / every != end / every {
            file.sync_data().map_err(Error::io("fsyncing", &path))?;
        }
        Ok(())
    }

    /// Module `hash` pulled whole (`size` bytes): checks its size and hash
    /// and moves it into place durably, returning its bytes. A partial
    /// module that does not check out is removed (the next pull starts
    /// over) and is an error.
    pub fn finish_partial(&self, hash: &ModuleHash, size: u64) -> Result<Vec<u8>> {
        let _one = self.partials_lock();
        let path = self.partial_path(hash);
        let checked = (|| {
            let file = std::fs::File::open(&path).map_err(Error::io("opening", &path))?;
            let len = file.metadata().map_err(Error::io("inspecting", &path))?.len();
            if len != size || len > MODULE_BYTES_MAX {
                return Err(Error::io("checking", &path)(std::io::Error::other(format!(
                    "{len} bytes pulled, the module has {size}"
                ))));
            }
            file.sync_all().map_err(Error::io("fsyncing", &path))?;
            let mut bytes = Vec::with_capacity(len as usize);
            file.take(MODULE_BYTES_MAX).read_to_end(&mut bytes).map_err(Error::io("reading", &path))?;
            let actual = ModuleHash::of(&bytes);
            if actual != *hash {
                return Err(Error::ModuleHashMismatch { path: path.clone(), actual: actual.to_hex() });
            }
            Ok(bytes)
        })();
        match checked {
            Ok(bytes) => {
                let target = self.path_of(hash);
                std::fs::rename(&path, &target).map_err(Error::io("renaming into place", &target))?;
                fsutil::sync_dir(&self.dir)?;
                Ok(bytes)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Removes what was pulled of module `hash` (none: not an error).
    pub fn discard_partial(&self, hash: &ModuleHash) -> Result<()> {
        let _one = self.partials_lock();
        self.remove_durably(&self.partial_path(hash))
    }

    fn partials_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.partials.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes what was pulled of every module but `keep`: a node pulls one
    /// module at a time, so at most one partial module stays on disk.
    pub fn remove_partials_except(&self, keep: &ModuleHash) -> Result<usize> {
        let _one = self.partials_lock();
        let keep = format!("{keep}{PARTIAL_SUFFIX}");
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(Error::io("listing", &self.dir))? {
            let entry = entry.map_err(Error::io("listing", &self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(PARTIAL_SUFFIX) && name != keep {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(Error::io("removing", &path))?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Removes a module durably; removing an absent module is not an error.
    pub fn remove(&self, hash: &ModuleHash) -> Result<()> {
        self.remove_durably(&self.path_of(hash))
    }

    fn remove_durably(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => fsutil::sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", path)(e)),
        }
    }
}
