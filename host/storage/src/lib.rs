//! waft-storage: placeholder, filled by the storage work.
