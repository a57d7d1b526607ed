//! The folder a `teacher_logits` stage writes, and its reader.
//!
//! - `teacher_logits.json`: [`Header`];
//! - `index.bin`: `rows + 1` little-endian u64 byte offsets into
//!   `logits.bin`, so any row is read without the others;
//! - `logits.bin`: one zstd frame per dataset row. A frame holds, for the
//!   row's `positions` positions in order, column by column: the kept ids
//!   (each position's first id as is, then the gaps to the previous one,
//!   little-endian u16 when the vocabulary fits, else u32), the kept raw
//!   logits (f32), the log-sum-exps (f32), and the tails' logs (f32); each
//!   frame carries zstd's checksum of its contents.
//!
//! Gaps between ascending ids are small for the common tokens, which is
//! what lets zstd shrink the ids; the logits are stored as the teacher's
//! forward gave them, so reading the store is exactly reproducible.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::select::TopK;

pub const HEADER_FILE: &str = "teacher_logits.json";
pub const INDEX_FILE: &str = "index.bin";
pub const DATA_FILE: &str = "logits.bin";
/// Bumped when the layout above changes.
pub const FORMAT: u32 = 1;
/// zstd's level for the frames: fast, and the same bytes on every run.
const ZSTD_LEVEL: i32 = 3;

/// What the store holds and what it was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// Tokens kept per position.
    pub top_k: usize,
    /// The teacher's vocabulary.
    pub vocab_size: usize,
    /// The temperature of `lse` and the tails.
    pub temperature: f32,
    /// Training rows covered: rows `0..rows` of the dataset's train split.
    pub rows: usize,
    /// Positions per row: the row's tokens but the last, as a training
    /// step feeds them.
    pub positions: usize,
    /// blake3 of the covered rows' tokens (`positions + 1` each, u32
    /// little-endian, in row order): a store is only ever read against the
    /// rows it was computed on.
    pub tokens_blake3: String,
    /// Bytes of `logits.bin` and before compression, for reports.
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// The mean share of the teacher's probability the kept tokens hold.
    pub mean_kept_mass: f64,
}

impl Header {
    /// Stored bytes per position (the index included).
    pub fn bytes_per_position(&self) -> f64 {
        let positions = (self.rows * self.positions).max(1) as f64;
        (self.stored_bytes + 8 * (self.rows as u64 + 1)) as f64 / positions
    }

    fn id_bytes(&self) -> usize {
        if self.vocab_size <= 1 << 16 { 2 } else { 4 }
    }

    /// A row's bytes before compression.
    fn raw_row_bytes(&self) -> usize {
        self.positions * (self.top_k * (self.id_bytes() + 4) + 8)
    }
}

/// The blake3 of rows' tokens as [`Header::tokens_blake3`] defines it.
pub fn tokens_digest<'a>(rows: impl IntoIterator<Item = &'a [u32]>) -> String {
    let mut hasher = blake3::Hasher::new();
    for row in rows {
        for t in row {
            hasher.update(&t.to_le_bytes());
        }
    }
    hasher.finalize().to_hex().to_string()
}

/// Progress of a store being written: per row written, the end offset of
/// its frame (u64) and the kept mass of its positions (f64), little-endian.
const PARTIAL_INDEX: &str = "index.partial";
/// The header a partial store was started with.
const PARTIAL_HEADER: &str = "teacher_logits.partial.json";

/// Writes a store row by row, in row order, into a folder that survives an
/// interruption: [`Writer::open`] continues after the last row whose frame
/// and index entry were both written.
pub struct Writer {
    data: File,
    index: File,
    compressor: zstd::bulk::Compressor<'static>,
    offsets: Vec<u64>,
    kept_mass: f64,
    header: Header,
    dir: std::path::PathBuf,
}

