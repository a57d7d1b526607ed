//! `distillery report`: one self-contained HTML page about a recipe's run:
//! the stage graph with cache state and run times, training curves,
//! evaluation tables and model sizes, read from the store.

use super::report_html::{self, ModelShape, Report, StageReport, StageStatus};
use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, StoreArgs, pipeline};
use clap::Args;
use distillery_engine::Store;
use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection, StageState};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A run whose metrics changed this recently is shown as running rather
/// than interrupted.
const RECENT: Duration = Duration::from_secs(15 * 60);

#[derive(Args)]
pub struct ReportArgs {
    recipe: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// Where to write the page (default: `reports/<recipe name>.html` in the store).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Open the page in the default browser (through `xdg-open`) once written.
    #[arg(long)]
    open: bool,
}

pub fn report(args: ReportArgs) -> u8 {
    let registry = pipeline::registry();
    let pipeline = match pipeline::load(&args.recipe, &registry) {
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

    let position: Vec<usize> = {
        let mut pos = vec![0; pipeline.stages.len()];
        for (p, s) in plan.stages.iter().enumerate() {
            pos[s.index] = p;
        }
        pos
    };
    let mut edges = Vec::new();
    for s in &plan.stages {
        for producers in pipeline.stages[s.index].inputs.values() {
            for &j in producers {
                let edge = (position[j], position[s.index]);
                if !edges.contains(&edge) {
                    edges.push(edge);
                }
            }
        }
    }
    let stages = plan
        .stages
        .iter()
        .map(|s| stage_report(&store, &s.name, &s.op, &s.key, &s.state))
        .collect();
    let report = Report {
        recipe: pipeline.recipe.name.clone(),
        recipe_path: args.recipe.display().to_string(),
        store: store.root().display().to_string(),
        generated: report_html::format_unix(unix(SystemTime::now())),
        stages,
        edges,
    };
    let html = report_html::render(&report);

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

/// What the store holds about one stage: its entry when published, else
/// the progress in its scratch folder.
fn stage_report(store: &Store, name: &str, op: &str, key: &str, state: &StageState) -> StageReport {
    let status = match state {
        StageState::Cached => StageStatus::Stored,
        StageState::Run(reason) => {
            let scratch = store.scratch_dir(key);
            match latest_change(&scratch) {
                Some(modified) => StageStatus::Partial {
                    recent: SystemTime::now()
                        .duration_since(modified)
                        .is_ok_and(|age| age < RECENT),
                },
                None => StageStatus::NotRun(reason.to_string()),
            }
        }
    };
    let mut r = StageReport::new(name, op, key, status);
    let dir = match r.status {
        StageStatus::Stored => {
            if let Some(m) = store.manifest(key) {
                r.duration_secs = Some(m.duration_secs);
                r.created = Some(report_html::format_unix(m.created_unix));
                r.output_bytes = Some(m.outputs.values().map(|o| o.size).sum());
            }
            store.output_dir(key)
        }
        StageStatus::Partial { .. } => store.scratch_dir(key),
        StageStatus::NotRun(_) => return r,
    };
    let json = |file: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(dir.join(file)).ok()?).ok()
    };
    r.model = json("config.json").and_then(|c| ModelShape::from_config(&c));
    if let Some(p) = json("pruning.json") {
        r.pruned_from = p
            .get("source")
            .and_then(ModelShape::from_config)
            .map(|mut source| {
                // `pruning.json` leaves out what pruning keeps: the vocabulary.
                if let Some(m) = r.model.as_ref().filter(|_| source.vocab == 0) {
                    source.vocab = m.vocab;
                    source.tied = m.tied;
                }
                source
            });
        r.pruning_method = p.get("method").and_then(|m| m.as_str()).map(|m| {
            match p.get("depth_metric").and_then(|d| d.as_str()) {
                Some(d) => format!("{m} ({d})"),
                None => m.to_string(),
            }
        });
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) {
        r.metrics = report_html::parse_metrics(&text);
    }
    r.training = json("training.json");
    r.eval_table = std::fs::read_to_string(dir.join("table.md")).ok();
    r
}

/// The newest modification time among a folder's files; None when the
/// folder is missing or empty (a stage that never started).
fn latest_change(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
