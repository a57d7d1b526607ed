//! The dataset folder being written: each split's rows (and loss mask),
//! `documents.jsonl` with every document's split and token counts, the
//! counts per input file, and at the end `index.json`. Documents arrive in
//! reading order, so the folder does not depend on the number of threads.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::chunks::{Chunk, Encoded};
use super::documents::InputFile;
use super::params::LossOn;
use crate::io::dataset::{
    DATASET_FORMAT_VERSION, DOCUMENTS_FILE, DatasetIndex, DocumentRecord, FileStats, INDEX_FILE,
    LossMaskInfo, SeparatorInfo, Split, SplitWriter, TokenizerInfo, split_of,
};

/// What has been written so far, over both splits.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    pub documents: u64,
    pub text_bytes: u64,
    pub tokens: u64,
}

/// Writes the dataset folder: owns the split writers, `documents.jsonl` and
/// the counts until [`DatasetWriter::finish`] writes the index.
pub(super) struct DatasetWriter {
    output_dir: PathBuf,
    seq_len: usize,
    heldout_percent: f64,
    separator: SeparatorInfo,
    /// Train, then held-out (as [`Split::index`] numbers them).
    splits: [SplitWriter; 2],
    documents_path: PathBuf,
    documents: BufWriter<File>,
    files: Vec<FileStats>,
    pub totals: Totals,
}

impl DatasetWriter {
    /// Creates the split files and `documents.jsonl` in `output_dir`.
    pub fn create(
        output_dir: &Path,
        seq_len: usize,
        heldout_percent: f64,
        separator: SeparatorInfo,
        inputs: &[InputFile],
    ) -> Result<Self> {
        let splits = [
            SplitWriter::create(output_dir, Split::Train, seq_len)?,
            SplitWriter::create(output_dir, Split::Heldout, seq_len)?,
        ];
        let documents_path = output_dir.join(DOCUMENTS_FILE);
        let documents = BufWriter::new(
            File::create(&documents_path)
                .with_context(|| format!("cannot create {}", documents_path.display()))?,
        );
        let files = inputs
            .iter()
            .map(|f| FileStats {
                path: f.label.clone(),
                format: f.format.name().into(),
                documents: 0,
                text_bytes: 0,
                file_bytes: f.file_bytes,
            })
            .collect();
        Ok(Self {
            output_dir: output_dir.to_path_buf(),
            seq_len,
            heldout_percent,
            separator,
            splits,
            documents_path,
            documents,
            files,
            totals: Totals::default(),
        })
    }

    /// Appends a tokenized chunk's documents, each to its split, followed by
    /// the separator.
    pub fn write_chunk(&mut self, chunk: Chunk, encoded: Vec<Encoded>) -> Result<()> {
        for (doc, encoded) in chunk.docs.into_iter().zip(encoded) {
            let split = split_of(&doc.key, self.heldout_percent);
            let bytes = encoded.text_bytes;
            let ids = &encoded.ids;
            let writer = &mut self.splits[split.index()];
            let target_tokens = match &encoded.mask {
                // The conversation's own end-of-turn token teaches stopping;
                // what follows it is not the reply's.
                Some(mask) => {
                    writer.push_masked_document(ids, mask, &self.separator.ids, 0, bytes)?;
                    Some(mask.iter().map(|&m| m as u64).sum())
                }
                None => {
                    writer.push_document(ids, &self.separator.ids, bytes)?;
                    None
                }
            };
            let stats = &mut self.files[doc.file];
            stats.documents += 1;
            stats.text_bytes += bytes;
            self.totals.text_bytes += bytes;
            self.totals.documents += 1;
            self.totals.tokens += ids.len() as u64;
            serde_json::to_writer(
                &mut self.documents,
                &DocumentRecord {
                    id: doc.key,
                    split,
                    tokens: ids.len() as u64,
                    target_tokens,
                },
            )?;
            self.documents.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Closes the splits (dropping each one's last partial row) and writes
    /// `index.json`; fails when no document was written.
    pub fn finish(mut self, tokenizer: &TokenizerInfo, loss_on: LossOn) -> Result<DatasetIndex> {
        if self.totals.documents == 0 {
            bail!(
                "no documents in {}",
                self.files
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.documents
            .flush()
            .with_context(|| format!("cannot write {}", self.documents_path.display()))?;
        drop(self.documents);
        // A mask is all or nothing: a split without conversations gets one too
        // (all targets) when the other has one.
        let masked = self.splits.iter().any(SplitWriter::has_loss_mask);
        if masked {
            for writer in &mut self.splits {
                writer.enable_loss_mask()?;
            }
        }
        let [train, heldout] = self.splits;
        let index = DatasetIndex {
            format_version: DATASET_FORMAT_VERSION,
            seq_len: self.seq_len as u64,
            vocab_size: tokenizer.vocab_size,
            tokenizer: tokenizer.clone(),
            separator: self.separator,
            heldout_percent: self.heldout_percent,
            split_rule: "held out when the first 8 bytes (little-endian) of blake3(\"source/doc_id\", or the id without a source), as a fraction of 2^64, are below heldout_percent / 100".into(),
            documents: self.totals.documents,
            text_bytes: self.totals.text_bytes,
            files: self.files,
            train: train.finish()?,
            heldout: heldout.finish()?,
            loss_mask: masked.then(|| LossMaskInfo {
                loss_on: loss_on.name().into(),
                rule: "1 on the tokens of each assistant reply of a chat conversation with its end-of-turn token (the text that rendering the conversation through that reply adds to rendering it before the reply with the generation prompt, trailing whitespace excluded) and on every token of plain-text documents and their separators; 0 on the rest of a conversation (system and user turns, role headers) and the separator after it".into(),
            }),
        };
        let index_path = self.output_dir.join(INDEX_FILE);
        std::fs::write(&index_path, serde_json::to_string_pretty(&index)? + "\n")
            .with_context(|| format!("cannot write {}", index_path.display()))?;
        Ok(index)
    }
}
