//! The HTML of `distillery report`: pure functions from what the store holds
//! to one self-contained page (inline CSS and SVG, no script, nothing
//! fetched), so that the file can be mailed, archived or opened offline.
//! Kept free of the engine's types so tests can include it directly.

use serde::Deserialize;
use std::fmt::Write;

/// One line of a training stage's `metrics.jsonl`: a step (`kind: train`)
/// or a held-out evaluation (`kind: eval`). Fields a line lacks are None, so
/// files from older or newer versions still read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MetricsLine {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub step: u64,
    #[serde(default)]
    pub tokens: u64,
    pub loss: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub elapsed_s: Option<f64>,
    pub heldout_loss: Option<f64>,
    pub heldout_ppl: Option<f64>,
    pub heldout_tokens: Option<u64>,
}

/// Parses `metrics.jsonl`, skipping lines that do not parse (the last one
/// may be half-written while a run is in progress).
pub fn parse_metrics(text: &str) -> Vec<MetricsLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A Llama model's shape, from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub hidden: u64,
    pub ffn: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub vocab: u64,
    pub tied: bool,
}

impl ModelShape {
    /// Reads a Hugging Face Llama `config.json` (or the shapes in
    /// `pruning.json`, which use the same field names).
    pub fn from_config(config: &serde_json::Value) -> Option<Self> {
        let get = |k: &str| config.get(k).and_then(|v| v.as_u64());
        let hidden = get("hidden_size")?;
        let heads = get("num_attention_heads")?;
        Some(Self {
            hidden,
            ffn: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
            heads,
            kv_heads: get("num_key_value_heads").unwrap_or(heads),
            head_dim: get("head_dim").unwrap_or(hidden / heads.max(1)),
            vocab: get("vocab_size").unwrap_or(0),
            tied: config
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        })
    }

    /// Parameters of a Llama with this shape (no biases).
    pub fn parameters(&self) -> u64 {
        let (h, f, hd) = (self.hidden, self.ffn, self.head_dim);
        let attention = 2 * h * self.heads * hd + 2 * h * self.kv_heads * hd;
        let layer = attention + 3 * h * f + 2 * h;
        let embeddings = self.vocab * h * if self.tied { 1 } else { 2 };
        embeddings + self.layers * layer + h
    }
}

/// Where a stage stands in the store.
#[derive(Debug, Clone, PartialEq)]
pub enum StageStatus {
    /// Published: the next run is a cache hit.
    Stored,
    /// Not published, but its scratch folder has progress; `recent` when the
    /// progress changed in the last minutes (probably still running).
    Partial { recent: bool },
    /// Not published; why it would run.
    NotRun(String),
}

/// Everything the page shows about one stage.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub name: String,
    pub op: String,
    pub key: String,
    pub status: StageStatus,
    /// Seconds the stage took when it was computed.
    pub duration_secs: Option<f64>,
    /// When it was computed, as text.
    pub created: Option<String>,
    /// Bytes of its published output.
    pub output_bytes: Option<u64>,
    pub model: Option<ModelShape>,
    /// `pruning.json`: the shape before and after.
    pub pruned_from: Option<ModelShape>,
    pub pruning_method: Option<String>,
    pub metrics: Vec<MetricsLine>,
    /// `training.json`.
    pub training: Option<serde_json::Value>,
    /// An evaluation's `table.md`.
    pub eval_table: Option<String>,
}

impl StageReport {
    pub fn new(name: &str, op: &str, key: &str, status: StageStatus) -> Self {
        Self {
            name: name.into(),
            op: op.into(),
            key: key.into(),
            status,
            duration_secs: None,
            created: None,
            output_bytes: None,
            model: None,
            pruned_from: None,
            pruning_method: None,
            metrics: Vec::new(),
            training: None,
            eval_table: None,
        }
    }
}

/// The whole page's content. `stages` is in topological order; `edges` are
/// (producer, consumer) indices into it.
#[derive(Debug, Clone)]
pub struct Report {
    pub recipe: String,
    pub recipe_path: String,
    pub store: String,
    pub generated: String,
    pub stages: Vec<StageReport>,
    pub edges: Vec<(usize, usize)>,
}

