//! `bench hash`: content hashing of large external files, and how much of
//! that a second `plan` over them saves (the stat cache).

use clap::Args;
use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_engine::{ArtifactKind, OpRegistry, RunContext, Slot, Store, TypedOp};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// An op that only names one external file: what `plan` hashes. It is
/// registered in this bench's own registry and never run.
struct HashedInput;

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct HashedInputParams {
    path: PathBuf,
}

impl TypedOp for HashedInput {
    type Params = HashedInputParams;
    const NAME: &'static str = "hashed_input";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "One external file, for the hashing bench.";

    fn slots(&self) -> Vec<Slot> {
        Vec::new()
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }
    fn external_files(&self, p: &HashedInputParams) -> Vec<PathBuf> {
        vec![p.path.clone()]
    }
    fn run(&self, _: HashedInputParams, _: &RunContext) -> anyhow::Result<()> {
        anyhow::bail!("the hashing bench only plans")
    }
}

#[derive(Args)]
pub struct HashArgs {
    /// Total size of the files, in GiB.
    #[arg(long, default_value_t = 2.0)]
    gib: f64,
    /// Number of files.
    #[arg(long, default_value_t = 8)]
    files: usize,
    /// Where to write them (default: the system temp folder); removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn hash(args: HashArgs) -> anyhow::Result<()> {
    let parent = args.dir.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::Builder::new()
        .prefix("distillery-bench-")
        .tempdir_in(&parent)?;
    let files = args.files.max(1);
    let per_file = ((args.gib * (1u64 << 30) as f64) / files as f64) as usize / 8 * 8;
    let total = per_file * files;
    eprintln!(
        "writing {files} files of {} MiB in {}",
        per_file >> 20,
        dir.path().display()
    );
    let mut paths = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buffer = vec![0u8; 8 << 20];
    for i in 0..files {
        let path = dir.path().join(format!("data-{i}.bin"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = per_file;
        while left > 0 {
            let n = left.min(buffer.len());
            for chunk in buffer[..n].chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            f.write_all(&buffer[..n])?;
            left -= n;
        }
        f.flush()?;
        paths.push(path);
    }
    // Files older than the racy window are cached by stat; age them.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for p in &paths {
        std::fs::File::options()
            .write(true)
            .open(p)?
            .set_modified(old)?;
    }

    let gib = total as f64 / (1u64 << 30) as f64;
    let threads = rayon::current_num_threads();
    let started = Instant::now();
    FileHasher::uncached().digest_all(&paths)?;
    let raw = started.elapsed().as_secs_f64();
    println!(
        "hash: {gib:.2} GiB in {files} files, {threads} threads: {raw:.3} s = {:.2} GB/s (files in page cache)",
        total as f64 / raw / 1e9
    );

    // The same files as external inputs of a recipe: plan twice.
    let mut recipe = String::from("name: bench-hash\nstages:\n");
    for (i, p) in paths.iter().enumerate() {
        recipe.push_str(&format!(
            "  read{i}:\n    op: hashed_input\n    with: {{ path: {} }}\n",
            p.file_name().unwrap().to_string_lossy()
        ));
    }
    let recipe_path = dir.path().join("bench.yaml");
    std::fs::write(&recipe_path, &recipe)?;
    let mut registry = OpRegistry::new();
    registry.register(HashedInput);
    let store = Store::open(&dir.path().join(".distillery"))?;
    let mut timings = Vec::new();
    for attempt in 0..2 {
        let started = Instant::now();
        let pipeline =
            distillery_engine::load(&recipe_path, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
        let hasher = FileHasher::with_cache(store.stat_cache_path());
        plan::plan(&pipeline, &store, &hasher, &Selection::default())?;
        hasher.save()?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "plan #{}: {seconds:.4} s, {:.2} GiB read from the files",
            attempt + 1,
            hasher.bytes_read() as f64 / (1u64 << 30) as f64
        );
        timings.push(seconds);
    }
    println!("second plan / first plan = {:.4}", timings[1] / timings[0]);
    Ok(())
}
