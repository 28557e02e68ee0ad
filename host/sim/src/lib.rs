//! waft-sim: placeholder, filled by the Raft core work.