/// Text made safe for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn format_duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{secs:.2} s")
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{} min {:02} s", (secs / 60.0) as u64, secs as u64 % 60)
    } else {
        format!(
            "{} h {:02} min",
            (secs / 3600.0) as u64,
            (secs as u64 % 3600) / 60
        )
    }
}

pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn format_count(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 10_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) of Unix seconds.
pub fn format_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

// ---------------------------------------------------------------- charts

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

fn num(v: f64) -> String {
    format!("{v:.1}")
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
        .filter(|l| l.kind == "train")
        .filter_map(|l| value(l).map(|v| (l.tokens as f64, v)))
        .collect()
}

fn eval_points(
    lines: &[MetricsLine],
    value: impl Fn(&MetricsLine) -> Option<f64>,
) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l.kind == "eval")
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

// ---------------------------------------------------------------- tables

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

// ---------------------------------------------------------------- stage graph

const NODE_W: f64 = 156.0;
const NODE_H: f64 = 60.0;
const COL: f64 = 190.0;
const ROW: f64 = 84.0;
const PAD: f64 = 16.0;

/// Height of the lane an edge takes through a column it skips.
const LANE: f64 = 14.0;

fn status_class(status: &StageStatus) -> &'static str {
    match status {
        StageStatus::Stored => "stored",
        StageStatus::Partial { recent: true } => "running",
        StageStatus::Partial { recent: false } => "partial",
        StageStatus::NotRun(_) => "notrun",
    }
}

