//! Paired comparisons of models evaluated on the same items: each model's
//! difference from a reference model with a percentile bootstrap interval,
//! and the share of the reference's above-chance benchmark margin each
//! model keeps.
//!
//! Every resample draws, with replacement, as many units as each measure
//! has (benchmark items per task, rows of the `data` input, windows per
//! text), the same draw for every model, so what varies between models on
//! the same hard or easy items cancels ("paired"). Statistics:
//!
//! - a task's accuracy difference: `mean(right_m) - mean(right_ref)` over
//!   the drawn items (and the same for `acc_norm`);
//! - a loss difference (data, texts): `sum nll_m / sum tokens_m -
//!   sum nll_ref / sum tokens_ref` over the drawn rows or windows;
//! - the margin kept on a task: `(acc_m - chance) / (acc_ref - chance)`,
//!   chance being the drawn items' mean of one over their candidates (0 for
//!   greedy match), and its mean over the tasks where the reference is above
//!   chance.
//!
//! The interval is the 2.5th and 97.5th percentiles of the statistic over
//! the resamples (linear interpolation between order statistics); the
//! estimate is the statistic on the items as they are. A margin has no
//! value in a resample where the reference is not above chance: such
//! resamples are left out and counted, and when they are more than the
//! interval's tail (2.5% of them) there is no interval (too few items to
//! tell).

use super::loss::NllSum;
use super::results::ModelMetrics;
use crate::rng::{SplitMix64, mix};
use serde::Serialize;

/// The interval's coverage.
pub const CONFIDENCE: f64 = 0.95;

/// An estimate and its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    /// `None` when too many resamples had no value (see `left_out`).
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// Resamples in which the statistic had no value (a margin whose
    /// reference was not above chance), left out of the percentiles.
    #[serde(skip_serializing_if = "is_zero")]
    pub left_out: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One model against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub model: String,
    /// `(measure, difference)`, e.g. `("piqa acc", ..)`, `("data loss", ..)`,
    /// in table order.
    pub differences: Vec<(String, Interval)>,
    /// `(task, share)` of the reference's above-chance accuracy kept, for
    /// the tasks where the reference is above chance.
    pub margin_kept: Vec<(String, Interval)>,
    /// The mean of `margin_kept` over its tasks.
    pub mean_margin_kept: Option<Interval>,
}

/// Every model against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub reference: String,
    pub resamples: usize,
    pub confidence: f64,
    pub comparisons: Vec<Comparison>,
    /// Measures left out, and why (e.g. a text cut into a different number
    /// of windows by another tokenizer).
    pub skipped: Vec<String>,
    /// Tasks left out of the margins: the reference is not above chance.
    pub no_margin: Vec<String>,
}

/// The units of one measure, per model, all of one count.
enum Units<'a> {
    /// Right or wrong per item, with each item's chance (tasks).
    Right(Vec<&'a [bool]>, &'a [f64]),
    /// NLL and tokens per row or window.
    Nll(Vec<&'a [NllSum]>),
}

struct Measure<'a> {
    name: String,
    /// For `Right`: the task's name, for its margin.
    task: Option<String>,
    units: Units<'a>,
}

impl Measure<'_> {
    fn count(&self) -> usize {
        match &self.units {
            Units::Right(r, _) => r[0].len(),
            Units::Nll(n) => n[0].len(),
        }
    }
}

/// Weighted statistics of one measure for model `m` (`weights[i]`: how many
/// times unit `i` was drawn).
fn weighted_value(units: &Units, m: usize, weights: &[u32]) -> f64 {
    match units {
        Units::Right(right, _) => {
            let (mut hit, mut all) = (0u64, 0u64);
            for (&r, &w) in right[m].iter().zip(weights) {
                hit += u64::from(r) * u64::from(w);
                all += u64::from(w);
            }
            hit as f64 / all.max(1) as f64
        }
        Units::Nll(nll) => {
            let (mut sum, mut tokens) = (0.0, 0.0);
            for (u, &w) in nll[m].iter().zip(weights) {
                sum += u.nll * f64::from(w);
                tokens += u.tokens as f64 * f64::from(w);
            }
            sum / tokens.max(1.0)
        }
    }
}

