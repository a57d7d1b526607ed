//! `evaluate`: one or more models side by side on held-out data and
//! benchmarks, as a Metrics artifact (`metrics.json`) with a table
//! (`table.md`): loss and perplexity on a Dataset's rows, perplexity and
//! bits per byte on raw text files, and log-likelihood benchmarks (multiple
//! choice, partial scoring, greedy match; see [`crate::eval`]). With a
//! `reference` model, every other model's differences from it with paired
//! bootstrap intervals, and the share of its above-chance benchmark margin
//! each keeps ([`crate::eval::paired`]). Every item's, row's and window's
//! outcome per model goes to `items.json`.

use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::eval::loss::{NllSum, next_token_nll_rows};
use crate::eval::multiple_choice::{ScoringSetup, run_task};
use crate::eval::paired::{compare, paired_table};
use crate::eval::results::{
    ITEMS_FILE, ModelMetrics, RESULTS_FILE, TABLE_FILE, describe_task, items_json, table,
};
use crate::eval::tasks::{TaskItem, TaskKind, load_task_file, task_name, with_shots};
use crate::eval::text_perplexity::{read_text_file, run_text, text_windows};
use crate::eval::tokenize::EvalTokenizer;
use crate::io::dataset::{DatasetArtifact, Split};
use crate::kernels::Precision;
use crate::model::Llama;
use anyhow::{Context, bail};
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod check;

pub struct Evaluate;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The split of the `data` input whose rows are measured.
    #[serde(default = "heldout")]
    pub split: Split,
    /// The first this many rows of the split (all when it has fewer).
    #[serde(default = "default_rows")]
    pub rows: usize,
    /// Tokens per `data` row: rows are cut to this length (default: the
    /// dataset's).
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Sequences per forward pass (dataset rows, text windows, benchmark
    /// candidates).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Log-likelihood benchmarks, each `{path, name, kind, limit, shots, dev,
    /// seed, delimiter}`: a JSONL file (optionally `.zst`) of multiple-choice,
    /// partial-scoring (WinoGrande) or greedy-match (LAMBADA) items, scored
    /// for `acc` (and `acc_norm`: log-likelihood per byte of the choice).
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// Raw text files for perplexity and bits per byte, each `{path, name,
    /// seq_len, windows}`: the text (optionally `.zst`) is tokenized whole
    /// and cut into non-overlapping windows of `seq_len` tokens (512).
    #[serde(default)]
    pub texts: Vec<TextSpec>,
    /// The models' matrix products: `f32`, or `bf16` (bf16 operands with
    /// f32 sums, the activations carried as two bf16 parts) on CPUs with
    /// AMX (about 2 to 3 times as fast there) and on CUDA, and f32
    /// elsewhere. bf16 moves logits by up to about 1e-2 of the largest,
    /// which can flip a benchmark item whose choices score within that of
    /// each other.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// A model to compare the others against (the name of a stage bound to
    /// `models`, e.g. the teacher): each other model's difference from it
    /// on every task, text and the data loss, with a 95% paired bootstrap
    /// interval over the items, rows and windows, and the share of its
    /// above-chance accuracy each model keeps per task and on average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Bootstrap resamples of the comparison with `reference`.
    #[serde(default = "default_resamples")]
    #[schemars(range(min = 100))]
    pub resamples: usize,
}

/// A benchmark file and how to score it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Name in the metrics and the table (default: the file name without
    /// `.jsonl` and `.zst`).
    #[serde(default)]
    pub name: Option<String>,
    /// The JSONL file, relative to the recipe's folder: `{context, choices,
    /// gold}` items (multiple choice), `{contexts, continuation, gold}`
    /// (partial scoring, WinoGrande) or `{context, target}` (greedy match,
    /// LAMBADA).
    pub path: PathBuf,
    /// How items are scored (default: from the first item's fields).
    #[serde(default)]
    pub kind: Option<TaskKind>,
    /// Score only the first this many items.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub limit: Option<usize>,
    /// Solved examples from `dev` put before each item (k-shot).
    #[serde(default)]
    pub shots: usize,
    /// The file the examples are drawn from (same format), relative to the
    /// recipe's folder; required when `shots` is above 0.
    #[serde(default)]
    pub dev: Option<PathBuf>,
    /// Seed of the examples' choice (each item's depends on it and on the
    /// item's position only).
    #[serde(default = "default_shot_seed")]
    pub seed: u64,
    /// Text put between a context and its continuation. The default, none,
    /// suits files whose continuations start with their own space (as
    /// lm-eval's target delimiter `" "` already applied).
    #[serde(default)]
    pub delimiter: String,
}