fn status_text(stage: &StageReport) -> String {
    match &stage.status {
        StageStatus::Stored => match stage.duration_secs {
            Some(d) => format!("cached · {}", format_duration(d)),
            None => "cached".into(),
        },
        StageStatus::Partial { recent } => {
            let word = if *recent { "running" } else { "interrupted" };
            match stage.metrics.iter().rev().find(|l| l.kind == "train") {
                Some(l) => format!("{word} · step {}", l.step),
                None => word.into(),
            }
        }
        StageStatus::NotRun(_) => "not run".into(),
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

/// Column of each stage: the length of the longest path reaching it.
/// `stages` are in topological order, so producers come first.
fn layers(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut layer = vec![0usize; n];
    for to in 0..n {
        for &(from, t) in edges {
            if t == to && from < n {
                layer[to] = layer[to].max(layer[from] + 1);
            }
        }
    }
    layer
}

/// The stage graph as SVG, left to right in layers, each node colored by
/// its state and labelled with its op and time. An edge that skips columns
/// runs in a lane of its own through them (a placeholder per column, as in
/// Sugiyama layouts), so it never crosses a stage's box.
pub fn dag_svg(stages: &[StageReport], edges: &[(usize, usize)]) -> String {
    let n = stages.len();
    let edges: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|&(f, t)| f < n && t < n && f != t)
        .collect();
    let layer = layers(n, &edges);
    let columns = layer.iter().copied().max().map_or(0, |m| m + 1);
    // Items are the stages, then one placeholder per skipped column.
    let mut column: Vec<usize> = layer.clone();
    let mut links: Vec<(usize, usize)> = Vec::new();
    let mut routes: Vec<Vec<usize>> = Vec::new();
    for &(f, t) in &edges {
        let mut route = vec![f];
        for c in layer[f] + 1..layer[t] {
            column.push(c);
            let lane = column.len() - 1;
            links.push((*route.last().unwrap(), lane));
            route.push(lane);
        }
        links.push((*route.last().unwrap(), t));
        route.push(t);
        routes.push(route);
    }
    let size = |item: usize| if item < n { NODE_H } else { LANE };
    // Each item sits level with the mean of what feeds it when there is
    // room, else below the previous one; chains come out straight.
    let mut center = vec![0f64; column.len()];
    let mut height = 0f64;
    for c in 0..columns {
        let mut members: Vec<(usize, Option<f64>)> = (0..column.len())
            .filter(|&i| column[i] == c)
            .map(|i| {
                // Stages in the column before count, lanes only when
                // nothing else feeds it: the main chain stays on one line.
                let feeds: Vec<usize> = links.iter().filter(|l| l.1 == i).map(|l| l.0).collect();
                let direct: Vec<usize> = feeds.iter().copied().filter(|&f| f < n).collect();
                let chosen = if direct.is_empty() { &feeds } else { &direct };
                let wish = (!chosen.is_empty())
                    .then(|| chosen.iter().map(|&f| center[f]).sum::<f64>() / chosen.len() as f64);
                (i, wish)
            })
            .collect();
        members.sort_by(|a, b| {
            let ka = a.1.unwrap_or(f64::MAX);
            let kb = b.1.unwrap_or(f64::MAX);
            ka.total_cmp(&kb)
                .then((a.0 >= n).cmp(&(b.0 >= n)))
                .then(a.0.cmp(&b.0))
        });
        let mut cursor = PAD;
        for (i, wish) in members {
            let top = wish.map_or(cursor, |w| cursor.max(w - size(i) / 2.0));
            center[i] = top + size(i) / 2.0;
            cursor = top + size(i) + if i < n { ROW - NODE_H } else { 4.0 };
        }
        height = height.max(cursor);
    }
    let width = PAD * 2.0 + (columns.max(1) - 1) as f64 * COL + NODE_W;
    let total_h = height.max(PAD + NODE_H + PAD) + PAD / 2.0;
    let left = |item: usize| PAD + column[item] as f64 * COL;
    let pos = |i: usize| (left(i), center[i] - NODE_H / 2.0);

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {0} {1}\" width=\"{0}\" height=\"{1}\" role=\"img\" aria-label=\"stage graph\">",
        num(width),
        num(total_h)
    );
    s.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#667085\"/></marker></defs>");
    for route in &routes {
        let first = route[0];
        let (mut x, mut y) = (left(first) + NODE_W, center[first]);
        let mut d = format!("M{},{}", num(x), num(y));
        for &item in &route[1..] {
            let (nx, ny) = (left(item) - if item < n { 1.0 } else { 0.0 }, center[item]);
            let mid = (x + nx) / 2.0;
            let _ = write!(
                d,
                " C{},{} {},{} {},{}",
                num(mid),
                num(y),
                num(mid),
                num(ny),
                num(nx),
                num(ny)
            );
            (x, y) = (nx, ny);
            if item >= n {
                x += NODE_W;
                let _ = write!(d, " L{},{}", num(x), num(y));
            }
        }
        let _ = write!(
            s,
            "<path class=\"edge\" d=\"{d}\" marker-end=\"url(#arrow)\"/>"
        );
    }
    for (i, stage) in stages.iter().enumerate() {
        let (x, y) = pos(i);
        let _ = write!(
            s,
            "<g class=\"node {}\"><title>{} ({}): {}</title><rect x=\"{}\" y=\"{}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"8\"/><text class=\"name\" x=\"{}\" y=\"{}\">{}</text><text class=\"op\" x=\"{}\" y=\"{}\">{}</text><text class=\"time\" x=\"{}\" y=\"{}\">{}</text></g>",
            status_class(&stage.status),
            escape(&stage.name),
            escape(&stage.op),
            escape(&status_text(stage)),
            num(x),
            num(y),
            num(x + 10.0),
            num(y + 19.0),
            escape(&shorten(&stage.name, 20)),
            num(x + 10.0),
            num(y + 35.0),
            escape(&shorten(&stage.op, 24)),
            num(x + 10.0),
            num(y + 51.0),
            escape(&status_text(stage)),
        );
    }
    s.push_str("</svg>");
    s
}

// ---------------------------------------------------------------- the page

const TRAINING_OPS: [&str; 3] = ["distill", "teacher_correction", "align"];

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

