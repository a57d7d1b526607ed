//! [`build_dataset`]: the pipeline from input files to a dataset folder. A
//! reader thread streams the files into chunks of documents, a rayon pool
//! of its own tokenizes the chunks in parallel, and the chunks are written
//! back in reading order.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use distillery_engine::progress::Progress;

use super::chunks::{Chunk, ChunkTokenizer, Chunker, Encoded};
use super::documents::{DocReader, InputFile, input_files};
use super::encoder::DocumentEncoder;
use super::params::DatasetParams;
use super::tokenizer::TokenizerAssets;
use super::writer::{DatasetWriter, Totals};
use crate::io::dataset::{DatasetIndex, SplitStats};

/// Tokenizes the files of `p` with the tokenizer in `tokenizer_dir` and
/// writes the dataset into `output_dir` (which must exist). Paths in `p` are
/// relative to `recipe_dir`. Returns the index it wrote.
pub fn build_dataset(
    p: &DatasetParams,
    tokenizer_dir: &Path,
    recipe_dir: &Path,
    output_dir: &Path,
    progress: &dyn Progress,
) -> Result<DatasetIndex> {
    let started = Instant::now();
    ensure_buildable(p)?;
    let loss_on = p.loss_on.unwrap_or_default();
    let assets = TokenizerAssets::load(tokenizer_dir)?;
    let separator = assets.separator(p.separator.as_deref())?;
    let chat = assets.chat_template()?;

    let inputs = input_files(p, recipe_dir)?;
    let total_bytes: u64 = inputs.iter().map(|f| f.file_bytes).sum();
    progress.set_total(total_bytes, "bytes");
    let mut writer = DatasetWriter::create(
        output_dir,
        p.seq_len as usize,
        p.heldout_percent,
        separator,
        &inputs,
    )?;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("dataset-tokenize-{i}"))
        .build()
        .context("cannot start the tokenizer threads")?;
    let encoder = DocumentEncoder::new(&assets.tokenizer, &assets.json, threads);
    progress.log(if encoder.is_fast() {
        "tokenizing with the byte-level BPE fast path (checked against `tokenizers` on a sample of documents)"
    } else {
        "tokenizing with `tokenizers`' encode"
    });
    let tokenizer = ChunkTokenizer {
        encoder: &encoder,
        chat: chat.as_ref(),
        loss_on,
    };
    let bytes_read = AtomicU64::new(0);
    let reader = DocReader {
        params: p,
        chat: chat.as_ref(),
        bytes_read: &bytes_read,
    };
    // Chunks read ahead and chunks being tokenized, each at most this many.
    let max_in_flight = 4 * threads;

    std::thread::scope(|scope| -> Result<()> {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel(max_in_flight);
        let (reader, inputs) = (&reader, &inputs);
        scope.spawn(move || read_chunks(reader, inputs, p.max_documents, chunk_tx));
        // Returning drops `chunk_rx`, which stops the reader thread when the
        // build failed.
        tokenize_in_order(&pool, chunk_rx, max_in_flight, &tokenizer, |chunk, ids| {
            writer.write_chunk(chunk, ids)?;
            show_progress(
                progress,
                &writer.totals,
                started,
                bytes_read.load(Ordering::Relaxed),
            );
            Ok(())
        })
    })?;

    let index = writer.finish(&assets.info, loss_on)?;
    let elapsed = started.elapsed().as_secs_f64();
    progress.set_position(total_bytes);
    log_summary(progress, &index, elapsed);
    Ok(index)
}

/// The run-time counterparts of the op's plan-time checks, for callers that
/// build a dataset without planning a recipe.
fn ensure_buildable(p: &DatasetParams) -> Result<()> {
    if p.seq_len < 2 {
        bail!("`seq_len` must be at least 2, found {}", p.seq_len);
    }
    if !(0.0..=50.0).contains(&p.heldout_percent) {
        bail!(
            "`heldout_percent` must be between 0 and 50, found {}",
            p.heldout_percent
        );
    }
    if p.files.is_empty() {
        bail!("`files` must name at least one file");
    }
    if let Some(message) = p.loss_on_conflict() {
        bail!(message);
    }
    Ok(())
}

