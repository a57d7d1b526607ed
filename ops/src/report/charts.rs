//! SVG line charts of a training run's metrics (loss, held-out loss and
//! perplexity, learning rate against tokens seen), drawn without a library:
//! axes with round ticks, one polyline per series, a legend.

use super::format::{escape, num};
use crate::train::metrics::{MetricsKind, MetricsLine};
use std::fmt::Write;

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

const CHART_W: f64 = 600.0;
const CHART_H: f64 = 300.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 36.0;
const MARGIN_B: f64 = 50.0;

/// Round tick positions covering [lo, hi]: steps of 1, 2 or 5 times a power
/// of ten, about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor();
    let last = (hi / step).ceil();
    (0..=((last - first) as usize))
        .map(|i| (first + i as f64) * step)
        .collect()
}

/// A tick label with as many decimals as the step needs; thousands as `k`.
fn tick_label(value: f64, step: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 && step >= 1e5 {
        return trim_zeros(format!("{:.2}M", value / 1e6));
    }
    if abs >= 1e4 && step >= 1e3 {
        return trim_zeros(format!("{:.1}k", value / 1e3));
    }
    if abs != 0.0 && (abs < 1e-3 || step < 1e-4) {
        return format!("{value:.1e}");
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize + 1
    };
    trim_zeros(format!("{value:.decimals$}"))
}

fn trim_zeros(s: String) -> String {
    let (num, suffix) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (s[..i].to_string(), s[i..].to_string()),
        None => (s.clone(), String::new()),
    };
    if num.contains('.') {
        let trimmed = num.trim_end_matches('0').trim_end_matches('.');
        format!("{trimmed}{suffix}")
    } else {
        s
    }
}

/// An SVG line chart with axes, ticks, grid, axis labels and a legend.
/// With no points it says so instead of drawing empty axes.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if all.is_empty() {
        return format!(
            "<div class=\"chart empty\"><div class=\"chart-title\">{}</div><p>no data yet</p></div>",
            escape(title)
        );
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let xt = nice_ticks(x0.min(0.0), x1, 6);
    let yt = nice_ticks(y0, y1, 5);
    let (xa, xb) = (xt[0], *xt.last().unwrap());
    let (ya, yb) = (yt[0], *yt.last().unwrap());
    let (pw, ph) = (CHART_W - MARGIN_L - MARGIN_R, CHART_H - MARGIN_T - MARGIN_B);
    let sx = |x: f64| MARGIN_L + (x - xa) / (xb - xa) * pw;
    let sy = |y: f64| MARGIN_T + ph - (y - ya) / (yb - ya) * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {CHART_W} {CHART_H}\" width=\"{CHART_W}\" height=\"{CHART_H}\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    let _ = write!(
        s,
        "<text class=\"title\" x=\"{}\" y=\"20\">{}</text>",
        num(MARGIN_L),
        escape(title)
    );
    // Grid and tick labels.
    let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    for &x in &xt {
        let px = sx(x);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\"/><line class=\"tick\" x1=\"{0}\" y1=\"{2}\" x2=\"{0}\" y2=\"{3}\"/><text class=\"xtick\" x=\"{0}\" y=\"{4}\">{5}</text>",
            num(px),
            num(MARGIN_T),
            num(MARGIN_T + ph),
            num(MARGIN_T + ph + 5.0),
            num(MARGIN_T + ph + 18.0),
            escape(&tick_label(x, xstep))
        );
    }
    for &y in &yt {
        let py = sy(y);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\"/><line class=\"tick\" x1=\"{3}\" y1=\"{1}\" x2=\"{0}\" y2=\"{1}\"/><text class=\"ytick\" x=\"{4}\" y=\"{5}\">{6}</text>",
            num(MARGIN_L),
            num(py),
            num(MARGIN_L + pw),
            num(MARGIN_L - 5.0),
            num(MARGIN_L - 8.0),
            num(py + 4.0),
            escape(&tick_label(y, ystep))
        );
    }
    // Axes.
    let _ = write!(
        s,
        "<path class=\"axis\" d=\"M{0},{1} V{2} H{3}\"/>",
        num(MARGIN_L),
        num(MARGIN_T),
        num(MARGIN_T + ph),
        num(MARGIN_L + pw)
    );
    let _ = write!(
        s,
        "<text class=\"xlabel\" x=\"{}\" y=\"{}\">{}</text>",
        num(MARGIN_L + pw / 2.0),
        num(CHART_H - 8.0),
        escape(x_label)
    );
    let _ = write!(
        s,
        "<text class=\"ylabel\" transform=\"translate(16,{}) rotate(-90)\">{}</text>",
        num(MARGIN_T + ph / 2.0),
        escape(y_label)
    );
    // Lines, with markers when there are few points so single ones show.
    for serie in series {
        let points: Vec<(f64, f64)> = serie
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if points.is_empty() {
            continue;
        }
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{},{}", num(sx(x)), num(sy(y))))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"line\" fill=\"none\" stroke=\"{}\" points=\"{}\"><title>{}</title></polyline>",
            escape(serie.color),
            coords.join(" "),
            escape(serie.name)
        );
        if points.len() <= 40 {
            for &(x, y) in &points {
                let _ = write!(
                    s,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{}\"/>",
                    num(sx(x)),
                    num(sy(y)),
                    escape(serie.color)
                );
            }
        }
    }
    // Legend, top right.
    let mut ly = MARGIN_T + 6.0;
    for serie in series.iter().filter(|s| !s.points.is_empty()) {
        let lx = MARGIN_L + pw - 150.0;
        let _ = write!(
            s,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"2.5\"/><text class=\"legend\" x=\"{4}\" y=\"{5}\">{6}</text>",
            num(lx),
            num(ly),
            num(lx + 18.0),
            escape(serie.color),
            num(lx + 24.0),
            num(ly + 4.0),
            escape(serie.name)
        );
        ly += 16.0;
    }
    s.push_str("</svg>");
    s
}

