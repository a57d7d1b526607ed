//! The `prune` op end to end: a Model folder and a Scores artifact in, a
//! pruned Model folder (config with explicit head_dim, weights, tokenizer
//! files) and `pruning.json` out, through the registry's JSON face as the
//! engine calls it; the other methods; run-time size errors; plan-time
//! checks and their messages.

mod model_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use distillery_engine::op::UpstreamInfo;
use distillery_engine::progress::NoProgress;
use distillery_engine::{CheckContext, Device, OpRegistry, RunContext};
use distillery_ops::io::hf_folder::{HfAssets, HfWriteOptions, read_hf_folder, write_hf_folder};
use distillery_ops::io::scores::{DepthMetric, Scores, ScoresSummary};
use distillery_ops::io::{HostTensor, StateDict};
use distillery_ops::kernels::importance::Aggregation;
use distillery_ops::model::{Llama, LlamaConfig};
use distillery_ops::prune::report::{PRUNING_FILE, PruneMethod, PruningReport};
use distillery_ops::prune::{Rankings, Targets, prune};
use model_support::{B, Rng, config, device, model_logits, random_weights};
use serde_json::{Value, json};

// ---------------------------------------------------------------- fixtures

fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    distillery_ops::register(&mut r);
    r
}

/// 8 heads in 2 kv groups, head_dim 4 (explicit: 8 * 4 != 24), 4 layers.
fn source_config() -> LlamaConfig {
    config(json!({
        "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 4,
        "vocab_size": 3, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "bos_token_id": 0
    }))
}

/// A Model artifact folder, its weights, and a Scores artifact folder.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    scores: PathBuf,
    config: LlamaConfig,
    weights: StateDict,
    scores_value: Scores,
}

impl Fixture {
    fn new(seed: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let c = source_config();
        let mut rng = Rng::new(seed);
        let weights = random_weights(&c, &mut rng);
        let mut config_json = c.to_json();
        config_json["custom_note"] = json!("kept through pruning");
        let assets = HfAssets {
            tokenizer: Some(model_support::tiny_tokenizer()),
            tokenizer_config: Some(json!({"bos_token": "hello", "eos_token": "world"})),
            other_json: BTreeMap::from([(
                "generation_config.json".to_string(),
                json!({"bos_token_id": 0}),
            )]),
        };
        let model = root.join("model");
        write_hf_folder(
            &model,
            &config_json,
            &weights,
            &assets,
            &HfWriteOptions::default(),
        )
        .unwrap();

        let (l, h, f, nh) = (4, 24, 40, 8);
        let mut uniform = |n: usize| (0..n).map(|_| rng.uniform().abs()).collect::<Vec<f32>>();
        let tensors: StateDict = [
            ("hidden", vec![h], uniform(h)),
            ("ffn", vec![l, f], uniform(l * f)),
            ("heads", vec![l, nh], uniform(l * nh)),
            ("depth.block_importance", vec![l], vec![0.9, 0.2, 0.1, 0.8]),
            ("depth.block_importance.size2", vec![3], vec![0.7, 0.1, 0.6]),
            ("depth.perplexity", vec![l], vec![0.1, 0.9, 0.8, 0.2]),
        ]
        .into_iter()
        .map(|(n, s, d)| (n.to_string(), HostTensor::new(s, d)))
        .collect();
        let scores_value = Scores {
            tensors,
            summary: ScoresSummary {
                model_config: c.to_json(),
                samples: 4,
                seq_len: 8,
                batch_aggregation: Aggregation::L2,
                sequence_aggregation: Aggregation::Mean,
                baseline_loss: None,
                rankings: Default::default(),
            },
        };
        let scores = root.join("scores");
        scores_value.save(&scores).unwrap();
        Self {
            _tmp: tmp,
            root,
            model,
            scores,
            config: c,
            weights,
            scores_value,
        }
    }

