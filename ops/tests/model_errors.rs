//! Clear errors for configs and weights that do not describe a runnable model.

mod model_support;

use distillery_ops::io::HostTensor;
use distillery_ops::io::hf_folder::HfAssets;
use distillery_ops::model::{Llama, LlamaConfig, ModelError};
use model_support::*;
use serde_json::json;

fn build_err(c: &LlamaConfig, sd: distillery_ops::io::StateDict) -> ModelError {
    Llama::<B>::from_state_dict(c.clone(), sd, &device()).expect_err("must fail")
}

#[test]
fn missing_tensor_is_named() {
    let c = cfg_gqa();
    let mut sd = random_weights(&c, &mut Rng::new(1));
    sd.remove("model.layers.1.mlp.up_proj.weight");
    let err = build_err(&c, sd);
    assert!(
        matches!(&err, ModelError::MissingTensor { name, expected }
            if name == "model.layers.1.mlp.up_proj.weight" && expected == &[48, 32]),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight")
    );
}

#[test]
fn missing_bias_and_missing_untied_head() {
    let c = cfg_bias_llama3();
    let mut sd = random_weights(&c, &mut Rng::new(2));
    sd.remove("model.layers.0.self_attn.k_proj.bias");
    assert!(
        matches!(build_err(&c, sd), ModelError::MissingTensor { name, .. }
        if name == "model.layers.0.self_attn.k_proj.bias")
    );

    let c = cfg_gqa();
    let mut sd = random_weights(&c, &mut Rng::new(3));
    sd.remove("lm_head.weight");
    assert!(
        matches!(build_err(&c, sd), ModelError::MissingTensor { name, .. } if name == "lm_head.weight")
    );
}

#[test]
fn wrong_shape_is_reported_with_both_shapes() {
    let c = cfg_odd_tied();
    let mut sd = random_weights(&c, &mut Rng::new(4));
    // Transposed, as a GGUF ne=[in, out] matrix would be.
    sd.insert(
        "model.layers.2.self_attn.q_proj.weight".into(),
        HostTensor::new(vec![40, 60], vec![0.0; 2400]),
    );
    let err = build_err(&c, sd);
    assert!(
        matches!(&err, ModelError::WrongShape { name, expected, actual }
            if name == "model.layers.2.self_attn.q_proj.weight"
                && expected == &[60, 40] && actual == &[40, 60]),
        "{err}"
    );
    assert!(err.to_string().contains("[40, 60]"), "{err}");
}

#[test]
fn extra_tensors_are_rejected_but_known_leftovers_ignored() {
    let c = cfg_gqa();
    let mut sd = random_weights(&c, &mut Rng::new(5));
    sd.insert(
        "model.layers.2.mlp.up_proj.weight".into(),
        HostTensor::new(vec![1], vec![0.0]),
    );
    sd.insert(
        "model.layers.0.self_attn.q_proj.bias".into(),
        HostTensor::new(vec![32], vec![0.0; 32]),
    );
    let err = build_err(&c, sd);
    match &err {
        ModelError::UnexpectedTensors { names } => assert_eq!(
            names,
            &[
                "model.layers.0.self_attn.q_proj.bias",
                "model.layers.2.mlp.up_proj.weight"
            ]
        ),
        other => panic!("unexpected error {other}"),
    }

    // What transformers also ignores: a tied checkpoint's lm_head copy and
    // rotary buffers.
    let c = cfg_odd_tied();
    let mut sd = random_weights(&c, &mut Rng::new(6));
    let embed = sd["model.embed_tokens.weight"].clone();
    sd.insert("lm_head.weight".into(), embed);
    sd.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        HostTensor::new(vec![6], vec![0.0; 6]),
    );
    Llama::<B>::from_state_dict(c, sd, &device()).expect("ignorable leftovers");
}

