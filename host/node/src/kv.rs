//! Where a node keeps its groups' key-value stores: [`KvStores`], in memory
//! (tests, the simulator) or in the node's [`RocksKv`].

use std::sync::{Arc, Mutex, OnceLock};

use std::path::PathBuf;

use waft_runtime::{KvCapture, KvError, KvFile, KvFiles, KvHandle, KvProvider, KvStore, KvWrites};
use waft_storage::{RocksCheckpoint, RocksKv, RocksKvGroup};

/// Makes each group's key-value store (see `waft_runtime::kv`).
#[derive(Clone)]
pub struct KvStores(pub KvProvider);

impl KvStores {
    /// Every group's store in `kv`, each in its own instance, opened (or
    /// created) when the group first uses it: a group whose state machine
    /// keeps no store has none.
    pub fn rocks(kv: RocksKv) -> KvStores {
        KvStores(Arc::new(move |group| {
            Ok(Arc::new(Mutex::new(RocksStore { kv: kv.clone(), group, open: OnceLock::new() })) as KvHandle)
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
struct RocksStore {
    kv: RocksKv,
    group: u64,
    open: OnceLock<RocksKvGroup>,
}

impl RocksStore {
    fn store(&self) -> Result<&RocksKvGroup, KvError> {
        if let Some(store) = self.open.get() {
            return Ok(store);
        }
        let store = self.kv.group(self.group).map_err(kv_err)?;
        Ok(self.open.get_or_init(|| store))
    }

    /// The store, if it is open or on disk: reads of one that was never
    /// written find nothing, and create nothing.
    fn existing(&self) -> Result<Option<&RocksKvGroup>, KvError> {
        if self.open.get().is_none() && !self.kv.exists(self.group) {
            return Ok(None);
        }
        self.store().map(Some)
    }
}

fn kv_err(e: waft_storage::Error) -> KvError {
    KvError(e.to_string())
}

impl KvStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.existing()? {
            Some(store) => store.get(key).map_err(kv_err),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        match self.existing()? {
            Some(store) => store.scan(start, end, visit).map_err(kv_err),
            None => Ok(()),
        }
    }

    fn commit(&mut self, writes: &KvWrites, records: &KvWrites) -> Result<(), KvError> {
        self.store()?.commit(writes.iter(), records.iter()).map_err(kv_err)
    }

    fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.existing()? {
            Some(store) => store.record(key).map_err(kv_err),
            None => Ok(None),
        }
    }

    fn records(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), KvError> {
        match self.existing()? {
            Some(store) => store.records(prefix, visit).map_err(kv_err),
            None => Ok(()),
        }
    }

    fn clear(&mut self) -> Result<(), KvError> {
        match self.existing()? {
            Some(store) => store.clear().map_err(kv_err),
            None => Ok(()),
        }
    }

    fn sync(&mut self) -> Result<(), KvError> {
        match self.existing()? {
            Some(store) => store.sync().map_err(kv_err),
            None => Ok(()),
        }
    }

    fn capture(&self) -> Result<KvCapture, KvError> {
        Ok(KvCapture::Files(Box::new(RocksFiles(self.store()?.checkpoint().map_err(kv_err)?))))
    }

    fn restore(&mut self, files: &[(String, PathBuf)]) -> Result<(), KvError> {
        self.store()?.restore(files).map_err(kv_err)
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
