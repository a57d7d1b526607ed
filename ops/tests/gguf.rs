//! GGUF reader and Llama loader: the real SmolLM2 GGUF against the Hugging
//! Face reference, dequantization against scalar f64 references, handwritten
//! files, q/k unpermutation, and malformed input that must error, not panic.

mod assets_support;
use assets_support::*;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use testkit::require_asset;

use distillery_ops::io::gguf::{
    GgmlType, GgufArray, GgufError, GgufFile, GgufValue, dequantize_blocks,
};
use distillery_ops::io::gguf_llama::{
    GgufLlama, hf_tensor_name, llama3_from_factors, load_llama, load_llama_from, permute_qk,
    unpermute_qk,
};
use distillery_ops::io::{HostTensor, StateDict};
use serde_json::{Value, json};

// ---------------------------------------------------------------- assets

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn read_json(rel: &str) -> Option<Value> {
    let p = require_asset(rel)?;
    Some(serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
}

/// The real model, loaded once for all tests of this file.
fn real_model() -> Option<&'static GgufLlama> {
    static MODEL_ONCE: OnceLock<GgufLlama> = OnceLock::new();
    let path = require_asset(MODEL)?;
    Some(MODEL_ONCE.get_or_init(|| {
        let t = std::time::Instant::now();
        let m = load_llama(&path).expect("real GGUF loads");
        eprintln!("load_llama: {:.2?}", t.elapsed());
        m
    }))
}

// ---------------------------------------------------------------- rng

/// xorshift64*, enough to make reproducible random blocks.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    /// Finite f16 bits, including zeros, subnormals and negatives.
    fn f16_bits(&mut self) -> u16 {
        loop {
            let b = self.next() as u16;
            if (b >> 10) & 0x1f != 0x1f {
                return b;
            }
        }
    }
    /// A modest f16 scale, as a quantizer would write.
    fn f16_scale(&mut self) -> u16 {
        if self.below(8) == 0 {
            return self.f16_bits();
        }
        f32_to_f16_bits((self.unit() * 0.1) as f32)
    }
}

// ---------------------------------------------------------------- scalar references

/// IEEE half to f64 by its definition.
fn f16_ref(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as f64;
    sign * if exp == 0 {
        mant * 2f64.powi(-24)
    } else {
        (1024.0 + mant) * 2f64.powi(exp - 25)
    }
}

/// bfloat16 to f64 by its definition (8-bit exponent, 7-bit mantissa).
fn bf16_ref(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 7) & 0xff) as i32;
    let mant = (h & 0x7f) as f64;
    sign * if exp == 0 {
        mant * 2f64.powi(-133)
    } else {
        (128.0 + mant) * 2f64.powi(exp - 134)
    }
}

/// Round-to-nearest f32 -> f16 bits for normal-range values (test data only).
fn f32_to_f16_bits(x: f32) -> u16 {
    half_from_f64(x as f64)
}

fn half_from_f64(x: f64) -> u16 {
    // Values here are zero, subnormal or inside the normal f16 range.
    if x == 0.0 {
        return 0;
    }
    let sign = if x < 0.0 { 0x8000 } else { 0 };
    let a = x.abs();
    let mut e = a.log2().floor() as i32;
    if e < -14 {
        // Subnormal: value = m * 2^-24.
        let m = (a / 2f64.powi(-24)).round() as u16;
        return sign | m.min(0x3ff);
    }
    let mut m = (a / 2f64.powi(e) * 1024.0).round() as u32; // in [1024, 2048]
    if m == 2048 {
        m = 1024;
        e += 1;
    }
    let exp = (e + 15).clamp(1, 30) as u16;
    sign | (exp << 10) | (m as u16 - 1024)
}

/// Scalar f64 dequantization of one tensor's bytes, written from the ggml
/// block layouts independently of the library. Each element comes with the
/// magnitude of the terms it is computed from, which bounds f32 rounding.
fn dequant_ref(ty: GgmlType, b: &[u8]) -> Vec<(f64, f64)> {
    let h = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let mut out = Vec::new();
    match ty {
        GgmlType::F32 => {
            for c in b.chunks(4) {
                let x = f32::from_le_bytes(c.try_into().unwrap()) as f64;
                out.push((x, x.abs()));
            }
        }
        GgmlType::F16 => (0..b.len() / 2).for_each(|i| out.push((f16_ref(h(2 * i)), 0.0))),
        GgmlType::BF16 => (0..b.len() / 2).for_each(|i| out.push((bf16_ref(h(2 * i)), 0.0))),
        GgmlType::Q8_0 => {
            for blk in 0..b.len() / 34 {
                let o = blk * 34;
                let d = f16_ref(h(o));
                for i in 0..32 {
                    let x = d * (b[o + 2 + i] as i8) as f64;
                    out.push((x, x.abs()));
                }
            }
        }
        GgmlType::Q4_0 => {
            for blk in 0..b.len() / 18 {
                let o = blk * 18;
                let d = f16_ref(h(o));
                for e in 0..32 {
                    let byte = b[o + 2 + e % 16];
                    let q = if e < 16 { byte & 15 } else { byte >> 4 };
                    let x = d * (q as f64 - 8.0);
                    out.push((x, x.abs()));
                }
            }
        }
        GgmlType::Q4_1 => {
            for blk in 0..b.len() / 20 {
                let o = blk * 20;
                let (d, m) = (f16_ref(h(o)), f16_ref(h(o + 2)));
                for e in 0..32 {
                    let byte = b[o + 4 + e % 16];
                    let q = if e < 16 { byte & 15 } else { byte >> 4 };
                    out.push((d * q as f64 + m, (d * q as f64).abs() + m.abs()));
                }
            }
        }
        other => panic!("no reference for {other}"),
    }
    out
}

