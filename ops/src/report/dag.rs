//! The stage graph as SVG: stages in columns by depth, coloured by cache
//! state, with their run times; edges that skip a column run in lanes below
//! the stages instead of through them.

use super::format::{escape, format_duration, num};
use super::{StageStatus, StageView};
use crate::train::metrics::MetricsKind;
use std::fmt::Write;

const NODE_W: f64 = 156.0;
const NODE_H: f64 = 60.0;
const COL: f64 = 190.0;
const ROW: f64 = 84.0;
const PAD: f64 = 16.0;

/// Height of the lane an edge takes through a column it skips.
const LANE: f64 = 14.0;

/// The CSS class of a stage state (colours in the graph and the badges).
pub(super) fn status_class(status: &StageStatus) -> &'static str {
    match status {
        StageStatus::Stored => "stored",
        StageStatus::Partial { recent: true } => "running",
        StageStatus::Partial { recent: false } => "partial",
        StageStatus::NotRun(_) => "notrun",
    }
}

fn status_text(stage: &StageView) -> String {
    match &stage.status {
        StageStatus::Stored => match stage.duration_secs {
            Some(d) => format!("cached · {}", format_duration(d)),
            None => "cached".into(),
        },
        StageStatus::Partial { recent } => {
            let word = if *recent { "running" } else { "interrupted" };
            match stage
                .metrics
                .iter()
                .rev()
                .find(|l| l.kind == MetricsKind::Train)
            {
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
pub fn dag_svg(stages: &[StageView], edges: &[(usize, usize)]) -> String {
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
