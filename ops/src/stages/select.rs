//! `select`: the best of several trained models by a metric their training
//! recorded (the held-out loss after a short distillation, by default), as
//! Minitron's search picks the candidate to train on. The winner's folder
//! becomes this stage's Model, so the rest of the recipe continues from it;
//! `selection.json` beside it ranks every candidate.
//!
//! `rank: N` takes the N-th best instead (a matrix over `rank` gives the
//! top N, one stage each), and `continue_from` names the models to continue
//! from in place of the ranked ones, paired in order: the pruned candidate
//! whose short distillation ranked best, to distill again at length.

use crate::io::hf_folder::CONFIG_FILE;
use crate::train::TrainSummary;
use crate::train::metrics::TRAINING_FILE;
use anyhow::{Context, bail};
use distillery_engine::op::UpstreamInfo;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub struct Select;

/// What candidates are ranked by; lower is better for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SelectMetric {
    // The held-out loss at the end of the candidate's training.
    #[default]
    HeldoutLoss,
    // The last training loss.
    TrainLoss,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectParams {
    /// `heldout_loss` (the held-out loss the training measured last, at its
    /// end) or `train_loss` (the last training loss). Lower wins; a tie goes
    /// to the candidate listed first.
    #[serde(default)]
    pub metric: SelectMetric,
    /// Which place of the ranking to take: 1 (the default) the best, 2 the
    /// runner-up, ... (`matrix: { rank: [1, 2, 3] }` selects the top 3, one
    /// stage each).
    #[serde(default = "first", skip_serializing_if = "is_first")]
    #[schemars(range(min = 1))]
    pub rank: usize,
}

fn first() -> usize {
    1
}

fn is_first(rank: &usize) -> bool {
    *rank == 1
}

/// The written-out ranking.
pub const SELECTION_FILE: &str = "selection.json";

/// One candidate's score, or why it has none.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Scored {
    stage: String,
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

impl TypedOp for Select {
    type Params = SelectParams;
    const NAME: &'static str = "select";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Picks the best (or the `rank`-th best) of several trained models by the held-out (or training) loss their training recorded, and continues from it, or from its partner in `continue_from` (the candidates' untrained models, paired in order).";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::list("models", ArtifactKind::Model),
            // Paired in order with `models`: the selected position's model
            // here becomes the output.
            Slot::list("continue_from", ArtifactKind::Model).optional(),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, p: &SelectParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        // The ops that write a `training.json` beside their model.
        let trained = [
            super::distill::Distill::NAME,
            super::align::Align::NAME,
            super::teacher_correction::TeacherCorrection::NAME,
        ];
        let models = ctx
            .inputs
            .get("models")
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut issues: Vec<ParamIssue> = models
            .iter()
            .filter(|up| !trained.contains(&up.op.as_str()))
            .map(|up| {
                ParamIssue::at(
                    &[],
                    format!(
                        "`select` ranks trained models, and stage `{}` ({}) records no training",
                        up.stage, up.op
                    ),
                )
                .help("bind the stages that train the candidates (`distill`, `align`, `teacher_correction`)")
            })
            .collect();
        if p.rank == 0 {
            issues.push(ParamIssue::at(&["rank"], "`rank` counts from 1 (the best)"));
        } else if p.rank > models.len() && !models.is_empty() {
            issues.push(ParamIssue::at(
                &["rank"],
                format!(
                    "`rank` {} asks for more places than the {} candidates",
                    p.rank,
                    models.len()
                ),
            ));
        }
        if let Some(from) = ctx.inputs.get("continue_from") {
            issues.extend(pairing_issues(models, from));
        }
        issues
    }

    fn run(&self, p: SelectParams, ctx: &RunContext) -> anyhow::Result<()> {
        let dirs = ctx.inputs.get("models").cloned().unwrap_or_default();
        let names = ctx.input_stages.get("models").cloned().unwrap_or_default();
        let scored: Vec<Scored> = names
            .iter()
            .zip(&dirs)
            .map(|(stage, dir)| score(stage, dir, p.metric))
            .collect();
        let winner = pick(&scored, p.rank)?;
        for s in &scored {
            match (s.score, &s.problem) {
                (Some(v), _) => ctx.progress.log(&format!("{}: {v:.4}", s.stage)),
                (None, Some(why)) => ctx.progress.log(&format!("{}: skipped, {why}", s.stage)),
                (None, None) => {}
            }
        }
        let best = &scored[winner];
        let ties: Vec<&str> = scored
            .iter()
            .filter(|s| s.stage != best.stage && s.score == best.score)
            .map(|s| s.stage.as_str())
            .collect();
        let place = if p.rank == 1 {
            String::new()
        } else {
            format!(" at rank {}", p.rank)
        };
        ctx.progress.log(&format!(
            "selected {}{place} ({:.4}){}",
            best.stage,
            best.score.expect("a winner has a score"),
            if ties.is_empty() {
                String::new()
            } else {
                format!(
                    "; tied with {} (the first listed ranks first)",
                    ties.join(", ")
                )
            }
        ));
        let from_dirs = ctx.inputs.get("continue_from");
        let from_names = ctx.input_stages.get("continue_from");
        let continued = match (from_dirs, from_names) {
            (Some(dirs), Some(names)) => {
                let (Some(dir), Some(name)) = (dirs.get(winner), names.get(winner)) else {
                    bail!(
                        "`continue_from` has {} models for {} candidates",
                        dirs.len(),
                        scored.len()
                    );
                };
                ctx.progress.log(&format!("continuing from {name}"));
                copy_model(dir, &ctx.output_dir)?;
                Some(name.clone())
            }
            _ => {
                copy_model(&dirs[winner], &ctx.output_dir)?;
                None
            }
        };
        let mut record = serde_json::json!({
            "metric": p.metric,
            "selected": best.stage,
            "candidates": scored,
        });
        // Written only when not the default, so that a plain `select`
        // writes what it always wrote.
        if p.rank != 1 {
            record["rank"] = p.rank.into();
        }
        if let Some(name) = continued {
            record["continued_from"] = name.into();
        }
        std::fs::write(
            ctx.output_dir.join(SELECTION_FILE),
            serde_json::to_string_pretty(&record)? + "\n",
        )?;
        Ok(())
    }
}