/// Random valid raw bytes for `n_blocks` blocks of `ty`.
fn random_blocks(rng: &mut Rng, ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n_blocks * ty.block_bytes());
    for _ in 0..n_blocks {
        match ty {
            GgmlType::F32 => {
                let x = if rng.below(4) == 0 {
                    // Arbitrary finite bit patterns, subnormals included.
                    loop {
                        let v = f32::from_bits(rng.next() as u32);
                        if v.is_finite() {
                            break v;
                        }
                    }
                } else {
                    rng.unit() as f32
                };
                b.extend(x.to_le_bytes());
            }
            GgmlType::F16 => b.extend(rng.f16_bits().to_le_bytes()),
            GgmlType::BF16 => loop {
                let v = rng.next() as u16;
                if (v >> 7) & 0xff != 0xff {
                    b.extend(v.to_le_bytes());
                    break;
                }
            },
            GgmlType::Q8_0 => {
                b.extend(rng.f16_scale().to_le_bytes());
                b.extend((0..32).map(|_| rng.byte()));
            }
            GgmlType::Q4_0 => {
                b.extend(rng.f16_scale().to_le_bytes());
                b.extend((0..16).map(|_| rng.byte()));
            }
            GgmlType::Q4_1 => {
                b.extend(rng.f16_scale().to_le_bytes());
                b.extend(rng.f16_scale().to_le_bytes());
                b.extend((0..16).map(|_| rng.byte()));
            }
            other => panic!("no generator for {other}"),
        }
    }
    b
}

/// Conversions are exact; a product and a sum each round once in f32.
fn assert_close(got: &[f32], want: &[(f64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &(w, mag))) in got.iter().zip(want).enumerate() {
        let tol = f32::EPSILON as f64 * mag;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}[{i}]: got {g:e}, want {w:e}"
        );
    }
}

const SUPPORTED: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

// ---------------------------------------------------------------- GGUF writer

/// Serializes a GGUF image by the spec, independently of the reader.
struct Writer {
    version: u32,
    kv: Vec<(String, GgufValue)>,
    /// (name, ne, raw type id, data).
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    alignment: u64,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn type_id(v: &GgufValue) -> u32 {
    v.value_type() as u32
}

fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.push(*x as u8),
        GgufValue::U16(x) => b.extend(x.to_le_bytes()),
        GgufValue::I16(x) => b.extend(x.to_le_bytes()),
        GgufValue::U32(x) => b.extend(x.to_le_bytes()),
        GgufValue::I32(x) => b.extend(x.to_le_bytes()),
        GgufValue::F32(x) => b.extend(x.to_le_bytes()),
        GgufValue::U64(x) => b.extend(x.to_le_bytes()),
        GgufValue::I64(x) => b.extend(x.to_le_bytes()),
        GgufValue::F64(x) => b.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(*x as u8),
        GgufValue::String(s) => put_str(b, s),
        GgufValue::Array(a) => put_array(b, a),
    }
}

fn put_array(b: &mut Vec<u8>, a: &GgufArray) {
    b.extend((a.elem_type() as u32).to_le_bytes());
    b.extend((a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr, $f:expr) => {
            for x in $v {
                put_value(b, &$f(x.clone()));
            }
        };
    }
    match a {
        GgufArray::U8(v) => each!(v, GgufValue::U8),
        GgufArray::I8(v) => each!(v, GgufValue::I8),
        GgufArray::U16(v) => each!(v, GgufValue::U16),
        GgufArray::I16(v) => each!(v, GgufValue::I16),
        GgufArray::U32(v) => each!(v, GgufValue::U32),
        GgufArray::I32(v) => each!(v, GgufValue::I32),
        GgufArray::F32(v) => each!(v, GgufValue::F32),
        GgufArray::U64(v) => each!(v, GgufValue::U64),
        GgufArray::I64(v) => each!(v, GgufValue::I64),
        GgufArray::F64(v) => each!(v, GgufValue::F64),
        GgufArray::Bool(v) => each!(v, GgufValue::Bool),
        GgufArray::String(v) => each!(v, GgufValue::String),
        GgufArray::Array(v) => each!(v, GgufValue::Array),
    }
}

impl Writer {
    fn new() -> Self {
        Writer {
            version: 3,
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        }
    }
    fn kv(mut self, k: &str, v: GgufValue) -> Self {
        self.kv.push((k.to_string(), v));
        self
    }
    fn tensor(mut self, name: &str, ne: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensors
            .push((name.to_string(), ne.to_vec(), ty.id(), data));
        self
    }
    /// The image, and the offset of the data section.
    fn build(&self) -> (Vec<u8>, usize) {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut b, k);
            b.extend(type_id(v).to_le_bytes());
            put_value(&mut b, v);
        }
        let align = |x: usize| x.div_ceil(self.alignment as usize) * self.alignment as usize;
        let mut offset = 0usize;
        for (name, ne, ty, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend((ne.len() as u32).to_le_bytes());
            ne.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(ty.to_le_bytes());
            b.extend((offset as u64).to_le_bytes());
            offset = align(offset + data.len());
        }
        let data_start = align(b.len());
        b.resize(data_start, 0);
        for (_, _, _, data) in &self.tensors {
            b.extend(data);
            b.resize(align(b.len()), 0);
        }
        (b, data_start)
    }
}

fn s(x: &str) -> GgufValue {
    GgufValue::String(x.to_string())
}

// ---------------------------------------------------------------- real model

#[test]
fn real_gguf_directory_and_metadata() {
    let Some(path) = require_asset(MODEL) else {
        return;
    };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.metadata().len(), 33);
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.require_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), Some(30));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        49152
    );
    assert_eq!(
        g.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .unwrap()
            .len(),
        48900
    );
    let count = |t: GgmlType| g.tensors().iter().filter(|i| i.ggml_type == t).count();
    assert_eq!(count(GgmlType::Q4_1), 210);
    assert_eq!(count(GgmlType::F32), 61);
    assert_eq!(count(GgmlType::Q8_0), 1);
    let embd = g.tensor_info("token_embd.weight").unwrap();
    assert_eq!(embd.ne, vec![576, 49152]);
    assert_eq!(embd.shape(), vec![49152, 576]);
    assert_eq!(
        g.tensor_info("blk.0.ffn_down.weight").unwrap().shape(),
        vec![576, 1536]
    );
    // Wrong-type accessors name the key and offset.
    let err = g.get_u64("general.name").unwrap_err().to_string();
    assert!(
        err.contains("general.name") && err.contains("offset"),
        "{err}"
    );

    // Library dequantization of real tensors equals the scalar reference.
    for name in [
        "token_embd.weight",
        "blk.3.attn_q.weight",
        "blk.7.ffn_norm.weight",
    ] {
        let info = g.tensor_info(name).unwrap();
        let got = g.dequantize(name).unwrap();
        assert_eq!(got.shape, info.shape());
        assert_close(
            &got.data,
            &dequant_ref(info.ggml_type, g.tensor_data(info)),
            name,
        );
    }
}

