//! The tokenized dataset artifact: token ids in fixed-length rows, split
//! into train and held-out by document, plus an index.
//!
//! A dataset folder holds:
//! - `train.bin`, `heldout.bin`: little-endian `u32` token ids, rows of
//!   `seq_len` tokens back to back (no header);
//! - `index.json`: [`DatasetIndex`], what the rows are and how they were made;
//! - `documents.jsonl`: one [`DocumentRecord`] per document, in input order
//!   (kept out of the index so that opening a large dataset stays cheap).
//!
//! [`DatasetArtifact::open`] memory-maps the two row files and hands out rows
//! as `&[u32]` without copying. [`SplitWriter`] packs documents into rows,
//! for the ops that build datasets.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

/// File names inside a dataset folder.
pub const INDEX_FILE: &str = "index.json";
pub const DOCUMENTS_FILE: &str = "documents.jsonl";

/// Version of the folder layout written in `index.json`.
pub const DATASET_FORMAT_VERSION: u32 = 1;

/// One side of the train / held-out split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Train, Split::Heldout];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }

    /// The file holding this split's rows.
    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "train.bin",
            Split::Heldout => "heldout.bin",
        }
    }

    /// 0 for train, 1 for held-out.
    pub fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Heldout => 1,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The key a document is split by: `source/doc_id` when the record has a
/// `source`, else the document id.
pub fn split_key(source: Option<&str>, id: &str) -> String {
    match source {
        Some(source) => format!("{source}/{id}"),
        None => id.to_string(),
    }
}

/// The side of a document, from the blake3 hash of its split key: the first
/// 8 bytes of the digest (little-endian) as a fraction of 2^64, held out when
/// below `heldout_percent` / 100. Deterministic and independent of the seed.
pub fn split_of(key: &str, heldout_percent: f64) -> Split {
    let digest = blake3::hash(key.as_bytes());
    let h = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    // 53 significant bits: exact in f64.
    let fraction = (h >> 11) as f64 / (1u64 << 53) as f64;
    if fraction * 100.0 < heldout_percent {
        Split::Heldout
    } else {
        Split::Train
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// The rows file, relative to the dataset folder.
    pub file: String,
    pub rows: u64,
    /// Tokens in the rows: `rows * seq_len`.
    pub tokens: u64,
    pub documents: u64,
    /// Tokens of the documents' text, separators not included.
    pub text_tokens: u64,
    /// Separator tokens appended after the documents.
    pub separator_tokens: u64,
    /// Tokens of the last, partial row, which is not written.
    pub dropped_tail_tokens: u64,
    /// UTF-8 bytes of the documents' text (chat conversations as rendered).
    pub text_bytes: u64,
}

/// The tokenizer a dataset was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// `name_or_path` from the tokenizer's configuration when it has one,
    /// else the name of the folder it came from.
    pub name: String,
    /// blake3 of `tokenizer.json`.
    pub digest: String,
    /// Vocabulary size, added tokens included.
    pub vocab_size: u64,
}

/// What is appended after every document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeparatorInfo {
    pub text: String,
    pub ids: Vec<u32>,
}

/// Per input file counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStats {
    /// As written in the recipe.
    pub path: String,
    /// `jsonl` or `text`.
    pub format: String,
    pub documents: u64,
    pub text_bytes: u64,
    /// Size of the file on disk (compressed size for `.zst`).
    pub file_bytes: u64,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetIndex {
    pub format_version: u32,
    pub seq_len: u64,
    pub vocab_size: u64,
    pub tokenizer: TokenizerInfo,
    pub separator: SeparatorInfo,
    pub heldout_percent: f64,
    /// How documents were assigned to a split, in words.
    pub split_rule: String,
    pub documents: u64,
    /// UTF-8 bytes of text read, both splits.
    pub text_bytes: u64,
    pub files: Vec<FileStats>,
    pub train: SplitStats,
    pub heldout: SplitStats,
}

