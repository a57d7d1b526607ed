//! What several test files share about the development assets under
//! `../shared/assets`: zstd-compressed texts, the held-out documents,
//! `.npy` arrays, and GPT-2's byte-level character table. Whether a test
//! skips or fails when an asset is missing is `testkit`'s policy.
#![allow(dead_code)]

use std::path::Path;
use testkit::require_asset;

/// A zstd-compressed asset as text.
pub fn read_zst(rel: &str) -> Option<String> {
    let path = require_asset(rel)?;
    let bytes = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    Some(String::from_utf8(bytes).unwrap())
}

/// The `text` of every document of `corpus/heldout_ppl.jsonl.zst`.
pub fn heldout_documents() -> Option<Vec<String>> {
    let text = read_zst("corpus/heldout_ppl.jsonl.zst")?;
    let docs: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(docs.len() > 100, "{} documents", docs.len());
    Some(docs)
}

/// A `.npy` array: f32 or i64 values (the other vector empty) and its shape.
pub struct Npy {
    pub shape: Vec<usize>,
    pub f32s: Vec<f32>,
    pub i64s: Vec<i64>,
}

pub fn parse_npy(bytes: &[u8]) -> Npy {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not a .npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => panic!("npy version {v}"),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    let body = &bytes[start + header_len..];
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let n: usize = shape.iter().product();
    let mut out = Npy {
        shape,
        f32s: Vec::new(),
        i64s: Vec::new(),
    };
    if header.contains("'descr': '<f4'") {
        out.f32s = body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(out.f32s.len(), n);
    } else if header.contains("'descr': '<i8'") {
        out.i64s = body
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(out.i64s.len(), n);
    } else {
        panic!("unsupported npy dtype: {header}");
    }
    out
}

/// Reads a `.npy` file, zstd-compressed when it ends in `.zst`.
pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "zst") {
        parse_npy(&zstd::decode_all(&bytes[..]).unwrap())
    } else {
        parse_npy(&bytes)
    }
}

/// GPT-2's byte-to-unicode table, for a byte-level vocabulary.
pub fn byte_level_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .map(u32::from)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        table[b as usize] = char::from_u32(c).unwrap();
    }
    table
}