#[test]
fn real_gguf_matches_reference_config_and_shapes() {
    let Some(m) = real_model() else { return };
    let Some(reference) = read_json("reference/config.json") else {
        return;
    };
    for (k, v) in reference.as_object().unwrap() {
        assert_eq!(&m.config[k], v, "config field {k}");
    }
    assert_eq!(m.config, reference);

    let n_params: usize = m.tensors.values().map(HostTensor::numel).sum();
    assert_eq!(n_params, 134_515_008);
    assert_eq!(m.tensors.len(), 2 + 30 * 9);
    assert!(!m.tensors.contains_key("lm_head.weight"), "tied embeddings");
    let shape = |n: &str| m.tensors[n].shape.clone();
    assert_eq!(shape("model.embed_tokens.weight"), vec![49152, 576]);
    assert_eq!(shape("model.norm.weight"), vec![576]);
    for i in 0..30 {
        let l = |s: &str| shape(&format!("model.layers.{i}.{s}"));
        assert_eq!(l("input_layernorm.weight"), vec![576]);
        assert_eq!(l("post_attention_layernorm.weight"), vec![576]);
        assert_eq!(l("self_attn.q_proj.weight"), vec![576, 576]);
        assert_eq!(l("self_attn.k_proj.weight"), vec![192, 576]);
        assert_eq!(l("self_attn.v_proj.weight"), vec![192, 576]);
        assert_eq!(l("self_attn.o_proj.weight"), vec![576, 576]);
        assert_eq!(l("mlp.gate_proj.weight"), vec![1536, 576]);
        assert_eq!(l("mlp.up_proj.weight"), vec![1536, 576]);
        assert_eq!(l("mlp.down_proj.weight"), vec![576, 1536]);
    }
    assert!(
        m.tensors
            .values()
            .all(|t| t.data.iter().all(|x| x.is_finite()))
    );

    if let Some(tc) = read_json("reference/tokenizer_config.json") {
        assert_eq!(m.tokenizer_config, tc);
    }
}

/// HF row `r` of a q/k projection comes from GGUF row
/// `head * head_dim + 2 * (r % (head_dim / 2)) + (r % head_dim) / (head_dim / 2)`.
fn unpermute_by_formula<T: Copy + Default>(
    w: &[T],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> Vec<T> {
    let hd = rows / n_head;
    let mut out = vec![T::default(); rows * cols];
    for r in 0..rows {
        let (head, within) = (r / hd, r % hd);
        let src = head * hd + 2 * (within % (hd / 2)) + within / (hd / 2);
        out[r * cols..(r + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    out
}

#[test]
fn real_gguf_q_k_are_unpermuted() {
    let Some(m) = real_model() else { return };
    let Some(path) = require_asset(MODEL) else {
        return;
    };
    let g = GgufFile::open(&path).unwrap();
    for layer in [0, 17, 29] {
        for (gname, hname, heads, rows) in
            [("attn_q", "q_proj", 9, 576), ("attn_k", "k_proj", 3, 192)]
        {
            let raw = g
                .dequantize(&format!("blk.{layer}.{gname}.weight"))
                .unwrap();
            let want = unpermute_by_formula(&raw.data, rows, 576, heads);
            let got = &m.tensors[&format!("model.layers.{layer}.self_attn.{hname}.weight")];
            assert_eq!(got.data, want, "layer {layer} {hname}");
        }
        // v is not permuted.
        let raw = g.dequantize(&format!("blk.{layer}.attn_v.weight")).unwrap();
        assert_eq!(
            m.tensors[&format!("model.layers.{layer}.self_attn.v_proj.weight")].data,
            raw.data
        );
    }
}

// ---------------------------------------------------------------- unpermutation

/// llama.cpp's forward permutation (convert_hf_to_gguf):
/// `W.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`.
fn permute_like_llama_cpp(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let mut out = vec![0f32; rows * cols];
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let dst = h * hd + i * 2 + j;
                let src = h * hd + j * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_matches_index_formula_and_inverts_llama_cpp() {
    let mut rng = Rng::new(7);
    for (n_head, hd, cols) in [(1, 2, 1), (9, 64, 5), (3, 64, 7), (4, 8, 3), (2, 16, 32)] {
        let rows = n_head * hd;
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() as f32).collect();
        let t = HostTensor::new(vec![rows, cols], w.clone());
        let got = unpermute_qk(&t, n_head).unwrap();
        assert_eq!(got.shape, vec![rows, cols]);
        assert_eq!(got.data, unpermute_by_formula(&w, rows, cols, n_head));
        let back = permute_like_llama_cpp(&got.data, rows, cols, n_head);
        assert_eq!(back, w, "permute(unpermute(w)) == w");
        let round = unpermute_qk(
            &HostTensor::new(
                vec![rows, cols],
                permute_like_llama_cpp(&w, rows, cols, n_head),
            ),
            n_head,
        )
        .unwrap();
        assert_eq!(round.data, w, "unpermute(permute(w)) == w");
        let ours = permute_qk(&t, n_head).unwrap();
        assert_eq!(ours.data, permute_like_llama_cpp(&w, rows, cols, n_head));
    }
    assert!(permute_qk(&HostTensor::new(vec![6, 1], vec![0.0; 6]), 4).is_err());
    assert!(unpermute_qk(&HostTensor::new(vec![6, 1], vec![0.0; 6]), 4).is_err());
    assert!(unpermute_qk(&HostTensor::new(vec![6], vec![0.0; 6]), 1).is_err());
}

/// The point of the unpermutation: GGML's interleaved RoPE on the GGUF
/// weights gives the same attention scores as Hugging Face's rotate-half
/// RoPE on the unpermuted weights.
#[test]
fn unpermuted_weights_with_rotate_half_rope_match_interleaved_rope() {
    let mut rng = Rng::new(11);
    let (n_head, n_kv, hd, dim) = (4usize, 2usize, 8usize, 12usize);
    let wq: Vec<f32> = (0..n_head * hd * dim).map(|_| rng.unit() as f32).collect();
    let wk: Vec<f32> = (0..n_kv * hd * dim).map(|_| rng.unit() as f32).collect();
    let hf_q = unpermute_qk(&HostTensor::new(vec![n_head * hd, dim], wq.clone()), n_head).unwrap();
    let hf_k = unpermute_qk(&HostTensor::new(vec![n_kv * hd, dim], wk.clone()), n_kv).unwrap();
    let x: Vec<f64> = (0..dim).map(|_| rng.unit()).collect();
    let y: Vec<f64> = (0..dim).map(|_| rng.unit()).collect();
    let matvec = |w: &[f32], rows: usize, v: &[f64]| -> Vec<f64> {
        (0..rows)
            .map(|r| (0..dim).map(|c| w[r * dim + c] as f64 * v[c]).sum())
            .collect()
    };
    let theta = |i: usize, pos: f64| pos * 10000f64.powf(-2.0 * i as f64 / hd as f64);
    let rope_interleaved = |v: &mut [f64], pos: f64| {
        for head in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let (s, c) = theta(i, pos).sin_cos();
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * c - b * s;
                head[2 * i + 1] = a * s + b * c;
            }
        }
    };
    let rope_half = |v: &mut [f64], pos: f64| {
        for head in v.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let (s, c) = theta(i, pos).sin_cos();
                let (a, b) = (head[i], head[i + hd / 2]);
                head[i] = a * c - b * s;
                head[i + hd / 2] = a * s + b * c;
            }
        }
    };
    let (pq, pk) = (5.0, 2.0);
    let mut q_g = matvec(&wq, n_head * hd, &x);
    let mut k_g = matvec(&wk, n_kv * hd, &y);
    rope_interleaved(&mut q_g, pq);
    rope_interleaved(&mut k_g, pk);
    let mut q_h = matvec(&hf_q.data, n_head * hd, &x);
    let mut k_h = matvec(&hf_k.data, n_kv * hd, &y);
    rope_half(&mut q_h, pq);
    rope_half(&mut k_h, pk);
    for h in 0..n_head {
        let kvh = h / (n_head / n_kv);
        let dot = |q: &[f64], k: &[f64]| -> f64 {
            (0..hd).map(|d| q[h * hd + d] * k[kvh * hd + d]).sum()
        };
        let (a, b) = (dot(&q_g, &k_g), dot(&q_h, &k_h));
        assert!((a - b).abs() < 1e-9, "head {h}: {a} vs {b}");
    }
}