/// A candidate's metric from its `training.json`; a missing or non-finite
/// value (a diverged run) is a problem, not a score.
fn score(stage: &str, dir: &Path, metric: SelectMetric) -> Scored {
    let problem = |why: String| Scored {
        stage: stage.to_string(),
        score: None,
        problem: Some(why),
    };
    let summary: TrainSummary = match std::fs::read(dir.join(TRAINING_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => return problem(format!("its {TRAINING_FILE} cannot be read ({e})")),
    };
    let value = match metric {
        SelectMetric::HeldoutLoss => summary.last_eval.map(|e| e.loss),
        SelectMetric::TrainLoss => summary.final_train_loss,
    };
    match value {
        Some(v) if v.is_finite() => Scored {
            stage: stage.to_string(),
            score: Some(v),
            problem: None,
        },
        Some(v) => problem(format!("its loss is {v} (the run diverged)")),
        None => problem("its training recorded no held-out loss".to_string()),
    }
}

/// The index of the candidate at place `rank` (from 1) of the ranking by
/// score, lowest first; among equal scores the first listed ranks first.
fn pick(scored: &[Scored], rank: usize) -> anyhow::Result<usize> {
    if scored.is_empty() {
        bail!("`select` has no candidates");
    }
    let mut ranked: Vec<(usize, f64)> = scored
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.score.map(|v| (i, v)))
        .collect();
    // A stable sort keeps the listed order among equals.
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let reasons = || -> String {
        scored
            .iter()
            .filter(|s| s.score.is_none())
            .map(|s| format!("\n  {}: {}", s.stage, s.problem.as_deref().unwrap_or("?")))
            .collect()
    };
    if ranked.is_empty() {
        bail!("no candidate has a score to rank by:{}", reasons());
    }
    match rank.checked_sub(1).and_then(|place| ranked.get(place)) {
        Some(&(i, _)) => Ok(i),
        None => bail!(
            "`rank` {rank} asks for more places than the {} candidates with a score{}",
            ranked.len(),
            if ranked.len() < scored.len() {
                format!("; without one:{}", reasons())
            } else {
                String::new()
            }
        ),
    }
}

