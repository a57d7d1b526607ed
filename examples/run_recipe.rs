//! Running a recipe from Rust, without the command line: validate it against
//! the registered ops, plan it against a store, and run what is not cached.
//!
//! ```sh
//! cargo run --release --example run_recipe -- recipes/smollm2-prepare.yaml
//! ```

use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_engine::run::{self, Quiet, RunOptions};
use distillery_engine::{OpRegistry, Store};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let recipe = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: run_recipe RECIPE.yaml"))?,
    );
    let mut registry = OpRegistry::new();
    distillery_ops::register(&mut registry);

    let pipeline = distillery_engine::load(&recipe, &registry)
        .map_err(|e| anyhow::anyhow!("{e} (run `distillery validate` for details)"))?;
    let store = Store::open(&pipeline.recipe.dir().join(".distillery"))?;
    let hasher = FileHasher::with_cache(store.stat_cache_path());
    let plan = plan::plan(&pipeline, &store, &hasher, &Selection::default())?;
    hasher.save()?;
    for stage in &plan.stages {
        println!("{:<16} {:?}", stage.name, stage.state);
    }

    let device =
        distillery_ops::device::resolve(pipeline.recipe.device).map_err(anyhow::Error::msg)?;
    let report = run::execute(
        &pipeline,
        &plan,
        &store,
        &RunOptions::local(1, device),
        &Quiet,
    )?;
    for stage in &report.stages {
        println!("{:<16} {:?}", stage.name, stage.outcome);
    }
    anyhow::ensure!(report.succeeded(), "a stage failed");
    Ok(())
}
