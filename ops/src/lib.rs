//! Distillery's stage operations and what they need: the Llama model on Burn,
//! model and data I/O, the text pipeline, importance, pruning, training,
//! evaluation, the kernels, and the HTML report. docs/ARCHITECTURE.md maps
//! the modules.
pub mod backend;
pub mod device;
pub mod eval;
pub mod export;
pub mod generate;
pub mod importance;
pub mod inspect;
pub mod io;
pub mod kernels;
pub mod loader;
pub mod memory;
pub mod model;
pub mod prune;
pub mod report;
pub mod rng;
pub mod search;
mod stages;
pub mod teacher_logits;
pub mod text;
pub mod train;

pub use stages::register;