fn weighted_chance(chance: &[f64], weights: &[u32]) -> f64 {
    let (mut sum, mut all) = (0.0, 0.0);
    for (&c, &w) in chance.iter().zip(weights) {
        sum += c * f64::from(w);
        all += f64::from(w);
    }
    sum / all.max(1.0)
}

/// The measures every model shares with the reference, in table order
/// (data, tasks, texts), and what was skipped.
fn measures<'a>(models: &'a [ModelMetrics]) -> (Vec<Measure<'a>>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let first = &models[0];
    let same_count = |counts: Vec<usize>| counts.windows(2).all(|w| w[0] == w[1]);
    if !first.data_rows.is_empty() {
        out.push(Measure {
            name: "data loss".into(),
            task: None,
            units: Units::Nll(models.iter().map(|m| m.data_rows.as_slice()).collect()),
        });
    }
    for (t, (name, run)) in first.tasks.iter().enumerate() {
        let right: Vec<&[bool]> = models
            .iter()
            .map(|m| m.tasks[t].1.outcomes.acc.as_slice())
            .collect();
        if !same_count(right.iter().map(|r| r.len()).collect()) {
            skipped.push(format!(
                "{name}: the models scored different numbers of items"
            ));
            continue;
        }
        out.push(Measure {
            name: format!("{name} acc"),
            task: Some(name.clone()),
            units: Units::Right(right, &run.outcomes.chance),
        });
        if run.outcomes.acc_norm.is_some() {
            out.push(Measure {
                name: format!("{name} acc_norm"),
                task: None,
                units: Units::Right(
                    models
                        .iter()
                        .map(|m| m.tasks[t].1.outcomes.acc_norm.as_deref().unwrap_or(&[]))
                        .collect(),
                    &run.outcomes.chance,
                ),
            });
        }
    }
    for (t, (name, _)) in first.texts.iter().enumerate() {
        let windows: Vec<&[NllSum]> = models
            .iter()
            .map(|m| m.texts[t].1.per_window.as_slice())
            .collect();
        if !same_count(windows.iter().map(|w| w.len()).collect()) {
            skipped.push(format!(
                "{name} loss: the models' tokenizers cut the text into different numbers of windows"
            ));
            continue;
        }
        out.push(Measure {
            name: format!("{name} loss"),
            task: None,
            units: Units::Nll(windows),
        });
    }
    (out, skipped)
}

/// How many times each of `n` units is drawn in one resample of `n`.
fn draw(rng: &mut SplitMix64, n: usize) -> Vec<u32> {
    let mut weights = vec![0u32; n];
    for _ in 0..n {
        let i = ((rng.next_f64() * n as f64) as usize).min(n - 1);
        weights[i] += 1;
    }
    weights
}

/// The `q` quantile of sorted `values` (linear between order statistics).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

fn interval(estimate: f64, samples: Vec<Option<f64>>) -> Interval {
    let total = samples.len();
    let mut values: Vec<f64> = samples.into_iter().flatten().collect();
    let left_out = total - values.len();
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    let enough = !values.is_empty() && left_out as f64 <= tail * total as f64;
    Interval {
        estimate,
        low: enough.then(|| quantile(&values, tail)),
        high: enough.then(|| quantile(&values, 1.0 - tail)),
        left_out,
    }
}