#[test]
fn bad_configs_are_explained() {
    let base = json!({
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50
    });
    let cases = [
        (
            json!({"num_key_value_heads": 3}),
            "not divisible by num_key_value_heads 3",
        ),
        (json!({"head_dim": 7}), "head_dim 7 must be even"),
        (json!({"hidden_size": 30}), "head_dim is absent"),
        (json!({"vocab_size": 0}), "vocab_size must be positive"),
        (json!({"hidden_act": "gelu"}), "hidden_act \"gelu\""),
        (json!({"rms_norm_eps": -1.0}), "rms_norm_eps"),
        (json!({"model_type": "qwen2"}), "model_type \"qwen2\""),
        // Mistral's default window (4096) is shorter than this context.
        (
            json!({"model_type": "mistral", "max_position_embeddings": 8192}),
            "sliding_window 4096 is shorter than max_position_embeddings 8192",
        ),
        (
            json!({"model_type": "mistral", "sliding_window": 512, "max_position_embeddings": 2048}),
            "sliding_window 512",
        ),
        (
            json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
            "\"yarn\" is not supported",
        ),
        (
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "original_max_position_embeddings": 8192}}),
            "high_freq_factor is missing",
        ),
    ];
    for (patch, message) in cases {
        let mut v = base.clone();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        let err = LlamaConfig::from_json(&v).expect_err(message);
        assert!(
            err.to_string().contains(message),
            "expected {message:?} in {err}"
        );
    }
    // Mistral without a window (what `export` writes for shapes Llama's
    // config refuses) is the same computation.
    for window in [json!(null), json!(2048)] {
        let mut v = base.clone();
        v["model_type"] = json!("mistral");
        v["sliding_window"] = window;
        LlamaConfig::from_json(&v).expect("mistral without an effective window");
    }
    // Missing required key.
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("vocab_size");
    let err = LlamaConfig::from_json(&v).expect_err("no vocab");
    assert!(err.to_string().contains("vocab_size"), "{err}");
    // The older "type" key names the scaling too.
    let mut v = base.clone();
    v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
    let c = LlamaConfig::from_json(&v).unwrap();
    assert_eq!(c.rope_scaling.as_ref().unwrap().kind(), "linear");
    assert_eq!(
        c.to_json()["rope_scaling"],
        json!({"type": "linear", "factor": 2.0})
    );
}

#[test]
fn folder_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Llama::<B>::load_hf(dir.path(), &device()).expect_err("empty folder");
    assert!(format!("{err:#}").contains("config.json"), "{err:#}");

    // A config but no weights.
    let c = cfg_gqa();
    std::fs::write(dir.path().join("config.json"), c.to_json().to_string()).unwrap();
    let err = Llama::<B>::load_hf(dir.path(), &device()).expect_err("no weights");
    assert!(format!("{err:#}").contains("model.safetensors"), "{err:#}");

    // Weights of another shape than the config says.
    let model = build(&c, &random_weights(&c, &mut Rng::new(7)));
    model
        .save_hf(dir.path(), &HfAssets::default(), &Default::default())
        .unwrap();
    let mut other = c.to_json();
    other["intermediate_size"] = json!(64);
    std::fs::write(dir.path().join("config.json"), other.to_string()).unwrap();
    let err = Llama::<B>::load_hf(dir.path(), &device()).expect_err("shape mismatch");
    assert!(
        format!("{err:#}").contains("gate_proj.weight has shape [48, 32], expected [64, 32]"),
        "{err:#}"
    );
}

#[test]
fn transformers_5_rope_parameters_are_read_as_theta_and_scaling() {
    let base = json!({
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 50,
        // Older keys lose to the newer form, as in transformers 5.
        "rope_theta": 1.0,
    });
    let mut v = base.clone();
    v["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "default"});
    let c = LlamaConfig::from_json(&v).unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert!(c.rope_scaling.is_none());
    v["rope_parameters"] = json!({
        "rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    let c = LlamaConfig::from_json(&v).unwrap();
    let scaling = c.rope_scaling.as_ref().unwrap();
    assert_eq!((scaling.kind(), scaling.factor), ("llama3", Some(8.0)));
    // Written back in the keys every transformers version reads.
    let out = c.to_json();
    assert_eq!(out["rope_theta"], 500000.0);
    assert_eq!(out["rope_scaling"]["rope_type"], "llama3");
    assert!(out.get("rope_parameters").is_none());
    v["rope_parameters"] = json!({"rope_theta": "fast"});
    let err = LlamaConfig::from_json(&v).unwrap_err();
    assert!(
        err.to_string().contains("rope_parameters.rope_theta"),
        "{err}"
    );
}