// ---------------------------------------------------------------- dequantization

#[test]
fn dequantization_matches_scalar_reference_on_random_blocks() {
    let mut rng = Rng::new(2024);
    for ty in SUPPORTED {
        // Enough blocks to span several parallel chunks.
        for n_blocks in [1, 3, 1000, 5003] {
            let raw = random_blocks(&mut rng, ty, n_blocks);
            let got = dequantize_blocks(ty, &raw).unwrap();
            assert_eq!(got.len(), n_blocks * ty.block_size());
            assert_close(&got, &dequant_ref(ty, &raw), &format!("{ty} x{n_blocks}"));
        }
    }
}

#[test]
fn exact_values_of_hand_made_blocks() {
    let one = 0x3c00u16.to_le_bytes(); // f16 1.0
    let half = 0x3800u16.to_le_bytes(); // f16 0.5
    // Q4_0: byte j holds element j (low nibble) and element j + 16 (high).
    let mut q4_0 = one.to_vec();
    q4_0.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = dequantize_blocks(GgmlType::Q4_0, &q4_0).unwrap();
    for j in 0..16 {
        assert_eq!(v[j], j as f32 - 8.0);
        assert_eq!(v[j + 16], (15 - j) as f32 - 8.0);
    }
    // Q4_1 with d = 0.5, m = 1: nibble * 0.5 + 1.
    let mut q4_1 = half.to_vec();
    q4_1.extend(one);
    q4_1.extend((0..16u8).map(|j| j | (3 << 4)));
    let v = dequantize_blocks(GgmlType::Q4_1, &q4_1).unwrap();
    for j in 0..16 {
        assert_eq!(v[j], j as f32 * 0.5 + 1.0);
        assert_eq!(v[j + 16], 2.5);
    }
    // Q8_0 with d = 0.5: signed bytes.
    let mut q8 = half.to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let v = dequantize_blocks(GgmlType::Q8_0, &q8).unwrap();
    assert!((0..32).all(|i| v[i] == (i as f32 - 16.0) * 0.5));
    // A partial block is an error.
    let err = dequantize_blocks(GgmlType::Q8_0, &q8[..33]).unwrap_err();
    assert!(matches!(err, GgufError::PartialBlock { .. }), "{err}");
}

#[test]
fn unsupported_quantization_is_an_error() {
    let err = dequantize_blocks(GgmlType::Q4_K, &[0; 144]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported quantization Q4_K for tensor <buffer>"
    );
    let (bytes, _) = Writer::new()
        .tensor(
            "blk.0.ffn_up.weight",
            &[256, 2],
            GgmlType::Q6_K,
            vec![0; 420],
        )
        .build();
    let g = GgufFile::from_bytes(bytes).unwrap();
    let err = g.dequantize("blk.0.ffn_up.weight").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported quantization Q6_K for tensor blk.0.ffn_up.weight"
    );
    assert!(matches!(
        g.dequantize("nope"),
        Err(GgufError::MissingTensor(_))
    ));
}

// ---------------------------------------------------------------- handwritten files

