//! `select`: the best of several trained models by a metric their training
//! recorded (the held-out loss after a short distillation, by default), as
//! Minitron's search picks the candidate to train on. The winner's folder
//! becomes this stage's Model, so the rest of the recipe continues from it;
//! `selection.json` beside it ranks every candidate.

use crate::io::hf_folder::CONFIG_FILE;
use crate::train::TrainSummary;
use crate::train::metrics::TRAINING_FILE;
use anyhow::{Context, bail};
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
    const DESCRIPTION: &'static str = "Picks the best of several trained models by the held-out (or training) loss their training recorded, and continues from it.";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::list("models", ArtifactKind::Model)]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, _: &SelectParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        // The ops that write a `training.json` beside their model.
        let trained = [
            super::distill::Distill::NAME,
            super::align::Align::NAME,
            super::teacher_correction::TeacherCorrection::NAME,
        ];
        ctx.inputs
            .get("models")
            .into_iter()
            .flatten()
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
            .collect()
    }

    fn run(&self, p: SelectParams, ctx: &RunContext) -> anyhow::Result<()> {
        let dirs = ctx.inputs.get("models").cloned().unwrap_or_default();
        let names = ctx.input_stages.get("models").cloned().unwrap_or_default();
        let scored: Vec<Scored> = names
            .iter()
            .zip(&dirs)
            .map(|(stage, dir)| score(stage, dir, p.metric))
            .collect();
        let winner = pick(&scored)?;
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
        ctx.progress.log(&format!(
            "selected {} ({:.4}){}",
            best.stage,
            best.score.expect("a winner has a score"),
            if ties.is_empty() {
                String::new()
            } else {
                format!("; tied with {} (the first listed wins)", ties.join(", "))
            }
        ));
        copy_model(&dirs[winner], &ctx.output_dir)?;
        let record = serde_json::json!({
            "metric": p.metric,
            "selected": best.stage,
            "candidates": scored,
        });
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

/// The index of the lowest score; the first listed among equals.
fn pick(scored: &[Scored]) -> anyhow::Result<usize> {
    if scored.is_empty() {
        bail!("`select` has no candidates");
    }
    let best = scored
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.score.map(|v| (i, v)))
        .fold(None, |best: Option<(usize, f64)>, (i, v)| match best {
            Some((_, b)) if b <= v => best,
            _ => Some((i, v)),
        });
    match best {
        Some((i, _)) => Ok(i),
        None => {
            let reasons: Vec<String> = scored
                .iter()
                .map(|s| format!("{}: {}", s.stage, s.problem.as_deref().unwrap_or("?")))
                .collect();
            bail!(
                "no candidate has a score to rank by:\n  {}",
                reasons.join("\n  ")
            )
        }
    }
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
            pick(&scored(&[("a", Some(3.0)), ("b", Some(2.0))])).unwrap(),
            1
        );
        assert_eq!(
            pick(&scored(&[
                ("a", Some(2.0)),
                ("b", Some(2.0)),
                ("c", Some(2.5))
            ]))
            .unwrap(),
            0
        );
        assert_eq!(pick(&scored(&[("a", None), ("b", Some(9.0))])).unwrap(), 1);
    }

    #[test]
    fn no_scored_candidate_is_an_error_that_lists_each_reason() {
        let err = pick(&scored(&[("a", None), ("b", None)])).unwrap_err();
        assert!(err.to_string().contains("a: diverged") && err.to_string().contains("b: diverged"));
        assert!(pick(&[]).is_err());
    }
}