    /// Runs the op as the engine does (JSON parameters, defaults filled in)
    /// into a fresh folder `out/<name>`.
    fn run(&self, name: &str, with: Value, scores: bool, seed: u64) -> anyhow::Result<PathBuf> {
        let registry = registry();
        let op = registry.get("prune").expect("prune is registered");
        let params = op
            .normalize(with)
            .map_err(|e| anyhow::anyhow!("{:?}: {}", e.path, e.message))?;
        let out = self.root.join("out").join(name);
        std::fs::create_dir_all(&out)?;
        let mut inputs = BTreeMap::from([("model".to_string(), vec![self.model.clone()])]);
        if scores {
            inputs.insert("scores".to_string(), vec![self.scores.clone()]);
        }
        let ctx = RunContext {
            stage: "student",
            input_stages: inputs
                .keys()
                .map(|slot| (slot.clone(), vec![slot.clone()]))
                .collect(),
            inputs,
            absent: BTreeMap::new(),
            output_dir: out.clone(),
            scratch_dir: self.root.join("scratch"),
            recipe_dir: self.root.clone(),
            seed,
            device: Device::Cpu,
            progress: &NoProgress,
        };
        op.run(&params, &ctx)?;
        Ok(out)
    }
}

fn report(dir: &Path) -> (Value, PruningReport) {
    let text = std::fs::read_to_string(dir.join(PRUNING_FILE)).unwrap();
    (
        serde_json::from_str(&text).unwrap(),
        serde_json::from_str(&text).unwrap(),
    )
}

fn run_model(dir: &Path) -> Vec<f32> {
    let (model, assets) = Llama::<B>::load_hf(dir, &device()).expect("the pruned folder loads");
    assert!(assets.tokenizer.is_some(), "the tokenizer is carried over");
    model_logits(&model, &[&[0, 1, 2, 1]])
}

// ---------------------------------------------------------------- end to end

