//! Weights on disk as safetensors: one `model.safetensors`, or shards named
//! by `model.safetensors.index.json`; bf16, f16 or f32 on disk, f32 in memory.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde::{Deserialize, Serialize};

use super::host_tensor::{HostTensor, StateDict};

/// File name of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Element type written to disk.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DiskDtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl DiskDtype {
    pub fn size(self) -> usize {
        match self {
            DiskDtype::F32 => 4,
            DiskDtype::F16 | DiskDtype::BF16 => 2,
        }
    }

    /// The `torch_dtype` name transformers uses in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            DiskDtype::F32 => "float32",
            DiskDtype::F16 => "float16",
            DiskDtype::BF16 => "bfloat16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            DiskDtype::F32 => Dtype::F32,
            DiskDtype::F16 => Dtype::F16,
            DiskDtype::BF16 => Dtype::BF16,
        }
    }
}

/// Reads every tensor of one safetensors file as f32 (memory-mapped; the
/// tensors are converted in parallel).
pub fn read_safetensors(path: &Path) -> Result<StateDict> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is read-only and lives only for this call; a file
    // changed underneath us by another process is outside our contract, as
    // for any reader of a checkpoint.
    let mmap = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    let st = SafeTensors::deserialize(&mmap)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    st.tensors()
        .into_par_iter()
        .map(|(name, view)| {
            let tensor =
                to_host(&view).with_context(|| format!("tensor {name} in {}", path.display()))?;
            Ok((name, tensor))
        })
        .collect()
}

fn to_host(view: &TensorView<'_>) -> Result<HostTensor> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        // bf16 is the top half of an f32: widening is a shift.
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => bail!("dtype {other:?} is not supported (bf16, f16, f32 or f64)"),
    };
    let shape = view.shape().to_vec();
    ensure!(
        shape.iter().product::<usize>() == data.len(),
        "shape {shape:?} does not match {} elements",
        data.len()
    );
    Ok(HostTensor::new(shape, data))
}

/// One tensor converted to the disk dtype when the writer asks for its bytes,
/// so at most a tensor's worth of converted data exists at a time.
struct DiskView<'a> {
    tensor: &'a HostTensor,
    dtype: DiskDtype,
}

impl View for DiskView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let src = &self.tensor.data;
        match self.dtype {
            DiskDtype::F32 => f32_bytes(src),
            DiskDtype::F16 => Cow::Owned(encode_u16(src, |v| half::f16::from_f32(v).to_bits())),
            // Round to nearest even, as torch does.
            DiskDtype::BF16 => Cow::Owned(encode_u16(src, |v| half::bf16::from_f32(v).to_bits())),
        }
    }

    fn data_len(&self) -> usize {
        self.tensor.numel() * self.dtype.size()
    }
}

/// The little-endian bytes of `src`: on a little-endian machine, the memory
/// itself.
#[cfg(target_endian = "little")]
fn f32_bytes(src: &[f32]) -> Cow<'_, [u8]> {
    // SAFETY: u8 has no alignment or validity requirement, f32 has no
    // padding, and the length covers exactly the slice's memory.
    Cow::Borrowed(unsafe {
        std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), size_of_val(src))
    })
}

#[cfg(not(target_endian = "little"))]
fn f32_bytes(src: &[f32]) -> Cow<'_, [u8]> {
    let mut out = vec![0u8; src.len() * 4];
    for (dst, v) in out.chunks_exact_mut(4).zip(src) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    Cow::Owned(out)
}

fn encode_u16(src: &[f32], convert: impl Fn(f32) -> u16) -> Vec<u8> {
    let mut out = vec![0u8; src.len() * 2];
    for (dst, &v) in out.chunks_exact_mut(2).zip(src) {
        dst.copy_from_slice(&convert(v).to_le_bytes());
    }
    out
}