fn all_value_kinds() -> Vec<(String, GgufValue)> {
    use GgufArray as A;
    use GgufValue as V;
    vec![
        ("u8".into(), V::U8(200)),
        ("i8".into(), V::I8(-100)),
        ("u16".into(), V::U16(60000)),
        ("i16".into(), V::I16(-30000)),
        ("u32".into(), V::U32(4_000_000_000)),
        ("i32".into(), V::I32(-2_000_000_000)),
        ("f32".into(), V::F32(1e-5)),
        ("bool.t".into(), V::Bool(true)),
        ("bool.f".into(), V::Bool(false)),
        ("string".into(), s("héllo, wörld ✓")),
        ("empty.string".into(), s("")),
        ("u64".into(), V::U64(u64::MAX)),
        ("i64".into(), V::I64(i64::MIN)),
        ("f64".into(), V::F64(-2.5e300)),
        ("arr.u8".into(), V::Array(A::U8(vec![1, 2, 255]))),
        ("arr.i8".into(), V::Array(A::I8(vec![-1, 2]))),
        ("arr.u16".into(), V::Array(A::U16(vec![65535]))),
        ("arr.i16".into(), V::Array(A::I16(vec![-5, 5]))),
        ("arr.u32".into(), V::Array(A::U32(vec![7, 8, 9]))),
        ("arr.i32".into(), V::Array(A::I32(vec![3, 3, 1, -4]))),
        ("arr.f32".into(), V::Array(A::F32(vec![0.5, -1.25]))),
        (
            "arr.bool".into(),
            V::Array(A::Bool(vec![true, false, true])),
        ),
        (
            "arr.str".into(),
            V::Array(A::String(vec!["a b".into(), "".into(), "ü".into()])),
        ),
        ("arr.u64".into(), V::Array(A::U64(vec![u64::MAX, 0]))),
        ("arr.i64".into(), V::Array(A::I64(vec![-9]))),
        ("arr.f64".into(), V::Array(A::F64(vec![1e-300]))),
        ("arr.empty".into(), V::Array(A::F32(vec![]))),
        (
            "arr.nested".into(),
            V::Array(A::Array(vec![
                A::I32(vec![1, 2]),
                A::String(vec!["x".into()]),
                A::Array(vec![A::U8(vec![9]), A::Bool(vec![])]),
            ])),
        ),
        ("general.alignment".into(), V::U32(64)),
    ]
}

#[test]
fn handwritten_gguf_round_trips_through_a_temp_file() {
    let mut rng = Rng::new(99);
    for version in [2u32, 3] {
        let mut w = Writer::new();
        w.version = version;
        w.alignment = 64;
        for (k, v) in all_value_kinds() {
            w = w.kv(&k, v);
        }
        let mut expect = Vec::new();
        for (i, ty) in SUPPORTED.into_iter().enumerate() {
            // [in = 2 blocks, out = 3] and one 1-D tensor.
            let ne: Vec<u64> = if i == 0 {
                vec![5]
            } else {
                vec![2 * ty.block_size() as u64, 3]
            };
            let n_blocks = ne.iter().product::<u64>() as usize / ty.block_size();
            let raw = random_blocks(&mut rng, ty, n_blocks);
            let name = format!("t.{ty}");
            expect.push((name.clone(), ne.clone(), ty, raw.clone()));
            w = w.tensor(&name, &ne, ty, raw);
        }
        w = w.tensor("t.q4k", &[256, 1], GgmlType::Q4_K, vec![7; 144]);
        let (bytes, data_start) = w.build();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let g = GgufFile::open(&path).unwrap();

        assert_eq!(g.version, version);
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_offset as usize, data_start);
        assert_eq!(g.data_offset % 64, 0);
        let kinds = all_value_kinds();
        assert_eq!(g.metadata().len(), kinds.len());
        for ((k, v), e) in kinds.iter().zip(g.metadata()) {
            assert_eq!(&e.key, k);
            assert_eq!(&e.value, v, "{k}");
            assert_eq!(g.get(k), Some(v));
        }
        assert_eq!(g.get_u64("u16").unwrap(), Some(60000));
        assert_eq!(g.get_i64("i8").unwrap(), Some(-100));
        assert_eq!(g.get_f64("f32").unwrap(), Some(1e-5f32 as f64));
        assert_eq!(g.get_bool("bool.t").unwrap(), Some(true));
        assert_eq!(g.get_int_array("arr.i32").unwrap(), Some(vec![3, 3, 1, -4]));
        assert!(g.get_u64("i64").is_err(), "negative value is not a u64");
        assert!(g.get_str("u8").is_err());
        assert_eq!(g.get_u64("absent").unwrap(), None);
        assert!(matches!(
            g.require_u64("absent"),
            Err(GgufError::MissingKey { .. })
        ));

        assert_eq!(g.tensors().len(), expect.len() + 1);
        for (name, ne, ty, raw) in &expect {
            let info = g.tensor_info(name).unwrap();
            assert_eq!(&info.ne, ne);
            assert_eq!(info.ggml_type, *ty);
            assert_eq!(info.data_start % 64, 0);
            assert_eq!(g.tensor_data(info), &raw[..]);
            let t = g.dequantize(name).unwrap();
            let hf: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
            assert_eq!(t.shape, hf);
            assert_close(&t.data, &dequant_ref(*ty, raw), name);
        }
        let q4k = g.tensor_info("t.q4k").unwrap();
        assert_eq!((q4k.ggml_type, q4k.n_bytes), (GgmlType::Q4_K, 144));
        assert!(g.dequantize("t.q4k").is_err());
    }
}

// ---------------------------------------------------------------- a tiny Llama

const TINY_HIDDEN: u64 = 32;
const TINY_FFN: u64 = 64;
const TINY_HEADS: u64 = 2;
const TINY_KV: u64 = 1;
const TINY_LAYERS: u64 = 2;

