//! What an `evaluate` stage stores: every model's figures in `metrics.json`,
//! the same figures side by side in `table.md`, and every item's, row's and
//! window's outcome per model in `items.json` (what paired comparisons are
//! computed from).

use super::loss::NllSum;
use super::multiple_choice::TaskRun;
use super::text_perplexity::TextRun;
use serde::Serialize;

/// Every figure, per model, as JSON.
pub const RESULTS_FILE: &str = "metrics.json";
/// The same figures as a Markdown table, one column (or row) per model, for
/// people: `run` prints it and the report shows it.
pub const TABLE_FILE: &str = "table.md";
/// Per model: each benchmark item's outcomes (`acc`, `acc_norm`: 1 right,
/// 0 wrong) and chance, and each data row's and text window's `[nll,
/// tokens]`, in order.
pub const ITEMS_FILE: &str = "items.json";

/// One model's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModelMetrics {
    pub stage: String,
    pub parameters: usize,
    /// On the `data` rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    /// By task name, in recipe order.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    pub tasks: Vec<(String, TaskRun)>,
    /// By text name, in recipe order.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    pub texts: Vec<(String, TextRun)>,
    /// Each `data` row's NLL, in order (stored in `items.json`).
    #[serde(skip)]
    pub data_rows: Vec<NllSum>,
}

fn nll_pairs(units: &[NllSum]) -> serde_json::Value {
    units
        .iter()
        .map(|u| serde_json::json!([u.nll, u.tokens]))
        .collect()
}

fn bits(right: &[bool]) -> serde_json::Value {
    right.iter().map(|&r| u8::from(r)).collect()
}

/// The contents of [`ITEMS_FILE`].
pub fn items_json(models: &[ModelMetrics]) -> serde_json::Value {
    let models: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            let tasks: serde_json::Map<String, serde_json::Value> = m
                .tasks
                .iter()
                .map(|(name, run)| {
                    let o = &run.outcomes;
                    let mut task = serde_json::json!({ "acc": bits(&o.acc), "chance": o.chance });
                    if let Some(norm) = &o.acc_norm {
                        task["acc_norm"] = bits(norm);
                    }
                    (name.clone(), task)
                })
                .collect();
            let texts: serde_json::Map<String, serde_json::Value> = m
                .texts
                .iter()
                .map(|(name, run)| (name.clone(), nll_pairs(&run.per_window)))
                .collect();
            serde_json::json!({
                "stage": m.stage,
                "data": nll_pairs(&m.data_rows),
                "tasks": tasks,
                "texts": texts,
            })
        })
        .collect();
    serde_json::json!({ "models": models })
}

