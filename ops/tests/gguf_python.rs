//! Our GGUF files read by llama.cpp's own Python package (`gguf`, from
//! gguf-py): every tensor's type, shape and dequantized values, the
//! metadata, and the Q8_0 and Q4_0 blocks against its reference quantizers
//! applied to the same f32 values. Needs `python3` with `pip install gguf`
//! (.ci/run installs it); skipped without, except under CI=true.

use std::path::Path;
use std::process::Command;

use distillery_ops::export::{ExportDtype, ExportFormat, ExportOptions, export_model};
use distillery_ops::io::gguf::{GgufFile, GgufValue};
use distillery_ops::io::hf_architecture::ArchitectureChoice;
use distillery_ops::io::hf_folder::read_hf_folder;
use serde_json::Value;

/// Reads each file with `GGUFReader`; for each quantized tensor, also
/// quantizes the f32 file's tensor of the same name with `gguf.quants`.
const READER: &str = r#"
import json, sys
import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize, quantize

f32 = {t.name: t for t in GGUFReader(sys.argv[1]).tensors}
files = {}
for path in sys.argv[1:]:
    r = GGUFReader(path)
    tensors = {}
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
        entry = {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape],
                 "sum": float(values.sum()), "abs_sum": float(np.abs(values).sum())}
        if t.tensor_type in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0):
            theirs = quantize(np.asarray(f32[t.name].data, dtype=np.float32), t.tensor_type)
            entry["same_blocks"] = bool(np.array_equal(theirs.reshape(-1), np.asarray(t.data).reshape(-1)))
        tensors[t.name] = entry
    metadata = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            metadata[key] = {"len": len(field.data)}
        else:
            metadata[key] = field.contents()
    files[path] = {"tensors": tensors, "metadata": metadata}
print(json.dumps(files))
"#;

fn python_with_gguf() -> Option<()> {
    testkit::require_tool(
        "python3 with the gguf package (pip install gguf)",
        &["python3", "-c", "import gguf, numpy"],
    )
}

#[test]
fn the_gguf_package_reads_our_files_and_quantizes_as_we_do() {
    if python_with_gguf().is_none() {
        return;
    }
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/interop/llama3_rope/hf");
    let folder = read_hf_folder(&fixture).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dtypes = [ExportDtype::F32, ExportDtype::Q8_0, ExportDtype::Q4_0];
    let paths: Vec<_> = dtypes
        .iter()
        .map(|dtype| {
            let path = tmp.path().join(format!("m.{dtype}.gguf"));
            let options = ExportOptions {
                format: ExportFormat::Gguf,
                dtype: *dtype,
                architecture: ArchitectureChoice::Auto,
                max_shard_bytes: None,
                name: "fixture".into(),
            };
            export_model(&folder, &path, &options).unwrap();
            path
        })
        .collect();
    let out = Command::new("python3")
        .arg("-c")
        .arg(READER)
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut quantized = 0;
    for path in &paths {
        let seen = &theirs[path.to_str().unwrap()];
        let ours = GgufFile::open(path).unwrap();
        assert_eq!(
            seen["tensors"].as_object().unwrap().len(),
            ours.tensors().len()
        );
        for t in ours.tensors() {
            let s = &seen["tensors"][&t.name];
            assert_eq!(s["type"], t.ggml_type.name(), "{}", t.name);
            assert_eq!(s["ne"], serde_json::json!(t.ne), "{}", t.name);
            let values = ours.dequantize_info(t).unwrap().data;
            let sum: f64 = values.iter().map(|&x| x as f64).sum();
            let abs_sum: f64 = values.iter().map(|&x| (x as f64).abs()).sum();
            let scale = abs_sum.max(1e-30);
            assert!(
                (s["sum"].as_f64().unwrap() - sum).abs() <= 1e-9 * scale,
                "{}",
                t.name
            );
            assert!((s["abs_sum"].as_f64().unwrap() - abs_sum).abs() <= 1e-9 * scale);
            if let Some(same) = s.get("same_blocks") {
                assert_eq!(same, true, "{}: blocks differ from gguf.quants", t.name);
                quantized += 1;
            }
        }
        for entry in ours.metadata() {
            let s = &seen["metadata"][&entry.key];
            let want = match &entry.value {
                GgufValue::Array(a) => serde_json::json!({"len": a.len()}),
                GgufValue::String(x) => Value::from(x.as_str()),
                GgufValue::Bool(x) => Value::from(*x),
                GgufValue::F32(x) => Value::from(*x as f64),
                other => Value::from(other.as_u64().expect("an integer")),
            };
            assert_eq!(s, &want, "{}", entry.key);
        }
    }
    // Every matrix of the q8_0 and q4_0 files: 7 per layer, 2 layers, the
    // embedding and the untied output.
    assert_eq!(quantized, 2 * (2 * 7 + 2));
}