fn train_points(
    lines: &[MetricsLine],
    value: impl Fn(&MetricsLine) -> Option<f64>,
) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l.kind == MetricsKind::Train)
        .filter_map(|l| value(l).map(|v| (l.tokens as f64, v)))
        .collect()
}

fn eval_points(
    lines: &[MetricsLine],
    value: impl Fn(&MetricsLine) -> Option<f64>,
) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l.kind == MetricsKind::Eval)
        .filter_map(|l| value(l).map(|v| (l.tokens as f64, v)))
        .collect()
}

/// The training objective's loss per step against tokens seen.
pub fn loss_chart(lines: &[MetricsLine]) -> String {
    line_chart(
        "Training loss",
        "tokens seen",
        "loss (objective)",
        &[Series {
            name: "train loss",
            color: "#1f77b4",
            points: train_points(lines, |l| l.loss),
        }],
    )
}

/// Held-out cross-entropy against tokens seen.
pub fn heldout_loss_chart(lines: &[MetricsLine]) -> String {
    line_chart(
        "Held-out loss",
        "tokens seen",
        "cross-entropy (nats/token)",
        &[Series {
            name: "held-out loss",
            color: "#d62728",
            points: eval_points(lines, |l| l.heldout_loss),
        }],
    )
}

/// Line colors of a chart with one line per stage, in order (repeating).
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Held-out cross-entropy of several training stages against tokens seen,
/// one line per stage that has evaluations: distillation, cross-entropy
/// and training from scratch side by side.
pub fn heldout_comparison_chart(stages: &[(&str, &[MetricsLine])]) -> String {
    let series: Vec<Series> = stages
        .iter()
        .map(|(name, lines)| (*name, eval_points(lines, |l| l.heldout_loss)))
        .filter(|(_, points)| !points.is_empty())
        .enumerate()
        .map(|(i, (name, points))| Series {
            name,
            color: PALETTE[i % PALETTE.len()],
            points,
        })
        .collect();
    line_chart(
        "Held-out loss, every training stage",
        "tokens seen",
        "cross-entropy (nats/token)",
        &series,
    )
}

/// Held-out perplexity against tokens seen.
pub fn perplexity_chart(lines: &[MetricsLine]) -> String {
    line_chart(
        "Held-out perplexity",
        "tokens seen",
        "perplexity",
        &[Series {
            name: "held-out perplexity",
            color: "#9467bd",
            points: eval_points(lines, |l| l.heldout_ppl),
        }],
    )
}

/// The learning-rate schedule as it ran.
pub fn lr_chart(lines: &[MetricsLine]) -> String {
    line_chart(
        "Learning rate",
        "tokens seen",
        "learning rate",
        &[Series {
            name: "lr",
            color: "#2ca02c",
            points: train_points(lines, |l| l.lr),
        }],
    )
}
