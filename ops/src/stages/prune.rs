//! `prune`: a smaller model cut out of the `model` input, in width (hidden
//! channels, MLP neurons, query heads, kv groups) and depth (layers), keeping
//! the units the `scores` input ranks highest (or by weight magnitude, at
//! random, or the lowest-ranked as a baseline). Writes a Model artifact and
//! `pruning.json`, the kept indices of every axis.

use super::importance::{Importance, ImportanceParams};
use crate::io::hf_architecture::{ArchitectureChoice, HfArchitecture, Resolved, resolve};
use crate::io::hf_folder::{HfWriteOptions, read_hf_folder, write_hf_folder};
use crate::io::safetensors_io::DiskDtype;
use crate::io::scores::{Axis, DepthMetric, Scores};
use crate::model::LlamaConfig;
use crate::prune::report::{ModelSizes, PRUNING_FILE, PruneMethod, PruningReport};
use crate::prune::{DepthTarget, Keep, Rankings, Targets, apply};
use crate::rng::mix;
use anyhow::Context;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `prune` op.
pub struct Prune;

/// Parameters of `prune`. Give at least one target; an axis without a
/// target is kept whole and in its original order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    /// Hidden size to keep (embedding channels, one set for every layer).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub hidden: Option<usize>,
    /// MLP neurons to keep in every layer (intermediate_size).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub ffn: Option<usize>,
    /// Query heads to keep in every layer, in total. Heads are pruned inside
    /// their kv group: this must be a multiple of the kv groups kept, and
    /// each group keeps its heads / kv_groups best heads.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub heads: Option<usize>,
    /// Key/value groups to keep in every layer, each dropped or kept whole
    /// with its K/V rows and query heads (group importance: L2 of its heads'
    /// scores). Each kept group keeps all its heads unless `heads` is given.
    /// Not part of the Minitron paper; all groups are kept by default.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub kv_groups: Option<usize>,
    /// Layers to keep: the highest-scoring ones, or with `contiguous: true`
    /// all but one contiguous block.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub layers: Option<usize>,
    /// With `layers`: drop the single contiguous block of (source layers -
    /// `layers`) layers whose removal hurts least (lowest
    /// `depth.<metric>.size{n}` score), as done for Llama-3.1-Minitron-4B-Depth.
    #[serde(default)]
    pub contiguous: bool,
    /// Layers to drop, as 0-based indices (the first layer is 0); survivors
    /// are renumbered in order. Exclusive with `layers`.
    #[serde(default)]
    pub drop: Option<Vec<usize>>,
    /// Which depth score ranks layers for `layers` (with `method: importance`
    /// or `reverse`).
    #[serde(default)]
    pub depth_metric: DepthMetric,
    /// How units are ranked: `importance` keeps what the `scores` input
    /// ranks highest; `magnitude` ranks by weight norms (no scores needed);
    /// `random` draws a seeded random choice; `reverse` keeps what the
    /// scores rank lowest (a sanity baseline). `importance` and `reverse`
    /// need the `scores` input, the others must not have it.
    #[serde(default)]
    pub method: PruneMethod,
    /// With `method: random`: mixed into the recipe's seed, to draw a
    /// different choice without changing the seed of the whole recipe.
    #[serde(default)]
    pub random_seed: Option<u64>,
    /// Element type of the stored weights.
    #[serde(default)]
    pub dtype: DiskDtype,
}

impl PruneParams {
    /// The targets the parameters ask for.
    pub fn targets(&self) -> Targets {
        let depth = match (&self.drop, self.layers) {
            (Some(drop), _) => Some(DepthTarget::Drop(drop.clone())),
            (None, Some(n)) if self.contiguous => Some(DepthTarget::Contiguous(n)),
            (None, Some(n)) => Some(DepthTarget::Layers(n)),
            (None, None) => None,
        };
        Targets {
            hidden: self.hidden,
            ffn: self.ffn,
            heads: self.heads,
            kv_groups: self.kv_groups,
            depth,
        }
    }

    /// Whether a target needs a ranking (everything but a `drop` list).
    pub fn ranks_units(&self) -> bool {
        self.hidden.is_some()
            || self.ffn.is_some()
            || self.heads.is_some()
            || self.kv_groups.is_some()
            || self.layers.is_some()
    }

