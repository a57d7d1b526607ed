//! GGUF (v2, v3) reader over a memory map: header, metadata, tensor directory,
//! and dequantization of F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors to f32.
//!
//! Every length, count and offset read from the file is checked against the
//! bytes that are actually there before anything is allocated or sliced, so a
//! truncated or hostile file yields a [`GgufError`] instead of a panic or an
//! allocation far larger than the file.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use thiserror::Error;

use crate::io::HostTensor;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Real files never nest arrays; the cap keeps a hostile file from
/// exhausting the stack through recursion.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Everything that can go wrong reading a GGUF file.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic {found:02x?} at offset 0, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {version} at offset 4 (supported: 2, 3){note}")]
    UnsupportedVersion { version: u32, note: &'static str },
    #[error(
        "truncated file: {what} at offset {offset} needs {needed} bytes, \
         only {available} left (file is {file_len} bytes)"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
        file_len: u64,
    },
    #[error("{what} at offset {offset}: count {count} cannot fit in the {available} bytes left")]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        available: u64,
    },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata key {key:?}: unknown value type id {type_id} at offset {offset}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    #[error("metadata key {key:?}: invalid bool byte {byte} at offset {offset}")]
    InvalidBool { key: String, byte: u8, offset: u64 },
    #[error("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {offset}")]
    NestingTooDeep { key: String, offset: u64 },
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("metadata key {key:?} (value at offset {offset}): expected {expected}, found {found}")]
    WrongType {
        key: String,
        offset: u64,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },
    #[error("invalid general.alignment {alignment} at offset {offset}: must be a power of two")]
    BadAlignment { alignment: u64, offset: u64 },
    #[error("tensor {tensor:?}: unknown ggml type id {type_id} at offset {offset}")]
    UnknownTensorType {
        tensor: String,
        type_id: u32,
        offset: u64,
    },
    #[error("tensor {tensor:?} (info at offset {offset}): {reason}")]
    BadTensorInfo {
        tensor: String,
        offset: u64,
        reason: String,
    },
    #[error("duplicate tensor name {tensor:?} at offset {offset}")]
    DuplicateTensor { tensor: String, offset: u64 },
    #[error(
        "tensor {tensor:?}: data at offset {start}..{end} lies outside the file ({file_len} bytes)"
    )]
    TensorOutOfRange {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("unsupported quantization {ty} for tensor {tensor}")]
    UnsupportedQuantization { ty: GgmlType, tensor: String },
    #[error(
        "{tensor}: {len} bytes is not a whole number of {ty} blocks ({block_bytes} bytes each)"
    )]
    PartialBlock {
        tensor: String,
        ty: GgmlType,
        len: usize,
        block_bytes: usize,
    },
    #[error("no tensor named {0:?}")]
    MissingTensor(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// ggml tensor element types, with their llama.cpp ids and block layouts.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, id, name, elements per block, bytes per block), from ggml.h /
/// gguf-py's GGML_QUANT_SIZES. Ids 4, 5, 31-33 and 36-38 were removed upstream.
const GGML_TYPES: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// The type with llama.cpp id `id`, if it is one ggml knows.
    pub fn from_id(id: u32) -> Option<Self> {
        GGML_TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        GGML_TYPES
            .iter()
            .find(|t| t.0 == self)
            .expect("every GgmlType variant is in GGML_TYPES")
    }

    pub fn id(self) -> u32 {
        self.entry().1
    }

    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block (1 for the plain float and integer types).
    pub fn block_size(self) -> usize {
        self.entry().3 as usize
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.entry().4 as usize
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// GGUF metadata value type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type can take in the file; bounds
    /// array counts before anything is allocated.
    fn min_size(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A typed GGUF array. Numeric arrays are kept unboxed so that memory stays
/// proportional to the bytes in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufArray {
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) => GgufValueType::String,
            GgufArray::Array(_) => GgufValueType::Array,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F64(_) => GgufValueType::F64,
        }
    }

    /// Integer elements widened to i64 (`None` for non-integer or u64 values
    /// beyond i64).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn w<T: Copy + TryInto<i64>>(v: &[T]) -> Option<Vec<i64>> {
            v.iter().map(|&x| x.try_into().ok()).collect()
        }
        match self {
            GgufArray::U8(v) => w(v),
            GgufArray::I8(v) => w(v),
            GgufArray::U16(v) => w(v),
            GgufArray::I16(v) => w(v),
            GgufArray::U32(v) => w(v),
            GgufArray::I32(v) => w(v),
            GgufArray::U64(v) => w(v),
            GgufArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// A short description for error messages (`array of STRING`).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("array of {:?}", a.elem_type()),
            v => format!("{:?}", v.value_type()),
        }
    }

    /// Any integer type, widened (negative values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer type that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Floats as they are, integers converted.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata key/value and where its value starts in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataEntry {
    pub key: String,
    pub value: GgufValue,
    pub offset: u64,
}

