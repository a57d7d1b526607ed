//! Models written by the other tools (tests/fixtures/interop, made by
//! scripts/make_interop_fixtures.py): transformers' `save_pretrained` in
//! pruned shapes, with its logits, and llama.cpp's `convert_hf_to_gguf.py`
//! of the same folders. We load both and match transformers' logits, and our
//! exports of them equal what the tools themselves wrote.

mod model_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use distillery_ops::export::{ExportDtype, ExportFormat, ExportOptions, export_model};
use distillery_ops::io::gguf::{GgufFile, GgufValue};
use distillery_ops::io::gguf_llama::load_llama;
use distillery_ops::io::hf_architecture::ArchitectureChoice;
use distillery_ops::io::hf_folder::{HfFolder, read_hf_folder};
use distillery_ops::io::safetensors_io::read_safetensors;
use distillery_ops::model::{Llama, LlamaConfig};
use model_support::*;
use serde_json::Value;

/// transformers' f32 logits against ours: the same computation, summed in
/// another order.
const MAX_ABS: f32 = 1e-4;

const CASES: [&str; 3] = ["mistral_indivisible", "llama_gqa_tied", "llama3_rope"];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/interop")
        .join(case)
}

struct Prompt {
    text: String,
    ids: Vec<u32>,
    /// `[seq][vocab]`.
    logits: Vec<Vec<f32>>,
}

fn prompts(case: &str) -> Vec<Prompt> {
    let json: Value =
        serde_json::from_slice(&std::fs::read(case_dir(case).join("logits.json")).unwrap())
            .unwrap();
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            text: p["text"].as_str().unwrap().to_string(),
            ids: serde_json::from_value(p["ids"].clone()).unwrap(),
            logits: serde_json::from_value(p["logits"].clone()).unwrap(),
        })
        .collect()
}

/// Max |ours - transformers'| over every prompt and position.
fn logit_error(config: &Value, tensors: &distillery_ops::io::StateDict, case: &str) -> f32 {
    let config = LlamaConfig::from_json(config).expect("config parses");
    let model = Llama::<B>::from_state_dict(config, tensors.clone(), &device()).unwrap();
    let mut worst = 0f32;
    for p in prompts(case) {
        let got = model_logits(&model, &[&p.ids]);
        let want: Vec<f32> = p.logits.concat();
        assert_eq!(got.len(), want.len(), "{case}: {:?}", p.text);
        for (a, b) in got.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

#[test]
fn transformers_folders_load_and_match_their_logits() {
    for case in CASES {
        let folder = read_hf_folder(&case_dir(case).join("hf")).unwrap();
        let err = logit_error(&folder.config, &folder.tensors, case);
        eprintln!("{case}: max |logit diff| vs transformers {err:e}");
        assert!(err <= MAX_ABS, "{case}: {err}");
        // The tokenizer (and the chat template transformers 5 keeps in
        // chat_template.jinja) come with it.
        let tok = folder.assets.tokenizer.as_ref().unwrap();
        for p in prompts(case) {
            let ids = tok.encode(p.text.as_str(), false).unwrap();
            assert_eq!(ids.get_ids(), p.ids, "{case}: {:?}", p.text);
        }
        assert!(
            folder.assets.tokenizer_config.as_ref().unwrap()["chat_template"]
                .as_str()
                .unwrap()
                .contains("<|im_start|>")
        );
    }
}

#[test]
fn llama_cpp_conversions_load_and_match_transformers_logits() {
    for case in CASES {
        let path = case_dir(case).join(format!("{case}.f32.gguf"));
        let loaded = load_llama(&path).unwrap();
        let err = logit_error(&loaded.config, &loaded.tensors, case);
        eprintln!("{case}: llama.cpp's GGUF, max |logit diff| vs transformers {err:e}");
        assert!(err <= MAX_ABS, "{case}: {err}");
        for p in prompts(case) {
            let ids = loaded.tokenizer.encode(p.text.as_str(), false).unwrap();
            assert_eq!(ids.get_ids(), p.ids, "{case}: {:?}", p.text);
        }
    }
}

fn export(folder: &HfFolder, dest: &Path, format: ExportFormat, dtype: ExportDtype) {
    let options = ExportOptions {
        format,
        dtype,
        architecture: ArchitectureChoice::Auto,
        max_shard_bytes: None,
        name: "fixture".into(),
    };
    export_model(folder, dest, &options).unwrap();
}

#[test]
fn hf_exports_declare_the_class_transformers_used_and_hold_its_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    for case in CASES {
        let source = case_dir(case).join("hf");
        let folder = read_hf_folder(&source).unwrap();
        let dest = tmp.path().join(case);
        export(&folder, &dest, ExportFormat::Hf, ExportDtype::F32);
        let theirs: Value =
            serde_json::from_slice(&std::fs::read(source.join("config.json")).unwrap()).unwrap();
        let ours: Value =
            serde_json::from_slice(&std::fs::read(dest.join("config.json")).unwrap()).unwrap();
        for key in [
            "architectures",
            "model_type",
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "tie_word_embeddings",
        ] {
            let want = theirs.get(key).filter(|v| !v.is_null());
            // transformers omits head_dim where it is hidden / heads.
            if want.is_some() {
                assert_eq!(ours.get(key), want, "{case}: {key}");
            }
        }
        if theirs["model_type"] == "mistral" {
            assert!(ours["sliding_window"].is_null(), "{case}");
        }
        let want = read_safetensors(&source.join("model.safetensors")).unwrap();
        let got = read_safetensors(&dest.join("model.safetensors")).unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{case}: tensor names"
        );
        for (name, t) in &want {
            assert_eq!(got[name].shape, t.shape, "{case}: {name}");
            assert_eq!(got[name].data, t.data, "{case}: {name}");
        }
        // And it reads back as the same model.
        let back = read_hf_folder(&dest).unwrap();
        assert!(logit_error(&back.config, &back.tensors, case) <= MAX_ABS);
    }
}