    /// Every problem visible without the model, each at its field.
    pub fn problems(&self, scores_bound: bool) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if self.targets().is_empty() {
            issues.push(
                ParamIssue::at(&[], "nothing to prune: no target is given")
                    .help("give at least one of hidden, ffn, heads, kv_groups, layers or drop"),
            );
        }
        for (field, value) in [
            ("hidden", self.hidden),
            ("ffn", self.ffn),
            ("heads", self.heads),
            ("kv_groups", self.kv_groups),
            ("layers", self.layers),
        ] {
            if value == Some(0) {
                issues.push(ParamIssue::at(
                    &[field],
                    format!("`{field}` must be at least 1"),
                ));
            }
        }
        if let (Some(heads), Some(groups)) = (self.heads, self.kv_groups)
            && groups > 0
            && !heads.is_multiple_of(groups)
        {
            issues.push(
                ParamIssue::at(
                    &["heads"],
                    format!("`heads: {heads}` is not a multiple of `kv_groups: {groups}`"),
                )
                .help("query heads are pruned inside each kv group: every group keeps heads / kv_groups of them"),
            );
        }
        if let Some(drop) = &self.drop {
            if drop.is_empty() {
                issues.push(ParamIssue::at(
                    &["drop"],
                    "`drop` is empty: list at least one layer (0-based), or remove it",
                ));
            }
            for (i, layer) in drop.iter().enumerate() {
                if drop[..i].contains(layer) {
                    issues.push(ParamIssue::at(
                        &["drop", &i.to_string()],
                        format!("layer {layer} is listed twice"),
                    ));
                }
            }
            if self.layers.is_some() {
                issues.push(
                    ParamIssue::at(&["drop"], "`layers` and `drop` are exclusive")
                        .help("`layers: N` picks the layers to keep; `drop: [..]` names the ones to remove"),
                );
            }
        }
        if self.contiguous && self.layers.is_none() {
            issues.push(
                ParamIssue::at(&["contiguous"], "`contiguous: true` needs `layers`")
                    .help("add `layers: N`, the number of layers to keep"),
            );
        }
        let method = self.method.name();
        if self.method.needs_scores() && self.ranks_units() && !scores_bound {
            issues.push(
                ParamIssue::at(&["method"], format!("`method: {method}` needs the `scores` input"))
                    .help("add `inputs: { scores: <importance stage> }`, or use `method: magnitude` or `random`"),
            );
        }
        if !self.method.needs_scores() && scores_bound {
            issues.push(ParamIssue::at(
                &["method"],
                format!("the `scores` input is not used with `method: {method}`; remove it"),
            ));
        }
        if self.random_seed.is_some() && self.method != PruneMethod::Random {
            issues.push(ParamIssue::at(
                &["random_seed"],
                "`random_seed` is only used with `method: random`",
            ));
        }
        let ranks_layers = self.layers.is_some() && self.method.needs_scores();
        if self.depth_metric != DepthMetric::default() && !ranks_layers {
            issues.push(ParamIssue::at(
                &["depth_metric"],
                "`depth_metric` is only used with `layers` and `method: importance` or `reverse`",
            ));
        }
        issues
    }
}

/// The axes an `importance` stage must have scored for these targets, with
/// the target field that needs each.
fn needed_axes(p: &PruneParams) -> Vec<(&'static str, Axis)> {
    [
        ("hidden", p.hidden.is_some(), Axis::Hidden),
        ("ffn", p.ffn.is_some(), Axis::Ffn),
        ("heads", p.heads.is_some(), Axis::Heads),
        ("kv_groups", p.kv_groups.is_some(), Axis::Heads),
        ("layers", p.layers.is_some(), Axis::Depth),
    ]
    .into_iter()
    .filter(|&(_, targeted, _)| targeted)
    .map(|(field, _, axis)| (field, axis))
    .collect()
}

/// The source model's config when its `load_model` stage names a file that
/// is cheap to read at plan time.
fn source_config(ctx: &CheckContext) -> Option<LlamaConfig> {
    super::upstream::loaded_config(ctx.inputs.get("model")?.first()?, ctx.recipe_dir)
}

/// The pruned width (hidden size and query heads, with the source's bias
/// terms), where the recipe alone tells it: from the source's config when
/// it is cheap to read, or from `hidden` and `heads` when both are given.
fn planned_width(p: &PruneParams, source: Option<&LlamaConfig>) -> Option<LlamaConfig> {
    let mut c = match source {
        Some(source) => source.clone(),
        None => {
            let (hidden, heads) = (p.hidden?, p.heads?);
            LlamaConfig::new(hidden, 1, 1, heads, heads, 1)
        }
    };
    let per_group = c.num_attention_heads / c.num_key_value_heads.max(1);
    c.hidden_size = p.hidden.unwrap_or(c.hidden_size);
    c.num_attention_heads = p
        .heads
        .or(p.kv_groups.map(|groups| groups * per_group))
        .unwrap_or(c.num_attention_heads);
    Some(c)
}

