//! waft-raft: placeholder, filled by the Raft core work.
