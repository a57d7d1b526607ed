//! The model commands and ops on the real teacher (../shared/assets):
//! `inspect`, `generate` (greedy output equals transformers'), and a recipe
//! that loads the GGUF, stores it and exports it; and `bench distill`'s
//! check of its flags.

mod common;

use common::{Workspace, distillery, text};
use std::path::PathBuf;

/// The teacher GGUF (SmolLM2-135M-Instruct) from the shared assets.
fn teacher_gguf() -> Option<PathBuf> {
    testkit::require_asset("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A recipe's start: `stages:` and a `teacher` stage loading `gguf`; the
/// stages that follow it are appended at the same indentation.
fn teacher_recipe(gguf: &std::path::Path) -> String {
    format!(
        "stages:\n  teacher:\n    op: load_model\n    with: {{ source: gguf, path: {} }}\n",
        gguf.display()
    )
}

#[test]
fn inspect_reports_the_architecture_and_parameter_count() {
    let Some(gguf) = teacher_gguf() else { return };
    let out = distillery()
        .arg("inspect")
        .arg(&gguf)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["parameters"]["total"], 134_515_008);
    assert_eq!(summary["config"]["num_hidden_layers"], 30);
    assert_eq!(summary["config"]["head_dim"], 64);
    assert_eq!(summary["dtypes"]["Q4_1"], 210);
    let human = text(
        &distillery()
            .arg("inspect")
            .arg(&gguf)
            .output()
            .unwrap()
            .stdout,
    );
    assert!(human.contains("134,515,008 total"), "{human}");
    assert!(human.contains("layers 0-29:"), "{human}");
}

#[test]
fn greedy_generation_matches_the_reference_continuations() {
    let Some(gguf) = teacher_gguf() else { return };
    let Some(reference) = testkit::require_asset("reference/reference.json") else {
        return;
    };
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference).unwrap()).unwrap();
    for case in reference["generations"].as_array().unwrap().iter().take(3) {
        let chat = case["mode"] == "chat";
        let mut cmd = distillery();
        cmd.arg("generate").arg(&gguf).args([
            "--prompt",
            case["prompt"].as_str().unwrap(),
            "--max-tokens",
            "30",
        ]);
        if chat {
            cmd.arg("--chat");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The reference keeps special tokens; generate prints without them.
        let expected = case["completion"]
            .as_str()
            .unwrap()
            .replace("<|im_end|>", "");
        assert_eq!(
            text(&out.stdout).trim_end_matches('\n'),
            expected,
            "prompt {}",
            case["prompt"]
        );
    }
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let Some(gguf) = teacher_gguf() else { return };
    let sample = |seed: &str| {
        let out = distillery()
            .arg("generate")
            .arg(&gguf)
            .args([
                "--prompt",
                "The weather today",
                "--max-tokens",
                "12",
                "--temperature",
                "1.0",
                "--top-p",
                "0.9",
                "--seed",
                seed,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(sample("3"), sample("3"));
    let bad = distillery()
        .arg("generate")
        .arg(&gguf)
        .args(["--prompt", "x", "--top-p", "1.5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn asking_for_cuda_without_it_is_a_clear_error() {
    let Some(gguf) = teacher_gguf() else { return };
    if cfg!(feature = "cuda") {
        return;
    }
    let out = distillery()
        .arg("generate")
        .arg(&gguf)
        .args(["--prompt", "x", "--device", "cuda"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no CUDA support"),
        "{}",
        text(&out.stderr)
    );
}

/// `bench distill --teacher-activations rounded` means bf16 products: in
/// f32 it would time nothing different, so it is refused before any model
/// loads, with the flag that fixes it.
#[test]
fn bench_distill_refuses_teacher_activations_without_bf16() {
    let out = distillery()
        .args(["bench", "distill", "no-such-config.json"])
        .args(["--teacher-activations", "rounded"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--teacher-activations") && err.contains("add --precision bf16"),
        "{err}"
    );
    assert!(!err.contains("no-such-config"), "{err}");
}

#[test]
fn a_recipe_loads_stores_and_exports_the_teacher() {
    let Some(gguf) = teacher_gguf() else { return };
    let ws = Workspace::new();
    let recipe = format!(
        "# yaml-language-server: $schema=../schemas/recipe.schema.json\n\
         stages:\n  teacher:\n    op: load_model\n    with: {{ source: gguf, path: {} }}\n  \
         copy:\n    op: load_model\n    inputs: {{ model: teacher }}\n    with: {{ source: artifact, dtype: bf16 }}\n  \
         out:\n    op: export\n    inputs: {{ model: teacher }}\n    with: {{ path: exported, dtype: f16, max_shard_mb: 100 }}\n",
        gguf.display()
    );
    ws.write("r.yaml", &recipe);
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The stored teacher is a Hugging Face folder with an explicit head_dim.
    let key = ws.key_of("r.yaml", "teacher");
    let stored = ws.store().join("store").join(&key).join("out");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["head_dim"], 64);
    assert_eq!(config["torch_dtype"], "float32");
    assert!(
        stored.join("tokenizer.json").is_file() && stored.join("tokenizer_config.json").is_file()
    );
    // The export is sharded f16 and inspects to the same parameter count.
    let exported = ws.path("exported");
    assert!(exported.join("model.safetensors.index.json").is_file());
    let summary = distillery()
        .arg("inspect")
        .arg(&exported)
        .arg("--json")
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(summary["parameters"]["total"], 134_515_008);
    assert_eq!(
        summary["dtypes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["F16"]
    );
    // `distillery export` writes a stored model in another dtype.
    let cli_export = ws.run(&[
        "export",
        "r.yaml",
        "teacher",
        "teacher-bf16",
        "--dtype",
        "bf16",
    ]);
    assert!(cli_export.status.success(), "{}", text(&cli_export.stderr));
    let summary = distillery()
        .arg("inspect")
        .arg(ws.path("teacher-bf16"))
        .arg("--json")
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(
        summary["dtypes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["BF16"]
    );
    let again = ws.run(&["export", "r.yaml", "teacher", "teacher-bf16"]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing folder needs --overwrite"
    );
    let not_a_model = ws.run(&["export", "r.yaml", "out", "x"]);
    assert!(text(&not_a_model.stderr).contains("produces a Files, not a Model"));
    // A second run is all cache hits; exporting onto an existing folder needs overwrite.
    let again = ws.run(&["run", "r.yaml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(
        report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["outcome"] == "cached")
    );
    let forced = ws.run(&["run", "r.yaml", "--force", "out"]);
    assert_eq!(forced.status.code(), Some(1));
    assert!(
        text(&forced.stderr).contains("set `overwrite: true`"),
        "{}",
        text(&forced.stderr)
    );
}

#[test]
fn load_model_checks_its_source_at_plan_time() {
    let ws = Workspace::new();
    ws.write("r.yaml", "stages:\n  m:\n    op: load_model\n    with: { source: artifact }\n  n:\n    op: load_model\n    with: { source: gguf }\n");
    let out = ws.run(&["validate", "r.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let messages: Vec<&str> = report[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert!(
        messages[0].contains("`source: artifact` needs the `model` input"),
        "{messages:?}"
    );
    assert!(messages[1].contains("`path` is required"), "{messages:?}");
}

#[test]
fn importance_prune_and_evaluate_chain_on_the_teacher() {
    let Some(gguf) = teacher_gguf() else { return };
    let Some(corpus) = testkit::require_asset("corpus/heldout_ppl.jsonl.zst") else {
        return;
    };
    let ws = Workspace::new();
    let recipe = format!(
        "stages:\n  teacher:\n    op: load_model\n    with: {{ source: gguf, path: {gguf} }}\n  \
         text:\n    op: dataset\n    inputs: {{ tokenizer: teacher }}\n    with: {{ files: [{corpus}], seq_len: 64, heldout_percent: 0, max_documents: 3 }}\n  \
         scores:\n    op: importance\n    inputs: {{ model: teacher, data: text }}\n    with: {{ samples: 4, batch: 2, block_sizes: [2] }}\n  \
         student:\n    op: prune\n    inputs: {{ model: teacher, scores: scores }}\n    with: {{ hidden: 448, ffn: 1024, layers: 28, contiguous: true }}\n  \
         report:\n    op: evaluate\n    inputs: {{ models: [teacher, student], data: text }}\n    with: {{ split: train, rows: 2 }}\n",
        gguf = gguf.display(),
        corpus = corpus.display(),
    );
    ws.write("r.yaml", &recipe);
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored = |stage: &str| {
        ws.store()
            .join("store")
            .join(ws.key_of("r.yaml", stage))
            .join("out")
    };
    // The scores inspect as rankings.
    let scores = distillery()
        .arg("inspect")
        .arg(stored("scores"))
        .output()
        .unwrap();
    let scores_text = text(&scores.stdout);
    assert!(
        scores_text.contains("hidden [576], most important first"),
        "{scores_text}"
    );
    assert!(
        scores_text.contains("depth.block_importance.size2 [29]"),
        "{scores_text}"
    );
    // The student has the asked sizes.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored("student").join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (
            config["hidden_size"].as_u64(),
            config["intermediate_size"].as_u64(),
            config["num_hidden_layers"].as_u64()
        ),
        (Some(448), Some(1024), Some(28))
    );
    // Metrics name both models, with perplexity = exp(loss), the teacher better.
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored("report").join("metrics.json")).unwrap())
            .unwrap();
    let models = metrics["models"].as_array().unwrap();
    assert_eq!(models[0]["stage"], "teacher");
    assert_eq!(models[1]["stage"], "student");
    for m in models {
        let (loss, ppl) = (
            m["loss"].as_f64().unwrap(),
            m["perplexity"].as_f64().unwrap(),
        );
        assert!((loss.exp() - ppl).abs() < 1e-6 * ppl, "{m}");
        assert_eq!(m["tokens"], 2 * 63);
    }
    assert!(models[0]["loss"].as_f64() < models[1]["loss"].as_f64());
}

/// Max |a - b| of two `.npy` float32 files of the same shape.
fn npy_max_diff(a: &std::path::Path, b: &std::path::Path) -> f32 {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len(), "same shape");
    let header = |x: &[u8]| 10 + u16::from_le_bytes([x[8], x[9]]) as usize;
    let floats = |x: &[u8]| -> Vec<f32> {
        x[header(x)..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    floats(&a)
        .iter()
        .zip(floats(&b))
        .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn a_pruned_student_goes_out_as_mistral_and_gguf_and_comes_back_the_same() {
    let Some(gguf) = teacher_gguf() else { return };
    let ws = Workspace::new();
    // Hidden 448 over 9 heads: a shape transformers' LlamaConfig refuses.
    ws.write(
        "r.yaml",
        &format!(
            "{}  pruned:\n    op: prune\n    inputs: {{ model: teacher }}\n    \
             with: {{ hidden: 448, ffn: 1024, method: magnitude }}\n  \
             hf:\n    op: export\n    inputs: {{ model: pruned }}\n    with: {{ path: out/hf, dtype: f32 }}\n  \
             q8:\n    op: export\n    inputs: {{ model: pruned }}\n    \
             with: {{ path: out/pruned.q8_0.gguf, format: gguf, dtype: q8_0 }}\n",
            teacher_recipe(&gguf)
        ),
    );
    // Said before anything runs, and again when the student is pruned.
    let validated = ws.run(&["validate", "r.yaml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&validated.stdout).unwrap();
    let note = report[0]["notes"]["pruned"][0].as_str().unwrap();
    assert!(
        note.contains("MistralForCausalLM") && note.contains("(448)"),
        "{note}"
    );
    assert!(report[0]["notes"].get("hf").is_none());
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(log.contains("as MistralForCausalLM, since"), "{log}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.path("out/hf/config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["MistralForCausalLM"])
    );
    assert_eq!(config["model_type"], "mistral");
    assert!(config["sliding_window"].is_null());
    assert_eq!(config["head_dim"], 64);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ws.store()
                .join("store")
                .join(ws.key_of("r.yaml", "hf"))
                .join("out/export.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(record["architecture"], "MistralForCausalLM");

    // The command infers GGUF from the extension; inspect reads the file.
    let cli = ws.run(&[
        "export",
        "r.yaml",
        "pruned",
        "pruned.gguf",
        "--dtype",
        "f32",
    ]);
    assert!(cli.status.success(), "{}", text(&cli.stderr));
    let inspect = |path: &str| -> serde_json::Value {
        let out = distillery()
            .arg("inspect")
            .arg(ws.path(path))
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let stored = ws
        .store()
        .join("store")
        .join(ws.key_of("r.yaml", "pruned"))
        .join("out");
    let (file, folder) = (inspect("pruned.gguf"), inspect(stored.to_str().unwrap()));
    assert_eq!(file["format"], "gguf");
    assert_eq!(file["parameters"], folder["parameters"]);
    assert_eq!(file["transformers_class"], "MistralForCausalLM");
    let q8 = inspect("out/pruned.q8_0.gguf");
    assert_eq!(
        q8["dtypes"]["Q8_0"],
        7 * 30 + 1,
        "every matrix, the tied embedding too"
    );

    // Loaded back through load_model, the f32 GGUF is the same model.
    ws.write(
        "back.yaml",
        "stages:\n  back:\n    op: load_model\n    with: { source: gguf, path: pruned.gguf }\n",
    );
    let out = ws.run(&["run", "back.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = ws
        .store()
        .join("store")
        .join(ws.key_of("back.yaml", "back"))
        .join("out");
    let logits = |model: &std::path::Path, file: &str| {
        let out = distillery()
            .arg("generate")
            .arg(model)
            .args([
                "--prompt",
                "The capital of France is",
                "--max-tokens",
                "0",
                "--logits",
            ])
            .arg(ws.path(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        ws.path(file)
    };
    let a = logits(&stored, "stored.npy");
    let b = logits(&back, "back.npy");
    let c = logits(&ws.path("pruned.gguf"), "file.npy");
    assert_eq!(npy_max_diff(&a, &b), 0.0, "load_model of our GGUF");
    assert_eq!(npy_max_diff(&a, &c), 0.0, "generate on our GGUF");
    assert_eq!(
        npy_max_diff(&a, &logits(&ws.path("out/hf"), "hf.npy")),
        0.0,
        "the Mistral folder"
    );
}

#[test]
fn export_options_that_cannot_apply_are_refused_with_the_reason() {
    let Some(gguf) = teacher_gguf() else { return };
    let ws = Workspace::new();
    let teacher = teacher_recipe(&gguf);
    ws.write("r.yaml", &teacher);
    ws.write(
        "bad.yaml",
        &format!(
            "{teacher}  bad:\n    op: export\n    inputs: {{ model: teacher }}\n    \
             with: {{ path: x, dtype: q8_0 }}\n"
        ),
    );
    let out = ws.run(&["validate", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr) + &text(&out.stdout);
    assert!(err.contains("q8_0 is a GGUF type"), "{err}");
    let cases: [(&[&str], &str); 3] = [
        (&["--dtype", "q4_0"], "q4_0 is a GGUF type"),
        (
            &["--format", "gguf", "--architecture", "llama"],
            "--architecture",
        ),
        (
            &["--format", "gguf", "--max-shard-mb", "5"],
            "--max-shard-mb",
        ),
    ];
    for (flags, message) in cases {
        let mut args = vec!["export", "r.yaml", "teacher", "dest"];
        args.extend_from_slice(flags);
        let out = ws.run(&args);
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(
            text(&out.stderr).contains(message),
            "{flags:?}: {}",
            text(&out.stderr)
        );
    }
    // The teacher (576 = 9 x 64) exports as Llama; forcing Mistral works too.
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let llama = ws.run(&["export", "r.yaml", "teacher", "llama"]);
    assert!(text(&llama.stderr).contains("transformers class: LlamaForCausalLM"));
    let mistral = ws.run(&[
        "export",
        "r.yaml",
        "teacher",
        "mistral",
        "--architecture",
        "mistral",
    ]);
    assert!(mistral.status.success(), "{}", text(&mistral.stderr));
    assert!(text(&mistral.stderr).contains("MistralForCausalLM"));
}

#[test]
fn search_space_lists_the_shapes_near_a_budget_as_a_matrix_a_recipe_takes() {
    let Some(gguf) = teacher_gguf() else { return };
    let ws = Workspace::new();
    let grid = [
        "--hidden",
        "384,448,512",
        "--ffn",
        "768,1024,1280",
        "--heads",
        "6,9",
        "--layers",
        "20,24,30",
    ];
    let out = distillery()
        .arg("search-space")
        .arg(&gguf)
        .args(["--params", "84M", "--json"])
        .args(grid)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let candidates = json["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 7);
    assert!(candidates.iter().any(|c| c["hidden"] == 448
        && c["ffn"] == 1024
        && c["layers"] == 30
        && c["parameters"] == 83_978_944
        && c["transformers_class"] == "MistralForCausalLM"));

    // The `--matrix` list is a recipe's matrix: one prune stage each.
    let out = distillery()
        .arg("search-space")
        .arg(&gguf)
        .args(["--params", "84M", "--matrix"])
        .args(grid)
        .output()
        .unwrap();
    let matrix = text(&out.stdout).replace('\n', "\n  ");
    ws.write(
        "r.yaml",
        &format!(
            "{}  candidate:\n    op: prune\n    inputs: {{ model: teacher }}\n    {matrix}\n    \
             with: {{ hidden: \"${{matrix.hidden}}\", ffn: \"${{matrix.ffn}}\", heads: \"${{matrix.heads}}\", \
             layers: \"${{matrix.layers}}\", method: magnitude }}\n",
            teacher_recipe(&gguf)
        ),
    );
    let planned = ws.planned("r.yaml");
    let names: Vec<&str> = planned
        .iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| n.starts_with("candidate["))
        .collect();
    assert_eq!(names.len(), 7);
    assert!(names.contains(&"candidate[hidden=448,ffn=1024,heads=9,layers=30]"));

    let bad = distillery()
        .arg("search-space")
        .arg(&gguf)
        .args(["--params", "84M", "--heads", "4"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("kv groups"));
}

#[test]
fn select_checks_its_rank_and_pairing_when_validated() {
    let Some(gguf) = teacher_gguf() else { return };
    let ws = Workspace::new();
    let candidates = "  short:\n    op: distill\n    matrix: { lr: [1e-4, 2e-4] }\n    inputs: { teacher: teacher, student: teacher, data: corpus }\n    with: { train: { steps: 1, lr: \"${matrix.lr}\" } }\n";
    let corpus = "  corpus:\n    op: dataset\n    inputs: { tokenizer: teacher }\n    with: { files: [t.txt], seq_len: 16 }\n";
    ws.write("t.txt", "some text to tokenize\n");
    ws.write(
        "r.yaml",
        &format!(
            "{}{corpus}{candidates}  best:\n    op: select\n    inputs: {{ models: [short], continue_from: [teacher] }}\n    with: {{ rank: 3 }}\n",
            teacher_recipe(&gguf)
        ),
    );
    let out = ws.run(&["validate", "r.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("`rank` 3 asks for more places than the 2 candidates"),
        "{err}"
    );
    assert!(
        err.contains("`continue_from` binds 1 models and `models` 2"),
        "{err}"
    );
}

#[test]
fn select_refuses_candidates_that_record_no_training() {
    let Some(gguf) = teacher_gguf() else { return };
    let ws = Workspace::new();
    ws.write(
        "r.yaml",
        &format!(
            "{}  best:\n    op: select\n    inputs: {{ models: [teacher] }}\n",
            teacher_recipe(&gguf)
        ),
    );
    let out = ws.run(&["validate", "r.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("stage `teacher`") && err.contains("records no training"),
        "{err}"
    );
}