/// How transformers will load the pruned shape, said when it is pruned
/// rather than discovered at export.
fn export_note(pruned: &LlamaConfig) -> String {
    match resolve(pruned, ArchitectureChoice::Auto) {
        Ok(Resolved {
            reason: None,
            architecture,
        }) => format!("`export` writes it for transformers as {architecture}"),
        Ok(Resolved {
            reason: Some(why),
            architecture,
        }) => format!("`export` writes it for transformers as {architecture}, since {why}"),
        Err(why) => format!("no Hugging Face export can load this shape: {why}"),
    }
}

/// What an `importance` stage's parameters show it will not compute
/// although these targets need it.
fn upstream_problems(
    p: &PruneParams,
    importance: &ImportanceParams,
    stage: &str,
) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    for (field, axis) in needed_axes(p) {
        if !importance.axes.contains(&axis) {
            issues.push(
                ParamIssue::at(
                    &[field],
                    format!(
                        "`{field}` needs the `{axis}` scores, but stage `{stage}` does not compute them"
                    ),
                )
                .help(format!("add `{axis}` to the `axes` of stage `{stage}`")),
            );
        }
    }
    let metric = p.depth_metric;
    if p.layers.is_some()
        && importance.axes.contains(&Axis::Depth)
        && !importance.depth_metrics.contains(&metric)
    {
        let computed: Vec<&str> = importance.depth_metrics.iter().map(|m| m.name()).collect();
        issues.push(
            ParamIssue::at(
                &["depth_metric"],
                format!(
                    "`depth_metric: {metric}` is not among the depth metrics of stage `{stage}` ({})",
                    computed.join(", ")
                ),
            )
            .help(format!("add `{metric}` to the `depth_metrics` of stage `{stage}`")),
        );
    }
    issues
}

impl TypedOp for Prune {
    type Params = PruneParams;
    const NAME: &'static str = "prune";
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str = "Prunes a model in width (hidden channels, MLP neurons, query heads, kv groups) and depth (layers) by importance scores, weight magnitude or at random.";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("model", ArtifactKind::Model),
            Slot::one("scores", ArtifactKind::Scores).optional(),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn notes(&self, p: &PruneParams, ctx: &CheckContext) -> Vec<String> {
        let source = source_config(ctx);
        let fits = source
            .as_ref()
            .is_none_or(|s| p.targets().problems(s).is_empty());
        // Only a shape transformers' Llama refuses is worth a note.
        match planned_width(p, source.as_ref()) {
            Some(pruned)
                if fits
                    && pruned.num_attention_heads > 0
                    && HfArchitecture::Llama.refusal(&pruned).is_some() =>
            {
                vec![export_note(&pruned)]
            }
            _ => Vec::new(),
        }
    }

    fn check(&self, p: &PruneParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        let scores = ctx.inputs.get("scores").and_then(|v| v.first());
        let mut issues = p.problems(scores.is_some());
        if let Some(up) = scores
            && p.method.needs_scores()
            && let Some(importance) = up.params_of::<Importance>()
        {
            issues.extend(upstream_problems(p, &importance, &up.stage));
        }
        // Targets against the source model's sizes, when its config is cheap
        // to read; a field already flagged is not flagged twice.
        if let Some(source) = source_config(ctx) {
            for problem in p.targets().problems(&source) {
                if !issues
                    .iter()
                    .any(|i| i.path.first().map(String::as_str) == Some(problem.field))
                {
                    issues.push(ParamIssue::at(&[problem.field], problem.message));
                }
            }
        }
        issues
    }