/// Every model of `models` against `models[reference]`, over `resamples`
/// paired resamples drawn from `seed`. Every model must have been measured
/// on the same data, tasks and texts (one `evaluate` stage's models are).
pub fn compare(models: &[ModelMetrics], reference: usize, resamples: usize, seed: u64) -> Paired {
    assert!(resamples >= 2, "a bootstrap needs resamples");
    let (measures, skipped) = measures(models);
    let r = reference;
    let others: Vec<usize> = (0..models.len()).filter(|&m| m != r).collect();
    let ones: Vec<Vec<u32>> = measures.iter().map(|x| vec![1; x.count()]).collect();

    // (model, measure) differences and (model, task) margins, per resample.
    let difference = |x: &Measure, m: usize, w: &[u32]| {
        weighted_value(&x.units, m, w) - weighted_value(&x.units, r, w)
    };
    // None where the reference is not above chance on the drawn items.
    let margin = |x: &Measure, m: usize, w: &[u32]| match &x.units {
        Units::Right(_, chance) => {
            let c = weighted_chance(chance, w);
            let lead = weighted_value(&x.units, r, w) - c;
            (lead > 0.0).then(|| (weighted_value(&x.units, m, w) - c) / lead)
        }
        Units::Nll(_) => unreachable!("margins are of tasks"),
    };
    // Tasks whose reference is above chance on the items as they are.
    let margin_tasks: Vec<usize> = measures
        .iter()
        .enumerate()
        .filter(|(_, x)| x.task.is_some())
        .filter(|(i, x)| match &x.units {
            Units::Right(_, chance) => {
                weighted_value(&x.units, r, &ones[*i]) > weighted_chance(chance, &ones[*i])
            }
            Units::Nll(_) => false,
        })
        .map(|(i, _)| i)
        .collect();
    let no_margin = measures
        .iter()
        .enumerate()
        .filter(|(i, x)| x.task.is_some() && !margin_tasks.contains(i))
        .filter_map(|(_, x)| x.task.clone())
        .collect();

    let mut diff_samples = vec![vec![Vec::with_capacity(resamples); measures.len()]; others.len()];
    let mut margin_samples =
        vec![vec![Vec::with_capacity(resamples); margin_tasks.len()]; others.len()];
    let mut mean_samples = vec![Vec::with_capacity(resamples); others.len()];
    let mut rng = SplitMix64::new(mix(seed, 0x7061_6972_6564));
    for _ in 0..resamples {
        let weights: Vec<Vec<u32>> = measures.iter().map(|x| draw(&mut rng, x.count())).collect();
        for (o, &m) in others.iter().enumerate() {
            for (i, x) in measures.iter().enumerate() {
                diff_samples[o][i].push(Some(difference(x, m, &weights[i])));
            }
            // The mean has a value where every task's share has one.
            let mut sum = Some(0.0);
            for (k, &i) in margin_tasks.iter().enumerate() {
                let share = margin(&measures[i], m, &weights[i]);
                margin_samples[o][k].push(share);
                sum = sum.zip(share).map(|(s, v)| s + v);
            }
            if !margin_tasks.is_empty() {
                mean_samples[o].push(sum.map(|s| s / margin_tasks.len() as f64));
            }
        }
    }

    let comparisons = others
        .iter()
        .enumerate()
        .map(|(o, &m)| {
            let differences = measures
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let estimate = difference(x, m, &ones[i]);
                    (
                        x.name.clone(),
                        interval(estimate, std::mem::take(&mut diff_samples[o][i])),
                    )
                })
                .collect();
            let estimates: Vec<f64> = margin_tasks
                .iter()
                .map(|&i| {
                    margin(&measures[i], m, &ones[i])
                        .expect("a margin task's reference is above chance on all its items")
                })
                .collect();
            let margin_kept = margin_tasks
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let task = measures[i].task.clone().unwrap_or_default();
                    (
                        task,
                        interval(estimates[k], std::mem::take(&mut margin_samples[o][k])),
                    )
                })
                .collect();
            let mean_margin_kept = (!margin_tasks.is_empty()).then(|| {
                let estimate = estimates.iter().sum::<f64>() / estimates.len() as f64;
                interval(estimate, std::mem::take(&mut mean_samples[o]))
            });
            Comparison {
                model: models[m].stage.clone(),
                differences,
                margin_kept,
                mean_margin_kept,
            }
        })
        .collect();
    Paired {
        reference: models[r].stage.clone(),
        resamples,
        confidence: CONFIDENCE,
        comparisons,
        skipped,
        no_margin,
    }
}

fn signed(v: f64) -> String {
    format!("{v:+.4}")
}