/// A two-layer Llama with every supported tensor type and a byte-level
/// BPE vocabulary (3 specials, 256 bytes, merges for "hell").
fn tiny_llama(seed: u64, untied: bool, rope_freqs: Option<Vec<f32>>) -> Writer {
    use GgufValue as V;
    let mut rng = Rng::new(seed);
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    tokens.extend(byte_level_chars().into_iter().map(String::from));
    tokens.extend(["he", "ll", "hell"].map(String::from));
    let mut types = vec![3i32; 3];
    types.resize(tokens.len(), 1);
    let vocab = tokens.len() as u64;
    let mut w = Writer::new()
        .kv("general.architecture", s("llama"))
        .kv("general.name", s("tiny"))
        .kv("llama.block_count", V::U32(TINY_LAYERS as u32))
        .kv("llama.context_length", V::U32(128))
        .kv("llama.embedding_length", V::U32(TINY_HIDDEN as u32))
        .kv("llama.feed_forward_length", V::U32(TINY_FFN as u32))
        .kv("llama.attention.head_count", V::U32(TINY_HEADS as u32))
        .kv("llama.attention.head_count_kv", V::U32(TINY_KV as u32))
        .kv("llama.rope.freq_base", V::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5))
        .kv("llama.rope.dimension_count", V::U32(16))
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.pre", s("smollm"))
        .kv("tokenizer.ggml.tokens", V::Array(GgufArray::String(tokens)))
        .kv("tokenizer.ggml.token_type", V::Array(GgufArray::I32(types)))
        .kv(
            "tokenizer.ggml.merges",
            V::Array(GgufArray::String(
                ["h e", "l l", "he ll"].map(String::from).to_vec(),
            )),
        )
        .kv("tokenizer.ggml.bos_token_id", V::U32(1))
        .kv("tokenizer.ggml.eos_token_id", V::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", V::U32(0))
        .kv("tokenizer.ggml.padding_token_id", V::U32(2))
        .kv("tokenizer.ggml.add_bos_token", V::Bool(false))
        .kv("tokenizer.chat_template", s("{{ messages }}"));
    let mut t = |w: Writer, name: &str, ne: &[u64], ty: GgmlType| {
        let n_blocks = ne.iter().product::<u64>() as usize / ty.block_size();
        let raw = random_blocks(&mut rng, ty, n_blocks);
        w.tensor(name, ne, ty, raw)
    };
    let (h, f) = (TINY_HIDDEN, TINY_FFN);
    let (q, kv) = (TINY_HEADS * 16, TINY_KV * 16);
    w = t(w, "token_embd.weight", &[h, vocab], GgmlType::Q8_0);
    for i in 0..TINY_LAYERS {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        w = t(w, &n("attn_norm"), &[h], GgmlType::F32);
        w = t(w, &n("attn_q"), &[h, q], GgmlType::Q4_1);
        w = t(w, &n("attn_k"), &[h, kv], GgmlType::Q4_0);
        w = t(w, &n("attn_v"), &[h, kv], GgmlType::F16);
        w = t(w, &n("attn_output"), &[q, h], GgmlType::BF16);
        w = t(w, &n("ffn_norm"), &[h], GgmlType::F32);
        w = t(w, &n("ffn_gate"), &[h, f], GgmlType::Q8_0);
        w = t(w, &n("ffn_up"), &[h, f], GgmlType::Q4_1);
        w = t(w, &n("ffn_down"), &[f, h], GgmlType::F32);
    }
    w = t(w, "output_norm.weight", &[h], GgmlType::F32);
    if untied {
        w = t(w, "output.weight", &[h, vocab], GgmlType::Q4_0);
    }
    if let Some(freqs) = rope_freqs {
        let raw = freqs.iter().flat_map(|x| x.to_le_bytes()).collect();
        w = w.tensor(
            "rope_freqs.weight",
            &[freqs.len() as u64],
            GgmlType::F32,
            raw,
        );
    }
    w
}

fn state_numel(sd: &StateDict) -> usize {
    sd.values().map(HostTensor::numel).sum()
}

#[test]
fn tiny_llama_loads_with_hf_names_and_unpermuted_qk() {
    for untied in [false, true] {
        let (bytes, _) = tiny_llama(5, untied, None).build();
        let g = GgufFile::from_bytes(bytes).unwrap();
        let m = load_llama_from(&g).unwrap();
        let c = &m.config;
        assert_eq!(c["hidden_size"], json!(32));
        assert_eq!(c["intermediate_size"], json!(64));
        assert_eq!(c["num_hidden_layers"], json!(2));
        assert_eq!(c["num_attention_heads"], json!(2));
        assert_eq!(c["num_key_value_heads"], json!(1));
        assert_eq!(c["head_dim"], json!(16));
        assert_eq!(c["rms_norm_eps"], json!(1e-5));
        assert_eq!(c["rope_theta"], json!(10000.0));
        assert_eq!(c["rope_scaling"], Value::Null);
        assert_eq!(c["max_position_embeddings"], json!(128));
        assert_eq!(c["vocab_size"], json!(262));
        assert_eq!(c["tie_word_embeddings"], json!(!untied));
        assert_eq!(c["bos_token_id"], json!(1));
        assert_eq!(c["model_type"], json!("llama"));
        assert_eq!(m.tensors.contains_key("lm_head.weight"), untied);
        assert_eq!(m.tensors.len(), 2 + 18 + untied as usize);
        let per_layer = 2 * 32 + 32 * 32 * 2 + 16 * 32 * 2 + 3 * 64 * 32;
        assert_eq!(
            state_numel(&m.tensors),
            262 * 32 * (1 + untied as usize) + 32 + 2 * per_layer
        );

        // Every tensor equals the scalar reference of its raw bytes, with q
        // and k rows reordered by the index formula.
        for info in g.tensors() {
            let raw = dequant_ref(info.ggml_type, g.tensor_data(info));
            let shape = info.shape();
            let want = if info.name.ends_with("attn_q.weight") {
                unpermute_by_formula(&raw, shape[0], shape[1], TINY_HEADS as usize)
            } else if info.name.ends_with("attn_k.weight") {
                unpermute_by_formula(&raw, shape[0], shape[1], TINY_KV as usize)
            } else {
                raw
            };
            let hf = hf_tensor_name(&info.name).unwrap();
            let got = &m.tensors[&hf];
            assert_eq!(got.shape, shape, "{hf}");
            assert_close(&got.data, &want, &hf);
        }

        let ids = m
            .tokenizer
            .encode("hello", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, vec![261, 3 + b'o' as u32]);
        assert_eq!(m.tokenizer.decode(&ids, false).unwrap(), "hello");
        assert_eq!(m.tokenizer_config["chat_template"], json!("{{ messages }}"));
        assert_eq!(m.tokenizer_config["bos_token"], json!("<|im_start|>"));
    }
}

#[test]
fn tiny_llama_missing_or_misshapen_tensors_are_errors() {
    let mut w = tiny_llama(1, false, None);
    w.tensors.retain(|t| t.0 != "blk.1.ffn_up.weight");
    let err = load_llama_from(&GgufFile::from_bytes(w.build().0).unwrap())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );

    let mut w = tiny_llama(1, false, None);
    let t = w
        .tensors
        .iter_mut()
        .find(|t| t.0 == "blk.0.ffn_down.weight")
        .unwrap();
    t.1 = vec![32, 64]; // transposed
    let err = load_llama_from(&GgufFile::from_bytes(w.build().0).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("blk.0.ffn_down.weight"), "{err}");

    let w =
        tiny_llama(1, false, None).tensor("blk.0.attn_q.bias", &[32], GgmlType::F32, vec![0; 128]);
    let err = load_llama_from(&GgufFile::from_bytes(w.build().0).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("blk.0.attn_q.bias"), "{err}");

    let mut w = tiny_llama(1, false, None);
    w.kv[0].1 = s("gpt2");
    let err = load_llama_from(&GgufFile::from_bytes(w.build().0).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("gpt2"), "{err}");
}

