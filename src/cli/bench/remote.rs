//! `bench remote`: pushing and pulling one large stage output against
//! copying the same file on the same disk, in the same run.
//!
//! A store entry of `--mb` megabytes of random bytes is made in a fresh
//! store; each round pushes the entry to an empty remote and pulls it into
//! an empty store, and copies the file each of them reads (the store's
//! file, the remote's object) beside it with `std::fs::copy`, what `cp`
//! does; all on the same disk, each step after a `sync`, the copy before
//! the transfer in even rounds and after it in odd ones. The ratio of each
//! transfer's throughput to its copy's is printed per round and as a
//! median.

use clap::Args;
use distillery_engine::Store;
use distillery_engine::key::{ENGINE_FORMAT, KeyMaterial};
use distillery_engine::remote::Remote;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct RemoteArgs {
    /// Size of the stage output, in MB (10^6 bytes).
    #[arg(long, default_value_t = 500)]
    mb: u64,
    /// Rounds of copy, push and pull.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the stores, the copy and (unless --remote) the remote go
    /// (default: the system temp folder); removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Another remote to time instead of a directory beside the store (an
    /// `s3://` URL, say); each round uses a fresh prefix under it.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
}

pub fn remote(args: RemoteArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.mb > 0 && args.rounds > 0,
        "--mb and --rounds must be positive"
    );
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let work = tempfile::Builder::new()
        .prefix("distillery-bench-remote-")
        .tempdir_in(&parent)?;
    let bytes = args.mb * 1_000_000;
    let (source, key) = make_entry(work.path(), bytes)?;
    let file = source.output_dir(&key).join("weights.bin");
    println!(
        "one stage output of {} MB, {} rounds; remote: {}",
        args.mb,
        args.rounds,
        args.remote
            .as_deref()
            .unwrap_or("a directory on the same disk")
    );
    println!("round  copy MB/s  push MB/s  (x copy)  copy MB/s  pull MB/s  (x copy)");
    let mb = bytes as f64 / 1e6;
    let (mut push_ratios, mut pull_ratios) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let url = match &args.remote {
            Some(url) => format!(
                "{}/bench-{}-{round}",
                url.trim_end_matches('/'),
                std::process::id()
            ),
            None => work
                .path()
                .join(format!("remote-{round}"))
                .to_string_lossy()
                .into_owned(),
        };
        let remote = Remote::open(&url)?;
        // Each transfer is compared with a copy of the file it reads, and
        // which of the two goes first alternates by round: on some disks a
        // file just written copies slower or faster than an older one.
        let copy_target = work.path().join(format!("copy-{round}.bin"));
        let copy_of = |from: &Path| -> anyhow::Result<f64> {
            settle()?;
            let started = Instant::now();
            std::fs::copy(from, &copy_target)?;
            let speed = mb / started.elapsed().as_secs_f64();
            std::fs::remove_file(&copy_target)?;
            Ok(speed)
        };
        let copy_first = round % 2 == 0;
        let mut push_copy = if copy_first { copy_of(&file)? } else { 0.0 };
        settle()?;
        let pushed = remote.push(&source, &key)?;
        anyhow::ensure!(pushed.files == 1, "the push sent {} files", pushed.files);
        let push = mb / pushed.seconds;
        if !copy_first {
            push_copy = copy_of(&file)?;
        }

        // The object the pull reads, where the remote is a directory here.
        let object = match &args.remote {
            None => {
                let digest = &source.manifest(&key).expect("stored").outputs["weights.bin"].blake3;
                work.path()
                    .join(format!("remote-{round}"))
                    .join("objects")
                    .join(&digest[..2])
                    .join(&digest[2..])
            }
            Some(_) => file.clone(),
        };
        let target = Store::open(&work.path().join(format!("pulled-{round}")))?;
        let lock = target.lock_stage(&key)?;
        let mut pull_copy = if copy_first { copy_of(&object)? } else { 0.0 };
        settle()?;
        let pulled = remote.pull(&target, &key, &lock)?;
        anyhow::ensure!(
            pulled.bytes == bytes,
            "the pull received {} bytes",
            pulled.bytes
        );
        let pull = mb / pulled.seconds;
        if !copy_first {
            pull_copy = copy_of(&object)?;
        }
        drop(lock);
        std::fs::remove_dir_all(target.root())?;
        if args.remote.is_none() {
            std::fs::remove_dir_all(work.path().join(format!("remote-{round}")))?;
        }
        push_ratios.push(push / push_copy);
        pull_ratios.push(pull / pull_copy);
        println!(
            "{round:>5}  {push_copy:>9.0}  {push:>9.0}  {:>8.2}  {pull_copy:>9.0}  {pull:>9.0}  {:>8.2}",
            push / push_copy,
            pull / pull_copy
        );
    }
    // Reported apart: on the disks of our test machines, the second read
    // of a file written just before can be several times slower than the
    // first, whichever step does it (docs/BENCHMARKS.md).
    for (first, parity) in [("copy first", 0), ("transfer first", 1)] {
        let mut push: Vec<f64> = push_ratios
            .iter()
            .copied()
            .skip(parity)
            .step_by(2)
            .collect();
        let mut pull: Vec<f64> = pull_ratios
            .iter()
            .copied()
            .skip(parity)
            .step_by(2)
            .collect();
        if !push.is_empty() {
            println!(
                "median, {first}: push {:.2}x its copy's throughput, pull {:.2}x",
                median(&mut push),
                median(&mut pull)
            );
        }
    }
    Ok(())
}

/// A store holding one entry whose output is `bytes` random bytes.
fn make_entry(dir: &std::path::Path, bytes: u64) -> anyhow::Result<(Store, String)> {
    let store = Store::open(&dir.join("store"))?;
    let material = KeyMaterial {
        engine_format: ENGINE_FORMAT,
        op: "bench_remote".into(),
        op_version: 1,
        params: serde_json::json!({ "bytes": bytes, "nonce": std::process::id() }),
        inputs: Default::default(),
        absent_inputs: Default::default(),
        files: Default::default(),
        seed: 0,
    };
    let key = material.key();
    let lock = store.lock_stage(&key)?;
    let staging = store.begin(&key, &lock)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(
        staging.out_dir().join("weights.bin"),
    )?);
    // Random bytes (a xorshift stream): nothing in the path can compress them.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    // On disk before the first round, so that no round pays for its
    // writeback.
    out.into_inner()?.sync_all()?;
    store.publish(staging, "bench", "output", &material, 0.0)?;
    Ok((store, key))
}

/// Writes every dirty page back (`sync`) before a timed step. Without it,
/// a step that comes after others' writes is throttled to the disk's speed
/// while the kernel flushes them, and the comparison measures the order of
/// the steps rather than the steps.
fn settle() -> anyhow::Result<()> {
    let status = std::process::Command::new("sync").status()?;
    anyhow::ensure!(status.success(), "`sync` failed");
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
