//! The whole report page: summary cards, the stage graph and table, models,
//! training curves and evaluation tables, with inline CSS.

use super::charts::{
    heldout_comparison_chart, heldout_loss_chart, loss_chart, lr_chart, perplexity_chart,
};
use super::dag::{dag_svg, status_class};
use super::format::{escape, format_bytes, format_duration};
use super::tables::{markdown_table, model_row, progress_summary, training_summary};
use super::{Report, StageStatus, StageView};
use crate::stages::teacher_correction::TeacherCorrection;
use crate::stages::{align::Align, distill::Distill, evaluate::Evaluate};
use crate::train::metrics::MetricsLine;
use distillery_engine::TypedOp;
use std::fmt::Write;

/// Ops whose stages get a Training section (with curves once they log).
const TRAINING_OPS: [&str; 3] = [Distill::NAME, TeacherCorrection::NAME, Align::NAME];

const STYLE: &str = "
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,'DejaVu Sans',Helvetica,Arial,sans-serif;color:#1d2433;margin:0;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #d9dde5;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 8px}.meta{color:#5b6478;margin:0 0 12px}code{font:12.5px 'DejaVu Sans Mono',Menlo,Consolas,monospace}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}.card{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#5b6478;font-size:12px}
.panel{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:12px;overflow-x:auto}
table.data{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
table.data th,table.data td{border:1px solid #d9dde5;padding:5px 10px;text-align:left;vertical-align:top}
table.data thead th{background:#eef1f6}table.data tbody th{font-weight:600;background:#fafbfc}table.data .num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;border:1px solid}
.badge.stored{background:#dff3e4;border-color:#2f9e44;color:#1e6b2f}.badge.running{background:#fff1c2;border-color:#d49b00;color:#7a5800}
.badge.partial{background:#ffe3cc;border-color:#d9480f;color:#8a2d06}.badge.notrun{background:#eceff3;border-color:#8a94a6;color:#4a5263}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff;border:1px solid #d9dde5;border-radius:8px}
.chart.empty{width:600px;padding:12px;box-sizing:border-box;color:#5b6478}.chart-title{font-weight:600;color:#1d2433}
svg text{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif}
svg .title{font-size:14px;font-weight:600;fill:#1d2433}svg .xtick{font-size:11px;fill:#5b6478;text-anchor:middle}
svg .ytick{font-size:11px;fill:#5b6478;text-anchor:end}svg .xlabel{font-size:12px;fill:#1d2433;text-anchor:middle}
svg .ylabel{font-size:12px;fill:#1d2433;text-anchor:middle}svg .legend{font-size:11px;fill:#1d2433}
svg .grid{stroke:#eceff3;stroke-width:1}svg .tick{stroke:#8a94a6}svg .axis{stroke:#1d2433;fill:none;stroke-width:1.2}
svg .line{stroke-width:2;stroke-linejoin:round}
svg .edge{fill:none;stroke:#667085;stroke-width:1.5}
svg .node rect{stroke-width:1.8}svg .node .name{font-size:13px;font-weight:600;fill:#1d2433}
svg .node .op{font-size:11.5px;font-style:italic;fill:#4a5263}svg .node .time{font-size:11.5px;fill:#1d2433}
svg .stored rect{fill:#dff3e4;stroke:#2f9e44}svg .running rect{fill:#fff1c2;stroke:#d49b00}
svg .partial rect{fill:#ffe3cc;stroke:#d9480f}svg .notrun rect{fill:#eceff3;stroke:#8a94a6;stroke-dasharray:5 3}
.legendrow{margin:8px 0 0;font-size:12px;color:#5b6478}.legendrow .badge{margin-right:6px}
footer{margin-top:40px;color:#8a94a6;font-size:12px}
";

fn badge(status: &StageStatus) -> String {
    let text = match status {
        StageStatus::Stored => "cached".to_string(),
        StageStatus::Partial { recent: true } => "running".into(),
        StageStatus::Partial { recent: false } => "interrupted".into(),
        StageStatus::NotRun(_) => "not run".into(),
    };
    format!(
        "<span class=\"badge {}\">{}</span>",
        status_class(status),
        escape(&text)
    )
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Distillery report</title><style>{STYLE}</style></head><body><main>",
        escape(&report.recipe)
    );
    let _ = write!(
        s,
        "<h1>{}</h1><p class=\"meta\">recipe <code>{}</code> · store <code>{}</code> · generated {}</p>",
        escape(&report.recipe),
        escape(&report.recipe_path),
        escape(&report.store),
        escape(&report.generated)
    );

    let stored = report
        .stages
        .iter()
        .filter(|st| st.status == StageStatus::Stored)
        .count();
    let partial = report
        .stages
        .iter()
        .filter(|st| matches!(st.status, StageStatus::Partial { .. }))
        .count();
    let compute = report
        .stages
        .iter()
        .filter_map(|st| st.duration_secs)
        .fold(0.0, |a, b| a + b);
    let bytes: u64 = report.stages.iter().filter_map(|st| st.output_bytes).sum();
    s.push_str("<div class=\"cards\">");
    for (value, label) in [
        (report.stages.len().to_string(), "stages"),
        (stored.to_string(), "cached (stored)"),
        (partial.to_string(), "in progress"),
        (
            (report.stages.len() - stored - partial).to_string(),
            "not run",
        ),
        (format_duration(compute), "compute time of stored stages"),
        (format_bytes(bytes), "stored outputs"),
    ] {
        let _ = write!(
            s,
            "<div class=\"card\"><b>{}</b><span>{}</span></div>",
            escape(&value),
            escape(label)
        );
    }
    s.push_str("</div>");

    // Graph and stage table.
    s.push_str("<h2 id=\"graph\">Stage graph</h2><div class=\"panel\">");
    s.push_str(&dag_svg(&report.stages, &report.edges));
    s.push_str("<p class=\"legendrow\"><span class=\"badge stored\">cached</span>stored: the next run reuses it <span class=\"badge running\">running</span>progress in the last minutes <span class=\"badge partial\">interrupted</span>checkpointed, resumes on the next run <span class=\"badge notrun\">not run</span>not in the store</p></div>");
    s.push_str("<h2 id=\"stages\">Stages</h2><table class=\"data\"><thead><tr><th>stage</th><th>op</th><th>key</th><th>state</th><th class=\"num\">run time</th><th>computed</th><th class=\"num\">output</th></tr></thead><tbody>");
    for st in &report.stages {
        let state = match &st.status {
            StageStatus::NotRun(reason) => format!("{} {}", badge(&st.status), escape(reason)),
            _ => badge(&st.status),
        };
        let _ = write!(
            s,
            "<tr><th>{}</th><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&st.name),
            escape(&st.op),
            escape(&st.key[..st.key.len().min(12)]),
            state,
            escape(
                &st.duration_secs
                    .map(format_duration)
                    .unwrap_or_else(|| "-".into())
            ),
            escape(st.created.as_deref().unwrap_or("-")),
            escape(
                &st.output_bytes
                    .map(format_bytes)
                    .unwrap_or_else(|| "-".into())
            ),
        );
    }
    s.push_str("</tbody></table>");

    // Models.
    let models: Vec<&StageView> = report
        .stages
        .iter()
        .filter(|st| st.model.is_some())
        .collect();
    if !models.is_empty() {
        s.push_str("<h2 id=\"models\">Models</h2><table class=\"data\"><thead><tr><th>stage</th><th>op</th><th class=\"num\">parameters</th><th class=\"num\">hidden</th><th class=\"num\">ffn</th><th class=\"num\">layers</th><th class=\"num\">heads / kv</th><th class=\"num\">head dim</th><th class=\"num\">vocab</th><th class=\"num\">on disk</th></tr></thead><tbody>");
        for st in &models {
            model_row(&mut s, st, st.model.as_ref().unwrap());
        }
        s.push_str("</tbody></table>");
        for st in &models {
            let Some(pruning) = &st.pruning else {
                continue;
            };
            let method = match pruning.depth_metric {
                Some(metric) => format!("{} ({metric})", pruning.method.name()),
                None => pruning.method.name().to_string(),
            };
            let _ = write!(
                s,
                "<p class=\"meta\"><b>{}</b>: pruned by {}</p>",
                escape(&st.name),
                escape(&method)
            );
        }
    }

    // Training.
    let training: Vec<&StageView> = report
        .stages
        .iter()
        .filter(|st| TRAINING_OPS.contains(&st.op.as_str()) || !st.metrics.is_empty())
        .collect();
    if !training.is_empty() {
        s.push_str("<h2 id=\"training\">Training</h2>");
        // Several trainings evaluated along the way: their held-out curves
        // on one chart first.
        let curves: Vec<(&str, &[MetricsLine])> = training
            .iter()
            .filter(|st| st.metrics.iter().any(|l| l.heldout_loss.is_some()))
            .map(|st| (st.name.as_str(), st.metrics.as_slice()))
            .collect();
        if curves.len() >= 2 {
            s.push_str("<div class=\"charts\">");
            s.push_str(&heldout_comparison_chart(&curves));
            s.push_str("</div>");
        }
        for st in training {
            let _ = write!(
                s,
                "<h3>{} <small>({})</small> {}</h3>",
                escape(&st.name),
                escape(&st.op),
                badge(&st.status)
            );
            match &st.training {
                Some(t) => training_summary(&mut s, t),
                None if !st.metrics.is_empty() => progress_summary(&mut s, &st.metrics),
                None => {}
            }
            if st.metrics.is_empty() {
                s.push_str("<p class=\"meta\">no metrics yet</p>");
                continue;
            }
            s.push_str("<div class=\"charts\">");
            s.push_str(&loss_chart(&st.metrics));
            s.push_str(&heldout_loss_chart(&st.metrics));
            s.push_str(&perplexity_chart(&st.metrics));
            s.push_str(&lr_chart(&st.metrics));
            s.push_str("</div>");
        }
    }

    // Evaluations.
    let evals: Vec<&StageView> = report
        .stages
        .iter()
        .filter(|st| st.op == Evaluate::NAME || st.eval_table.is_some())
        .collect();
    if !evals.is_empty() {
        s.push_str("<h2 id=\"evaluation\">Evaluation</h2>");
        for st in evals {
            let _ = write!(
                s,
                "<h3>{} <small>({})</small> {}</h3>",
                escape(&st.name),
                escape(&st.op),
                badge(&st.status)
            );
            match &st.eval_table {
                Some(md) => s.push_str(&markdown_table(md)),
                None => s.push_str("<p class=\"meta\">not evaluated yet</p>"),
            }
        }
    }

    let _ = writeln!(
        s,
        "<footer>distillery {} · one self-contained file: no scripts, nothing loaded from the network</footer></main></body></html>",
        escape(env!("CARGO_PKG_VERSION"))
    );
    s
}