/// Plan-time checks of `continue_from` against `models`: as many stages,
/// and where both are matrix expansions, each pair from the same values
/// (`short[hidden=448]` with `candidate[hidden=448]`).
fn pairing_issues(models: &[UpstreamInfo], from: &[UpstreamInfo]) -> Vec<ParamIssue> {
    if from.len() != models.len() {
        return vec![
            ParamIssue::at(
                &[],
                format!(
                    "`continue_from` binds {} models and `models` {}: they are paired in order",
                    from.len(),
                    models.len()
                ),
            )
            .help("bind the stages the candidates were trained from, one per candidate"),
        ];
    }
    models
        .iter()
        .zip(from)
        .filter_map(|(m, f)| {
            let (Some(a), Some(b)) = (expansion_values(&m.stage), expansion_values(&f.stage))
            else {
                return None;
            };
            (a != b).then(|| {
                ParamIssue::at(
                    &[],
                    format!(
                        "`continue_from` pairs `{}` with `{}`, whose matrix values differ",
                        m.stage, f.stage
                    ),
                )
                .help("list both in the same order (the same matrix gives the same order)")
            })
        })
        .collect()
}

/// The `[axis=value,...]` of an expanded stage's name.
fn expansion_values(stage: &str) -> Option<&str> {
    let open = stage.find('[')?;
    stage.ends_with(']').then(|| &stage[open..])
}

/// The winner's model files, hard-linked where the filesystem allows (the
/// store never changes a published entry), copied otherwise. Its training
/// records stay with it; this stage writes its own `selection.json`.
fn copy_model(from: &Path, to: &Path) -> anyhow::Result<()> {
    if !from.join(CONFIG_FILE).is_file() {
        bail!("{} holds no model", from.display());
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(entries: &[(&str, Option<f64>)]) -> Vec<Scored> {
        entries
            .iter()
            .map(|(stage, score)| Scored {
                stage: stage.to_string(),
                score: *score,
                problem: score.is_none().then(|| "diverged".to_string()),
            })
            .collect()
    }

    #[test]
    fn the_lowest_wins_and_the_first_listed_breaks_ties() {
        assert_eq!(
            pick(&scored(&[("a", Some(3.0)), ("b", Some(2.0))]), 1).unwrap(),
            1
        );
        let tied = scored(&[("a", Some(2.0)), ("b", Some(2.0)), ("c", Some(2.5))]);
        assert_eq!(pick(&tied, 1).unwrap(), 0);
        assert_eq!(
            pick(&scored(&[("a", None), ("b", Some(9.0))]), 1).unwrap(),
            1
        );
    }

    #[test]
    fn a_rank_counts_places_with_ties_in_listed_order_and_skips_unscored() {
        let c = scored(&[
            ("a", Some(2.5)),
            ("b", Some(2.0)),
            ("c", None),
            ("d", Some(2.0)),
            ("e", Some(1.0)),
        ]);
        let order: Vec<usize> = (1..=4).map(|r| pick(&c, r).unwrap()).collect();
        assert_eq!(order, [4, 1, 3, 0]);
        let err = pick(&c, 5).unwrap_err().to_string();
        assert!(
            err.contains("`rank` 5")
                && err.contains("4 candidates with a score")
                && err.contains("c: diverged"),
            "{err}"
        );
        assert!(pick(&c, 0).is_err());
    }

    #[test]
    fn no_scored_candidate_is_an_error_that_lists_each_reason() {
        let err = pick(&scored(&[("a", None), ("b", None)]), 1).unwrap_err();
        assert!(err.to_string().contains("a: diverged") && err.to_string().contains("b: diverged"));
        assert!(pick(&[], 1).is_err());
    }

    fn upstream(stage: &str) -> UpstreamInfo {
        UpstreamInfo {
            stage: stage.to_string(),
            op: "distill".to_string(),
            params: serde_json::Value::Null,
            inputs: Default::default(),
        }
    }

    #[test]
    fn continue_from_must_pair_with_the_candidates() {
        let models = [upstream("short[h=1]"), upstream("short[h=2]")];
        let same = [upstream("cand[h=1]"), upstream("cand[h=2]")];
        assert!(pairing_issues(&models, &same).is_empty());
        let plain = [upstream("a"), upstream("b")];
        assert!(pairing_issues(&models, &plain).is_empty());
        let swapped = [upstream("cand[h=2]"), upstream("cand[h=1]")];
        let issues = pairing_issues(&models, &swapped);
        assert_eq!(issues.len(), 2);
        assert!(issues[0].message.contains("`short[h=1]` with `cand[h=2]`"));
        let short = pairing_issues(&models, &same[..1]);
        assert!(short[0].message.contains("binds 1 models and `models` 2"));
    }
}