/// llama.cpp's Llama-3 `rope_freqs` values (convert_hf_to_gguf.py).
fn llama3_factors(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    orig: f64,
) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let (low_wl, high_wl) = (orig / low, orig / high);
            (if wavelen < high_wl {
                1.0
            } else if wavelen > low_wl {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }) as f32
        })
        .collect()
}

#[test]
fn llama3_rope_scaling_is_recovered_from_rope_freqs() {
    // Llama 3.1 8B and Llama 3.2 1B.
    for (theta, hd, factor, high, orig) in [
        (500000.0, 128, 8.0, 4.0, 8192),
        (500000.0, 64, 32.0, 4.0, 8192),
    ] {
        let f = llama3_factors(theta, hd, factor, 1.0, high, orig as f64);
        let got = llama3_from_factors(&f, theta, hd).unwrap();
        assert_eq!(
            got,
            json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                   "high_freq_factor": high, "original_max_position_embeddings": orig})
        );
    }
    assert!(llama3_from_factors(&[1.0; 8], 10000.0, 16).is_err());

    // Through the loader: a tiny model whose ramp has enough points.
    let f = llama3_factors(10000.0, 16, 4.0, 1.0, 8.0, 1024.0);
    let (bytes, _) = tiny_llama(3, false, Some(f)).build();
    let m = load_llama_from(&GgufFile::from_bytes(bytes).unwrap()).unwrap();
    assert_eq!(m.config["rope_scaling"]["rope_type"], json!("llama3"));
    assert_eq!(m.config["rope_scaling"]["factor"], json!(4.0));
    assert_eq!(m.config["rope_scaling"]["high_freq_factor"], json!(8.0));
    assert_eq!(
        m.config["rope_scaling"]["original_max_position_embeddings"],
        json!(1024)
    );
    assert!(!m.tensors.contains_key("rope_freqs.weight"));

    let w = tiny_llama(3, false, None)
        .kv("llama.rope.scaling.type", s("linear"))
        .kv("llama.rope.scaling.factor", GgufValue::F32(2.0));
    let m = load_llama_from(&GgufFile::from_bytes(w.build().0).unwrap()).unwrap();
    assert_eq!(
        m.config["rope_scaling"],
        json!({"rope_type": "linear", "factor": 2.0})
    );
}

// ---------------------------------------------------------------- malformed input

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("malformed file parsed"),
        Err(e) => e,
    }
}

/// A header with one key whose value bytes are `value` (type id `ty`).
fn one_key(ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    put_str(&mut b, "key.k");
    b.extend(ty.to_le_bytes());
    b.extend(value);
    b
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn real_header_truncated_anywhere_is_an_error() {
    let Some(path) = require_asset(MODEL) else {
        return;
    };
    let bytes = std::fs::read(path).unwrap();
    let header_end = GgufFile::from_bytes(bytes[..].to_vec())
        .unwrap()
        .data_offset as usize;
    // Every offset of the first 8 KiB, then a stride through the rest of the
    // header (tokens, merges, tensor directory), then into the data.
    let cuts = (0..8192).chain((8192..header_end).step_by(997)).chain([
        header_end - 1,
        header_end,
        header_end + 1,
        bytes.len() / 2,
        bytes.len() - 1,
    ]);
    for cut in cuts {
        let r = catch_unwind(AssertUnwindSafe(|| {
            GgufFile::from_bytes(bytes[..cut].to_vec())
        }));
        match r {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("file truncated at {cut} parsed"),
            Err(_) => panic!("panic on file truncated at {cut}"),
        }
    }
    let e = parse_err(bytes[..bytes.len() - 1].to_vec());
    assert!(
        matches!(&e, GgufError::TensorOutOfRange { tensor, .. } if tensor == "output_norm.weight"),
        "{e}"
    );
    let e = parse_err(bytes[..100].to_vec()).to_string();
    assert!(
        e.contains("metadata count") && e.contains("offset 24"),
        "{e}"
    );
    let e = parse_err(bytes[..500_000].to_vec());
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("tokenizer.ggml.tokens")),
        "{e}"
    );
}

#[test]
fn malformed_headers_give_specific_errors() {
    // Bad magic, short files, versions.
    assert!(matches!(
        parse_err(b"GGML\x03\0\0\0".to_vec()),
        GgufError::BadMagic { .. }
    ));
    assert!(matches!(parse_err(Vec::new()), GgufError::Truncated { .. }));
    assert!(matches!(
        parse_err(b"GG".to_vec()),
        GgufError::Truncated { .. }
    ));
    assert!(matches!(
        parse_err(b"GGUF\x01\0\0\0".to_vec()),
        GgufError::UnsupportedVersion { version: 1, .. }
    ));
    let e = parse_err(b"GGUF\0\0\0\x03".to_vec());
    assert!(e.to_string().contains("big-endian"), "{e}");

    // Counts larger than the file.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    assert!(matches!(parse_err(b), GgufError::CountTooLarge { .. }));
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((1u64 << 62).to_le_bytes());
    assert!(matches!(parse_err(b), GgufError::CountTooLarge { .. }));

    // Huge string length (key and value).
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 64]);
    assert!(matches!(parse_err(b), GgufError::Truncated { .. }));
    let e = parse_err(one_key(8, &le(&[&(1u64 << 40).to_le_bytes(), b"abc"])));
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("key.k")),
        "{e}"
    );

    // Huge array counts, for several element types.
    for elem in [0u32, 6, 8, 9, 10] {
        for count in [u64::MAX, 1 << 40, 1 << 20] {
            let e = parse_err(one_key(
                9,
                &le(&[&elem.to_le_bytes(), &count.to_le_bytes(), &[0; 16]]),
            ));
            assert!(
                matches!(e, GgufError::CountTooLarge { .. }),
                "{elem} {count}: {e}"
            );
        }
    }
    // Unknown value types, top-level and as array elements.
    let e = parse_err(one_key(13, &[0; 8]));
    assert!(
        matches!(&e, GgufError::UnknownValueType { key, type_id: 13, .. } if key == "key.k"),
        "{e}"
    );
    let e = parse_err(one_key(
        9,
        &le(&[&99u32.to_le_bytes(), &1u64.to_le_bytes(), &[0; 8]]),
    ));
    assert!(
        matches!(e, GgufError::UnknownValueType { type_id: 99, .. }),
        "{e}"
    );
    // Invalid UTF-8, invalid bool, deep nesting.
    let e = parse_err(one_key(8, &le(&[&2u64.to_le_bytes(), &[0xff, 0xfe]])));
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }), "{e}");
    assert!(matches!(
        parse_err(one_key(7, &[2])),
        GgufError::InvalidBool { byte: 2, .. }
    ));
    let mut deep = Vec::new();
    for _ in 0..100 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(0u32.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    assert!(matches!(
        parse_err(one_key(9, &deep)),
        GgufError::NestingTooDeep { .. }
    ));
    // Duplicate keys and bad alignment.
    let w = Writer::new()
        .kv("a", GgufValue::U8(1))
        .kv("a", GgufValue::U8(2));
    assert!(matches!(
        parse_err(w.build().0),
        GgufError::DuplicateKey { .. }
    ));
    for bad in [0u32, 3, 48] {
        let w = Writer::new().kv("general.alignment", GgufValue::U32(bad));
        assert!(
            matches!(parse_err(w.build().0), GgufError::BadAlignment { .. }),
            "{bad}"
        );
    }
    let w = Writer::new().kv("general.alignment", s("32"));
    assert!(matches!(
        parse_err(w.build().0),
        GgufError::WrongType { .. }
    ));
}

