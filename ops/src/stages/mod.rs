//! The stage operations, one file each: parameters, plan-time checks, run.

use distillery_engine::OpRegistry;

/// Registers every op of this crate.
pub fn register(_registry: &mut OpRegistry) {}