#[test]
fn op_prunes_width_and_writes_the_model_and_pruning_json() {
    let fx = Fixture::new(1);
    let out = fx
        .run(
            "width",
            json!({"hidden": 16, "ffn": 24, "heads": 4}),
            true,
            7,
        )
        .unwrap();

    // The same result as the library on the same rankings.
    let targets = Targets {
        hidden: Some(16),
        ffn: Some(24),
        heads: Some(4),
        ..Default::default()
    };
    let rankings = Rankings::from_scores(
        &fx.scores_value,
        &fx.config,
        &targets,
        DepthMetric::default(),
    )
    .unwrap();
    let expected = prune(&fx.config, fx.weights.clone(), &rankings, &targets).unwrap();

    let folder = read_hf_folder(&out).unwrap();
    assert_eq!(folder.tensors, expected.tensors);
    let c = LlamaConfig::from_json(&folder.config).unwrap();
    assert_eq!(
        (
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.num_hidden_layers
        ),
        (16, 24, 4, 2, 4)
    );
    assert_eq!(folder.config["head_dim"], json!(4), "head_dim is explicit");
    assert_eq!(folder.config["custom_note"], json!("kept through pruning"));
    assert_eq!(folder.config["torch_dtype"], json!("float32"));
    assert_eq!(folder.config["architectures"], json!(["LlamaForCausalLM"]));
    assert!(out.join("tokenizer.json").is_file());
    assert!(out.join("tokenizer_config.json").is_file());
    assert!(out.join("generation_config.json").is_file());

    let (raw, rep) = report(&out);
    assert_eq!(rep.kept, expected.keep);
    assert_eq!(rep.source.parameters, fx.config.num_parameters());
    assert_eq!(rep.result.parameters, c.num_parameters());
    assert!(rep.result.parameters < rep.source.parameters);
    assert_eq!(rep.dropped_layers, Vec::<usize>::new());
    assert_eq!(raw["method"], json!("importance"));
    assert_eq!(raw["result"]["hidden_size"], json!(16));
    // Hidden channels listed most important first, as the scores rank them.
    let hidden_scores = &fx.scores_value.tensors["hidden"].data;
    let kept = raw["kept"]["hidden"].as_array().unwrap();
    assert_eq!(kept.len(), 16);
    for pair in kept.windows(2) {
        let (a, b) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
        assert!(hidden_scores[a as usize] >= hidden_scores[b as usize]);
    }
    assert_eq!(raw["kept"]["layers"][2]["source"], json!(2));
    assert_eq!(
        raw["kept"]["layers"][2]["heads"].as_array().unwrap().len(),
        4
    );

    let logits = run_model(&out);
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn op_prunes_depth_by_a_contiguous_block_and_by_a_drop_list() {
    let fx = Fixture::new(2);
    // Blocks of 2: start 1 (layers 1, 2) scores lowest.
    let out = fx
        .run(
            "contiguous",
            json!({"layers": 2, "contiguous": true, "dtype": "bf16"}),
            true,
            1,
        )
        .unwrap();
    let (raw, rep) = report(&out);
    assert_eq!(rep.dropped_layers, vec![1, 2]);
    assert_eq!(raw["depth_metric"], json!("block_importance"));
    assert_eq!(rep.result.num_hidden_layers, 2);
    let folder = read_hf_folder(&out).unwrap();
    assert_eq!(folder.config["torch_dtype"], json!("bfloat16"));
    assert_eq!(folder.config["num_hidden_layers"], json!(2));
    // Layer 3 is now layer 1, rounded to bf16 and back.
    let name = "mlp.down_proj.weight";
    let got = &folder.tensors[&format!("model.layers.1.{name}")];
    let src = &fx.weights[&format!("model.layers.3.{name}")];
    for (a, b) in got.data.iter().zip(&src.data) {
        assert!((a - b).abs() <= b.abs() / 128.0, "{a} vs {b}");
    }
    run_model(&out);

    // Per-layer perplexity: keep 1 and 2.
    let out = fx
        .run(
            "ppl",
            json!({"layers": 2, "depth_metric": "perplexity"}),
            true,
            1,
        )
        .unwrap();
    assert_eq!(report(&out).1.dropped_layers, vec![0, 3]);

    // A drop list alone: no scores needed, whatever the method.
    let out = fx.run("drop-only", json!({"drop": [1]}), false, 1).unwrap();
    assert_eq!(report(&out).1.dropped_layers, vec![1]);
    assert_eq!(report(&out).1.kept.hidden, (0..24).collect::<Vec<_>>());

    // Explicit drop list with another method.
    let out = fx
        .run(
            "drop",
            json!({"drop": [3, 0], "method": "magnitude"}),
            false,
            1,
        )
        .unwrap();
    let rep = report(&out).1;
    assert_eq!(rep.dropped_layers, vec![0, 3]);
    assert_eq!(rep.depth_metric, None);
    let folder = read_hf_folder(&out).unwrap();
    assert_eq!(
        folder.tensors["model.layers.0.self_attn.q_proj.weight"],
        fx.weights["model.layers.1.self_attn.q_proj.weight"]
    );
}

#[test]
fn op_methods_magnitude_random_and_reverse() {
    let fx = Fixture::new(3);
    let with = json!({"hidden": 12, "ffn": 20, "heads": 6, "kv_groups": 2});

    let mag = fx
        .run(
            "magnitude",
            json!({"hidden": 12, "ffn": 20, "method": "magnitude"}),
            false,
            1,
        )
        .unwrap();
    let mag_rep = report(&mag).1;
    assert_eq!(mag_rep.method, PruneMethod::Magnitude);
    let targets = Targets {
        hidden: Some(12),
        ffn: Some(20),
        ..Default::default()
    };
    let r = Rankings::magnitude(&fx.config, &fx.weights, &targets).unwrap();
    assert_eq!(mag_rep.kept.hidden, r.hidden.unwrap()[..12].to_vec());
    run_model(&mag);

    // Random: the recipe seed decides; `random_seed` is mixed in.
    let mut random = with.clone();
    random["method"] = json!("random");
    let a = report(&fx.run("r1", random.clone(), false, 11).unwrap())
        .1
        .kept;
    let b = report(&fx.run("r2", random.clone(), false, 11).unwrap())
        .1
        .kept;
    let c = report(&fx.run("r3", random.clone(), false, 12).unwrap())
        .1
        .kept;
    random["random_seed"] = json!(5);
    let d = report(&fx.run("r4", random, false, 11).unwrap()).1.kept;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, d);

    // Reverse keeps exactly the hidden channels importance leaves out.
    let mut reverse = json!({"hidden": 12});
    let imp = report(&fx.run("imp", reverse.clone(), true, 1).unwrap())
        .1
        .kept;
    reverse["method"] = json!("reverse");
    let rev = report(&fx.run("rev", reverse, true, 1).unwrap()).1.kept;
    let mut both: Vec<usize> = imp.hidden.iter().chain(&rev.hidden).copied().collect();
    both.sort_unstable();
    assert_eq!(both, (0..24).collect::<Vec<_>>());
}

