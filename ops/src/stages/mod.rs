//! The stage operations, one file each: parameters, plan-time checks, run.

pub mod dataset;
pub mod export;
pub mod load_model;

use distillery_engine::OpRegistry;

/// Registers every op of this crate.
pub fn register(registry: &mut OpRegistry) {
    registry
        .register(dataset::Dataset)
        .register(export::Export)
        .register(load_model::LoadModel);
}
