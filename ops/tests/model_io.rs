//! Hugging Face folders: save -> load round trips in f32 (exact), bf16 and
//! f16 (within their precision), sharded, tied, with config and tokenizer.

mod model_support;

use std::path::Path;

use distillery_ops::io::hf_folder::{HfAssets, HfWriteOptions, read_hf_folder};
use distillery_ops::io::safetensors_io::{DiskDtype, INDEX_FILE, SINGLE_FILE, ShardIndex};
use distillery_ops::model::{Llama, LlamaConfig};
use model_support::*;
use serde_json::json;

fn f32_opts() -> HfWriteOptions {
    HfWriteOptions {
        dtype: DiskDtype::F32,
        max_shard_bytes: None,
    }
}

/// The config as a save writes it: with the dtype on disk and the keys
/// transformers needs to pick the class.
fn as_written(c: &LlamaConfig, dtype: DiskDtype) -> LlamaConfig {
    let mut c = c.clone();
    c.torch_dtype = Some(dtype.torch_name().into());
    c.extra
        .insert("architectures".into(), json!(["LlamaForCausalLM"]));
    c.extra.insert("model_type".into(), json!("llama"));
    c
}

fn load(dir: &Path) -> Llama<B> {
    Llama::<B>::load_hf(dir, &device()).expect("folder loads").0
}

#[test]
fn f32_round_trip_is_exact() {
    for (i, (name, c)) in all_configs().into_iter().enumerate() {
        let mut rng = Rng::new(400 + i as u64);
        let sd = random_weights(&c, &mut rng);
        let model = build(&c, &sd);
        let tokens = rng.tokens(10, c.vocab_size);
        let dir = tempfile::tempdir().unwrap();
        model
            .save_hf(dir.path(), &HfAssets::default(), &f32_opts())
            .unwrap();
        assert!(dir.path().join(SINGLE_FILE).is_file());

        let back = load(dir.path());
        assert_eq!(
            back.config,
            as_written(&c, DiskDtype::F32),
            "{name}: config changed"
        );
        assert_eq!(back.to_state_dict(), sd, "{name}: weights changed");
        assert_eq!(
            model_logits(&back, &[&tokens]),
            model_logits(&model, &[&tokens]),
            "{name}"
        );
    }
}

#[test]
fn tied_model_writes_no_lm_head_and_untied_does() {
    for c in [cfg_odd_tied(), cfg_gqa()] {
        let mut rng = Rng::new(1);
        let model = build(&c, &random_weights(&c, &mut rng));
        let dir = tempfile::tempdir().unwrap();
        model
            .save_hf(dir.path(), &HfAssets::default(), &f32_opts())
            .unwrap();
        let folder = read_hf_folder(dir.path()).unwrap();
        assert_eq!(
            folder.tensors.contains_key("lm_head.weight"),
            !c.tie_word_embeddings
        );
        assert_eq!(
            folder.config["tie_word_embeddings"],
            json!(c.tie_word_embeddings)
        );
    }
}

#[test]
fn half_precision_round_trips_within_tolerance() {
    // (dtype, relative rounding of one weight, tolerance on the logits)
    for (dtype, weight_tol, logit_tol) in [
        (DiskDtype::BF16, 1.0f32 / 256.0, 0.05f64),
        (DiskDtype::F16, 1.0 / 1024.0, 0.01),
    ] {
        let c = cfg_bias_llama3();
        let mut rng = Rng::new(12);
        let sd = random_weights(&c, &mut rng);
        let model = build(&c, &sd);
        let tokens = rng.tokens(10, c.vocab_size);
        let dir = tempfile::tempdir().unwrap();
        let opts = HfWriteOptions {
            dtype,
            max_shard_bytes: None,
        };
        model
            .save_hf(dir.path(), &HfAssets::default(), &opts)
            .unwrap();

        let folder = read_hf_folder(dir.path()).unwrap();
        assert_eq!(folder.config["torch_dtype"], json!(dtype.torch_name()));
        for (name, t) in &folder.tensors {
            let orig = &sd[name];
            assert_eq!(t.shape, orig.shape);
            for (a, b) in t.data.iter().zip(&orig.data) {
                // Relative rounding, plus f16's subnormal spacing near zero.
                assert!(
                    (a - b).abs() <= b.abs() * weight_tol + 1e-7,
                    "{dtype:?} {name}: {a} vs {b}"
                );
            }
        }
        let back = load(dir.path());
        let err = rel_err_f32(
            &model_logits(&back, &[&tokens]),
            &model_logits(&model, &[&tokens]),
        );
        assert!(err <= logit_tol, "{dtype:?}: logits relative error {err:e}");
        assert!(err > 0.0, "{dtype:?}: weights were not rounded");
    }
}