/// Metadata both files must agree on: everything but what names or
/// describes the file (llama.cpp derives those from the folder name).
fn comparable_metadata(g: &GgufFile) -> BTreeMap<String, GgufValue> {
    g.metadata()
        .iter()
        .filter(|e| !e.key.starts_with("general.") || e.key == "general.architecture")
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

#[test]
fn gguf_exports_equal_llama_cpp_conversions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for case in CASES {
        let folder = read_hf_folder(&case_dir(case).join("hf")).unwrap();
        for dtype in [ExportDtype::F32, ExportDtype::Q8_0] {
            let theirs_path = case_dir(case).join(format!("{case}.{dtype}.gguf"));
            if !theirs_path.is_file() {
                continue;
            }
            let ours_path = tmp.path().join(format!("{case}.{dtype}.gguf"));
            export(&folder, &ours_path, ExportFormat::Gguf, dtype);
            let (ours, theirs) = (
                GgufFile::open(&ours_path).unwrap(),
                GgufFile::open(&theirs_path).unwrap(),
            );
            let (a, b) = (comparable_metadata(&ours), comparable_metadata(&theirs));
            let differ: Vec<String> = a
                .keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{k}: ours {:?}, theirs {:?}", a.get(k), b.get(k)))
                .collect();
            assert!(
                differ.is_empty(),
                "{case} {dtype}: metadata\n{}",
                differ.join("\n")
            );
            assert_eq!(
                ours.get("general.file_type"),
                theirs.get("general.file_type"),
                "{case} {dtype}"
            );
            let names = |g: &GgufFile| {
                let mut n: Vec<String> = g.tensors().iter().map(|t| t.name.clone()).collect();
                n.sort();
                n
            };
            assert_eq!(names(&ours), names(&theirs), "{case} {dtype}");
            for t in theirs.tensors() {
                let o = ours.tensor_info(&t.name).unwrap();
                assert_eq!(
                    (o.ggml_type, &o.ne),
                    (t.ggml_type, &t.ne),
                    "{case} {dtype}: {}",
                    t.name
                );
                if t.name == "rope_freqs.weight" {
                    // Computed in f32 by torch there, in f64 here.
                    let (x, y) = (
                        ours.dequantize(&t.name).unwrap(),
                        theirs.dequantize(&t.name).unwrap(),
                    );
                    for (p, q) in x.data.iter().zip(&y.data) {
                        assert!((p - q).abs() <= 1e-5 * q.abs(), "{case}: {p} vs {q}");
                    }
                } else {
                    assert!(
                        ours.tensor_data(o) == theirs.tensor_data(t),
                        "{case} {dtype}: {} bytes differ",
                        t.name
                    );
                }
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 4, "three f32 files and one q8_0");
}

#[test]
fn gguf_exports_read_back_as_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    for case in CASES {
        let folder = read_hf_folder(&case_dir(case).join("hf")).unwrap();
        let path = tmp.path().join("m.gguf");
        export(&folder, &path, ExportFormat::Gguf, ExportDtype::F32);
        let back = load_llama(&path).unwrap();
        let err = logit_error(&back.config, &back.tensors, case);
        assert!(err <= MAX_ABS, "{case}: {err}");
        let theirs = LlamaConfig::from_json(&folder.config).unwrap();
        let ours = LlamaConfig::from_json(&back.config).unwrap();
        assert_eq!(
            (
                ours.head_dim,
                ours.num_key_value_heads,
                ours.tie_word_embeddings
            ),
            (
                theirs.head_dim,
                theirs.num_key_value_heads,
                theirs.tie_word_embeddings
            ),
            "{case}"
        );
        assert_eq!(
            back.tokenizer_config["chat_template"],
            folder.assets.tokenizer_config.as_ref().unwrap()["chat_template"]
        );
    }
}