impl Writer {
    /// Opens the store in `dir`: resumes one started there with the same
    /// header, or starts afresh. `header`'s byte counts and kept mass are
    /// filled in by [`Writer::finish`].
    pub fn open(dir: &Path, header: Header) -> Result<Self> {
        let header_path = dir.join(PARTIAL_HEADER);
        let started: Option<Header> = std::fs::read_to_string(&header_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let (mut offsets, mut kept_mass) = (vec![0u64], 0.0f64);
        if started.as_ref() == Some(&header) {
            let entries = std::fs::read(dir.join(PARTIAL_INDEX)).unwrap_or_default();
            // Only rows whose frame lies wholly within the data file count.
            let data_len = std::fs::metadata(dir.join(DATA_FILE)).map_or(0, |m| m.len());
            for entry in entries.chunks_exact(16).take(header.rows) {
                let end = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
                if end > data_len {
                    break;
                }
                offsets.push(end);
                kept_mass += f64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
            }
        } else {
            std::fs::write(&header_path, serde_json::to_string_pretty(&header)? + "\n")?;
        }
        let rows_done = offsets.len() - 1;
        let open = |name: &str| -> Result<File> {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        // Whatever follows the last complete row (a frame or an index entry
        // cut short) is dropped.
        let data = open(DATA_FILE)?;
        data.set_len(offsets[rows_done])?;
        let index = open(PARTIAL_INDEX)?;
        index.set_len(16 * rows_done as u64)?;
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        // A checksum in every frame: a damaged row fails to decode rather
        // than decoding to other numbers.
        compressor.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))?;
        Ok(Self {
            data,
            index,
            compressor,
            offsets,
            kept_mass,
            header,
            dir: dir.to_path_buf(),
        })
    }

    /// Rows written so far (by this writer or the one it resumed).
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Appends the next row: one [`TopK`] per position.
    pub fn push_row(&mut self, positions: &[TopK]) -> Result<()> {
        let h = &self.header;
        ensure!(
            positions.len() == h.positions,
            "a row of {} positions in a store of {}",
            positions.len(),
            h.positions
        );
        ensure!(
            self.rows() < h.rows,
            "more rows than the {} of the store",
            h.rows
        );
        let mut raw = Vec::with_capacity(h.raw_row_bytes());
        for p in positions {
            ensure!(
                p.ids.len() == h.top_k,
                "{} ids kept, not {}",
                p.ids.len(),
                h.top_k
            );
            let mut previous = 0u32;
            for (i, &id) in p.ids.iter().enumerate() {
                let gap = if i == 0 { id } else { id - previous };
                previous = id;
                if h.id_bytes() == 2 {
                    raw.extend_from_slice(&(gap as u16).to_le_bytes());
                } else {
                    raw.extend_from_slice(&gap.to_le_bytes());
                }
            }
        }
        for p in positions {
            raw.extend(p.logits.iter().flat_map(|x| x.to_le_bytes()));
        }
        raw.extend(positions.iter().flat_map(|p| p.lse.to_le_bytes()));
        raw.extend(positions.iter().flat_map(|p| p.log_tail.to_le_bytes()));
        let tau = h.temperature as f64;
        let kept_mass: f64 = positions
            .iter()
            .flat_map(|p| {
                p.logits
                    .iter()
                    .map(move |&x| (x as f64 / tau - p.lse as f64).exp())
            })
            .sum();
        let frame = self
            .compressor
            .compress(&raw)
            .context("compressing teacher logits")?;
        let end = self.offsets[self.rows()] + frame.len() as u64;
        // The frame first, then its index entry: an entry never points
        // past the data.
        self.data.write_all_at(&frame, self.offsets[self.rows()])?;
        let mut entry = end.to_le_bytes().to_vec();
        entry.extend_from_slice(&kept_mass.to_le_bytes());
        self.index.write_all_at(&entry, 16 * self.rows() as u64)?;
        self.offsets.push(end);
        self.kept_mass += kept_mass;
        Ok(())
    }

    /// Writes the index and the header and removes the progress files;
    /// returns the header.
    pub fn finish(mut self) -> Result<Header> {
        ensure!(
            self.rows() == self.header.rows,
            "{} rows written of {}",
            self.rows(),
            self.header.rows
        );
        self.data.sync_all()?;
        let index: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        std::fs::write(self.dir.join(INDEX_FILE), index)?;
        let positions = (self.header.rows * self.header.positions).max(1) as f64;
        self.header.stored_bytes = self.offsets[self.rows()];
        self.header.raw_bytes = (self.header.rows * self.header.raw_row_bytes()) as u64;
        // Six decimals: a report's figure, and what JSON reads back as is.
        self.header.mean_kept_mass = (self.kept_mass / positions * 1e6).round() / 1e6;
        let json = serde_json::to_string_pretty(&self.header)?;
        std::fs::write(self.dir.join(HEADER_FILE), json + "\n")?;
        std::fs::remove_file(self.dir.join(PARTIAL_INDEX))?;
        std::fs::remove_file(self.dir.join(PARTIAL_HEADER))?;
        Ok(self.header)
    }
}

