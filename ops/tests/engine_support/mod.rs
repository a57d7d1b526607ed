//! Running a recipe through the engine in-process, with every public op
//! registered, as `distillery run` does (for op tests that need the whole
//! validate, plan, execute path).

use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_engine::run::{self, Quiet, RunOptions, RunReport};
use distillery_engine::{Device, OpRegistry, Store};
use std::path::Path;

/// Every op the binary has.
pub fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    distillery_ops::register(&mut r);
    r
}

/// Writes `recipe` to `dir/recipe.yaml` and validates, plans and runs it on
/// the CPU with the store in `dir/.distillery`.
pub fn run_recipe(dir: &Path, recipe: &str) -> RunReport {
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, recipe).unwrap();
    let pipeline =
        distillery_engine::load(&path, &registry()).unwrap_or_else(|e| panic!("{e}: {e:?}"));
    let store = Store::open(&dir.join(".distillery")).unwrap();
    let hasher = FileHasher::with_cache(store.stat_cache_path());
    let plan = plan::plan(&pipeline, &store, &hasher, &Selection::default()).unwrap();
    let options = RunOptions::local(1, Device::Cpu);
    run::execute(&pipeline, &plan, &store, &options, &Quiet).unwrap()
}
