//! `distillery report`: plans the recipe, has the report library read the
//! store and render the page, writes it and opens it on request.

use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, OverrideArgs, StoreArgs, pipeline};
use clap::Args;
use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_ops::report;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReportArgs {
    recipe: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Where to write the page (default: `reports/<recipe name>.html` in the store).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Open the page in the default browser (through `xdg-open`) once written.
    #[arg(long)]
    open: bool,
}

pub fn report(args: ReportArgs) -> u8 {
    let registry = pipeline::registry();
    let pipeline = match pipeline::load(&args.recipe, &args.overrides.set, &registry) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store_dir = pipeline::store_dir(&args.store.store, &args.recipe);
    let store = match pipeline::open_store(&store_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The stat cache is read, not saved: a report leaves the store as it was.
    let hasher = FileHasher::with_cache(store.stat_cache_path());
    let plan = match plan::plan(&pipeline, &store, &hasher, &Selection::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return match e {
                plan::PlanError::Hash(_) => EXIT_FAILED,
                _ => EXIT_INVALID,
            };
        }
    };

    let report = report::collect(&pipeline, &plan, &store, &args.recipe.display().to_string());
    let html = report::render(&report);

    let output = args.output.clone().unwrap_or_else(|| {
        store.root().join("reports").join(format!(
            "{}.html",
            distillery_engine::store::safe_file_name(&pipeline.recipe.name)
        ))
    });
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return EXIT_FAILED;
    }
    if let Err(e) = std::fs::write(&output, html) {
        eprintln!("error: cannot write {}: {e}", output.display());
        return EXIT_FAILED;
    }
    println!("{}", output.display());
    if args.open {
        open(&output);
    }
    EXIT_OK
}

/// Hands the page to `xdg-open` when there is one; a headless machine just
/// has the path printed above.
fn open(path: &Path) {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("xdg-open").is_file())
    });
    if !found {
        eprintln!("xdg-open not found; open the file above in a browser");
        return;
    }
    let spawned = std::process::Command::new("xdg-open")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("cannot run xdg-open: {e}");
    }
}