/// One row of a store, decoded: `positions x top_k` ids and logits, and a
/// log-sum-exp and tail per position.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
    pub lse: Vec<f32>,
    pub log_tail: Vec<f32>,
}

/// A store opened for reading rows in any order, from any thread.
pub struct TeacherLogitsStore {
    pub header: Header,
    offsets: Vec<u64>,
    data: File,
    dir: std::path::PathBuf,
}

impl TeacherLogitsStore {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(HEADER_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a teacher_logits output (no {HEADER_FILE})",
                dir.display()
            )
        })?;
        let header: Header = serde_json::from_str(&text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if header.format != FORMAT {
            bail!(
                "{} is in teacher-logits format {}, this build reads {FORMAT}",
                dir.display(),
                header.format
            );
        }
        let index = std::fs::read(dir.join(INDEX_FILE))
            .with_context(|| format!("cannot read {}", dir.join(INDEX_FILE).display()))?;
        let offsets: Vec<u64> = index
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        ensure!(
            offsets.len() == header.rows + 1 && offsets.windows(2).all(|w| w[0] <= w[1]),
            "{}: the index does not describe {} rows",
            dir.display(),
            header.rows
        );
        let data_path = dir.join(DATA_FILE);
        let data = File::open(&data_path)
            .with_context(|| format!("cannot open {}", data_path.display()))?;
        Ok(Self {
            header,
            offsets,
            data,
            dir: dir.to_path_buf(),
        })
    }

    /// Row `i` of the train split, decoded.
    pub fn row(&self, i: usize) -> Result<StoredRow> {
        let h = &self.header;
        ensure!(
            i < h.rows,
            "row {i} is not in the teacher logits, which cover {} rows",
            h.rows
        );
        let (begin, end) = (self.offsets[i], self.offsets[i + 1]);
        let mut frame = vec![0u8; (end - begin) as usize];
        self.data
            .read_exact_at(&mut frame, begin)
            .with_context(|| {
                format!("reading row {i} of {}", self.dir.join(DATA_FILE).display())
            })?;
        let (p, k, id_bytes) = (h.positions, h.top_k, h.id_bytes());
        let expected = h.raw_row_bytes();
        let raw = zstd::bulk::decompress(&frame, expected)
            .with_context(|| format!("row {i} of {} is corrupt", self.dir.display()))?;
        ensure!(
            raw.len() == expected,
            "row {i} of {} holds {} bytes, not {expected}",
            self.dir.display(),
            raw.len()
        );
        let (id_part, rest) = raw.split_at(p * k * id_bytes);
        let (logit_part, rest) = rest.split_at(p * k * 4);
        let (lse_part, tail_part) = rest.split_at(p * 4);
        let gaps: Vec<u32> = if id_bytes == 2 {
            id_part
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .collect()
        } else {
            id_part
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect()
        };
        let mut ids = Vec::with_capacity(p * k);
        for position in gaps.chunks_exact(k.max(1)) {
            let mut id = 0u32;
            for (j, &gap) in position.iter().enumerate() {
                id = if j == 0 { gap } else { id + gap };
                ensure!(
                    (id as usize) < h.vocab_size && (j == 0 || gap > 0),
                    "row {i} of {}: the kept ids are not ascending below {}",
                    self.dir.display(),
                    h.vocab_size
                );
                ids.push(id);
            }
        }
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        Ok(StoredRow {
            ids,
            logits: floats(logit_part),
            lse: floats(lse_part),
            log_tail: floats(tail_part),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teacher_logits::select::Selector;

    fn header(rows: usize, positions: usize, top_k: usize, vocab_size: usize) -> Header {
        Header {
            format: FORMAT,
            top_k,
            vocab_size,
            temperature: 1.0,
            rows,
            positions,
            tokens_blake3: String::new(),
            stored_bytes: 0,
            raw_bytes: 0,
            mean_kept_mass: 0.0,
        }
    }

    #[test]
    fn rows_read_back_exactly_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = crate::rng::SplitMix64::new(1);
        // 70 000 tokens: the ids need 4 bytes.
        for vocab in [300, 70_000] {
            let sub = dir.path().join(vocab.to_string());
            std::fs::create_dir(&sub).unwrap();
            let (rows, positions, k) = (3, 5, 8);
            let mut writer = Writer::open(&sub, header(rows, positions, k, vocab)).unwrap();
            let mut selector = Selector::default();
            let mut written = Vec::new();
            for _ in 0..rows {
                let row: Vec<TopK> = (0..positions)
                    .map(|_| {
                        let logits: Vec<f32> =
                            (0..vocab).map(|_| (10.0 * rng.next_f64()) as f32).collect();
                        selector.top_k(&logits, k, 1.0)
                    })
                    .collect();
                writer.push_row(&row).unwrap();
                written.push(row);
            }
            let h = writer.finish().unwrap();
            assert!(h.mean_kept_mass > 0.0 && h.mean_kept_mass < 1.0);
            let store = TeacherLogitsStore::open(&sub).unwrap();
            assert_eq!(store.header, h);
            for i in [2, 0, 1] {
                let got = store.row(i).unwrap();
                let want = &written[i];
                assert_eq!(
                    got.ids,
                    want.iter().flat_map(|p| p.ids.clone()).collect::<Vec<_>>()
                );
                assert_eq!(
                    got.logits,
                    want.iter()
                        .flat_map(|p| p.logits.clone())
                        .collect::<Vec<_>>()
                );
                assert_eq!(got.lse, want.iter().map(|p| p.lse).collect::<Vec<_>>());
                assert_eq!(
                    got.log_tail,
                    want.iter().map(|p| p.log_tail).collect::<Vec<_>>()
                );
            }
            assert!(
                store
                    .row(3)
                    .unwrap_err()
                    .to_string()
                    .contains("cover 3 rows")
            );
        }
    }

    #[test]
    fn a_corrupt_frame_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path(), header(1, 2, 2, 10)).unwrap();
        let mut selector = Selector::default();
        let logits: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let p = selector.top_k(&logits, 2, 1.0);
        writer.push_row(&[p.clone(), p]).unwrap();
        writer.finish().unwrap();
        let path = dir.path().join(DATA_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let store = TeacherLogitsStore::open(dir.path()).unwrap();
        assert!(store.row(0).is_err());
    }

    /// A writer dropped after two rows, with half a frame after them, is
    /// resumed at row 2 and ends with the store a straight run writes.
    #[test]
    fn an_interrupted_store_resumes_after_its_last_complete_row() {
        let mut selector = Selector::default();
        let rows: Vec<Vec<TopK>> = (0..3)
            .map(|r| {
                let logits: Vec<f32> = (0..50)
                    .map(|v| ((v * 7 + r * 3) % 50) as f32 * 0.1)
                    .collect();
                vec![selector.top_k(&logits, 4, 1.0); 2]
            })
            .collect();
        let straight = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(straight.path(), header(3, 2, 4, 50)).unwrap();
        for row in &rows {
            writer.push_row(row).unwrap();
        }
        let want = writer.finish().unwrap();

        let resumed = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(resumed.path(), header(3, 2, 4, 50)).unwrap();
        writer.push_row(&rows[0]).unwrap();
        writer.push_row(&rows[1]).unwrap();
        drop(writer);
        let data = resumed.path().join(DATA_FILE);
        let mut bytes = std::fs::read(&data).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&data, bytes).unwrap();
        let mut writer = Writer::open(resumed.path(), header(3, 2, 4, 50)).unwrap();
        assert_eq!(writer.rows(), 2);
        writer.push_row(&rows[2]).unwrap();
        assert_eq!(writer.finish().unwrap(), want);
        for name in [DATA_FILE, INDEX_FILE, HEADER_FILE] {
            assert_eq!(
                std::fs::read(straight.path().join(name)).unwrap(),
                std::fs::read(resumed.path().join(name)).unwrap(),
                "{name}"
            );
        }
        assert!(!resumed.path().join(PARTIAL_INDEX).exists());
    }
}
