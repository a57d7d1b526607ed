//! Distillery's stage operations and what they need: the Llama model on Burn,
//! model and data I/O, and the kernels.
pub mod io;
pub mod model;