/// A raw text file to measure.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// Name in the metrics and the table (default: the file name without
    /// `.zst`).
    #[serde(default)]
    pub name: Option<String>,
    /// The text file, relative to the recipe's folder.
    pub path: PathBuf,
    /// Tokens per window; windows do not overlap.
    #[serde(default = "default_text_seq_len")]
    #[schemars(range(min = 2))]
    pub seq_len: usize,
    /// Score only the first this many windows (default: all the text holds).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub windows: Option<usize>,
}

fn heldout() -> Split {
    Split::Heldout
}
fn default_rows() -> usize {
    32
}
fn default_batch() -> usize {
    4
}
fn default_shot_seed() -> u64 {
    1234
}
fn default_text_seq_len() -> usize {
    512
}
fn default_resamples() -> usize {
    1000
}

impl TaskSpec {
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| task_name(&self.path))
    }
}

impl TextSpec {
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let name = task_name(&self.path);
            if name.is_empty() {
                self.path.display().to_string()
            } else {
                name
            }
        })
    }
}

impl TypedOp for Evaluate {
    type Params = EvaluateParams;
    const NAME: &'static str = "evaluate";
    // 3: `items.json`; losses summed per row and window in f64.
    const VERSION: u32 = 3;
    const DESCRIPTION: &'static str = "Measures one or more models side by side: loss and perplexity on a dataset's rows, perplexity and bits per byte on text files, accuracy on log-likelihood benchmarks.";

    fn slots(&self) -> Vec<Slot> {
        vec![
            // Partial: a search's table goes on without a failed candidate.
            Slot::list("models", ArtifactKind::Model).partial(),
            Slot::one("data", ArtifactKind::Dataset).optional(),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Metrics
    }

    fn check(&self, p: &EvaluateParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        let models: Vec<&str> = ctx
            .inputs
            .get("models")
            .map(|m| m.iter().map(|u| u.stage.as_str()).collect())
            .unwrap_or_default();
        check::params(p, ctx.inputs.contains_key("data"), &models)
    }

    fn external_files(&self, p: &EvaluateParams) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for t in &p.tasks {
            files.push(t.path.clone());
            files.extend(t.dev.iter().cloned());
        }
        files.extend(p.texts.iter().map(|t| t.path.clone()));
        files
    }

    fn uses_accelerator(&self, _: &EvaluateParams) -> bool {
        true
    }

    fn run(&self, p: EvaluateParams, ctx: &RunContext) -> anyhow::Result<()> {
        on_device(ctx.device, Job { params: p, ctx })?
    }
}

/// A benchmark read and prepared (limit and shots applied).
struct LoadedTask {
    name: String,
    kind: TaskKind,
    items: Vec<TaskItem>,
    delimiter: String,
}

fn label(path: &Path) -> String {
    path.display().to_string()
}

/// Reads every task file before any model runs, so that a malformed file
/// fails the stage at once.
fn load_tasks(p: &EvaluateParams, ctx: &RunContext) -> anyhow::Result<Vec<LoadedTask>> {
    let mut tasks = Vec::new();
    for spec in &p.tasks {
        let file = load_task_file(&ctx.resolve(&spec.path), &label(&spec.path), spec.kind)?;
        let mut items = file.items;
        if let Some(limit) = spec.limit {
            items.truncate(limit);
        }
        if let Some(dev_path) = &spec.dev {
            let dev = load_task_file(&ctx.resolve(dev_path), &label(dev_path), Some(file.kind))?;
            items = with_shots(&items, &dev.items, spec.shots, spec.seed, &spec.delimiter)
                .with_context(|| format!("task `{}`", spec.name()))?;
        }
        tasks.push(LoadedTask {
            name: spec.name(),
            kind: file.kind,
            items,
            delimiter: spec.delimiter.clone(),
        });
    }
    Ok(tasks)
}

