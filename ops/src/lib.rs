//! Distillery's stage operations and what they need: the Llama model on Burn,
//! model and data I/O, and the kernels.
pub mod backend;
pub mod device;
pub mod eval;
pub mod generate;
pub mod importance;
pub mod inspect;
pub mod io;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod prune;
pub mod rng;
mod stages;
pub mod text;
pub mod train;

/// What the `prune` op records in `pruning.json`, for code that reads it.
pub use stages::prune::{PRUNING_FILE, PruneMethod, PruningReport};
pub use stages::register;