/// One entry of the tensor directory, validated against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml dims, fastest-varying first (`[in, out]` for a linear weight).
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute file offset of the first data byte.
    pub data_start: u64,
    pub n_bytes: u64,
    /// File offset of this directory entry, for error messages.
    pub info_offset: u64,
}

impl TensorInfo {
    /// Row-major (Hugging Face) shape: `ne` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file; tensor data stays in the map until dequantized.
pub struct GgufFile {
    bytes: Backing,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the (aligned) tensor data section.
    pub data_offset: u64,
    metadata: Vec<MetadataEntry>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this value; the file is
        // a model artifact that is not expected to change while it is open
        // (if it is truncated underneath us, reads fault, as with any mmap).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Mmap(map))
    }

    /// Parses an in-memory GGUF image.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(bytes: Backing) -> Result<Self> {
        let header = parse_header(&bytes)?;
        Ok(GgufFile {
            bytes,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            key_index: index_of(&header.metadata, |e| &e.key),
            tensor_index: index_of(&header.tensors, |t| &t.name),
            metadata: header.metadata,
            tensors: header.tensors,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[MetadataEntry] {
        &self.metadata
    }

    pub fn entry(&self, key: &str) -> Option<&MetadataEntry> {
        self.key_index.get(key).map(|&i| &self.metadata[i])
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.entry(key).map(|e| &e.value)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(e) = self.entry(key) else {
            return Ok(None);
        };
        f(&e.value).map(Some).ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            offset: e.offset,
            expected,
            found: e.value.type_name(),
        })
    }

    /// An unsigned integer value (any integer type), `None` when absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", GgufValue::as_i64)
    }

    /// A float (or integer) value, `None` when absent.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", GgufValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.typed(key, "an array of strings", |v| match v {
            GgufValue::Array(GgufArray::String(s)) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// An array of any integer type, widened to i64.
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed(key, "an array of integers", |v| {
            v.as_array().and_then(GgufArray::to_i64_vec)
        })
    }

    /// Like [`Self::get_u64`] but a missing key is an error.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?.ok_or_else(|| missing(key))
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?.ok_or_else(|| missing(key))
    }

    /// The tensor directory in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (its range was validated when parsing).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.data_start as usize..(info.data_start + info.n_bytes) as usize]
    }

    /// Dequantizes tensor `name` to f32 in Hugging Face (row-major) shape.
    pub fn dequantize(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        self.dequantize_info(info)
    }

    pub fn dequantize_info(&self, info: &TensorInfo) -> Result<HostTensor> {
        let data = dequantize_named(info.ggml_type, self.tensor_data(info), &info.name)?;
        Ok(HostTensor::new(info.shape(), data))
    }
}

fn missing(key: &str) -> GgufError {
    GgufError::MissingKey {
        key: key.to_string(),
    }
}

fn index_of<T>(items: &[T], key: impl Fn(&T) -> &String) -> HashMap<String, usize> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| (key(t).clone(), i))
        .collect()
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<MetadataEntry>,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        Ok(s.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails before allocating when `count` items of at least `min_size`
    /// bytes each cannot be in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, what: impl FnOnce() -> String) -> Result<()> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::CountTooLarge {
                what: what(),
                offset: self.offset(),
                count,
                available: self.remaining(),
            }),
        }
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("{} length", what()))?;
        let start = self.offset();
        let bytes = self.take(len, &what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::InvalidUtf8 {
                what: what(),
                offset: start,
            })
    }
}

fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = buf.get(..4).unwrap_or(buf);
    if magic != GGUF_MAGIC {
        // A short file that is a prefix of the magic is just truncated.
        if magic.len() < 4 && GGUF_MAGIC.starts_with(magic) {
            c.take(4, || "magic".into())?;
        }
        return Err(GgufError::BadMagic {
            found: magic.to_vec(),
        });
    }
    c.pos = 4;
    let version = c.u32(|| "version".into())?;
    if version != 2 && version != 3 {
        let note = match version.swap_bytes() {
            2 | 3 => " (this looks like a big-endian file)",
            _ if version == 1 => " (GGUF v1 is obsolete)",
            _ => "",
        };
        return Err(GgufError::UnsupportedVersion { version, note });
    }
    let n_tensors = c.u64(|| "tensor count".into())?;
    let n_kv = c.u64(|| "metadata count".into())?;
    // Smallest key/value: 8-byte key length + 4-byte type + 1-byte value.
    c.check_count(n_kv, 13, || "metadata count".into())?;
    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut seen = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key_offset = c.offset();
        let key = c.string(|| format!("metadata key #{i}"))?;
        let value_offset = c.offset();
        let value = read_value(&mut c, &key)?;
        if seen.insert(key.clone(), ()).is_some() {
            return Err(GgufError::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
        metadata.push(MetadataEntry {
            key,
            value,
            offset: value_offset,
        });
    }

    let alignment = match metadata.iter().find(|e| e.key == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(e) => {
            let a = e.value.as_u64().ok_or_else(|| GgufError::WrongType {
                key: e.key.clone(),
                offset: e.offset,
                expected: "an unsigned integer",
                found: e.value.type_name(),
            })?;
            if !a.is_power_of_two() {
                return Err(GgufError::BadAlignment {
                    alignment: a,
                    offset: e.offset,
                });
            }
            a
        }
    };

    // Smallest tensor info: name length + n_dims + type + offset.
    c.check_count(n_tensors, 24, || "tensor count".into())?;
    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let info_offset = c.offset();
        let name = c.string(|| format!("name of tensor #{i}"))?;
        if names.insert(name.clone(), ()).is_some() {
            return Err(GgufError::DuplicateTensor {
                tensor: name,
                offset: info_offset,
            });
        }
        let (ne, ggml_type, rel_offset) = read_tensor_info(&mut c, &name, info_offset, alignment)?;
        raw.push((name, ne, ggml_type, rel_offset, info_offset));
    }

    let header_end = c.offset();
    let data_offset =
        header_end
            .checked_next_multiple_of(alignment)
            .ok_or(GgufError::BadAlignment {
                alignment,
                offset: header_end,
            })?;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ne, ggml_type, rel_offset, info_offset) in raw {
        let n_elements: u64 = ne.iter().product(); // overflow ruled out in read_tensor_info
        let n_bytes = n_elements / ggml_type.block_size() as u64 * ggml_type.block_bytes() as u64;
        let start = data_offset.checked_add(rel_offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                name,
                ne,
                ggml_type,
                data_start: start,
                n_bytes,
                info_offset,
            }),
            _ => {
                return Err(GgufError::TensorOutOfRange {
                    tensor: name,
                    start: data_offset.saturating_add(rel_offset),
                    end: data_offset
                        .saturating_add(rel_offset)
                        .saturating_add(n_bytes),
                    file_len,
                });
            }
        }
    }
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