#[test]
fn malformed_tensor_directories_give_specific_errors() {
    let good = || Writer::new().tensor("w", &[32, 2], GgmlType::Q8_0, vec![0; 68]);
    assert!(GgufFile::from_bytes(good().build().0).is_ok());

    // Unknown type ids: removed (4) and never assigned (200).
    for id in [4u32, 200] {
        let mut w = good();
        w.tensors[0].2 = id;
        let e = parse_err(w.build().0);
        assert!(
            matches!(&e, GgufError::UnknownTensorType { tensor, type_id, .. } if tensor == "w" && *type_id == id),
            "{e}"
        );
    }
    // Data out of range: beyond the end, and offset overflow.
    let (mut b, data_start) = good().build();
    b.truncate(data_start + 67); // one byte short of the 68 data bytes
    let e = parse_err(b);
    assert!(
        matches!(&e, GgufError::TensorOutOfRange { tensor, .. } if tensor == "w"),
        "{e}"
    );
    let (b, _) = good().build();
    // Header (24 bytes), then name length, "w", n_dims, two dims, type.
    let name_pos = 24;
    let off_pos = name_pos + 8 + 1 + 4 + 16 + 4;
    for off in [1u64 << 20, u64::MAX - 31] {
        let mut b = b.clone();
        b[off_pos..off_pos + 8].copy_from_slice(&off.to_le_bytes());
        let e = parse_err(b);
        assert!(
            matches!(&e, GgufError::TensorOutOfRange { tensor, .. } if tensor == "w"),
            "{off}: {e}"
        );
    }
    // Misaligned offset.
    let mut b = b.clone();
    b[off_pos..off_pos + 8].copy_from_slice(&8u64.to_le_bytes());
    assert!(matches!(parse_err(b), GgufError::BadTensorInfo { .. }));
    // Too many dims, element-count overflow, partial block, duplicate name.
    let bad_dims: [&[u64]; 3] = [&[32, 1, 1, 1, 1], &[32, u64::MAX, 2], &[16, 2]];
    for ne in bad_dims {
        let w = Writer::new().tensor("w", ne, GgmlType::Q8_0, vec![0; 68]);
        let e = parse_err(w.build().0);
        assert!(
            matches!(&e, GgufError::BadTensorInfo { tensor, .. } if tensor == "w"),
            "{ne:?}: {e}"
        );
    }
    let w = good().tensor("w", &[32], GgmlType::F32, vec![0; 128]);
    assert!(matches!(
        parse_err(w.build().0),
        GgufError::DuplicateTensor { .. }
    ));
}

#[test]
fn random_mutations_never_panic() {
    let (base, data_start) = tiny_llama(42, true, None).build();
    assert!(load_llama_from(&GgufFile::from_bytes(base.clone()).unwrap()).is_ok());
    let mut rng = Rng::new(1234);
    let mut parsed = 0;
    for iter in 0..1000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(4) {
            // Mostly the header, where a flipped byte changes the structure.
            let limit = if rng.below(10) < 9 {
                data_start
            } else {
                b.len()
            };
            let pos = rng.below(limit as u64) as usize;
            b[pos] = match rng.below(4) {
                0 => rng.byte(),
                1 => b[pos] ^ (1 << rng.below(8)),
                2 => 0xff,
                _ => 0,
            };
        }
        if rng.below(10) == 0 {
            b.truncate(rng.below(b.len() as u64) as usize);
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            let Ok(g) = GgufFile::from_bytes(b) else {
                return false;
            };
            for t in g.tensors() {
                let _ = g.dequantize_info(t);
            }
            let _ = load_llama_from(&g);
            true
        }));
        match r {
            Ok(ok) => parsed += ok as usize,
            Err(_) => panic!("panic on mutation #{iter}"),
        }
    }
    eprintln!("{parsed} of 1000 mutated files still parsed");
}

#[test]
fn tensor_names_map_both_ways() {
    use distillery_ops::io::gguf_llama::gguf_tensor_name;
    for (gguf, hf) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ),
        (
            "blk.12.ffn_norm.weight",
            "model.layers.12.post_attention_layernorm.weight",
        ),
        (
            "blk.3.ffn_down.weight",
            "model.layers.3.mlp.down_proj.weight",
        ),
    ] {
        assert_eq!(hf_tensor_name(gguf).as_deref(), Some(hf));
        assert_eq!(gguf_tensor_name(hf).as_deref(), Some(gguf));
    }
    for unknown in [
        "blk.x.attn_q.weight",
        "blk.0.attn_q.bias",
        "rope_freqs.weight",
    ] {
        assert_eq!(hf_tensor_name(unknown), None, "{unknown}");
    }
    assert_eq!(
        gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
        None
    );
}
