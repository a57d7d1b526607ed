//! The training ops end to end on tiny models: they learn, a killed or
//! interrupted stage resumes from its checkpoint to the same weights as an
//! uninterrupted run, and bad inputs are refused with a clear message.

mod common;

use common::{Workspace, text};
use distillery_ops::io::safetensors_io::{DiskDtype, read_safetensors, write_safetensors};
use distillery_ops::io::{HostTensor, StateDict};
use distillery_ops::rng::SplitMix64;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The teacher's tokenizer folder from the shared assets, so that tiny
/// models read real text.
fn tokenizer_dir() -> Option<PathBuf> {
    testkit::require_asset("reference/tokenizer.json")?;
    testkit::require_asset("reference/tokenizer_config.json")?;
    testkit::require_asset("reference")
}

const VOCAB: usize = 49_152;

/// A tiny tied Llama with random weights and the tokenizer of `tokenizer`
/// (a folder).
fn tiny_model(dir: &Path, tokenizer: &Path, hidden: usize, layers: usize, vocab: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let (heads, kv, ffn) = (4, 2, hidden * 2);
    let head_dim = hidden / heads;
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "max_position_embeddings": 512,
        "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut t = |shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale)
            .collect();
        HostTensor::new(shape, data)
    };
    let mut sd = StateDict::new();
    sd.insert(
        "model.embed_tokens.weight".into(),
        t(vec![vocab, hidden], 0.5),
    );
    sd.insert("model.norm.weight".into(), t(vec![hidden], 0.1));
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        let s = 1.0 / (hidden as f32).sqrt();
        for (name, shape) in [
            ("self_attn.q_proj", vec![heads * head_dim, hidden]),
            ("self_attn.k_proj", vec![kv * head_dim, hidden]),
            ("self_attn.v_proj", vec![kv * head_dim, hidden]),
            ("self_attn.o_proj", vec![hidden, heads * head_dim]),
            ("mlp.gate_proj", vec![ffn, hidden]),
            ("mlp.up_proj", vec![ffn, hidden]),
            ("mlp.down_proj", vec![hidden, ffn]),
        ] {
            sd.insert(format!("{p}.{name}.weight"), t(shape, s));
        }
        sd.insert(format!("{p}.input_layernorm.weight"), t(vec![hidden], 0.1));
        sd.insert(
            format!("{p}.post_attention_layernorm.weight"),
            t(vec![hidden], 0.1),
        );
    }
    // Norm weights near 1, as trained models have.
    for (name, v) in sd.iter_mut() {
        if name.ends_with("norm.weight") {
            v.data.iter_mut().for_each(|x| *x += 1.0);
        }
    }
    write_safetensors(
        &dir.join("model.safetensors"),
        sd.iter().map(|(k, v)| (k.as_str(), v)),
        DiskDtype::F32,
    )
    .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer.join(f), dir.join(f)).unwrap();
    }
}

/// Plain text with some structure to learn: documents of repeated phrases.
fn corpus(ws: &Workspace) {
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house", "red", "blue",
    ];
    let mut rng = SplitMix64::new(3);
    let mut text = String::new();
    for doc in 0..120 {
        for _ in 0..6 {
            let n = 4 + (rng.next_u64() % 5) as usize;
            let sentence: Vec<&str> = (0..n)
                .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
                .collect();
            text.push_str(&sentence.join(" "));
            text.push_str(". ");
        }
        text.push_str(&format!("document {doc}.\n\n"));
    }
    ws.write("corpus.txt", &text);
}

/// A teacher, a student and a corpus; `None` (the test skips) without the
/// shared tokenizer.
fn setup() -> Option<Workspace> {
    let tokenizer = tokenizer_dir()?;
    let ws = Workspace::new();
    tiny_model(&ws.path("teacher"), &tokenizer, 32, 2, VOCAB, 11);
    tiny_model(&ws.path("student"), &tokenizer, 16, 1, VOCAB, 12);
    corpus(&ws);
    Some(ws)
}