    fn run(&self, p: PruneParams, ctx: &RunContext) -> anyhow::Result<()> {
        let dir = ctx.input("model")?;
        ctx.progress.log(&format!("reading {}", dir.display()));
        let folder = read_hf_folder(dir)
            .with_context(|| format!("cannot load the model folder {}", dir.display()))?;
        let config = LlamaConfig::from_json(&folder.config).context("invalid model config")?;
        let targets = p.targets();

        let rankings = match p.method {
            // A `drop` list alone needs no ranking, hence no scores.
            PruneMethod::Importance | PruneMethod::Reverse if !p.ranks_units() => {
                Rankings::default()
            }
            PruneMethod::Importance | PruneMethod::Reverse => {
                let scores_dir = ctx.input("scores")?;
                let scores = Scores::load(scores_dir)?;
                let r = Rankings::from_scores(&scores, &config, &targets, p.depth_metric)
                    .with_context(|| {
                        format!("cannot use the scores in {}", scores_dir.display())
                    })?;
                if p.method == PruneMethod::Reverse {
                    r.reversed()
                } else {
                    r
                }
            }
            PruneMethod::Magnitude => Rankings::magnitude(&config, &folder.tensors, &targets)?,
            PruneMethod::Random => {
                let seed = match p.random_seed {
                    Some(extra) => mix(ctx.seed, extra),
                    None => ctx.seed,
                };
                Rankings::random(&config, &targets, seed)
            }
        };
        let keep = Keep::select(&config, &rankings, &targets)
            .with_context(|| format!("stage `{}` cannot prune this model", ctx.stage))?;
        let (pruned, tensors) = apply(&config, folder.tensors, &keep)?;

        let mut config_json = folder.config;
        if let (Some(obj), serde_json::Value::Object(normal)) =
            (config_json.as_object_mut(), pruned.to_json())
        {
            obj.extend(normal);
        }
        let options = HfWriteOptions {
            dtype: p.dtype,
            ..HfWriteOptions::default()
        };
        write_hf_folder(
            &ctx.output_dir,
            &config_json,
            &tensors,
            &folder.assets,
            &options,
        )?;

        let ranks_layers = matches!(
            targets.depth,
            Some(DepthTarget::Layers(_)) | Some(DepthTarget::Contiguous(_))
        );
        let report = PruningReport {
            method: p.method,
            depth_metric: (ranks_layers && p.method.needs_scores()).then_some(p.depth_metric),
            source: ModelSizes::of(&config),
            result: ModelSizes::of(&pruned),
            dropped_layers: keep.dropped_layers(&config),
            kept: keep,
        };
        std::fs::write(
            ctx.output_dir.join(PRUNING_FILE),
            serde_json::to_string(&report)? + "\n",
        )
        .with_context(|| format!("cannot write {PRUNING_FILE}"))?;

        let (s, r) = (&report.source, &report.result);
        ctx.progress.log(&format!(
            "{} -> {} layers, hidden {} -> {}, ffn {} -> {}, heads {} -> {}, kv groups {} -> {}; \
             {:.1}M -> {:.1}M parameters",
            s.num_hidden_layers,
            r.num_hidden_layers,
            s.hidden_size,
            r.hidden_size,
            s.intermediate_size,
            r.intermediate_size,
            s.num_attention_heads,
            r.num_attention_heads,
            s.num_key_value_heads,
            r.num_key_value_heads,
            s.parameters as f64 / 1e6,
            r.parameters as f64 / 1e6,
        ));
        ctx.progress.log(&export_note(&pruned));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: serde_json::Value) -> PruneParams {
        serde_json::from_value(json).unwrap()
    }

    fn smollm2() -> LlamaConfig {
        let mut c = LlamaConfig::new(576, 1536, 30, 9, 3, 49152);
        c.head_dim = 64;
        c
    }

    #[test]
    fn the_planned_width_follows_hidden_heads_and_kv_groups() {
        let source = smollm2();
        let w = planned_width(&params(serde_json::json!({"hidden": 448})), Some(&source)).unwrap();
        assert_eq!((w.hidden_size, w.num_attention_heads), (448, 9));
        // Two of three groups keep their three heads each.
        let w = planned_width(&params(serde_json::json!({"kv_groups": 2})), Some(&source)).unwrap();
        assert_eq!((w.hidden_size, w.num_attention_heads), (576, 6));
        let w = planned_width(&params(serde_json::json!({"heads": 6})), Some(&source)).unwrap();
        assert_eq!(w.num_attention_heads, 6);
        // Without the source, only a recipe giving both sizes is known.
        assert!(planned_width(&params(serde_json::json!({"hidden": 448})), None).is_none());
        let w = planned_width(
            &params(serde_json::json!({"hidden": 448, "heads": 6})),
            None,
        )
        .unwrap();
        assert_eq!((w.hidden_size, w.num_attention_heads), (448, 6));
    }

    #[test]
    fn the_export_note_names_the_class_and_why() {
        let mut pruned = smollm2();
        pruned.hidden_size = 448;
        let note = export_note(&pruned);
        assert!(
            note.contains("MistralForCausalLM") && note.contains("(448)"),
            "{note}"
        );
        pruned.attention_bias = true;
        assert!(export_note(&pruned).contains("no Hugging Face export"));
        assert!(export_note(&smollm2()).contains("LlamaForCausalLM"));
    }
}
