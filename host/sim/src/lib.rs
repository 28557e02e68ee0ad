//! waft-sim: drives the replicas a node runs (`waft_node::Replica`) over a
//! simulated network, disk and clock, all from one seed. Owns the simulated
//! cluster (`cluster`: replicas over crash-faithful disks), the model of the
//! registers and the client commands (`model`), the linearizability checker
//! (`lin`) and the randomized simulator (`sim`); `raft_cluster` is a
//! raft-only harness for the hand-written protocol scenarios (`testkit`).
//! Must never read the wall clock or OS randomness in a run.

pub mod cluster;
pub mod lin;
pub mod model;
pub mod raft_cluster;
pub mod rng;
pub mod sim;
pub mod testkit;
