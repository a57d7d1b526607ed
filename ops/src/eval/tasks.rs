//! Benchmark files: JSONL, optionally zstd-compressed (`.zst`), one item per
//! line, in the three log-likelihood formats of lm-eval-harness style
//! extractions:
//!
//! - multiple choice: `{"context", "choices": [" continuation", ...], "gold"}`;
//! - partial scoring (WinoGrande): `{"contexts": [ctx, ...], "continuation",
//!   "gold"}`, the shared continuation scored after each context;
//! - greedy match (LAMBADA): `{"context", "target"}`.
//!
//! Every item becomes a list of (context, continuation) candidates and the
//! index of the right one, so that one scorer serves all three. Other fields
//! (`id`, `raw`, ...) are ignored. A line that does not fit is an error that
//! names the file and the line.

use crate::rng::{SplitMix64, mix};
use crate::text::{json_kind, open_text};
use anyhow::{Context, Result, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// How a benchmark's items are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// `{"context", "choices", "gold"}`: every choice is scored after the
    /// context; `acc` picks the highest log-likelihood, `acc_norm` the
    /// highest log-likelihood per byte of the choice.
    MultipleChoice,
    /// `{"contexts", "continuation", "gold"}` (WinoGrande): the shared
    /// continuation is scored after each context; `acc` only.
    Partial,
    /// `{"context", "target"}` (LAMBADA): right when every token of the
    /// target is the model's greedy choice; `acc` only.
    Greedy,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::MultipleChoice => "multiple_choice",
            TaskKind::Partial => "partial",
            TaskKind::Greedy => "greedy",
        }
    }

    /// Whether `acc_norm` means something (the candidates' continuations differ).
    pub fn has_acc_norm(self) -> bool {
        self == TaskKind::MultipleChoice
    }

    fn fields(self) -> &'static str {
        match self {
            TaskKind::MultipleChoice => "`context`, `choices`, `gold`",
            TaskKind::Partial => "`contexts`, `continuation`, `gold`",
            TaskKind::Greedy => "`context`, `target`",
        }
    }
}

/// A context and the continuation scored after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub context: String,
    pub continuation: String,
}

/// One benchmark item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskItem {
    /// 1-based line in its file, for messages.
    pub line: usize,
    pub candidates: Vec<Candidate>,
    /// The right candidate (always 0 for greedy items, which have one).
    pub gold: usize,
}

impl TaskItem {
    /// The item as a solved example for a few-shot prompt.
    pub fn demonstration(&self, delimiter: &str) -> String {
        let c = &self.candidates[self.gold];
        format!("{}{delimiter}{}", c.context, c.continuation)
    }
}

/// A benchmark file, read.
#[derive(Debug, Clone)]
pub struct TaskFile {
    pub kind: TaskKind,
    pub items: Vec<TaskItem>,
}

/// The name a task gets from its file: the file name without `.zst`,
/// `.jsonl` or `.json`.
pub fn task_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(".zst").unwrap_or(&name);
    let name = [".jsonl", ".ndjson", ".json", ".txt"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    name.to_string()
}

/// The fields of a record that the formats use; the rest is skipped
/// unparsed into values.
#[derive(Deserialize)]
struct Record {
    context: Option<Value>,
    contexts: Option<Value>,
    choices: Option<Value>,
    continuation: Option<Value>,
    target: Option<Value>,
    gold: Option<Value>,
}

/// Reads every item of a benchmark file. `label` names the file in errors
/// (the path as the recipe wrote it); `kind` is inferred from the first
/// item's fields when not given, and every item must then be of that kind.
pub fn load_task_file(path: &Path, label: &str, kind: Option<TaskKind>) -> Result<TaskFile> {
    let mut reader = open_text(path).with_context(|| format!("cannot read {label}"))?;
    let mut kind = kind;
    let mut items = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{label}:{}: read error", line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = parse_line(&buf, line_no, &mut kind)
            .map_err(|e| anyhow::anyhow!("{label}:{line_no}: {e}"))?;
        items.push(item);
    }
    let Some(kind) = kind else {
        bail!("{label}: the file has no items");
    };
    if items.is_empty() {
        bail!("{label}: the file has no items");
    }
    Ok(TaskFile { kind, items })
}