fn model_row(s: &mut String, stage: &StageReport, m: &ModelShape) {
    let shape = |f: &dyn Fn(&ModelShape) -> u64| match &stage.pruned_from {
        Some(src) if f(src) != f(m) => format!("{} → {}", f(src), f(m)),
        _ => f(m).to_string(),
    };
    let params = match &stage.pruned_from {
        Some(src) => format!(
            "{} → {}",
            format_count(src.parameters()),
            format_count(m.parameters())
        ),
        None => format_count(m.parameters()),
    };
    let _ = write!(
        s,
        "<tr><th>{}</th><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        escape(&stage.name),
        escape(&stage.op),
        escape(&params),
        escape(&shape(&|x| x.hidden)),
        escape(&shape(&|x| x.ffn)),
        escape(&shape(&|x| x.layers)),
        escape(&format!(
            "{} / {}",
            shape(&|x| x.heads),
            shape(&|x| x.kv_heads)
        )),
        m.head_dim,
        m.vocab,
        escape(
            &stage
                .output_bytes
                .map(format_bytes)
                .unwrap_or_else(|| "-".into())
        ),
    );
}

fn training_summary(s: &mut String, t: &serde_json::Value) {
    let f = |k: &str| t.get(k).and_then(|v| v.as_f64());
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(o) = t.get("objective").and_then(|v| v.as_str()) {
        rows.push(("objective".into(), o.into()));
    }
    if let Some(v) = f("steps") {
        rows.push(("steps".into(), format!("{v}")));
    }
    if let Some(v) = f("tokens") {
        rows.push(("tokens".into(), format_count(v as u64)));
    }
    if let (Some(sl), Some(br)) = (f("seq_len"), f("batch_rows")) {
        rows.push(("batch".into(), format!("{br} rows × {sl} tokens")));
    }
    if let Some(v) = f("elapsed_s") {
        rows.push(("time".into(), format_duration(v)));
    }
    if let Some(v) = f("tokens_per_s") {
        rows.push(("throughput".into(), format!("{v:.1} tokens/s")));
    }
    if let Some(v) = f("final_train_loss") {
        rows.push(("final train loss".into(), format!("{v:.4}")));
    }
    for (label, k) in [
        ("first held-out", "first_eval"),
        ("last held-out", "last_eval"),
    ] {
        if let Some(e) = t.get(k).filter(|e| !e.is_null()) {
            let g = |k: &str| e.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            rows.push((
                label.into(),
                format!(
                    "loss {:.4}, perplexity {:.2} (step {})",
                    g("loss"),
                    g("perplexity"),
                    g("step")
                ),
            ));
        }
    }
    if let Some(r) = f("resumed_from") {
        rows.push(("resumed from step".into(), format!("{r}")));
    }
    if rows.is_empty() {
        return;
    }
    s.push_str("<table class=\"data\"><tbody>");
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(&k), escape(&v));
    }
    s.push_str("</tbody></table>");
}

/// Figures from the last lines of a run in progress.
fn progress_summary(s: &mut String, lines: &[MetricsLine]) {
    let last_train = lines.iter().rev().find(|l| l.kind == "train");
    let last_eval = lines.iter().rev().find(|l| l.kind == "eval");
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
    if let Some(e) = lines.iter().filter_map(|l| l.elapsed_s).reduce(f64::max) {
        let _ = write!(
            s,
            "<tr><th>elapsed</th><td>{}</td></tr>",
            escape(&format_duration(e))
        );
    }
    s.push_str("</tbody></table>");
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
    let models: Vec<&StageReport> = report
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
        for st in models.iter().filter(|st| st.pruning_method.is_some()) {
            let _ = write!(
                s,
                "<p class=\"meta\"><b>{}</b>: pruned by {}</p>",
                escape(&st.name),
                escape(st.pruning_method.as_deref().unwrap_or(""))
            );
        }
    }

    // Training.
    let training: Vec<&StageReport> = report
        .stages
        .iter()
        .filter(|st| TRAINING_OPS.contains(&st.op.as_str()) || !st.metrics.is_empty())
        .collect();
    if !training.is_empty() {
        s.push_str("<h2 id=\"training\">Training</h2>");
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
    let evals: Vec<&StageReport> = report
        .stages
        .iter()
        .filter(|st| st.op == "evaluate" || st.eval_table.is_some())
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