#[test]
fn bf16_written_is_exactly_rounded_f32() {
    // Writing bf16 rounds to nearest even; reading widens exactly, so a
    // second bf16 save -> load changes nothing.
    let c = cfg_gqa();
    let mut rng = Rng::new(2);
    let model = build(&c, &random_weights(&c, &mut rng));
    let opts = HfWriteOptions {
        dtype: DiskDtype::BF16,
        max_shard_bytes: None,
    };
    let d1 = tempfile::tempdir().unwrap();
    model
        .save_hf(d1.path(), &HfAssets::default(), &opts)
        .unwrap();
    let once = load(d1.path());
    let d2 = tempfile::tempdir().unwrap();
    once.save_hf(d2.path(), &HfAssets::default(), &opts)
        .unwrap();
    assert_eq!(load(d2.path()).to_state_dict(), once.to_state_dict());
    for t in once.to_state_dict().values() {
        assert!(
            t.data.iter().all(|v| v.to_bits() & 0xFFFF == 0),
            "not bf16-representable"
        );
    }
}

#[test]
fn sharded_save_loads_identically() {
    let c = cfg_odd_tied();
    let mut rng = Rng::new(13);
    let sd = random_weights(&c, &mut rng);
    let model = build(&c, &sd);
    let tokens = rng.tokens(9, c.vocab_size);
    let total: usize = sd.values().map(|t| t.numel() * 4).sum();
    let dir = tempfile::tempdir().unwrap();
    // Stale single-file weights must not shadow the shards.
    std::fs::write(dir.path().join(SINGLE_FILE), b"stale").unwrap();
    let opts = HfWriteOptions {
        dtype: DiskDtype::F32,
        max_shard_bytes: Some((total / 4) as u64),
    };
    model
        .save_hf(dir.path(), &HfAssets::default(), &opts)
        .unwrap();

    assert!(!dir.path().join(SINGLE_FILE).exists());
    let index: ShardIndex =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap())
            .unwrap();
    let mut files: Vec<&String> = index.weight_map.values().collect();
    files.sort();
    files.dedup();
    assert!(files.len() >= 3, "only {} shards", files.len());
    let n = files.len();
    for (k, f) in files.iter().enumerate() {
        assert_eq!(**f, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        let size = std::fs::metadata(dir.path().join(f)).unwrap().len() as usize;
        // Header aside, no shard exceeds the limit unless it holds one tensor.
        let tensors_in = index.weight_map.values().filter(|x| x == f).count();
        assert!(
            tensors_in == 1 || size <= total / 4 + 4096,
            "{f}: {size} bytes"
        );
    }
    assert_eq!(index.metadata["total_size"], json!(total));
    assert_eq!(index.weight_map.len(), sd.len());

    let back = load(dir.path());
    assert_eq!(back.to_state_dict(), sd);
    assert_eq!(
        model_logits(&back, &[&tokens]),
        model_logits(&model, &[&tokens])
    );
}

#[test]
fn config_and_assets_round_trip() {
    let mut c = cfg_bias_llama3();
    // A key this crate does not model survives, and head_dim is written.
    c.extra.insert("initializer_range".into(), json!(0.02));
    c.eos_token_id = Some(distillery_ops::model::TokenIds::Many(vec![1, 2]));
    let mut rng = Rng::new(14);
    let model = build(&c, &random_weights(&c, &mut rng));
    let assets = HfAssets {
        tokenizer: Some(model_support::tiny_tokenizer()),
        tokenizer_config: Some(json!({"model_max_length": 128, "eos_token": "world"})),
        other_json: [(
            "generation_config.json".to_string(),
            json!({"do_sample": false}),
        )]
        .into(),
    };
    let dir = tempfile::tempdir().unwrap();
    model.save_hf(dir.path(), &assets, &f32_opts()).unwrap();

    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(raw["head_dim"], json!(16));
    assert_eq!(raw["initializer_range"], json!(0.02));
    assert_eq!(raw["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(raw["model_type"], json!("llama"));
    assert_eq!(raw["eos_token_id"], json!([1, 2]));
    assert_eq!(raw["rope_scaling"]["rope_type"], json!("llama3"));

    let (back, assets_back) = Llama::<B>::load_hf(dir.path(), &device()).unwrap();
    assert_eq!(back.config, as_written(&c, DiskDtype::F32));
    let tok = assets_back.tokenizer.expect("tokenizer.json written");
    assert_eq!(tok.encode("hello world", false).unwrap().get_ids(), [0, 1]);
    assert_eq!(assets_back.tokenizer_config, assets.tokenizer_config);
    assert_eq!(assets_back.other_json, assets.other_json);
}

#[test]
fn config_without_head_dim_defaults_and_is_written() {
    let c: LlamaConfig = serde_json::from_value(json!({
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 4, "vocab_size": 10, "rope_scaling": null
    }))
    .unwrap();
    assert_eq!((c.head_dim, c.num_key_value_heads), (16, 4));
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.to_json()["head_dim"], json!(16));
    // Round trip through JSON is the identity.
    let again: LlamaConfig = serde_json::from_value(c.to_json()).unwrap();
    let mut written = as_written(&c, DiskDtype::F32);
    written.torch_dtype = None;
    assert_eq!(again, written);
}