fn read_tensor_info(
    c: &mut Cursor<'_>,
    name: &str,
    info_offset: u64,
    alignment: u64,
) -> Result<(Vec<u64>, GgmlType, u64)> {
    let bad = |reason: String| GgufError::BadTensorInfo {
        tensor: name.to_string(),
        offset: info_offset,
        reason,
    };
    let n_dims = c.u32(|| format!("dimension count of tensor {name:?}"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(bad(format!(
            "{n_dims} dimensions (ggml allows at most {MAX_DIMS})"
        )));
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        ne.push(c.u64(|| format!("dimension {d} of tensor {name:?}"))?);
    }
    let type_offset = c.offset();
    let type_id = c.u32(|| format!("type of tensor {name:?}"))?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        tensor: name.to_string(),
        type_id,
        offset: type_offset,
    })?;
    let rel_offset = c.u64(|| format!("data offset of tensor {name:?}"))?;

    // ggml keeps element counts in int64.
    let n_elements = ne
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| bad(format!("element count of dims {ne:?} overflows")))?;
    let block = ggml_type.block_size() as u64;
    if ne.first().copied().unwrap_or(1) % block != 0 {
        return Err(bad(format!(
            "first dimension {} is not a multiple of the {ggml_type} block size {block}",
            ne[0]
        )));
    }
    (n_elements / block)
        .checked_mul(ggml_type.block_bytes() as u64)
        .ok_or_else(|| bad(format!("byte size of dims {ne:?} overflows")))?;
    if rel_offset % alignment != 0 {
        return Err(bad(format!(
            "data offset {rel_offset} is not a multiple of the alignment {alignment}"
        )));
    }
    Ok((ne, ggml_type, rel_offset))
}

fn read_value(c: &mut Cursor<'_>, key: &str) -> Result<GgufValue> {
    let type_offset = c.offset();
    let type_id = c.u32(|| format!("type of metadata key {key:?}"))?;
    let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_string(),
        type_id,
        offset: type_offset,
    })?;
    read_typed(c, key, ty, 0)
}

fn read_typed(c: &mut Cursor<'_>, key: &str, ty: GgufValueType, depth: usize) -> Result<GgufValue> {
    let what = || format!("value of metadata key {key:?}");
    Ok(match ty {
        GgufValueType::U8 => GgufValue::U8(c.array::<1>(what)?[0]),
        GgufValueType::I8 => GgufValue::I8(c.array::<1>(what)?[0] as i8),
        GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(c.array(what)?)),
        GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(c.array(what)?)),
        GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(c.array(what)?)),
        GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(c.array(what)?)),
        GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(c.array(what)?)),
        GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(c.array(what)?)),
        GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(c.array(what)?)),
        GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(c.array(what)?)),
        GgufValueType::Bool => GgufValue::Bool(read_bool(c, key)?),
        GgufValueType::String => GgufValue::String(c.string(what)?),
        GgufValueType::Array => GgufValue::Array(read_array(c, key, depth)?),
    })
}

fn read_bool(c: &mut Cursor<'_>, key: &str) -> Result<bool> {
    let offset = c.offset();
    match c.array::<1>(|| format!("value of metadata key {key:?}"))?[0] {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(GgufError::InvalidBool {
            key: key.to_string(),
            byte,
            offset,
        }),
    }
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<GgufArray> {
    let start = c.offset();
    if depth >= MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: key.to_string(),
            offset: start,
        });
    }
    let type_id = c.u32(|| format!("array element type of metadata key {key:?}"))?;
    let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.to_string(),
        type_id,
        offset: start,
    })?;
    let count = c.u64(|| format!("array length of metadata key {key:?}"))?;
    c.check_count(count, ty.min_size(), || {
        format!("array of metadata key {key:?}")
    })?;
    let n = count as usize;
    let what = || format!("array of metadata key {key:?}");

    /// Fixed-size elements: one bounds check, then decode from the slice.
    fn fixed<T, const N: usize>(
        c: &mut Cursor<'_>,
        n: usize,
        what: impl FnOnce() -> String,
        f: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let bytes = c.take((n * N) as u64, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|b| f(b.try_into().expect("chunk of N bytes")))
            .collect())
    }

    Ok(match ty {
        GgufValueType::U8 => GgufArray::U8(fixed(c, n, what, |b: [u8; 1]| b[0])?),
        GgufValueType::I8 => GgufArray::I8(fixed(c, n, what, |b: [u8; 1]| b[0] as i8)?),
        GgufValueType::U16 => GgufArray::U16(fixed(c, n, what, u16::from_le_bytes)?),
        GgufValueType::I16 => GgufArray::I16(fixed(c, n, what, i16::from_le_bytes)?),
        GgufValueType::U32 => GgufArray::U32(fixed(c, n, what, u32::from_le_bytes)?),
        GgufValueType::I32 => GgufArray::I32(fixed(c, n, what, i32::from_le_bytes)?),
        GgufValueType::F32 => GgufArray::F32(fixed(c, n, what, f32::from_le_bytes)?),
        GgufValueType::U64 => GgufArray::U64(fixed(c, n, what, u64::from_le_bytes)?),
        GgufValueType::I64 => GgufArray::I64(fixed(c, n, what, i64::from_le_bytes)?),
        GgufValueType::F64 => GgufArray::F64(fixed(c, n, what, f64::from_le_bytes)?),
        GgufValueType::Bool => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(c, key)?);
            }
            GgufArray::Bool(v)
        }
        GgufValueType::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(|| format!("element {i} of metadata key {key:?}"))?);
            }
            GgufArray::String(v)
        }
        GgufValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            GgufArray::Array(v)
        }
    })
}

