//! waft-sim: drives waft-raft nodes over a simulated network, disk and clock,
//! all from one seed. Owns the model runtime (`cluster`), the model state
//! machine (`model`), the linearizability checker (`lin`) and the randomized
//! simulator (`sim`). Must never read the wall clock or OS randomness in a run.

pub mod cluster;
pub mod lin;
pub mod model;
pub mod rng;
pub mod sim;
pub mod testkit;