#[test]
fn op_reports_targets_beyond_the_model_at_run_time() {
    let fx = Fixture::new(4);
    for (with, message) in [
        (
            json!({"hidden": 25}),
            "`hidden: 25` is more than the model's hidden_size 24",
        ),
        (
            json!({"heads": 6, "kv_groups": 1}),
            "`heads: 6` over 1 kv groups is 6 query heads per group, but each group of the model has 4",
        ),
        (
            json!({"heads": 5}),
            "`heads: 5` is not a multiple of the 2 kv groups kept",
        ),
        (
            json!({"layers": 5}),
            "`layers: 5` is more than the model's num_hidden_layers 4",
        ),
        (
            json!({"drop": [4]}),
            "`drop` names layer 4, but the model has 4 layers, numbered from 0 to 3",
        ),
        (
            json!({"layers": 1, "contiguous": true}),
            "no `depth.block_importance.size3` tensor",
        ),
        (
            json!({"layers": 1, "contiguous": true}),
            "with blocks of 3 layers (`block_sizes: [3]`)",
        ),
    ] {
        let err = fx.run("bad", with.clone(), true, 1).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(message), "{with}: {text}");
    }
    // A misspelled field is refused before anything runs.
    let err = fx
        .run("typo", json!({"hiden": 8}), true, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `hiden`"), "{err}");
}

// ---------------------------------------------------------------- plan time

/// The issues the op reports for `with`, as (path, message), with the model
/// from a `load_model` stage whose file is not known.
fn check(with: Value, scores: Option<UpstreamInfo>) -> Vec<(Vec<String>, String)> {
    let model = UpstreamInfo {
        inputs: Default::default(),
        stage: "teacher".into(),
        op: "load_model".into(),
        params: json!({"source": "gguf"}),
    };
    check_with(with, model, Path::new("."), scores)
}

fn check_with(
    with: Value,
    model: UpstreamInfo,
    recipe_dir: &Path,
    scores: Option<UpstreamInfo>,
) -> Vec<(Vec<String>, String)> {
    let registry = registry();
    let op = registry.get("prune").unwrap();
    let with = op.normalize(with).expect("parameters deserialize");
    let mut inputs = BTreeMap::from([("model".to_string(), vec![model])]);
    if let Some(up) = scores {
        inputs.insert("scores".to_string(), vec![up]);
    }
    let ctx = CheckContext {
        inputs: &inputs,
        recipe_dir,
    };
    op.check(&with, &ctx)
        .into_iter()
        .map(|i| (i.path, i.message))
        .collect()
}

fn importance_stage(params: Value) -> Option<UpstreamInfo> {
    Some(UpstreamInfo {
        stage: "scores".into(),
        op: "importance".into(),
        params,
        inputs: Default::default(),
    })
}