fn parse_line(bytes: &[u8], line: usize, kind: &mut Option<TaskKind>) -> Result<TaskItem, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
    let record: Record = serde_json::from_str(text.trim_end())
        .map_err(|e| format!("not a JSON object of a benchmark item: {e}"))?;
    let found = if record.choices.is_some() {
        Some(TaskKind::MultipleChoice)
    } else if record.contexts.is_some() {
        Some(TaskKind::Partial)
    } else if record.target.is_some() {
        Some(TaskKind::Greedy)
    } else {
        None
    };
    let kind = match (*kind, found) {
        (Some(k), Some(f)) if k != f => {
            return Err(format!(
                "a {} item (fields {}) among {} items (fields {})",
                f.name(),
                f.fields(),
                k.name(),
                k.fields()
            ));
        }
        (Some(k), _) => k,
        (None, Some(f)) => {
            *kind = Some(f);
            f
        }
        (None, None) => {
            return Err(
                "no `choices` (multiple choice), `contexts` (partial scoring) or `target` \
                 (greedy match) field"
                    .into(),
            );
        }
    };
    let candidates = candidates(kind, &record).map_err(|e| {
        if e.starts_with("no `") {
            format!("{e} (a {} item has {})", kind.name(), kind.fields())
        } else {
            e
        }
    })?;
    let list = match kind {
        TaskKind::MultipleChoice => "choices",
        _ => "contexts",
    };
    if kind != TaskKind::Greedy && candidates.len() < 2 {
        return Err(format!(
            "`{list}` has {} entries; it needs at least 2",
            candidates.len()
        ));
    }
    if let Some(i) = candidates.iter().position(|c| c.continuation.is_empty()) {
        return Err(match kind {
            TaskKind::MultipleChoice => format!("choice {i} is empty"),
            TaskKind::Partial => "`continuation` is empty".into(),
            TaskKind::Greedy => "`target` is empty".into(),
        });
    }
    let gold = match kind {
        TaskKind::Greedy => 0,
        _ => {
            let gold = record
                .gold
                .as_ref()
                .ok_or_else(|| "no `gold` field".to_string())?;
            let g = gold
                .as_u64()
                .ok_or_else(|| format!("`gold` must be a whole number from 0, found {gold}"))?
                as usize;
            if g >= candidates.len() {
                return Err(format!(
                    "`gold` is {g}, but `{list}` has {} entries (gold counts from 0)",
                    candidates.len()
                ));
            }
            g
        }
    };
    Ok(TaskItem {
        line,
        candidates,
        gold,
    })
}

fn candidates(kind: TaskKind, record: &Record) -> Result<Vec<Candidate>, String> {
    Ok(match kind {
        TaskKind::MultipleChoice => {
            let context = string(&record.context, "context")?;
            strings(&record.choices, "choices")?
                .into_iter()
                .map(|continuation| Candidate {
                    context: context.clone(),
                    continuation,
                })
                .collect::<Vec<_>>()
        }
        TaskKind::Partial => {
            let continuation = string(&record.continuation, "continuation")?;
            strings(&record.contexts, "contexts")?
                .into_iter()
                .map(|context| Candidate {
                    context,
                    continuation: continuation.clone(),
                })
                .collect()
        }
        TaskKind::Greedy => vec![Candidate {
            context: string(&record.context, "context")?,
            continuation: string(&record.target, "target")?,
        }],
    })
}

fn string(value: &Option<Value>, field: &str) -> Result<String, String> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "`{field}` must be a string, found {}",
            json_kind(other)
        )),
        None => Err(format!("no `{field}` field")),
    }
}

fn strings(value: &Option<Value>, field: &str) -> Result<Vec<String>, String> {
    let list = match value {
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "`{field}` must be a list of strings, found {}",
                json_kind(other)
            ));
        }
        None => return Err(format!("no `{field}` field")),
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!(
                "`{field}[{i}]` must be a string, found {}",
                json_kind(other)
            )),
        })
        .collect()
}

/// Items with `shots` solved examples from `dev` before each context, as
/// lm-eval-harness builds a few-shot prompt: the examples (context,
/// `delimiter`, right continuation) joined and followed by a blank line.
/// Each item's examples are drawn without replacement by a generator seeded
/// with `seed` and the item's index, so a prompt does not depend on which
/// other items are evaluated; an example equal to the item itself (when
/// `dev` is the evaluated file) is skipped.
pub fn with_shots(
    items: &[TaskItem],
    dev: &[TaskItem],
    shots: usize,
    seed: u64,
    delimiter: &str,
) -> Result<Vec<TaskItem>> {
    if shots == 0 {
        return Ok(items.to_vec());
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let picked = pick_examples(dev, item, shots, mix(seed, index as u64));
            if picked.len() < shots {
                bail!(
                    "{shots} examples were asked for, but the dev file has only {} other items",
                    picked.len()
                );
            }
            let mut prompt = String::new();
            for &i in &picked {
                prompt.push_str(&dev[i].demonstration(delimiter));
                prompt.push_str("\n\n");
            }
            let mut shot = item.clone();
            for c in &mut shot.candidates {
                c.context.insert_str(0, &prompt);
            }
            Ok(shot)
        })
        .collect()
}

/// Up to `shots` indices of `dev`, in drawing order, none equal to `item`.
fn pick_examples(dev: &[TaskItem], item: &TaskItem, shots: usize, seed: u64) -> Vec<usize> {
    // A partial Fisher-Yates shuffle: only the drawn prefix is touched.
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..dev.len()).collect();
    let mut picked = Vec::with_capacity(shots);
    for k in 0..dev.len() {
        if picked.len() == shots {
            break;
        }
        let j = k + (rng.next_u64() % (dev.len() - k) as u64) as usize;
        order.swap(k, j);
        let candidate = &dev[order[k]];
        if candidate.candidates != item.candidates || candidate.gold != item.gold {
            picked.push(order[k]);
        }
    }
    picked
}
