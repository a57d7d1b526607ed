//! `distillery cache ls|gc|verify|push|pull`: look after the artifact store.

use super::cache_remote::{self, Direction, TransferArgs};
use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, output, pipeline};
use clap::{Args, Subcommand};
use distillery_engine::Store;
use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_ops::report::format::{self, format_bytes};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List stored entries.
    Ls(LsArgs),
    /// Remove entries that none of the given recipes uses, or older than a date.
    Gc(GcArgs),
    /// Rehash stored outputs and report any that changed.
    Verify(VerifyArgs),
    /// Send a recipe's stored entries to a remote (objects first, manifest last).
    Push(TransferArgs),
    /// Receive a recipe's entries from a remote, each file's digest verified.
    Pull(TransferArgs),
}

#[derive(Args)]
pub struct LsArgs {
    /// Store folder (default: ./.distillery).
    #[arg(long, value_name = "DIR", env = "DISTILLERY_STORE")]
    store: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// Keep every entry these recipes use now; remove the rest.
    recipes: Vec<PathBuf>,
    /// Remove entries created before this date (YYYY-MM-DD, or N days ago as `Nd`).
    #[arg(long, value_name = "DATE")]
    older_than: Option<String>,
    /// Store folder (default: `.distillery` beside the first recipe, else ./.distillery).
    #[arg(long, value_name = "DIR", env = "DISTILLERY_STORE")]
    store: Option<PathBuf>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Only the entries this recipe uses (default: every entry).
    recipe: Option<PathBuf>,
    /// Store folder (default: `.distillery` beside the recipe, else ./.distillery).
    #[arg(long, value_name = "DIR", env = "DISTILLERY_STORE")]
    store: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn cache(command: CacheCommand) -> u8 {
    match command {
        CacheCommand::Ls(args) => ls(args),
        CacheCommand::Gc(args) => gc(args),
        CacheCommand::Verify(args) => verify(args),
        CacheCommand::Push(args) => cache_remote::transfer(args, Direction::Push),
        CacheCommand::Pull(args) => cache_remote::transfer(args, Direction::Pull),
    }
}

fn store_dir(store: &Option<PathBuf>, recipe: Option<&Path>) -> PathBuf {
    match recipe {
        Some(r) => pipeline::store_dir(store, r),
        None => store
            .clone()
            .unwrap_or_else(|| PathBuf::from(".distillery")),
    }
}

fn ls(args: LsArgs) -> u8 {
    let store = match pipeline::open_store(&store_dir(&args.store, None)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let entries = match store.entries() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot list the store: {e}");
            return EXIT_FAILED;
        }
    };
    if args.json {
        output::print_json(&entries);
        return EXIT_OK;
    }
    let names: Vec<String> = entries
        .iter()
        .map(|m| format!("{}/{}", m.recipe, m.stage))
        .collect();
    // Columns as wide as their longest entry, so long recipe names stay aligned.
    let name_width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let op_width = entries
        .iter()
        .map(|m| m.material.op.len())
        .max()
        .unwrap_or(0);
    for (m, name) in entries.iter().zip(&names) {
        let bytes: u64 = m.outputs.values().map(|o| o.size).sum();
        println!(
            "{}  {name:<name_width$}  {:<op_width$}  {:>10}  {:>8.1}s  {}",
            &m.key[..12],
            m.material.op,
            format_bytes(bytes),
            m.duration_secs,
            format_unix(m.created_unix)
        );
    }
    eprintln!("{} entries in {}", entries.len(), store.root().display());
    EXIT_OK
}

/// The keys every stage of the recipe has now.
fn recipe_keys(recipe: &Path, store: &Store) -> Result<BTreeSet<String>, u8> {
    let registry = pipeline::registry();
    let pipeline = pipeline::load(recipe, &[], &registry)?;
    let hasher = FileHasher::with_cache(store.stat_cache_path());
    let plan = plan::plan(&pipeline, store, &hasher, &Selection::default()).map_err(|e| {
        eprintln!("error: {}: {e}", recipe.display());
        EXIT_FAILED
    })?;
    let _ = hasher.save();
    Ok(plan.stages.into_iter().map(|s| s.key).collect())
}