/// Writes `tensors` to one safetensors file, with the `{"format": "pt"}`
/// metadata transformers checks for.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    dtype: DiskDtype,
) -> Result<()> {
    let views = tensors
        .into_iter()
        .map(|(name, tensor)| (name, DiskView { tensor, dtype }));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `model.safetensors.index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardIndex {
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub weight_map: BTreeMap<String, String>,
}

/// Reads the weights of a model folder: `model.safetensors` if present,
/// otherwise the shards listed by `model.safetensors.index.json`.
pub fn read_model_weights(dir: &Path) -> Result<StateDict> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return read_safetensors(&single);
    }
    let index_path = dir.join(INDEX_FILE);
    if !index_path.is_file() {
        bail!(
            "{} has neither {SINGLE_FILE} nor {INDEX_FILE}",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(&index_path)
        .with_context(|| format!("cannot read {}", index_path.display()))?;
    let index: ShardIndex = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a shard index", index_path.display()))?;
    let mut files: Vec<&String> = index.weight_map.values().collect();
    files.sort();
    files.dedup();
    for file in &files {
        // The index names files in this folder, never elsewhere.
        ensure!(
            !file.contains('/') && !file.contains('\\') && !file.starts_with('.'),
            "{}: shard name {file:?} must be a plain file name",
            index_path.display()
        );
    }
    let shards: Vec<StateDict> = files
        .par_iter()
        .map(|file| read_safetensors(&dir.join(file)))
        .collect::<Result<_>>()?;
    let mut all = StateDict::new();
    for (file, shard) in files.iter().zip(shards) {
        for (name, tensor) in shard {
            match index.weight_map.get(&name) {
                Some(f) if f == *file => {}
                Some(f) => bail!("tensor {name} is in {file} but the index puts it in {f}"),
                None => bail!("tensor {name} in {file} is not listed in {INDEX_FILE}"),
            }
            all.insert(name, tensor);
        }
    }
    if let Some(name) = index.weight_map.keys().find(|n| !all.contains_key(*n)) {
        bail!("tensor {name} listed in {INDEX_FILE} is missing from its shard");
    }
    Ok(all)
}

/// Writes `tensors` into `dir` as one `model.safetensors`, or, when they take
/// more than `max_shard_bytes` on disk, as `model-0000K-of-0000N.safetensors`
/// shards plus `model.safetensors.index.json` (transformers' names and
/// greedy split: a shard is closed when the next tensor would overflow it; a
/// tensor larger than the limit gets a shard of its own). Older weight files
/// of either layout in `dir` are removed first so they cannot be mixed in.
/// Returns the files written.
pub fn write_model_weights<'a>(
    dir: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    dtype: DiskDtype,
    max_shard_bytes: Option<u64>,
) -> Result<Vec<PathBuf>> {
    remove_weight_files(dir)?;
    let tensors: Vec<(&str, &HostTensor)> = tensors.into_iter().collect();
    let bytes = |t: &HostTensor| (t.numel() * dtype.size()) as u64;
    let total: u64 = tensors.iter().map(|(_, t)| bytes(t)).sum();

    let mut shards: Vec<Vec<(&str, &HostTensor)>> = vec![Vec::new()];
    if let Some(limit) = max_shard_bytes {
        let mut used = 0u64;
        for &(name, t) in &tensors {
            let current = shards.last_mut().expect("at least one shard");
            if !current.is_empty() && used + bytes(t) > limit {
                shards.push(Vec::new());
                used = 0;
            }
            shards
                .last_mut()
                .expect("at least one shard")
                .push((name, t));
            used += bytes(t);
        }
    } else {
        shards[0] = tensors;
    }

    if shards.len() == 1 {
        let path = dir.join(SINGLE_FILE);
        write_safetensors(&path, shards.pop().unwrap_or_default(), dtype)?;
        return Ok(vec![path]);
    }

    let n = shards.len();
    let names: Vec<String> = (1..=n)
        .map(|k| format!("model-{k:05}-of-{n:05}.safetensors"))
        .collect();
    let mut weight_map = BTreeMap::new();
    for (shard, file) in shards.iter().zip(&names) {
        for (name, _) in shard {
            weight_map.insert(name.to_string(), file.clone());
        }
    }
    shards
        .into_par_iter()
        .zip(names.par_iter())
        .map(|(shard, file)| write_safetensors(&dir.join(file), shard, dtype))
        .collect::<Result<Vec<()>>>()?;
    let mut metadata = serde_json::Map::new();
    metadata.insert("total_size".into(), total.into());
    let index = ShardIndex {
        metadata,
        weight_map,
    };
    let index_path = dir.join(INDEX_FILE);
    std::fs::write(&index_path, serde_json::to_string_pretty(&index)? + "\n")
        .with_context(|| format!("cannot write {}", index_path.display()))?;
    let mut written: Vec<PathBuf> = names.iter().map(|f| dir.join(f)).collect();
    written.push(index_path);
    Ok(written)
}

/// Removes `model.safetensors`, the index and `model-*-of-*.safetensors`.
fn remove_weight_files(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_shard =
            name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-");
        if name == SINGLE_FILE || name == INDEX_FILE || is_shard {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}
