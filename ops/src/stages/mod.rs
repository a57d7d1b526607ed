//! The stage operations, one file each: parameters, plan-time checks, run.

pub mod dataset;
pub mod evaluate;
pub mod export;
pub mod importance;
pub mod load_model;
pub mod prune;

use distillery_engine::OpRegistry;

/// Registers every op of this crate.
pub fn register(registry: &mut OpRegistry) {
    registry
        .register(dataset::Dataset)
        .register(evaluate::Evaluate)
        .register(export::Export)
        .register(importance::Importance)
        .register(load_model::LoadModel)
        .register(prune::Prune);
}