impl DatasetIndex {
    pub fn split(&self, split: Split) -> &SplitStats {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }

    pub fn split_mut(&mut self, split: Split) -> &mut SplitStats {
        match split {
            Split::Train => &mut self.train,
            Split::Heldout => &mut self.heldout,
        }
    }

    /// Tokens of the documents' text over both splits, separators excluded.
    pub fn text_tokens(&self) -> u64 {
        self.train.text_tokens + self.heldout.text_tokens
    }
}

/// A line of `documents.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// The split key: `source/doc_id`, or the document id.
    pub id: String,
    pub split: Split,
    /// Tokens of the text, separator excluded.
    pub tokens: u64,
}

/// A dataset folder, its rows memory-mapped.
#[derive(Debug)]
pub struct DatasetArtifact {
    dir: PathBuf,
    index: DatasetIndex,
    /// Per split; `None` for an empty file (nothing to map).
    maps: [Option<Mmap>; 2],
}

impl DatasetArtifact {
    /// Opens a dataset folder: reads `index.json` and maps the row files,
    /// checking that their sizes agree with the index.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        ensure!(
            cfg!(target_endian = "little"),
            "dataset rows are little-endian u32; this machine is big-endian"
        );
        let index_path = dir.join(INDEX_FILE);
        let text = match std::fs::read_to_string(&index_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{} is not a dataset: it has no {INDEX_FILE}", dir.display())
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", index_path.display()));
            }
        };
        let index: DatasetIndex = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid dataset index", index_path.display()))?;
        ensure!(
            index.format_version == DATASET_FORMAT_VERSION,
            "{}: dataset format version {} is not supported (expected {DATASET_FORMAT_VERSION})",
            index_path.display(),
            index.format_version
        );
        ensure!(
            index.seq_len >= 1,
            "{}: seq_len must be at least 1",
            index_path.display()
        );
        let row_bytes = index.seq_len * 4;
        let mut maps = [None, None];
        for split in Split::ALL {
            let stats = index.split(split);
            let path = dir.join(&stats.file);
            let file = File::open(&path).with_context(|| {
                format!(
                    "dataset {}: cannot open the {split} rows {}",
                    dir.display(),
                    path.display()
                )
            })?;
            let len = file
                .metadata()
                .with_context(|| format!("cannot stat {}", path.display()))?
                .len();
            ensure!(
                len % row_bytes == 0,
                "{}: {len} bytes is not a whole number of rows of seq_len {} ({row_bytes} bytes each)",
                path.display(),
                index.seq_len
            );
            ensure!(
                len / row_bytes == stats.rows,
                "{}: holds {} rows but {INDEX_FILE} says {}",
                path.display(),
                len / row_bytes,
                stats.rows
            );
            if len > 0 {
                // SAFETY: the store never rewrites a published artifact.
                let map = unsafe { Mmap::map(&file) }
                    .with_context(|| format!("cannot map {}", path.display()))?;
                maps[split.index()] = Some(map);
            }
        }
        Ok(Self { dir, index, maps })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index(&self) -> &DatasetIndex {
        &self.index
    }

    pub fn seq_len(&self) -> usize {
        self.index.seq_len as usize
    }

    pub fn vocab_size(&self) -> usize {
        self.index.vocab_size as usize
    }

    pub fn rows(&self, split: Split) -> usize {
        self.index.split(split).rows as usize
    }

    /// All tokens of a split, rows back to back.
    pub fn tokens(&self, split: Split) -> &[u32] {
        match &self.maps[split.index()] {
            None => &[],
            Some(map) => {
                // SAFETY: any bit pattern is a valid u32; the map is page
                // aligned, which `align_to` checks.
                let (head, words, tail) = unsafe { map.align_to::<u32>() };
                assert!(
                    head.is_empty() && tail.is_empty(),
                    "mapping is not u32-aligned"
                );
                words
            }
        }
    }

    /// Row `i` of a split, `seq_len` tokens. Panics when `i` is out of range.
    pub fn row(&self, split: Split, i: usize) -> &[u32] {
        self.get_row(split, i).unwrap_or_else(|| {
            panic!(
                "row {i} is out of range: the {split} split has {} rows",
                self.rows(split)
            )
        })
    }

    /// Row `i` of a split, or `None` when out of range.
    pub fn get_row(&self, split: Split, i: usize) -> Option<&[u32]> {
        let n = self.seq_len();
        self.tokens(split).get(i * n..(i + 1) * n)
    }

    /// The rows of a split, in order.
    pub fn iter_rows(&self, split: Split) -> std::slice::ChunksExact<'_, u32> {
        self.tokens(split).chunks_exact(self.seq_len())
    }

    /// Checks that every token id is below the vocabulary size (reads all rows).
    pub fn check_token_ids(&self) -> Result<()> {
        let vocab = self.index.vocab_size;
        for split in Split::ALL {
            if let Some(pos) = self.tokens(split).iter().position(|&t| t as u64 >= vocab) {
                bail!(
                    "{}: token {} at position {pos} of the {split} split is not below the vocabulary size {vocab}",
                    self.dir.display(),
                    self.tokens(split)[pos]
                );
            }
        }
        Ok(())
    }

    /// Reads `documents.jsonl`: every document, its split and token count.
    pub fn documents(&self) -> Result<Vec<DocumentRecord>> {
        let path = self.dir.join(DOCUMENTS_FILE);
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut out = Vec::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str(&line).with_context(|| {
                    format!("{}:{}: not a document record", path.display(), i + 1)
                })?,
            );
        }
        Ok(out)
    }
}

