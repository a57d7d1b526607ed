//! Loading a recipe for a command: the op registry, validation with
//! diagnostics on stderr, and the store it uses.

use super::output;
use distillery_engine::config::Config;
use distillery_engine::overrides::{Overrides, Sources};
use distillery_engine::testing;
use distillery_engine::validate::LoadError;
use distillery_engine::{OpRegistry, Pipeline, Store};
use std::path::{Path, PathBuf};

/// Every op a recipe may use. The engine's test ops join only in builds for
/// the tests (`testing::IN_TEST_BUILD`: never in a release binary), and there
/// only with `DISTILLERY_TEST_OPS=1`, so that a test can also run the binary
/// as users get it.
pub fn registry() -> OpRegistry {
    let mut registry = OpRegistry::new();
    distillery_ops::register(&mut registry);
    if testing::IN_TEST_BUILD && std::env::var("DISTILLERY_TEST_OPS").is_ok_and(|v| v == "1") {
        testing::register(&mut registry);
    }
    registry
}

/// Loads and validates a recipe with the command line's `--set` overrides;
/// on failure prints the diagnostics and returns the exit code.
pub fn load(path: &Path, overrides: &[String], registry: &OpRegistry) -> Result<Pipeline, u8> {
    match distillery_engine::load_with_overrides(path, overrides, registry) {
        Ok(p) => Ok(p),
        Err(LoadError::Io { path, error }) => {
            eprintln!("error: cannot read recipe {}: {error}", path.display());
            Err(super::EXIT_INVALID)
        }
        Err(LoadError::Invalid {
            path,
            source,
            overrides,
            diagnostics,
        }) => {
            let name = path.display().to_string();
            let sources = Sources {
                recipe_name: &name,
                recipe: &source,
                overrides: &overrides,
            };
            output::print_diagnostics(&path, &sources, &diagnostics);
            Err(super::EXIT_INVALID)
        }
    }
}

/// The machine's config file (`distillery_engine::config`); on a problem
/// prints it and returns the exit code.
pub fn machine_config() -> Result<Config, u8> {
    Config::load_default().map_err(|e| {
        let name = e.path.display().to_string();
        let overrides = Overrides::default();
        let sources = Sources {
            recipe_name: &name,
            recipe: &e.source,
            overrides: &overrides,
        };
        output::print_diagnostics(&e.path, &sources, &e.diagnostics);
        super::EXIT_INVALID
    })
}

/// The store folder: `--store`, or `.distillery` beside the recipe.
pub fn store_dir(store: &Option<PathBuf>, recipe: &Path) -> PathBuf {
    match store {
        Some(dir) => dir.clone(),
        None => {
            let parent = recipe.parent().filter(|p| !p.as_os_str().is_empty());
            parent.unwrap_or(Path::new(".")).join(".distillery")
        }
    }
}

pub fn open_store(dir: &Path) -> Result<Store, u8> {
    Store::open(dir).map_err(|e| {
        eprintln!("error: cannot open the store at {}: {e}", dir.display());
        super::EXIT_FAILED
    })
}
