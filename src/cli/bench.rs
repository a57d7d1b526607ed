//! `distillery bench`: measurements that print figures (for
//! docs/BENCHMARKS.md), run on the machine at hand.

use super::{EXIT_FAILED, EXIT_OK};
use clap::{Args, Subcommand};
use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_engine::{OpRegistry, Store};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Content hashing of external files, and a second `plan` over them.
    Hash(HashArgs),
    /// Model forward (tokens/s by sequence length) and greedy decoding.
    Forward(ForwardArgs),
    /// The CPU importance reduction against the machine's memory bandwidth.
    Importance(ImportanceArgs),
}

#[derive(Args)]
pub struct ImportanceArgs {
    /// Hook calls timed per shape.
    #[arg(long, default_value_t = 40)]
    iters: usize,
}

#[derive(Args)]
pub struct ForwardArgs {
    /// A GGUF file or a Hugging Face model folder.
    model: PathBuf,
    /// Sequence lengths to time (one row each).
    #[arg(long, value_delimiter = ',', default_value = "36,512")]
    seq: Vec<usize>,
    /// Timed repetitions per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// New tokens for the decoding measurement (0 skips it).
    #[arg(long, default_value_t = 32)]
    decode: usize,
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

pub fn bench(command: BenchCommand) -> u8 {
    match command {
        BenchCommand::Hash(args) => report(hash(args)),
        BenchCommand::Forward(args) => report(forward(args)),
        BenchCommand::Importance(args) => report(importance(args)),
    }
}

fn report(result: anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

/// Median wall time of `runs` calls, after one warm-up call.
fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    use distillery_ops::backend::Cpu;
    use distillery_ops::model::tokens_tensor;
    let device = Default::default();
    let started = Instant::now();
    let (model, _) = distillery_ops::loader::load_model::<Cpu>(&args.model, &device)?;
    println!(
        "load {}: {:.2} s ({:.1}M parameters), {} threads",
        args.model.display(),
        started.elapsed().as_secs_f64(),
        model.config.num_parameters() as f64 / 1e6,
        rayon::current_num_threads()
    );
    // Deterministic, varied token ids.
    let vocab = model.config.vocab_size as u64;
    let tokens: Vec<u32> = (0..args.seq.iter().copied().max().unwrap_or(1) as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % vocab) as u32)
        .collect();
    for &seq in &args.seq {
        let input = &tokens[..seq.min(tokens.len())];
        let secs = median_secs(args.runs, || {
            let logits = model.forward(tokens_tensor(&[input], &device));
            let _ = logits.into_data();
        });
        println!(
            "forward, batch 1 x {seq} tokens: {:.1} ms median of {}, {:.0} tokens/s",
            secs * 1e3,
            args.runs,
            seq as f64 / secs
        );
    }
    if args.decode > 0 {
        let prompt = &tokens[..tokens.len().min(36)];
        let secs = median_secs(args.runs.min(3), || {
            let _ = model.generate_greedy(prompt, args.decode, &[]);
        });
        println!(
            "greedy decoding, {}-token prompt + {} new tokens: {:.2} s, {:.1} ms per new token (prefill included)",
            prompt.len(),
            args.decode,
            secs,
            secs * 1e3 / args.decode as f64
        );
    }
    Ok(())
}

fn hash(args: HashArgs) -> anyhow::Result<()> {
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
            "  read{i}:\n    op: read_file\n    with: {{ path: {} }}\n",
            p.file_name().unwrap().to_string_lossy()
        ));
    }
    let recipe_path = dir.path().join("bench.yaml");
    std::fs::write(&recipe_path, &recipe)?;
    let mut registry = OpRegistry::new();
    distillery_engine::testing::register(&mut registry);
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

/// Times the channel statistics (the importance op's per-hook reduction)
/// on the CPU backend and compares the bytes it reads per second with a
/// plain read of memory on all threads.
fn importance(args: ImportanceArgs) -> anyhow::Result<()> {
    use distillery_ops::kernels::bandwidth::{bench_channel_stats_cpu, measure_copy_bandwidth};
    use distillery_ops::kernels::importance::Aggregation;
    let machine = measure_copy_bandwidth();
    println!(
        "memory read bandwidth ({} threads, best of 5 passes over 256 MiB): {:.1} GB/s",
        rayon::current_num_threads(),
        machine / 1e9
    );
    for (dims, scale) in [
        ([8, 512, 1536], 1),
        ([1, 4096, 4096], 2),
        ([1, 4096, 14336], 7),
    ] {
        let iters = (args.iters / scale).max(1);
        for seq_agg in Aggregation::ALL {
            let t = bench_channel_stats_cpu(dims[0], dims[1], dims[2], seq_agg, iters);
            println!(
                "channel stats {dims:?}, sequence {seq_agg}: {:.2} ms per call, {:.1} GB/s = {:.0}% of memory bandwidth",
                1e3 * t.seconds / iters as f64,
                t.bytes_per_second() / 1e9,
                100.0 * t.bytes_per_second() / machine
            );
        }
    }
    Ok(())
}