/// The reader thread: reads every input file in order and sends its
/// documents in chunks, up to `max_documents`. An error ends the reading and
/// is sent in place of a chunk.
fn read_chunks(
    reader: &DocReader,
    inputs: &[InputFile],
    max_documents: Option<u64>,
    chunks: SyncSender<Result<Chunk>>,
) {
    let mut chunker = Chunker::new(max_documents);
    let mut emit = |doc| -> Result<bool> {
        if !chunker.wants_more() {
            return Ok(false);
        }
        if let Some(chunk) = chunker.push(doc) {
            // The receiver is gone only when the build failed.
            if chunks.send(Ok(chunk)).is_err() {
                return Ok(false);
            }
        }
        Ok(chunker.wants_more())
    };
    for (i, file) in inputs.iter().enumerate() {
        match reader.read_file(i, file, &mut emit) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let _ = chunks.send(Err(e));
                return;
            }
        }
    }
    if let Some(chunk) = chunker.finish() {
        let _ = chunks.send(Ok(chunk));
    }
}

/// Tokenizes the chunks of `chunks` on `pool`, at most `max_in_flight` at a
/// time, and hands each to `write` with its ids in reading order (a chunk
/// that finishes early waits for the ones before it).
fn tokenize_in_order(
    pool: &rayon::ThreadPool,
    chunks: Receiver<Result<Chunk>>,
    max_in_flight: usize,
    tokenizer: &ChunkTokenizer,
    mut write: impl FnMut(Chunk, Vec<Encoded>) -> Result<()>,
) -> Result<()> {
    let (result_tx, result_rx) = mpsc::channel::<(Chunk, Result<Vec<Encoded>>)>();
    pool.in_place_scope(|tasks| -> Result<()> {
        let mut pending: BTreeMap<u64, (Chunk, Vec<Encoded>)> = BTreeMap::new();
        let mut next = 0u64;
        let mut in_flight = 0usize;
        let mut reader_done = false;
        loop {
            while !reader_done && in_flight < max_in_flight {
                match chunks.recv() {
                    Ok(Ok(chunk)) => {
                        let result_tx = result_tx.clone();
                        in_flight += 1;
                        tasks.spawn(move |_| {
                            let ids =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    tokenizer.tokenize(&chunk)
                                }))
                                .unwrap_or_else(|_| Err(anyhow!("the tokenizer panicked")));
                            let _ = result_tx.send((chunk, ids));
                        });
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => reader_done = true,
                }
            }
            if in_flight == 0 {
                break;
            }
            let (chunk, ids) = result_rx.recv().expect("a tokenization task vanished");
            in_flight -= 1;
            pending.insert(chunk.seq, (chunk, ids?));
            while let Some((chunk, ids)) = pending.remove(&next) {
                write(chunk, ids)?;
                next += 1;
            }
        }
        debug_assert!(pending.is_empty());
        Ok(())
    })
}

/// The progress bar after a chunk is written: bytes read, and what was
/// written so far with its rate.
fn show_progress(progress: &dyn Progress, totals: &Totals, started: Instant, bytes_read: u64) {
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    progress.set_position(bytes_read);
    progress.set_message(&format!(
        "{} documents, {:.1} MB of text, {:.2}M tokens, {:.1} MB/s",
        totals.documents,
        totals.text_bytes as f64 / 1e6,
        totals.tokens as f64 / 1e6,
        totals.text_bytes as f64 / 1e6 / elapsed
    ));
}

/// The closing log lines: the share of targets when there is a loss mask,
/// then the counts and the rate.
fn log_summary(progress: &dyn Progress, index: &DatasetIndex, elapsed: f64) {
    if index.loss_mask.is_some() {
        let share =
            |s: &SplitStats| s.target_tokens.unwrap_or(0) as f64 / s.tokens.max(1) as f64 * 100.0;
        progress.log(&format!(
            "loss mask on the assistant replies: {:.1}% of the train tokens and {:.1}% of the heldout tokens are targets",
            share(&index.train),
            share(&index.heldout)
        ));
    }
    progress.log(&format!(
        "{} documents, {:.1} MB of text in {elapsed:.1} s ({:.2} MB/s), {} tokens; train {} rows ({} docs, {} tail tokens dropped), heldout {} rows ({} docs, {} tail tokens dropped)",
        index.documents,
        index.text_bytes as f64 / 1e6,
        index.text_bytes as f64 / 1e6 / elapsed.max(1e-9),
        index.text_tokens(),
        index.train.rows,
        index.train.documents,
        index.train.dropped_tail_tokens,
        index.heldout.rows,
        index.heldout.documents,
        index.heldout.dropped_tail_tokens,
    ));
}