struct Job<'a, 'c> {
    params: EvaluateParams,
    ctx: &'a RunContext<'c>,
}

impl OnBackend for Job<'_, '_> {
    type Output = anyhow::Result<()>;

    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let (p, ctx) = (self.params, self.ctx);
        let data = match ctx.inputs.get("data").and_then(|d| d.first()) {
            Some(dir) => Some(DatasetArtifact::open(dir)?),
            None => None,
        };
        let split = p.split;
        let mut summary = serde_json::Map::new();
        let mut rows: Vec<&[u32]> = Vec::new();
        if let Some(data) = &data {
            let seq_len = p.seq_len.unwrap_or(data.seq_len());
            if seq_len > data.seq_len() {
                bail!(
                    "`seq_len` {seq_len} is longer than the dataset's rows ({})",
                    data.seq_len()
                );
            }
            let count = p.rows.min(data.rows(split));
            if count == 0 {
                bail!("the dataset's {} split has no rows", split.name());
            }
            rows = (0..count).map(|i| &data.row(split, i)[..seq_len]).collect();
            summary.insert("split".into(), split.name().into());
            summary.insert("rows".into(), count.into());
            summary.insert("seq_len".into(), seq_len.into());
        }
        let tasks = load_tasks(&p, ctx)?;
        let texts: Vec<(String, String, &TextSpec)> = p
            .texts
            .iter()
            .map(|t| {
                Ok((
                    t.name(),
                    read_text_file(&ctx.resolve(&t.path), &label(&t.path))?,
                    t,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        if !tasks.is_empty() {
            summary.insert(
                "tasks".into(),
                serde_json::to_value(
                    tasks
                        .iter()
                        .zip(&p.tasks)
                        .map(|(t, spec)| {
                            serde_json::json!({
                                "name": t.name,
                                "path": label(&spec.path),
                                "kind": t.kind,
                                "items": t.items.len(),
                                "shots": spec.shots,
                            })
                        })
                        .collect::<Vec<_>>(),
                )?,
            );
        }
        if !texts.is_empty() {
            summary.insert(
                "texts".into(),
                serde_json::Value::Array(
                    p.texts
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "name": t.name(),
                                "path": label(&t.path),
                                "seq_len": t.seq_len,
                                "windows": t.windows,
                            })
                        })
                        .collect(),
                ),
            );
        }

