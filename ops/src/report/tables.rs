//! The report's HTML tables: an evaluation's Markdown table, a model's shape
//! (before and after pruning), a finished run's summary and the progress of
//! a run still going.

use super::StageView;
use super::format::{escape, format_bytes, format_count, format_duration};
use crate::model::LlamaConfig;
use crate::prune::report::ModelSizes;
use crate::train::metrics::{MetricsKind, MetricsLine, TrainSummary};
use std::fmt::Write;

/// A Markdown pipe table (as `evaluate` writes `table.md`) as an HTML table;
/// columns marked `---:` are right-aligned. Other lines become paragraphs.
pub fn markdown_table(md: &str) -> String {
    let split = |line: &str| -> Vec<String> {
        let t = line.trim();
        let t = t.strip_prefix('|').unwrap_or(t);
        let t = t.strip_suffix('|').unwrap_or(t);
        t.split('|').map(|c| c.trim().to_string()).collect()
    };
    let is_rule = |cells: &[String]| {
        !cells.is_empty()
            && cells
                .iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
    };
    let mut out = String::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let flush = |rows: &mut Vec<Vec<String>>, out: &mut String| {
        if rows.is_empty() {
            return;
        }
        let (header, align, body) = if rows.len() >= 2 && is_rule(&rows[1]) {
            let align: Vec<bool> = rows[1].iter().map(|c| c.ends_with(':')).collect();
            (Some(rows[0].clone()), align, &rows[2..])
        } else {
            (None, Vec::new(), &rows[..])
        };
        out.push_str("<table class=\"data\">");
        let cell = |tag: &str, i: usize, text: &str| {
            let right = align.get(i).copied().unwrap_or(false);
            format!(
                "<{tag}{}>{}</{tag}>",
                if right { " class=\"num\"" } else { "" },
                escape(text)
            )
        };
        if let Some(h) = header {
            out.push_str("<thead><tr>");
            for (i, c) in h.iter().enumerate() {
                out.push_str(&cell("th", i, c));
            }
            out.push_str("</tr></thead>");
        }
        out.push_str("<tbody>");
        for r in body {
            out.push_str("<tr>");
            for (i, c) in r.iter().enumerate() {
                out.push_str(&cell(if i == 0 { "th" } else { "td" }, i, c));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
        rows.clear();
    };
    for line in md.lines() {
        if line.trim_start().starts_with('|') {
            rows.push(split(line));
        } else {
            flush(&mut rows, &mut out);
            if !line.trim().is_empty() {
                let _ = write!(out, "<p>{}</p>", escape(line.trim()));
            }
        }
    }
    flush(&mut rows, &mut out);
    out
}

/// A model's row of the Models table; a pruned model's sizes read
/// `before → after`.
pub(super) fn model_row(s: &mut String, stage: &StageView, m: &LlamaConfig) {
    let now = ModelSizes::of(m);
    let before = stage.pruning.as_ref().map(|p| &p.source);
    let shape = |f: &dyn Fn(&ModelSizes) -> usize| match before {
        Some(src) if f(src) != f(&now) => format!("{} → {}", f(src), f(&now)),
        _ => f(&now).to_string(),
    };
    let params = |sizes: &ModelSizes| format_count(sizes.parameters as u64);
    let params = match before {
        Some(src) => format!("{} → {}", params(src), params(&now)),
        None => params(&now),
    };
    let _ = write!(
        s,
        "<tr><th>{}</th><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        escape(&stage.name),
        escape(&stage.op),
        escape(&params),
        escape(&shape(&|x| x.hidden_size)),
        escape(&shape(&|x| x.intermediate_size)),
        escape(&shape(&|x| x.num_hidden_layers)),
        escape(&format!(
            "{} / {}",
            shape(&|x| x.num_attention_heads),
            shape(&|x| x.num_key_value_heads)
        )),
        m.head_dim,
        m.vocab_size,
        escape(
            &stage
                .output_bytes
                .map(format_bytes)
                .unwrap_or_else(|| "-".into())
        ),
    );
}

/// A finished run's `training.json` as a two-column table.
pub(super) fn training_summary(s: &mut String, t: &TrainSummary) {
    let mut rows: Vec<(String, String)> = vec![
        ("objective".into(), t.objective.clone()),
        ("steps".into(), t.steps.to_string()),
        ("tokens".into(), format_count(t.tokens)),
        (
            "batch".into(),
            format!("{} rows × {} tokens", t.batch_rows, t.seq_len),
        ),
        ("time".into(), format_duration(t.elapsed_s)),
        (
            "throughput".into(),
            format!("{:.1} tokens/s", t.tokens_per_s),
        ),
    ];
    if let Some(v) = t.final_train_loss {
        rows.push(("final train loss".into(), format!("{v:.4}")));
    }
    for (label, point) in [
        ("first held-out", &t.first_eval),
        ("last held-out", &t.last_eval),
    ] {
        if let Some(e) = point {
            rows.push((
                label.into(),
                format!(
                    "loss {:.4}, perplexity {:.2} (step {})",
                    e.loss, e.perplexity, e.step
                ),
            ));
        }
    }
    if let Some(r) = t.resumed_from {
        rows.push(("resumed from step".into(), r.to_string()));
    }
    s.push_str("<table class=\"data\"><tbody>");
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(&k), escape(&v));
    }
    s.push_str("</tbody></table>");
}

/// Figures from the last lines of a run in progress.
pub(super) fn progress_summary(s: &mut String, lines: &[MetricsLine]) {
    let last_train = lines.iter().rev().find(|l| l.kind == MetricsKind::Train);
    let last_eval = lines.iter().rev().find(|l| l.kind == MetricsKind::Eval);
    s.push_str("<table class=\"data\"><tbody>");
    if let Some(l) = last_train {
        let _ = write!(
            s,
            "<tr><th>last step</th><td>{} ({} tokens, loss {}, {})</td></tr>",
            l.step,
            escape(&format_count(l.tokens)),
            l.loss.map_or("-".into(), |v| format!("{v:.4}")),
            escape(
                &l.tokens_per_s
                    .map_or("-".into(), |v| format!("{v:.1} tokens/s"))
            )
        );
    }
    if let Some(l) = last_eval {
        let _ = write!(
            s,
            "<tr><th>last held-out</th><td>loss {}, perplexity {} (step {})</td></tr>",
            l.heldout_loss.map_or("-".into(), |v| format!("{v:.4}")),
            l.heldout_ppl.map_or("-".into(), |v| format!("{v:.2}")),
            l.step
        );
    }
    if let Some(e) = lines.iter().map(|l| l.elapsed_s).reduce(f64::max) {
        let _ = write!(
            s,
            "<tr><th>elapsed</th><td>{}</td></tr>",
            escape(&format_duration(e))
        );
    }
    s.push_str("</tbody></table>");
}