fn distill_recipe(steps: u64, checkpoint_every: u64, extra: &str) -> String {
    format!(
        r#"
name: tiny-distill
seed: 5
device: cpu
stages:
  teacher:
    op: load_model
    with: {{ source: hf, path: teacher }}
  student_init:
    op: load_model
    with: {{ source: hf, path: student }}
  corpus:
    op: dataset
    inputs: {{ tokenizer: teacher }}
    with: {{ files: [corpus.txt], seq_len: 32, heldout_percent: 10 }}
  student:
    op: distill
    inputs: {{ teacher: teacher, student: student_init, data: corpus }}
    with:
      {extra}
      train:
        steps: {steps}
        batch_rows: 4
        micro_batch: 2
        lr: 1e-2
        warmup_steps: 2
        eval_every: 4
        eval_rows: 8
        checkpoint_every: {checkpoint_every}
"#
    )
}

fn stage_dir(ws: &Workspace, recipe: &str, stage: &str, sub: &str) -> PathBuf {
    let key = ws.key_of(recipe, stage);
    ws.store().join(sub).join(key)
}

fn weights(dir: &Path) -> StateDict {
    read_safetensors(&dir.join("model.safetensors")).unwrap()
}

fn metric_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn train_steps(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["kind"] == "train")
        .map(|l| l["step"].as_u64().unwrap())
        .collect()
}

/// Teacher correction trains the random teacher on the corpus; the student
/// then learns from the corrected teacher.
fn correct_then_distill_recipe() -> String {
    distill_recipe(12, 0, "")
        .replace("teacher: teacher, student", "teacher: corrected, student")
        .replace(
            "  student:\n    op: distill",
            r#"  corrected:
    op: teacher_correction
    inputs: { model: teacher, data: corpus }
    with:
      train: { steps: 16, batch_rows: 4, micro_batch: 4, lr: 1e-2, warmup_steps: 2, eval_every: 8, eval_rows: 8 }
  student:
    op: distill"#,
        )
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("training.json")).unwrap()).unwrap()
}

fn eval_losses(s: &serde_json::Value) -> (f64, f64) {
    (
        s["first_eval"]["loss"].as_f64().unwrap(),
        s["last_eval"]["loss"].as_f64().unwrap(),
    )
}

#[test]
fn teacher_correction_then_distillation_lower_heldout_loss() {
    let Some(ws) = setup() else { return };
    ws.write("r.yaml", &correct_then_distill_recipe());
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let corrected = stage_dir(&ws, "r.yaml", "corrected", "store").join("out");
    let (first, last) = eval_losses(&summary(&corrected));
    assert!(
        last < first - 1.0,
        "teacher correction: held-out loss {first} -> {last}"
    );

    let dir = stage_dir(&ws, "r.yaml", "student", "store").join("out");
    let (first, last) = eval_losses(&summary(&dir));
    assert!(
        last < first - 0.5,
        "distillation: held-out loss {first} -> {last}"
    );
    let lines = metric_lines(&dir.join("metrics.jsonl"));
    assert_eq!(train_steps(&lines), (1..=12).collect::<Vec<_>>());
    let evals: Vec<u64> = lines
        .iter()
        .filter(|l| l["kind"] == "eval")
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![0, 4, 8, 12]);
    for l in lines.iter().filter(|l| l["kind"] == "train") {
        for field in [
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "elapsed_s",
            "tokens",
        ] {
            assert!(
                l[field].as_f64().is_some_and(f64::is_finite),
                "{field} in {l}"
            );
        }
    }
    // The trained student is a model folder other stages and tools read.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hidden_size"], 16);
    assert!(dir.join("tokenizer.json").is_file());
}

/// Runs the recipe with a slowed-down step until the stage's checkpoint
/// reaches `min_step`, then sends `signal`; returns the exit status.
fn run_until_checkpoint(ws: &Workspace, recipe: &str, min_step: u64, signal: &str) -> i32 {
    let scratch = stage_dir(ws, recipe, "student", "scratch");
    let state = scratch.join("checkpoint/state.json");
    let ready = || {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["step"].as_u64())
            .is_some_and(|s| s >= min_step)
    };
    run_until(
        ws,
        recipe,
        signal,
        ready,
        &format!("a checkpoint at step {min_step}"),
    )
}