fn share(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// `[low, high]` in `format`, with the resamples left out, or why there is
/// no interval.
fn bounds(i: &Interval, resamples: usize, format: fn(f64) -> String) -> String {
    match (i.low, i.high) {
        (Some(low), Some(high)) if i.left_out == 0 => {
            format!("[{}, {}]", format(low), format(high))
        }
        (Some(low), Some(high)) => format!(
            "[{}, {}] ({} of {resamples} resamples left out: the reference at chance)",
            format(low),
            format(high),
            i.left_out
        ),
        _ => format!(
            "none: the reference is at or below chance in {} of {resamples} resamples",
            i.left_out
        ),
    }
}

/// The comparison as Markdown: a table of differences and one of margins.
pub fn paired_table(p: &Paired) -> String {
    let mut s = format!(
        "\nAgainst `{}`: differences with {:.0}% paired bootstrap intervals ({} resamples of the items, rows and windows)\n\n",
        p.reference,
        100.0 * p.confidence,
        p.resamples
    );
    s.push_str("| model | measure | difference | interval |\n|---|---|---:|---|\n");
    for c in &p.comparisons {
        for (name, d) in &c.differences {
            s.push_str(&format!(
                "| {} | {name} | {} | {} |\n",
                c.model,
                signed(d.estimate),
                bounds(d, p.resamples, signed)
            ));
        }
    }
    if p.comparisons.iter().any(|c| !c.margin_kept.is_empty()) {
        s.push_str(&format!(
            "\nShare of `{}`'s above-chance accuracy kept, `(acc - chance) / (acc_{} - chance)`\n\n",
            p.reference, p.reference
        ));
        s.push_str("| model | task | kept | interval |\n|---|---|---:|---|\n");
        for c in &p.comparisons {
            for (task, k) in &c.margin_kept {
                s.push_str(&format!(
                    "| {} | {task} | {} | {} |\n",
                    c.model,
                    share(k.estimate),
                    bounds(k, p.resamples, share)
                ));
            }
            if let Some(k) = &c.mean_margin_kept {
                s.push_str(&format!(
                    "| {} | **mean of {} tasks** | **{}** | {} |\n",
                    c.model,
                    c.margin_kept.len(),
                    share(k.estimate),
                    bounds(k, p.resamples, share)
                ));
            }
        }
    }
    if !p.no_margin.is_empty() {
        s.push_str(&format!(
            "\nNo margin for {}: `{}` is not above chance there.\n",
            p.no_margin.join(", "),
            p.reference
        ));
    }
    for note in &p.skipped {
        s.push_str(&format!("\nNot compared: {note}.\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::multiple_choice::{ItemOutcomes, TaskRun, TaskScores};
    use crate::eval::text_perplexity::TextRun;

    fn task(right: Vec<bool>, candidates: usize) -> TaskRun {
        let n = right.len();
        TaskRun {
            scores: TaskScores {
                n,
                acc: 0.0,
                acc_stderr: None,
                acc_norm: None,
                acc_norm_stderr: None,
            },
            sequences: n * candidates,
            tokens: 0,
            seconds: 0.0,
            items_per_s: 0.0,
            tokens_per_s: 0.0,
            outcomes: ItemOutcomes {
                chance: vec![1.0 / candidates as f64; n],
                acc: right,
                acc_norm: None,
            },
        }
    }

    fn text(per_window: Vec<NllSum>) -> TextRun {
        TextRun {
            windows: per_window.len(),
            seq_len: 0,
            tokens: 0,
            bytes: 0,
            loss: 0.0,
            ppl: 0.0,
            bits_per_byte: 0.0,
            seconds: 0.0,
            tokens_per_s: 0.0,
            per_window,
        }
    }

    fn model(
        stage: &str,
        tasks: Vec<(&str, TaskRun)>,
        texts: Vec<(&str, TextRun)>,
    ) -> ModelMetrics {
        ModelMetrics {
            stage: stage.into(),
            parameters: 0,
            loss: None,
            perplexity: None,
            tokens: None,
            tasks: tasks.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            texts: texts.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            data_rows: Vec::new(),
        }
    }

    fn bernoulli(rng: &mut SplitMix64, n: usize, p: f64) -> Vec<bool> {
        (0..n).map(|_| rng.next_f64() < p).collect()
    }

    #[test]
    fn identical_models_differ_by_nothing_and_keep_the_whole_margin() {
        let mut rng = SplitMix64::new(1);
        let right = bernoulli(&mut rng, 200, 0.7);
        let windows: Vec<NllSum> = (0..20)
            .map(|i| NllSum {
                nll: 100.0 + i as f64,
                tokens: 50,
            })
            .collect();
        let m = |s| {
            model(
                s,
                vec![("piqa", task(right.clone(), 2))],
                vec![("wiki", text(windows.clone()))],
            )
        };
        let p = compare(&[m("teacher"), m("student")], 0, 200, 7);
        let c = &p.comparisons[0];
        assert_eq!(c.model, "student");
        for (name, d) in &c.differences {
            assert_eq!(
                (d.estimate, d.low, d.high),
                (0.0, Some(0.0), Some(0.0)),
                "{name}"
            );
        }
        let kept = c.mean_margin_kept.expect("a margin");
        assert_eq!(
            (kept.estimate, kept.low, kept.high),
            (1.0, Some(1.0), Some(1.0))
        );
    }

    #[test]
    fn the_interval_of_a_mean_difference_matches_the_normal_approximation() {
        let mut rng = SplitMix64::new(3);
        let n = 400;
        // Correlated outcomes: the student is right on most items the
        // teacher gets right.
        let teacher = bernoulli(&mut rng, n, 0.65);
        let student: Vec<bool> = teacher
            .iter()
            .map(|&t| {
                if t {
                    rng.next_f64() < 0.85
                } else {
                    rng.next_f64() < 0.3
                }
            })
            .collect();
        let d: Vec<f64> = student
            .iter()
            .zip(&teacher)
            .map(|(&s, &t)| f64::from(u8::from(s)) - f64::from(u8::from(t)))
            .collect();
        let mean = d.iter().sum::<f64>() / n as f64;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let se = (var / n as f64).sqrt();
        let p = compare(
            &[
                model("teacher", vec![("t", task(teacher, 4))], vec![]),
                model("student", vec![("t", task(student, 4))], vec![]),
            ],
            0,
            4000,
            11,
        );
        let (name, got) = &p.comparisons[0].differences[0];
        assert_eq!(name, "t acc");
        assert!(
            (got.estimate - mean).abs() < 1e-12,
            "{got:?} against {mean}"
        );
        // Monte Carlo error of a 2.5% quantile over 4000 resamples is about
        // 0.05 standard errors; the percentile and normal intervals of a
        // mean over 400 items agree to about as much.
        let (low, high) = (got.low.unwrap(), got.high.unwrap());
        for (end, normal) in [(low, mean - 1.96 * se), (high, mean + 1.96 * se)] {
            assert!(
                (end - normal).abs() < 0.2 * se,
                "{got:?}: end {end} against {normal} (standard error {se})"
            );
        }
    }

    #[test]
    fn a_loss_difference_is_of_token_weighted_means() {
        let units = |nll: &[f64]| -> Vec<NllSum> {
            nll.iter()
                .enumerate()
                .map(|(i, &x)| NllSum {
                    nll: x,
                    tokens: 10 + i,
                })
                .collect()
        };
        let a = units(&[30.0, 44.0, 26.0]);
        let b = units(&[20.0, 22.0, 24.0]);
        let p = compare(
            &[
                model("a", vec![], vec![("x", text(a))]),
                model("b", vec![], vec![("x", text(b))]),
            ],
            0,
            100,
            5,
        );
        let (name, d) = &p.comparisons[0].differences[0];
        assert_eq!(name, "x loss");
        let want = 66.0 / 33.0 - 100.0 / 33.0;
        assert!((d.estimate - want).abs() < 1e-12, "{d:?} against {want}");
        assert!(
            d.low.unwrap() <= d.estimate && d.estimate <= d.high.unwrap(),
            "{d:?}"
        );
    }

    #[test]
    fn the_margin_kept_is_the_share_of_the_references_lead_over_chance() {
        // Four candidates (chance 0.25): the reference right on 3 of 4
        // items, the student on 2 of 4: (0.5 - 0.25) / (0.75 - 0.25).
        let reference: Vec<bool> = (0..400).map(|i| i % 4 != 0).collect();
        let student: Vec<bool> = (0..400).map(|i| i % 2 == 0).collect();
        // A task where the reference is at chance has no margin.
        let at_chance: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        let p = compare(
            &[
                model(
                    "reference",
                    vec![
                        ("hard", task(reference, 4)),
                        ("coin", task(at_chance.clone(), 2)),
                    ],
                    vec![],
                ),
                model(
                    "student",
                    vec![("hard", task(student, 4)), ("coin", task(at_chance, 2))],
                    vec![],
                ),
            ],
            0,
            500,
            9,
        );
        let c = &p.comparisons[0];
        assert_eq!(p.no_margin, vec!["coin".to_string()]);
        assert_eq!(c.margin_kept.len(), 1);
        let (task_name, kept) = &c.margin_kept[0];
        assert_eq!(task_name, "hard");
        assert!((kept.estimate - 0.5).abs() < 1e-12, "{kept:?}");
        assert!(
            kept.low.unwrap() < 0.5 && 0.5 < kept.high.unwrap(),
            "{kept:?}"
        );
        assert_eq!(kept.left_out, 0);
        assert_eq!(c.mean_margin_kept.unwrap().estimate, kept.estimate);
        let table = paired_table(&p);
        assert!(table.contains("| student | hard | 50.0% |"), "{table}");
        assert!(table.contains("No margin for coin"), "{table}");
    }

    #[test]
    fn resamples_where_the_reference_is_at_chance_are_left_out_and_counted() {
        // Ten items of two candidates, the reference right on six: many
        // resamples put it at or below chance, where a margin has no value.
        let reference: Vec<bool> = (0..10).map(|i| i < 6).collect();
        let student: Vec<bool> = (0..10).map(|i| i % 2 == 0).collect();
        let p = compare(
            &[
                model("reference", vec![("few", task(reference, 2))], vec![]),
                model("student", vec![("few", task(student, 2))], vec![]),
            ],
            0,
            1000,
            3,
        );
        let c = &p.comparisons[0];
        let (_, kept) = &c.margin_kept[0];
        // (0.5 - 0.5) / (0.6 - 0.5) on the items as they are.
        assert!(kept.estimate.abs() < 1e-12, "{kept:?}");
        assert!(kept.left_out > 25, "{kept:?}");
        assert_eq!((kept.low, kept.high), (None, None), "{kept:?}");
        assert_eq!(c.mean_margin_kept.unwrap().left_out, kept.left_out);
        let table = paired_table(&p);
        assert!(!table.contains("NaN"), "{table}");
        assert!(
            table.contains("none: the reference is at or below chance in"),
            "{table}"
        );
        // The difference itself always has an interval.
        let (_, d) = &c.differences[0];
        assert!(d.low.is_some() && d.left_out == 0, "{d:?}");
    }

    #[test]
    fn texts_cut_differently_are_not_compared() {
        let w = |n: usize| {
            text(
                (0..n)
                    .map(|_| NllSum {
                        nll: 1.0,
                        tokens: 1,
                    })
                    .collect(),
            )
        };
        let p = compare(
            &[
                model("a", vec![], vec![("x", w(5))]),
                model("b", vec![], vec![("x", w(6))]),
            ],
            0,
            100,
            1,
        );
        assert!(p.comparisons[0].differences.is_empty());
        assert_eq!(p.skipped.len(), 1, "{:?}", p.skipped);
        assert!(p.skipped[0].starts_with("x loss"), "{:?}", p.skipped);
    }

    #[test]
    fn the_same_seed_gives_the_same_intervals() {
        let mut rng = SplitMix64::new(2);
        let a = bernoulli(&mut rng, 300, 0.6);
        let b = bernoulli(&mut rng, 300, 0.5);
        let models = [
            model("a", vec![("t", task(a, 2))], vec![]),
            model("b", vec![("t", task(b, 2))], vec![]),
        ];
        let run = |seed| compare(&models, 0, 300, seed).comparisons[0].differences[0].1;
        assert_eq!(run(4), run(4));
        assert_ne!(run(4), run(5));
    }
}