fn as_map<S: serde::Serializer, T: Serialize>(
    entries: &[(String, T)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(entries.iter().map(|(k, v)| (k, v)))
}

/// One task's scores and speed, for the log.
pub fn describe_task(run: &TaskRun) -> String {
    let s = &run.scores;
    let mut line = format!("acc {}", with_stderr(s.acc, s.acc_stderr));
    if let Some(norm) = s.acc_norm {
        line.push_str(&format!(
            ", acc_norm {}",
            with_stderr(norm, s.acc_norm_stderr)
        ));
    }
    line.push_str(&format!(
        " ({} items, {:.2} items/s, {:.0} tokens/s)",
        s.n, run.items_per_s, run.tokens_per_s
    ));
    line
}

fn with_stderr(value: f64, stderr: Option<f64>) -> String {
    match stderr {
        Some(e) => format!("{value:.4} ± {e:.4}"),
        None => format!("{value:.4}"),
    }
}

/// Most models `table.md` puts side by side as columns; with more, each
/// model is a row instead, so a many-model comparison stays readable.
const MAX_MODEL_COLUMNS: usize = 6;

/// The models side by side: one column each, one row per figure (or, past
/// [`MAX_MODEL_COLUMNS`] models, one row each, one column per figure).
pub fn table(results: &[ModelMetrics]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, cell: &dyn Fn(&ModelMetrics) -> Option<String>| {
        rows.push((
            label,
            results
                .iter()
                .map(|m| cell(m).unwrap_or_else(|| "-".into()))
                .collect(),
        ));
    };
    row("parameters".into(), &|m| {
        Some(if m.parameters >= 1_000_000 {
            format!("{:.1}M", m.parameters as f64 / 1e6)
        } else {
            m.parameters.to_string()
        })
    });
    let first = results.first();
    if first.is_some_and(|m| m.loss.is_some()) {
        row("data loss".into(), &|m| m.loss.map(|v| format!("{v:.4}")));
        row("data perplexity".into(), &|m| {
            m.perplexity.map(|v| format!("{v:.2}"))
        });
    }
    for (name, run) in first.map(|m| m.tasks.as_slice()).unwrap_or_default() {
        let find = |m: &ModelMetrics| {
            m.tasks
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| r.scores)
        };
        row(format!("{name} acc (n={})", run.scores.n), &|m| {
            find(m).map(|s| with_stderr(s.acc, s.acc_stderr))
        });
        if run.scores.acc_norm.is_some() {
            row(format!("{name} acc_norm"), &|m| {
                find(m).and_then(|s| s.acc_norm.map(|v| with_stderr(v, s.acc_norm_stderr)))
            });
        }
    }
    for (name, run) in first.map(|m| m.texts.as_slice()).unwrap_or_default() {
        let find = |m: &ModelMetrics| {
            m.texts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| (r.ppl, r.bits_per_byte))
        };
        row(format!("{name} perplexity ({} tokens)", run.tokens), &|m| {
            find(m).map(|(ppl, _)| format!("{ppl:.3}"))
        });
        row(format!("{name} bits per byte"), &|m| {
            find(m).map(|(_, bpb)| format!("{bpb:.4}"))
        });
    }
    let names: Vec<&str> = results.iter().map(|m| m.stage.as_str()).collect();
    if results.len() <= MAX_MODEL_COLUMNS {
        pipe_table("", &names, &rows)
    } else {
        let labels: Vec<&str> = rows.iter().map(|(label, _)| label.as_str()).collect();
        let by_model: Vec<(String, Vec<String>)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let cells = rows.iter().map(|(_, cells)| cells[i].clone()).collect();
                (name.to_string(), cells)
            })
            .collect();
        pipe_table("model", &labels, &by_model)
    }
}

/// A Markdown pipe table: `corner` over the row labels, `columns` as the
/// header, the cells right-aligned.
fn pipe_table(corner: &str, columns: &[&str], rows: &[(String, Vec<String>)]) -> String {
    let mut out = if corner.is_empty() {
        "| |".to_string()
    } else {
        format!("| {corner} |")
    };
    for column in columns {
        out.push_str(&format!(" {column} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    for (label, cells) in rows {
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(i: usize) -> ModelMetrics {
        ModelMetrics {
            stage: format!("m{i}"),
            parameters: 1_000_000 * (i + 1),
            loss: Some(i as f64 + 0.5),
            perplexity: Some((i as f64 + 0.5).exp()),
            tokens: Some(100),
            tasks: Vec::new(),
            texts: Vec::new(),
            data_rows: Vec::new(),
        }
    }

    #[test]
    fn few_models_are_columns() {
        let t = table(&[model(0), model(1)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| | m0 | m1 |", "{t}");
        assert_eq!(lines[1], "|---|---:|---:|", "{t}");
        assert_eq!(lines[2], "| parameters | 1.0M | 2.0M |", "{t}");
        assert_eq!(lines[3], "| data loss | 0.5000 | 1.5000 |", "{t}");
        assert_eq!(lines.len(), 5, "{t}");
    }

    #[test]
    fn many_models_are_rows() {
        let models: Vec<ModelMetrics> = (0..=MAX_MODEL_COLUMNS).map(model).collect();
        let t = table(&models);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0], "| model | parameters | data loss | data perplexity |",
            "{t}"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|", "{t}");
        assert_eq!(lines[2], "| m0 | 1.0M | 0.5000 | 1.65 |", "{t}");
        assert_eq!(lines.len(), 2 + models.len(), "{t}");
        let last = format!("| m{} | ", MAX_MODEL_COLUMNS);
        assert!(lines.last().unwrap().starts_with(&last), "{t}");
    }
}