fn path(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

#[test]
fn plan_time_checks_point_at_the_field() {
    let scores = || importance_stage(json!({}));
    assert_eq!(check(json!({"hidden": 16, "ffn": 20}), scores()), vec![]);
    assert_eq!(
        check(json!({"ffn": 20, "method": "magnitude"}), None),
        vec![]
    );
    // A drop list needs no ranking, so no scores.
    assert_eq!(check(json!({"drop": [0]}), None), vec![]);
    assert_eq!(
        check(
            json!({"layers": 8, "contiguous": true, "depth_metric": "perplexity"}),
            importance_stage(json!({"depth_metrics": ["perplexity"]}))
        ),
        vec![]
    );

    let cases: Vec<(Value, Option<UpstreamInfo>, Vec<&str>, &str)> = vec![
        (
            json!({}),
            scores(),
            vec![],
            "nothing to prune: no target is given",
        ),
        (
            json!({"hidden": 0}),
            scores(),
            vec!["hidden"],
            "`hidden` must be at least 1",
        ),
        (
            json!({"layers": 0}),
            scores(),
            vec!["layers"],
            "`layers` must be at least 1",
        ),
        (
            json!({"heads": 6, "kv_groups": 4}),
            scores(),
            vec!["heads"],
            "`heads: 6` is not a multiple of `kv_groups: 4`",
        ),
        (
            json!({"drop": [1, 3, 1]}),
            scores(),
            vec!["drop", "2"],
            "layer 1 is listed twice",
        ),
        (
            json!({"drop": []}),
            scores(),
            vec!["drop"],
            "`drop` is empty",
        ),
        (
            json!({"drop": [1], "layers": 3}),
            scores(),
            vec!["drop"],
            "`layers` and `drop` are exclusive",
        ),
        (
            json!({"contiguous": true, "ffn": 8}),
            scores(),
            vec!["contiguous"],
            "`contiguous: true` needs `layers`",
        ),
        (
            json!({"ffn": 8}),
            None,
            vec!["method"],
            "`method: importance` needs the `scores` input",
        ),
        (
            json!({"ffn": 8, "method": "reverse"}),
            None,
            vec!["method"],
            "`method: reverse` needs the `scores` input",
        ),
        (
            json!({"ffn": 8, "method": "random"}),
            scores(),
            vec!["method"],
            "the `scores` input is not used with `method: random`",
        ),
        (
            json!({"ffn": 8, "random_seed": 3}),
            scores(),
            vec!["random_seed"],
            "`random_seed` is only used with `method: random`",
        ),
        (
            json!({"ffn": 8, "depth_metric": "perplexity"}),
            scores(),
            vec!["depth_metric"],
            "`depth_metric` is only used with `layers`",
        ),
        (
            json!({"hidden": 8, "ffn": 8}),
            importance_stage(json!({"axes": ["ffn", "depth"]})),
            vec!["hidden"],
            "`hidden` needs the `hidden` scores, but stage `scores` does not compute them",
        ),
        (
            json!({"layers": 8, "depth_metric": "perplexity"}),
            importance_stage(json!({"axes": ["depth"], "depth_metrics": ["block_importance"]})),
            vec!["depth_metric"],
            "`depth_metric: perplexity` is not among the depth metrics of stage `scores` (block_importance)",
        ),
        (
            json!({"layers": 8, "method": "reverse"}),
            importance_stage(json!({"axes": ["hidden"], "depth_metrics": ["perplexity"]})),
            vec!["layers"],
            "`layers` needs the `depth` scores",
        ),
    ];
    for (with, up, at, message) in cases {
        let issues = check(with.clone(), up);
        assert_eq!(issues.len(), 1, "{with}: {issues:?}");
        assert_eq!(issues[0].0, path(&at), "{with}");
        assert!(issues[0].1.contains(message), "{with}: {}", issues[0].1);
    }

    // The `importance` op's own defaults score everything `prune` needs.
    let registry = registry();
    if let Some(importance) = registry.get("importance") {
        let defaults = importance.normalize(json!({})).unwrap();
        let up = || importance_stage(defaults.clone());
        let all = json!({"hidden": 8, "ffn": 8, "heads": 4, "kv_groups": 2, "layers": 2});
        assert_eq!(check(all, up()), vec![]);
        let issues = check(json!({"layers": 2, "depth_metric": "perplexity"}), up());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].0, path(&["depth_metric"]));
    }

    // Every problem at once.
    let issues = check(
        json!({"hidden": 0, "contiguous": true, "random_seed": 1}),
        None,
    );
    let paths: Vec<Vec<String>> = issues.into_iter().map(|i| i.0).collect();
    assert_eq!(
        paths,
        vec![
            path(&["hidden"]),
            path(&["contiguous"]),
            path(&["method"]),
            path(&["random_seed"])
        ]
    );
}

