//! Writes GGUF version 3 files: metadata, tensor directory, then the tensor
//! data, each tensor at an offset aligned to `general.alignment` (32).

use std::io::Write;

use anyhow::{Result, bail};

use super::gguf::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufArray, GgufValue};

const VERSION: u32 = 3;

/// A tensor to write: its shape in row-major order (as in PyTorch; GGUF
/// stores it reversed) and its encoded data.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<Tensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry; keys must be unique.
    pub fn add(&mut self, key: &str, value: GgufValue) -> Result<()> {
        if self.metadata.iter().any(|(k, _)| k == key) {
            bail!("metadata key {key:?} is written twice");
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Adds a tensor whose `data` is already encoded as `ty`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<()> {
        if self.tensors.iter().any(|t| t.name == name) {
            bail!("tensor {name:?} is written twice");
        }
        let elements: usize = shape.iter().product();
        let row = shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_size()) {
            bail!(
                "tensor {name}: rows of {row} are not a whole number of {ty} blocks of {}",
                ty.block_size()
            );
        }
        let expected = elements / ty.block_size() * ty.block_bytes();
        if data.len() != expected {
            bail!(
                "tensor {name}: {} bytes of data, {ty} {shape:?} needs {expected}",
                data.len()
            );
        }
        self.tensors.push(Tensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// Writes the whole file.
    pub fn write(&self, out: &mut impl Write) -> Result<()> {
        let mut header = Vec::new();
        header.extend(GGUF_MAGIC);
        header.extend(VERSION.to_le_bytes());
        header.extend((self.tensors.len() as u64).to_le_bytes());
        header.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut header, key);
            header.extend((value.value_type() as u32).to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend((t.shape.len() as u32).to_le_bytes());
            // ggml's ne[0] is the innermost (fastest-moving) dimension.
            for &d in t.shape.iter().rev() {
                header.extend((d as u64).to_le_bytes());
            }
            header.extend(t.ty.id().to_le_bytes());
            header.extend(offset.to_le_bytes());
            offset = aligned(offset + t.data.len() as u64);
        }
        pad(&mut header);
        out.write_all(&header)?;
        let mut written = 0u64;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            written += t.data.len() as u64;
            let padding = aligned(written) - written;
            out.write_all(&vec![0u8; padding as usize])?;
            written += padding;
        }
        Ok(())
    }
}

fn aligned(x: u64) -> u64 {
    x.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
}

fn pad(b: &mut Vec<u8>) {
    b.resize(aligned(b.len() as u64) as usize, 0);
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.extend(x.to_le_bytes()),
        GgufValue::U16(x) => b.extend(x.to_le_bytes()),
        GgufValue::I16(x) => b.extend(x.to_le_bytes()),
        GgufValue::U32(x) => b.extend(x.to_le_bytes()),
        GgufValue::I32(x) => b.extend(x.to_le_bytes()),
        GgufValue::F32(x) => b.extend(x.to_le_bytes()),
        GgufValue::U64(x) => b.extend(x.to_le_bytes()),
        GgufValue::I64(x) => b.extend(x.to_le_bytes()),
        GgufValue::F64(x) => b.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(u8::from(*x)),
        GgufValue::String(s) => put_str(b, s),
        GgufValue::Array(a) => put_array(b, a),
    }
}

fn put_array(b: &mut Vec<u8>, a: &GgufArray) {
    b.extend((a.elem_type() as u32).to_le_bytes());
    b.extend((a.len() as u64).to_le_bytes());
    fn each<T: Copy>(b: &mut Vec<u8>, items: &[T], wrap: impl Fn(T) -> GgufValue) {
        for &x in items {
            put_value(b, &wrap(x));
        }
    }
    match a {
        GgufArray::U8(v) => b.extend(v),
        GgufArray::I8(v) => each(b, v, GgufValue::I8),
        GgufArray::U16(v) => each(b, v, GgufValue::U16),
        GgufArray::I16(v) => each(b, v, GgufValue::I16),
        GgufArray::U32(v) => each(b, v, GgufValue::U32),
        GgufArray::I32(v) => each(b, v, GgufValue::I32),
        GgufArray::F32(v) => each(b, v, GgufValue::F32),
        GgufArray::U64(v) => each(b, v, GgufValue::U64),
        GgufArray::I64(v) => each(b, v, GgufValue::I64),
        GgufArray::F64(v) => each(b, v, GgufValue::F64),
        GgufArray::Bool(v) => each(b, v, GgufValue::Bool),
        GgufArray::String(v) => v.iter().for_each(|s| put_str(b, s)),
        GgufArray::Array(v) => v.iter().for_each(|inner| put_array(b, inner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::GgufFile;

    #[test]
    fn a_written_file_reads_back_entry_for_entry() {
        let mut w = GgufWriter::new();
        w.add("general.architecture", GgufValue::String("llama".into()))
            .unwrap();
        w.add("a.u32", GgufValue::U32(7)).unwrap();
        w.add("a.f32", GgufValue::F32(1e-5)).unwrap();
        w.add("a.bool", GgufValue::Bool(true)).unwrap();
        w.add(
            "a.strings",
            GgufValue::Array(GgufArray::String(vec!["x y".into(), "".into()])),
        )
        .unwrap();
        w.add("a.ints", GgufValue::Array(GgufArray::I32(vec![1, -3])))
            .unwrap();
        let m: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let bytes: Vec<u8> = m.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor("m", &[2, 3], GgmlType::F32, bytes).unwrap();
        w.add_tensor("v", &[5], GgmlType::F32, vec![0; 20]).unwrap();
        let mut file = Vec::new();
        w.write(&mut file).unwrap();

        let g = GgufFile::from_bytes(file).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(g.get_u64("a.u32").unwrap(), Some(7));
        assert_eq!(g.get("a.f32"), Some(&GgufValue::F32(1e-5)));
        assert_eq!(g.get_bool("a.bool").unwrap(), Some(true));
        assert_eq!(
            g.get_str_array("a.strings").unwrap().unwrap(),
            &["x y".to_string(), String::new()]
        );
        assert_eq!(g.get_int_array("a.ints").unwrap().unwrap(), vec![1, -3]);
        let t = g.dequantize("m").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, m);
        assert_eq!(g.tensor_info("v").unwrap().ne, vec![5]);
        // Every tensor starts on an aligned offset.
        for t in g.tensors() {
            assert_eq!(t.data_start % DEFAULT_ALIGNMENT, 0, "{}", t.name);
        }
    }

    #[test]
    fn mismatched_data_and_duplicate_names_are_refused() {
        let mut w = GgufWriter::new();
        let err = w
            .add_tensor("t", &[2, 3], GgmlType::F32, vec![0; 20])
            .unwrap_err();
        assert!(err.to_string().contains("20 bytes"), "{err}");
        let err = w
            .add_tensor("q", &[2, 40], GgmlType::Q8_0, vec![0; 68])
            .unwrap_err();
        assert!(err.to_string().contains("rows of 40"), "{err}");
        w.add("k", GgufValue::U8(1)).unwrap();
        assert!(w.add("k", GgufValue::U8(2)).is_err());
    }
}
