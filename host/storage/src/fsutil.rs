//! File-system durability helpers shared by the snapshot and module stores
//! (and the daemon's catalogue of groups).
//!
//! Owns the one recipe for making a new file or directory durable: write under a
//! temporary name, fsync it, fsync its directory, rename, fsync the directory
//! again. Must never leave a final name pointing at partly written data.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Prefix of every temporary name; anything carrying it after a crash is garbage.
pub(crate) const TMP_PREFIX: &str = "tmp-";

/// fsync a directory so the names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(Error::io("opening directory for fsync", dir))?;
    handle.sync_all().map_err(Error::io("fsyncing directory", dir))
}

/// A temporary name unique within this machine: pid, a process-wide counter and
/// the clock (the clock only separates restarts that reuse a pid).
pub(crate) fn tmp_name(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{TMP_PREFIX}{label}-{}-{n}-{nanos}", std::process::id())
}

/// Creates `dir` (and parents) and makes its own name durable in its parent.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(Error::io("creating directory", dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// How many bytes `write_atomic` writes between two syncs.
pub const WRITE_SYNC_EVERY_BYTES: usize = 4 * 1024 * 1024;

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(tmp_name(name));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
        // A large file is synced as it is written, a few MiB at a time: one
        // sync of tens of MiB at the end would hold up every other sync on
        // the disk (the log's) for as long as it takes.
        let mut chunks = bytes.chunks(WRITE_SYNC_EVERY_BYTES).peekable();
        while let Some(chunk) = chunks.next() {
            file.write_all(chunk).map_err(Error::io("writing", &tmp))?;
            if chunks.peek().is_some() {
                file.sync_data().map_err(Error::io("fsyncing", &tmp))?;
            }
        }
        file.sync_all().map_err(Error::io("fsyncing", &tmp))?;
        let target = dir.join(name);
        std::fs::rename(&tmp, &target).map_err(Error::io("renaming into place", &target))?;
        sync_dir(dir)?;
        Ok(target)
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is removed at the next open anyway.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes every entry of `dir` whose name starts with `TMP_PREFIX`: the
/// remains of writes a crash interrupted.
pub fn remove_tmp_entries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(Error::io("listing", dir))? {
        let entry = entry.map_err(Error::io("listing", dir))?;
        if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(Error::io("inspecting", &path))?;
        if file_type.is_dir() {
            std::fs::remove_dir_all(&path).map_err(Error::io("removing leftover", &path))?;
        } else {
            std::fs::remove_file(&path).map_err(Error::io("removing leftover", &path))?;
        }
        removed += 1;
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}
