//! Where a node keeps its groups' key-value stores: [`KvStores`], in memory
//! (tests, the simulator) or in the node's [`RocksKv`].

use std::sync::{Arc, Mutex};

use std::path::PathBuf;

use waft_runtime::{KvCapture, KvError, KvFile, KvFiles, KvHandle, KvProvider, KvStore, KvWrites};
use waft_storage::{RocksCheckpoint, RocksKv, RocksKvGroup};

/// Makes each group's key-value store (see `waft_runtime::kv`).
#[derive(Clone)]
pub struct KvStores(pub KvProvider);

impl KvStores {
    /// Every group's store in `kv`, each in its own instance.
    pub fn rocks(kv: RocksKv) -> KvStores {
        KvStores(Arc::new(move |group| {
            let store = kv.group(group).map_err(kv_err)?;
            Ok(Arc::new(Mutex::new(RocksStore(store))) as KvHandle)
        }))
    }
}

impl Default for KvStores {
    /// In-memory stores.
    fn default() -> KvStores {
        KvStores(waft_runtime::kv::mem_provider())
    }
}

impl std::fmt::Debug for KvStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvStores")
    }
}

/// One group's store in RocksDB.
struct RocksStore(RocksKvGroup);

fn kv_err(e: waft_storage::Error) -> KvError {
    KvError(e.to_string())
}

impl KvStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.0.get(key).map_err(kv_err)
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        self.0.scan(start, end, visit).map_err(kv_err)
    }

    fn commit(&mut self, writes: &KvWrites, records: &KvWrites) -> Result<(), KvError> {
        self.0.commit(writes.iter(), records.iter()).map_err(kv_err)
    }

    fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.0.record(key).map_err(kv_err)
    }

    fn records(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError> {
        self.0.records(prefix, visit).map_err(kv_err)
    }

    fn clear(&mut self) -> Result<(), KvError> {
        self.0.clear().map_err(kv_err)
    }

    fn sync(&mut self) -> Result<(), KvError> {
        self.0.sync().map_err(kv_err)
    }

    fn capture(&self) -> Result<KvCapture, KvError> {
        Ok(KvCapture::Files(Box::new(RocksFiles(self.0.checkpoint().map_err(kv_err)?))))
    }

    fn restore(&mut self, files: &[(String, PathBuf)]) -> Result<(), KvError> {
        self.0.restore(files).map_err(kv_err)
    }
}

/// One group's store at one moment: a RocksDB checkpoint.
struct RocksFiles(RocksCheckpoint);

impl KvFiles for RocksFiles {
    fn files(&self) -> Result<Vec<KvFile>, KvError> {
        let files = self.0.files().map_err(kv_err)?;
        Ok(files.into_iter().map(|f| KvFile { name: f.name, path: f.path, size: f.size, crc32: f.crc32 }).collect())
    }
}