#[test]
fn plan_time_checks_read_the_source_models_sizes() {
    let fx = Fixture::new(5);
    let load = |source: &str, path: &Path| UpstreamInfo {
        stage: "teacher".into(),
        op: "load_model".into(),
        params: json!({"source": source, "path": path, "dtype": "f32"}),
        inputs: Default::default(),
    };
    // The Hugging Face folder's config.json, relative to the recipe folder.
    let hf = || load("hf", Path::new("model"));
    let scores = || importance_stage(json!({}));
    let check_hf = |with: Value| check_with(with, hf(), &fx.root, scores());
    assert_eq!(
        check_hf(json!({"hidden": 16, "heads": 4, "drop": [3]})),
        vec![]
    );
    for (with, field, message) in [
        (
            json!({"hidden": 25}),
            "hidden",
            "`hidden: 25` is more than the model's hidden_size 24",
        ),
        (
            json!({"ffn": 41}),
            "ffn",
            "`ffn: 41` is more than the model's intermediate_size 40",
        ),
        (
            json!({"heads": 5}),
            "heads",
            "`heads: 5` is not a multiple of the 2 kv groups kept",
        ),
        (
            json!({"heads": 6, "kv_groups": 1}),
            "heads",
            "6 query heads per group, but each group of the model has 4",
        ),
        (
            json!({"kv_groups": 3}),
            "kv_groups",
            "more than the model's num_key_value_heads 2",
        ),
        (
            json!({"layers": 5}),
            "layers",
            "`layers: 5` is more than the model's num_hidden_layers 4",
        ),
        (
            json!({"drop": [0, 4]}),
            "drop",
            "`drop` names layer 4, but the model has 4 layers",
        ),
        (
            json!({"drop": [0, 1, 2, 3]}),
            "drop",
            "`drop` would remove all 4 layers",
        ),
        // Flagged once, from the parameters alone.
        (
            json!({"hidden": 0}),
            "hidden",
            "`hidden` must be at least 1",
        ),
    ] {
        let issues = check_hf(with.clone());
        assert_eq!(issues.len(), 1, "{with}: {issues:?}");
        assert_eq!(issues[0].0, path(&[field]), "{with}");
        assert!(issues[0].1.contains(message), "{with}: {}", issues[0].1);
    }
    // A folder that is not there: nothing to say at plan time.
    let missing = load("hf", Path::new("no-such-model"));
    assert_eq!(
        check_with(json!({"hidden": 99}), missing, &fx.root, scores()),
        vec![]
    );

    // GGUF metadata (SmolLM2-135M: 9 heads in 3 kv groups, 30 layers).
    if let Some(gguf) = testkit::require_asset("models/SmolLM2-135M-Instruct.Q4_1.gguf") {
        let issues = check_with(
            json!({"heads": 4, "layers": 31}),
            load("gguf", &gguf),
            Path::new("."),
            scores(),
        );
        let paths: Vec<Vec<String>> = issues.iter().map(|i| i.0.clone()).collect();
        assert_eq!(
            paths,
            vec![path(&["layers"]), path(&["heads"])],
            "{issues:?}"
        );
        assert!(issues[0].1.contains("num_hidden_layers 30"), "{issues:?}");
        assert!(
            issues[1].1.contains("not a multiple of the 3 kv groups"),
            "{issues:?}"
        );
    }
}

#[test]
fn defaults_are_filled_in_and_the_schema_documents_the_fields() {
    let registry = registry();
    let op = registry.get("prune").unwrap();
    let normal = op.normalize(json!({"ffn": 8})).unwrap();
    assert_eq!(normal["method"], json!("importance"));
    assert_eq!(normal["depth_metric"], json!("block_importance"));
    assert_eq!(normal["dtype"], json!("f32"));
    assert_eq!(normal["contiguous"], json!(false));
    assert_eq!(op.slots().len(), 2);
    assert!(op.slots()[1].optional);

    let mut generator = schemars::SchemaGenerator::default();
    let schema = serde_json::to_string(&op.params_schema(&mut generator)).unwrap()
        + &serde_json::to_string(&generator.definitions()).unwrap();
    for text in [
        "0-based",
        "multiple of the kv groups",
        "magnitude",
        "reverse",
    ] {
        assert!(schema.contains(text), "the schema should mention {text:?}");
    }
}