fn gc(args: GcArgs) -> u8 {
    if args.recipes.is_empty() && args.older_than.is_none() {
        eprintln!("error: give the recipes whose entries to keep, or --older-than DATE (or both)");
        return EXIT_INVALID;
    }
    let cutoff = match args.older_than.as_deref().map(parse_date).transpose() {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: --older-than: {message}");
            return EXIT_INVALID;
        }
    };
    let store = match pipeline::open_store(&store_dir(
        &args.store,
        args.recipes.first().map(PathBuf::as_path),
    )) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut keep = BTreeSet::new();
    for recipe in &args.recipes {
        match recipe_keys(recipe, &store) {
            Ok(keys) => keep.extend(keys),
            Err(code) => return code,
        }
    }
    let doomed = |m: &distillery_engine::store::Manifest| {
        let unreferenced = !args.recipes.is_empty() && !keep.contains(&m.key);
        let old = cutoff.is_some_and(|c| m.created_unix <= c);
        unreferenced || old
    };
    let removed = if args.dry_run {
        match store.entries() {
            Ok(e) => e.into_iter().filter(|m| doomed(m)).collect(),
            Err(e) => {
                eprintln!("error: cannot list the store: {e}");
                return EXIT_FAILED;
            }
        }
    } else {
        match store.remove_where(doomed) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: garbage collection failed: {e}");
                return EXIT_FAILED;
            }
        }
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut bytes = 0;
    for m in &removed {
        bytes += m.outputs.values().map(|o| o.size).sum::<u64>();
        println!("{verb} {}  {}/{}", &m.key[..12], m.recipe, m.stage);
    }
    eprintln!("{verb} {} entries ({})", removed.len(), format_bytes(bytes));
    EXIT_OK
}

fn verify(args: VerifyArgs) -> u8 {
    let store = match pipeline::open_store(&store_dir(&args.store, args.recipe.as_deref())) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let keys = match &args.recipe {
        Some(recipe) => match recipe_keys(recipe, &store) {
            Ok(k) => Some(k),
            Err(code) => return code,
        },
        None => None,
    };
    let (checked, problems) = match store.verify(keys.as_ref()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: cannot verify the store: {e}");
            return EXIT_FAILED;
        }
    };
    if args.json {
        output::print_json(&serde_json::json!({"checked": checked, "problems": problems}));
    } else {
        for p in &problems {
            println!("{}  {}: {}: {}", &p.key[..12], p.stage, p.path, p.problem);
        }
        eprintln!("verified {checked} entries: {} problems", problems.len());
    }
    if problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// `YYYY-MM-DD` (UTC midnight) or `Nd` (N days before now), as Unix seconds.
fn parse_date(text: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(days) = text.strip_suffix('d') {
        let days: u64 = days
            .parse()
            .map_err(|_| format!("`{text}` is not a number of days like `30d`"))?;
        return Ok(now.saturating_sub(days * 86_400));
    }
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(format!(
            "`{text}` is not a date like 2026-01-31 or a number of days like 30d"
        ));
    };
    let (y, m, d): (i64, u32, u32) = match (y.parse(), m.parse(), d.parse()) {
        (Ok(y), Ok(m), Ok(d)) if (1..=12).contains(&m) && (1..=31).contains(&d) => (y, m, d),
        _ => return Err(format!("`{text}` is not a valid date (YYYY-MM-DD)")),
    };
    let days = days_from_civil(y, m, d);
    u64::try_from(days * 86_400).map_err(|_| format!("`{text}` is before 1970"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn format_unix(secs: u64) -> String {
    // The report's calendar conversion, without its time-zone suffix.
    format::format_unix(secs)
        .trim_end_matches(" UTC")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-02").unwrap(), 86_400);
        assert_eq!(
            format_unix(parse_date("2026-11-26").unwrap()),
            "2026-11-26 00:00"
        );
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }
}