/// Dequantizes whole blocks of `ty` (e.g. a tensor's raw bytes) to f32.
pub fn dequantize_blocks(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    dequantize_named(ty, bytes, "<buffer>")
}

/// Elements per parallel task: large enough to amortize scheduling, small
/// enough to spread one 576x1536 matrix over all cores.
const TASK_ELEMENTS: usize = 1 << 14;

fn dequantize_named(ty: GgmlType, bytes: &[u8], tensor: &str) -> Result<Vec<f32>> {
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, o| o[0] = le_f16(b),
        GgmlType::BF16 => |b, o| o[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        GgmlType::Q8_0 => block_q8_0,
        GgmlType::Q4_0 => block_q4_0,
        GgmlType::Q4_1 => block_q4_1,
        _ => {
            return Err(GgufError::UnsupportedQuantization {
                ty,
                tensor: tensor.to_string(),
            });
        }
    };
    let (bs, tb) = (ty.block_size(), ty.block_bytes());
    if !bytes.len().is_multiple_of(tb) {
        return Err(GgufError::PartialBlock {
            tensor: tensor.to_string(),
            ty,
            len: bytes.len(),
            block_bytes: tb,
        });
    }
    let n_blocks = bytes.len() / tb;
    let mut out = vec![0f32; n_blocks * bs];
    let blocks_per_task = (TASK_ELEMENTS / bs).max(1);
    out.par_chunks_mut(blocks_per_task * bs)
        .zip(bytes.par_chunks(blocks_per_task * tb))
        .for_each(|(o, b)| {
            for (ob, bb) in o.chunks_exact_mut(bs).zip(b.chunks_exact(tb)) {
                kernel(bb, ob);
            }
        });
    Ok(out)
}

fn le_f16(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Q8_0: f16 scale d, then 32 signed bytes; x = q * d.
fn block_q8_0(b: &[u8], o: &mut [f32]) {
    let d = le_f16(b);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = (q as i8) as f32 * d;
    }
}

/// Q4_0: f16 scale d, then 16 bytes; low nibbles are elements 0..16, high
/// nibbles 16..32; x = (nibble - 8) * d.
fn block_q4_0(b: &[u8], o: &mut [f32]) {
    let d = le_f16(b);
    let (lo, hi) = o.split_at_mut(16);
    for (j, &q) in b[2..18].iter().enumerate() {
        lo[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 scale d, f16 minimum m, then 16 bytes as in Q4_0;
/// x = nibble * d + m.
fn block_q4_1(b: &[u8], o: &mut [f32]) {
    let d = le_f16(b);
    let m = le_f16(&b[2..]);
    let (lo, hi) = o.split_at_mut(16);
    for (j, &q) in b[4..20].iter().enumerate() {
        lo[j] = (q & 0x0f) as f32 * d + m;
        hi[j] = (q >> 4) as f32 * d + m;
    }
}