        let names = ctx.input_stages.get("models").cloned().unwrap_or_default();
        let mut results = Vec::new();
        let mut absent = Vec::new();
        for (i, dir) in ctx.inputs["models"].iter().enumerate() {
            let stage = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("model {i}"));
            if ctx.is_absent("models", i) {
                ctx.progress.log(&format!(
                    "{stage}: not evaluated, its stage failed in this run"
                ));
                absent.push(stage);
                continue;
            }
            let (model, _) = Llama::<B>::load_hf(dir, &device)?;
            let model = model.with_precision(p.precision);
            let mut m = ModelMetrics {
                stage: stage.clone(),
                parameters: model.config.num_parameters(),
                loss: None,
                perplexity: None,
                tokens: None,
                tasks: Vec::new(),
                texts: Vec::new(),
                data_rows: Vec::new(),
            };
            if let Some(data) = &data {
                if data.vocab_size() > model.config.vocab_size {
                    bail!(
                        "the dataset's vocabulary ({}) is larger than model `{stage}`'s ({})",
                        data.vocab_size(),
                        model.config.vocab_size
                    );
                }
                ctx.progress.set_message(&format!("{stage}: data"));
                ctx.progress.set_total(rows.len() as u64, "rows");
                let per_row = next_token_nll_rows(&model, &rows, p.batch);
                let mut nll = NllSum::default();
                for row in &per_row {
                    nll.add(*row);
                }
                ctx.progress.set_position(rows.len() as u64);
                ctx.progress.log(&format!(
                    "{stage}: data: loss {:.4}, perplexity {:.2} on {} tokens",
                    nll.mean(),
                    nll.perplexity(),
                    nll.tokens
                ));
                m.loss = Some(nll.mean());
                m.perplexity = Some(nll.perplexity());
                m.tokens = Some(nll.tokens);
                m.data_rows = per_row;
            }
            if !tasks.is_empty() || !texts.is_empty() {
                let tok = EvalTokenizer::from_dir(dir)?;
                if tok.vocab_size() > model.config.vocab_size {
                    bail!(
                        "model `{stage}`'s tokenizer has {} tokens, more than its vocabulary ({})",
                        tok.vocab_size(),
                        model.config.vocab_size
                    );
                }
                let empty_context = model
                    .config
                    .bos_token_id
                    .or_else(|| model.config.eos_ids().first().copied())
                    .unwrap_or(0);
                for task in &tasks {
                    let setup = ScoringSetup {
                        tokenizer: &tok,
                        delimiter: &task.delimiter,
                        batch: p.batch,
                        max_len: model.config.max_position_embeddings,
                        empty_context,
                    };
                    let total: usize = task.items.iter().map(|t| t.candidates.len()).sum();
                    ctx.progress.set_message(&format!("{stage}: {}", task.name));
                    ctx.progress.set_total(total as u64, "sequences");
                    let mut position = 0u64;
                    let run = run_task(&model, task.kind, &task.items, &setup, &mut |n| {
                        position += n as u64;
                        ctx.progress.set_position(position);
                    })
                    .with_context(|| format!("task `{}`", task.name))?;
                    ctx.progress
                        .log(&format!("{stage}: {}: {}", task.name, describe_task(&run)));
                    m.tasks.push((task.name.clone(), run));
                }
                for (name, text, spec) in &texts {
                    let windows = text_windows(&tok, text, spec.seq_len, spec.windows)
                        .with_context(|| format!("text `{name}`"))?;
                    ctx.progress.set_message(&format!("{stage}: {name}"));
                    ctx.progress
                        .set_total(windows.windows.len() as u64, "windows");
                    let mut position = 0u64;
                    let run = run_text(&model, &windows, p.batch, &mut |n| {
                        position += n as u64;
                        ctx.progress.set_position(position);
                    })
                    .with_context(|| format!("text `{name}`"))?;
                    ctx.progress.log(&format!(
                        "{stage}: {name}: perplexity {:.3}, {:.4} bits per byte ({} windows of {} tokens, {:.0} tokens/s)",
                        run.ppl, run.bits_per_byte, run.windows, run.seq_len, run.tokens_per_s
                    ));
                    m.texts.push((name.clone(), run));
                }
            }
            results.push(m);
        }
        if results.is_empty() {
            bail!(
                "no model to evaluate: the stages of all {} failed in this run",
                absent.len()
            );
        }
        let mut table = table(&results);
        if !absent.is_empty() {
            table.push_str(&format!(
                "\nNot evaluated (their stages failed in this run): {}\n",
                absent.join(", ")
            ));
            summary.insert("absent".into(), serde_json::to_value(&absent)?);
        }
        if let Some(reference) = &p.reference {
            match results.iter().position(|m| &m.stage == reference) {
                Some(r) if results.len() > 1 => {
                    let paired = compare(&results, r, p.resamples, ctx.seed);
                    table.push_str(&paired_table(&paired));
                    summary.insert("paired".into(), serde_json::to_value(&paired)?);
                }
                Some(_) => table.push_str(&format!(
                    "\nNo comparison with `{reference}`: no other model was evaluated.\n"
                )),
                None => table.push_str(&format!(
                    "\nNo comparison with `{reference}`: its stage failed in this run.\n"
                )),
            }
        }
        ctx.progress.log(&format!("\n{table}"));
        summary.insert("models".into(), serde_json::to_value(&results)?);
        std::fs::write(
            ctx.output_dir.join(ITEMS_FILE),
            serde_json::to_vec(&items_json(&results))?,
        )?;
        std::fs::write(
            ctx.output_dir.join(RESULTS_FILE),
            serde_json::to_vec_pretty(&summary)?,
        )?;
        std::fs::write(ctx.output_dir.join(TABLE_FILE), table)?;
        Ok(())
    }
}