/// Packs one split's documents into rows of `seq_len` tokens and writes
/// them; the last partial row is dropped by [`SplitWriter::finish`].
pub struct SplitWriter {
    out: BufWriter<File>,
    path: PathBuf,
    seq_len: usize,
    row: Vec<u32>,
    bytes: Vec<u8>,
    stats: SplitStats,
}

impl SplitWriter {
    pub fn create(dir: &Path, split: Split, seq_len: usize) -> Result<Self> {
        ensure!(seq_len >= 1, "seq_len must be at least 1");
        let path = dir.join(split.file_name());
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            seq_len,
            row: Vec::with_capacity(seq_len),
            bytes: Vec::with_capacity(seq_len * 4),
            stats: SplitStats {
                file: split.file_name().to_string(),
                ..SplitStats::default()
            },
        })
    }

    /// Appends a document's tokens and then the separator.
    pub fn push_document(
        &mut self,
        text: &[u32],
        separator: &[u32],
        text_bytes: u64,
    ) -> Result<()> {
        self.stats.documents += 1;
        self.stats.text_tokens += text.len() as u64;
        self.stats.separator_tokens += separator.len() as u64;
        self.stats.text_bytes += text_bytes;
        self.push_tokens(text)?;
        self.push_tokens(separator)
    }

    fn push_tokens(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            let take = (self.seq_len - self.row.len()).min(tokens.len());
            self.row.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.row.len() == self.seq_len {
                self.bytes.clear();
                for t in &self.row {
                    self.bytes.extend_from_slice(&t.to_le_bytes());
                }
                self.out
                    .write_all(&self.bytes)
                    .with_context(|| format!("cannot write {}", self.path.display()))?;
                self.row.clear();
                self.stats.rows += 1;
                self.stats.tokens += self.seq_len as u64;
            }
        }
        Ok(())
    }

    /// Counts so far (the partial row not yet counted as dropped).
    pub fn stats(&self) -> &SplitStats {
        &self.stats
    }

    /// Drops the partial row, flushes, and returns the counts.
    pub fn finish(mut self) -> Result<SplitStats> {
        self.stats.dropped_tail_tokens = self.row.len() as u64;
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.out
            .get_ref()
            .sync_all()
            .with_context(|| format!("cannot sync {}", self.path.display()))?;
        Ok(self.stats)
    }
}
