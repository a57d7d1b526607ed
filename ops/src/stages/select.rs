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
//!
//! Both slots are partial: a candidate whose training failed (or its
//! partner in `continue_from`) is not ranked, and the search goes on with
//! the others; the stage's key records which were missing, so a rerun in
//! which they finish selects again among all of them.

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
            Slot::list("models", ArtifactKind::Model).partial(),
            // Paired in order with `models`: the selected position's model
            // here becomes the output.
            Slot::list("continue_from", ArtifactKind::Model)
                .optional()
                .partial(),
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
        let partners = ctx.input_stages.get("continue_from");
        let scored: Vec<Scored> = names
            .iter()
            .zip(&dirs)
            .enumerate()
            .map(|(at, (stage, dir))| {
                if ctx.is_absent("models", at) {
                    unscored(stage, "its stage failed in this run".into())
                } else if ctx.is_absent("continue_from", at) {
                    let partner = partners.and_then(|p| p.get(at)).map_or("?", String::as_str);
                    unscored(
                        stage,
                        format!("`{partner}`, to continue from, failed in this run"),
                    )
                } else {
                    score(stage, dir, p.metric)
                }
            })
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
    let problem = |why: String| unscored(stage, why);
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

/// A candidate that cannot be ranked, and why.
fn unscored(stage: &str, why: String) -> Scored {
    Scored {
        stage: stage.to_string(),
        score: None,
        problem: Some(why),
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

    /// A trained candidate's folder: a config and a `training.json` whose
    /// last held-out loss is `loss`.
    fn candidate(dir: &Path, loss: f64) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), format!("{{\"loss\": {loss}}}")).unwrap();
        let eval = |step| serde_json::json!({ "step": step, "loss": loss, "perplexity": loss.exp(), "tokens": 10 });
        let summary = serde_json::json!({
            "objective": "kd", "steps": 2, "tokens": 20, "seq_len": 5, "batch_rows": 2,
            "micro_batch": 2, "elapsed_s": 1.0, "tokens_per_s": 20.0, "resumed_from": null,
            "first_eval": eval(0), "last_eval": eval(2), "final_train_loss": loss,
        });
        std::fs::write(dir.join(TRAINING_FILE), summary.to_string()).unwrap();
    }

    /// Runs `select` on candidates with these losses (None: its stage
    /// failed, so its folder is empty), marked absent as the run marks
    /// them; its `selection.json` with the output's config under `config`,
    /// or the error.
    fn run_select(
        root: &Path,
        losses: &[Option<f64>],
        continue_from_absent: &[usize],
    ) -> anyhow::Result<serde_json::Value> {
        let mut inputs = std::collections::BTreeMap::new();
        let mut names = std::collections::BTreeMap::new();
        let mut absent = std::collections::BTreeMap::new();
        let dirs: Vec<_> = (0..losses.len())
            .map(|i| root.join(format!("short{i}")))
            .collect();
        for (dir, loss) in dirs.iter().zip(losses) {
            if let Some(loss) = loss {
                candidate(dir, *loss);
            }
        }
        let gone: Vec<usize> = (0..losses.len()).filter(|&i| losses[i].is_none()).collect();
        if !gone.is_empty() {
            absent.insert("models".to_string(), gone);
        }
        inputs.insert("models".to_string(), dirs);
        names.insert(
            "models".to_string(),
            (0..losses.len()).map(|i| format!("short[{i}]")).collect(),
        );
        if !continue_from_absent.is_empty() {
            let from: Vec<_> = (0..losses.len())
                .map(|i| root.join(format!("cand{i}")))
                .collect();
            for (i, dir) in from.iter().enumerate() {
                if !continue_from_absent.contains(&i) {
                    candidate(dir, 100.0 + i as f64);
                }
            }
            inputs.insert("continue_from".to_string(), from);
            names.insert(
                "continue_from".to_string(),
                (0..losses.len()).map(|i| format!("cand[{i}]")).collect(),
            );
            absent.insert("continue_from".to_string(), continue_from_absent.to_vec());
        }
        let out = root.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let ctx = RunContext {
            stage: "winner",
            inputs,
            input_stages: names,
            absent,
            output_dir: out.clone(),
            scratch_dir: root.join("scratch"),
            recipe_dir: root.to_path_buf(),
            seed: 0,
            device: distillery_engine::Device::Cpu,
            progress: &distillery_engine::progress::NoProgress,
        };
        let params = SelectParams {
            metric: SelectMetric::HeldoutLoss,
            rank: 1,
        };
        Select.run(params, &ctx)?;
        let selection = std::fs::read(out.join(SELECTION_FILE)).unwrap();
        let mut record: serde_json::Value = serde_json::from_slice(&selection).unwrap();
        record["config"] =
            serde_json::from_slice(&std::fs::read(out.join(CONFIG_FILE)).unwrap()).unwrap();
        Ok(record)
    }

    #[test]
    fn a_candidate_whose_stage_failed_is_not_ranked_and_the_others_are() {
        let dir = tempfile::tempdir().unwrap();
        let record = run_select(dir.path(), &[Some(3.0), None, Some(2.0)], &[]).unwrap();
        assert_eq!(record["selected"], "short[2]");
        assert_eq!(record["config"]["loss"], 2.0);
        let failed = &record["candidates"][1];
        assert_eq!(failed["stage"], "short[1]");
        assert!(failed["score"].is_null());
        assert!(
            failed["problem"]
                .as_str()
                .unwrap()
                .contains("failed in this run")
        );
    }

    #[test]
    fn a_candidate_whose_continue_from_partner_failed_is_not_ranked() {
        let dir = tempfile::tempdir().unwrap();
        let record = run_select(dir.path(), &[Some(3.0), Some(1.0), Some(2.0)], &[1]).unwrap();
        // short[1] has the best loss, but cand[1] is not there to continue from.
        assert_eq!(record["selected"], "short[2]");
        assert_eq!(record["continued_from"], "cand[2]");
        assert_eq!(record["config"]["loss"], 102.0);
        let problem = record["candidates"][1]["problem"].as_str().unwrap();
        assert!(problem.contains("`cand[1]`"), "{problem}");
    }

    #[test]
    fn every_candidate_failed_is_an_error_that_says_so_for_each() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_select(dir.path(), &[None, None], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("short[0]: its stage failed in this run")
                && err.contains("short[1]: its stage failed in this run"),
            "{err}"
        );
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