/// Runs the recipe with a slowed-down step until `ready()`, then sends
/// `signal`; returns the exit status (128 + the signal when killed).
fn run_until(
    ws: &Workspace,
    recipe: &str,
    signal: &str,
    ready: impl Fn() -> bool,
    what: &str,
) -> i32 {
    let mut child = ws
        .cmd(&["run", recipe])
        .env("DISTILLERY_TEST_STEP_DELAY_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {what}"
        );
        assert!(Instant::now() < deadline, "no {what} in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    if signal == "-INT" {
        assert!(stderr.contains("interrupted"), "{stderr}");
    }
    use std::os::unix::process::ExitStatusExt;
    out.status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap())
}

fn uninterrupted_weights(steps: u64) -> Option<StateDict> {
    let ws = setup()?;
    ws.write("r.yaml", &distill_recipe(steps, 2, ""));
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    Some(weights(
        &stage_dir(&ws, "r.yaml", "student", "store").join("out"),
    ))
}

#[test]
fn a_killed_stage_resumes_to_the_uninterrupted_weights() {
    let Some(reference) = uninterrupted_weights(10) else {
        return;
    };
    let Some(ws) = setup() else { return };
    ws.write("r.yaml", &distill_recipe(10, 2, ""));
    let code = run_until_checkpoint(&ws, "r.yaml", 4, "-KILL");
    assert_eq!(code, 128 + 9);
    assert!(!stage_dir(&ws, "r.yaml", "student", "store").exists());

    let out = ws.run(&["run", "r.yaml"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming from the checkpoint at step"),
        "{stderr}"
    );
    let dir = stage_dir(&ws, "r.yaml", "student", "store").join("out");
    let resumed = weights(&dir);
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    for (name, t) in &reference {
        assert!(
            resumed[name].data == t.data,
            "{name} differs after resuming (bit-for-bit expected on the CPU)"
        );
    }
    // Every step is in the metrics exactly once, whatever was cut off.
    assert_eq!(
        train_steps(&metric_lines(&dir.join("metrics.jsonl"))),
        (1..=10).collect::<Vec<_>>()
    );
}

#[test]
fn an_interrupt_checkpoints_and_exits_130_then_resumes() {
    let Some(ws) = setup() else { return };
    ws.write("r.yaml", &distill_recipe(10, 0, ""));
    // No periodic checkpoints: the interrupt itself must write one. The
    // helper waits for a checkpoint, so trigger it by step count instead.
    let scratch = stage_dir(&ws, "r.yaml", "student", "scratch");
    let metrics = scratch.join("metrics.jsonl");
    let mut child = ws
        .cmd(&["run", "r.yaml"])
        .env("DISTILLERY_TEST_STEP_DELAY_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&metrics)
        .map(|t| t.lines().filter(|l| l.contains("\"train\"")).count())
        .unwrap_or(0)
        < 3
    {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(Instant::now() < deadline, "no progress in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted after step"), "{stderr}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scratch.join("checkpoint/state.json")).unwrap())
            .unwrap();
    let saved = state["step"].as_u64().unwrap();
    assert!((3..10).contains(&saved), "checkpoint at step {saved}");

    let out = ws.run(&["run", "r.yaml"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("resuming from the checkpoint at step {saved}")),
        "{stderr}"
    );
}

#[test]
fn align_refuses_a_dataset_without_a_loss_mask() {
    let Some(ws) = setup() else { return };
    ws.write(
        "r.yaml",
        r#"
name: tiny-align
device: cpu
stages:
  model:
    op: load_model
    with: { source: hf, path: teacher }
  corpus:
    op: dataset
    inputs: { tokenizer: model }
    with: { files: [corpus.txt], seq_len: 32 }
  aligned:
    op: align
    inputs: { model: model, data: corpus }
    with: { train: { steps: 2 } }
"#,
    );
    let out = ws.run(&["run", "r.yaml"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("has no loss mask"), "{stderr}");
}

#[test]
fn distill_checks_vocabularies_and_budgets_at_plan_time() {
    let Some(ws) = setup() else { return };
    let Some(tokenizer) = tokenizer_dir() else {
        return;
    };
    tiny_model(&ws.path("padded"), &tokenizer, 16, 1, VOCAB + 64, 13);
    let recipe = distill_recipe(4, 0, "").replace("path: student }", "path: padded }");
    ws.write("r.yaml", &recipe);
    let out = ws.run(&["validate", "r.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    // Compare without the report's line wrapping.
    let flat = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("vocabulary has 49152 tokens and the │ student's 49216")
            || flat.contains("vocabulary has 49152 tokens and the student's 49216"),
        "{stderr}"
    );
    assert!(stderr.contains("truncate_vocab"), "{stderr}");

    ws.write(
        "ok.yaml",
        &distill_recipe(4, 0, "truncate_vocab: true").replace("path: student }", "path: padded }"),
    );
    let out = ws.run(&["validate", "ok.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // And it trains: the padded student's extra logits are left out of the loss.
    let out = ws.run(&["run", "ok.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = summary(&stage_dir(&ws, "ok.yaml", "student", "store").join("out"));
    assert_eq!(s["vocab"], 49_152);

    let both = distill_recipe(4, 0, "").replace("steps: 4", "steps: 4\n        tokens: 100");
    ws.write("both.yaml", &both);
    let out = ws.run(&["validate", "both.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("give `tokens` or `steps`, not both"));
}

#[test]
fn align_lowers_the_heldout_loss_on_assistant_tokens() {
    let Some(ws) = setup() else { return };
    let Some(instruct) = testkit::require_asset("instruct/sharegpt_en_train.jsonl.zst") else {
        return;
    };
    ws.write(
        "r.yaml",
        &format!(
            r#"
name: tiny-align
seed: 3
device: cpu
stages:
  model:
    op: load_model
    with: {{ source: hf, path: teacher }}
  chats:
    op: dataset
    inputs: {{ tokenizer: model }}
    with: {{ files: ["{}"], id_field: id, seq_len: 64, max_documents: 150, heldout_percent: 10 }}
  aligned:
    op: align
    inputs: {{ model: model, data: chats }}
    with:
      train: {{ steps: 12, batch_rows: 4, micro_batch: 4, lr: 1e-2, warmup_steps: 2, eval_every: 6, eval_rows: 8 }}
"#,
            instruct.display()
        ),
    );
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = stage_dir(&ws, "r.yaml", "aligned", "store").join("out");
    let s = summary(&dir);
    assert_eq!(s["masked"], true);
    let (first, last) = eval_losses(&s);
    assert!(
        last < first - 0.5,
        "held-out assistant-token loss {first} -> {last}"
    );
    // Evaluations score assistant tokens only: fewer than all predicted positions.
    let scored = s["last_eval"]["tokens"].as_u64().unwrap();
    assert!(scored > 0 && scored < 8 * 63, "{scored} tokens scored");
}

#[test]
fn random_init_keeps_the_architecture_and_draws_fresh_weights_from_the_seed() {
    let Some(ws) = setup() else { return };
    let recipe = |seed: u64| {
        format!(
            "name: init\nseed: {seed}\ndevice: cpu\nstages:\n  student:\n    op: load_model\n    with: {{ source: hf, path: student }}\n  fresh:\n    op: random_init\n    inputs: {{ model: student }}\n"
        )
    };
    ws.write("a.yaml", &recipe(1));
    ws.write("b.yaml", &recipe(2));
    for r in ["a.yaml", "b.yaml"] {
        let out = ws.run(&["run", r]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let source = weights(&ws.path("student"));
    let out_a = stage_dir(&ws, "a.yaml", "fresh", "store").join("out");
    let (a, b) = (
        weights(&out_a),
        weights(&stage_dir(&ws, "b.yaml", "fresh", "store").join("out")),
    );
    assert_eq!(
        source.keys().collect::<Vec<_>>(),
        a.keys().collect::<Vec<_>>()
    );
    for (name, t) in &a {
        assert_eq!(t.shape, source[name].shape, "{name}");
        if name.ends_with("norm.weight") {
            assert!(t.data.iter().all(|&v| v == 1.0), "{name}");
            continue;
        }
        assert_ne!(t.data, source[name].data, "{name} kept its weights");
        assert_ne!(t.data, b[name].data, "{name} does not depend on the seed");
    }
    // The largest tensor's spread is the initializer's 0.02.
    let embed = &a["model.embed_tokens.weight"].data;
    let n = embed.len() as f64;
    let std = (embed.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n).sqrt();
    assert!((std / 0.02 - 1.0).abs() < 0.01, "std {std}");
    let config = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(
        config(&out_a)["hidden_size"],
        config(&ws.path("student"))["hidden_size"]
    );
    assert!(out_a.join("tokenizer.json").is_file());
}

/// The live-teacher recipe of [`distill_recipe`] on the corpus' first four
/// documents, plus the teacher's logits stored twice (every token kept, and
/// the top 64) and a distillation from each, with the same budget.
fn stored_logits_recipe(steps: u64) -> String {
    let live = distill_recipe(steps, 0, "").replace(
        "seq_len: 32, heldout_percent: 10",
        "seq_len: 32, heldout_percent: 10, max_documents: 4",
    );
    let train = live
        .split("      train:\n")
        .nth(1)
        .expect("the recipe's train block");
    let distill_from = |logits: &str| {
        format!(
            "    op: distill\n    inputs: {{ teacher_logits: {logits}, student: student_init, data: corpus }}\n    with:\n      train:\n{train}"
        )
    };
    format!(
        "{live}  all_logits:\n    op: teacher_logits\n    inputs: {{ teacher: teacher, data: corpus }}\n    with: {{ top_k: {VOCAB} }}\n  from_all:\n{}  top_logits:\n    op: teacher_logits\n    inputs: {{ teacher: teacher, data: corpus }}\n    with: {{ top_k: 64, batch: 3 }}\n  from_top:\n{}",
        distill_from("all_logits"),
        distill_from("top_logits"),
    )
}

fn train_losses(dir: &Path) -> Vec<f64> {
    metric_lines(&dir.join("metrics.jsonl"))
        .iter()
        .filter(|l| l["kind"] == "train")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect()
}

/// Keeping every token makes stored logits a live teacher: the first step's
/// loss (the same student, before any update) agrees to float rounding and
/// the later ones closely. Keeping 64 coarsens the teacher's distribution,
/// which can only lower the divergence at the same student, and the student
/// still learns. The teacher's outputs are computed once per store.
#[test]
fn distilling_from_stored_teacher_logits() {
    let Some(ws) = setup() else { return };
    ws.write("r.yaml", &stored_logits_recipe(6));
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out_dir = |stage: &str| stage_dir(&ws, "r.yaml", stage, "store").join("out");

    let live = train_losses(&out_dir("student"));
    let from_all = train_losses(&out_dir("from_all"));
    assert_eq!(live.len(), 6);
    assert_eq!(from_all.len(), 6);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    assert!(
        rel(from_all[0], live[0]) <= 1e-6,
        "first step: {} from all stored logits, {} live",
        from_all[0],
        live[0]
    );
    for (step, (a, b)) in from_all.iter().zip(&live).enumerate() {
        assert!(rel(*a, *b) <= 1e-5, "step {}: {a} vs {b} live", step + 1);
    }

    let from_top = train_losses(&out_dir("from_top"));
    assert!(
        from_top[0] <= live[0] * (1.0 + 1e-6),
        "top-64 KL {} above the full KL {} at the same student",
        from_top[0],
        live[0]
    );
    eprintln!("live {live:?}\nfrom all stored logits {from_all:?}\nfrom the top 64 {from_top:?}");
    // Four documents leave no held-out rows: the training loss shows it.
    assert!(
        from_top[5] < 0.9 * from_top[0],
        "top-64 distillation: training loss {from_top:?}"
    );

    let header: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_dir("top_logits").join("teacher_logits.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(header["top_k"], 64);
    assert_eq!(header["positions"], 31);
    let mass = header["mean_kept_mass"].as_f64().unwrap();
    assert!(mass > 0.0 && mass < 1.0, "kept mass {mass}");
    // Below the raw 64 x (2 + 4) + 8 bytes of a position: compressed.
    let stored = header["stored_bytes"].as_f64().unwrap();
    let positions = header["rows"].as_f64().unwrap() * 31.0;
    assert!(
        stored / positions < 392.0,
        "{} bytes per position",
        stored / positions
    );

    ws.clear_log();
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        ws.started().is_empty(),
        "a second run recomputed {:?}",
        ws.started()
    );
}

#[test]
fn distill_checks_its_stored_teacher_at_plan_time() {
    let Some(ws) = setup() else { return };
    let recipe = stored_logits_recipe(2);
    let cases = [
        (
            recipe.replace(
                "with: { top_k: 64, batch: 3 }",
                "with: { top_k: 64, temperature: 2 }",
            ),
            "stored the teacher's logits at temperature 2, this distillation uses 1",
        ),
        (
            recipe.replace(
                "inputs: { teacher_logits: top_logits,",
                "inputs: { teacher: teacher, teacher_logits: top_logits,",
            ),
            "`teacher` and `teacher_logits` are both given",
        ),
        (
            recipe.replace("inputs: { teacher_logits: top_logits, ", "inputs: { "),
            "distillation needs a teacher",
        ),
        (
            recipe.replace("with: { top_k: 64, batch: 3 }", "with: { top_k: 50000 }"),
            "`top_k` is 50000 but the teacher's vocabulary has 49152 tokens",
        ),
        (
            {
                // The last stage, `from_top`, distils from stored logits.
                let at = recipe
                    .rfind("    with:\n      train:\n")
                    .expect("from_top's train block");
                format!(
                    "{}    with:\n      teacher_activations: rounded\n{}",
                    &recipe[..at],
                    &recipe[at + "    with:\n".len()..]
                )
            },
            "`teacher_activations` applies to a live teacher",
        ),
    ];
    for (i, (yaml, message)) in cases.iter().enumerate() {
        let name = format!("bad{i}.yaml");
        ws.write(&name, yaml);
        let out = ws.run(&["validate", &name]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "case {i}: {}",
            text(&out.stderr)
        );
        let flat = text(&out.stderr)
            .replace('│', " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(flat.contains(message), "case {i}: {flat}");
    }
}

/// `teacher_activations` (how a live teacher's bf16 products carry its
/// activations) is part of the stage's key, and its default leaves the key
/// of a recipe without it as it was.
#[test]
fn teacher_activations_are_in_the_key_and_default_to_two_parts() {
    let Some(ws) = setup() else { return };
    let mut keys = Vec::new();
    for (name, extra) in [
        ("default.yaml", ""),
        ("two_parts.yaml", "teacher_activations: two_parts"),
        ("rounded.yaml", "teacher_activations: rounded"),
    ] {
        let recipe = distill_recipe(2, 0, extra).replace(
            "        steps: 2\n",
            "        steps: 2\n        precision: bf16\n",
        );
        ws.write(name, &recipe);
        let out = ws.run(&["validate", name]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        keys.push(ws.key_of(name, "student"));
    }
    assert_eq!(keys[0], keys[1], "the default changed the stage's key");
    assert_ne!(
        keys[0], keys[2],
        "rounded activations kept the two parts' key"
    );
}

/// A `teacher_logits` stage killed after some rows resumes after the last
/// complete one and ends with the files a straight run writes.
#[test]
fn a_killed_teacher_logits_stage_resumes_to_the_same_store() {
    let Some(ws) = setup() else { return };
    let recipe = stored_logits_recipe(2).replace(
        "with: { top_k: 64, batch: 3 }",
        "with: { top_k: 64, batch: 1 }",
    );
    ws.write("r.yaml", &recipe);
    let index = stage_dir(&ws, "r.yaml", "top_logits", "scratch").join("index.partial");
    let two_rows = || std::fs::metadata(&index).is_ok_and(|m| m.len() >= 32);
    let code = run_until(
        &ws,
        "r.yaml",
        "-KILL",
        two_rows,
        "two rows of teacher logits",
    );
    assert_eq!(code, 128 + 9);
    let out = ws.run(&["run", "r.yaml", "--until", "top_logits"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming after row"), "{stderr}");

    let straight = setup().expect("the tokenizer was found above");
    straight.write("r.yaml", &recipe);
    let out = straight.run(&["run", "r.yaml", "--until", "top_logits"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resumed_dir = stage_dir(&ws, "r.yaml", "top_logits", "store").join("out");
    let straight_dir = stage_dir(&straight, "r.yaml", "top_logits", "store").join("out");
    for name in ["teacher_logits.json", "index.bin", "logits.bin"] {
        assert!(
            std::fs::read(resumed_dir.join(name)).unwrap()
                == std::fs::read(straight_dir.join(name)).unwrap(),
            "{name} differs after the resume"
        );
    }
}
