//! From a parsed recipe to a pipeline the engine can run: ops resolved from
//! the registry, parameters typed and normalized, inputs checked against the
//! slots and their artifact kinds, the graph free of cycles. Every problem is
//! collected, each with its place in the recipe.

use crate::diagnostic::{Diagnostic, Span, did_you_mean, quoted_list};
use crate::graph::StageGraph;
use crate::op::{CheckContext, Op, OpRegistry, UpstreamInfo};
use crate::overrides::Overrides;
use crate::recipe::{self, Recipe, StageSpec};
use crate::slurm::resources::{self, Resources};
use crate::yaml::{Node, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A validated recipe.
#[derive(Clone)]
pub struct Pipeline {
    pub recipe: Recipe,
    pub stages: Vec<Stage>,
    pub graph: StageGraph,
}

impl Pipeline {
    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The stages stage `index` reads, by name, for each input slot.
    pub fn input_names(&self, index: usize) -> BTreeMap<String, Vec<String>> {
        self.stages[index]
            .inputs
            .iter()
            .map(|(slot, producers)| {
                let names = producers
                    .iter()
                    .map(|&j| self.stages[j].name.clone())
                    .collect();
                (slot.clone(), names)
            })
            .collect()
    }
}

/// A stage ready to be keyed and run.
#[derive(Clone)]
pub struct Stage {
    pub name: String,
    pub op: Arc<dyn Op>,
    /// Parameters with defaults filled in.
    pub params: serde_json::Value,
    /// Stage indices bound to each slot, in the order written.
    pub inputs: BTreeMap<String, Vec<usize>>,
    /// External files as written in the recipe (relative to its folder).
    pub external_files: Vec<PathBuf>,
    pub uses_accelerator: bool,
    /// The op's plan-time notes (see [`crate::TypedOp::notes`]).
    pub notes: Vec<String>,
    /// What the stage's Slurm job asks for: its own `resources`, over its
    /// op's in `slurm.ops`, over `slurm.defaults`.
    pub resources: Resources,
}

impl Stage {
    /// Whether `slot` is a partial list slot of its op ([`crate::Slot::partial`]).
    pub fn is_partial(&self, slot: &str) -> bool {
        self.op.slots().iter().any(|s| s.name == slot && s.partial)
    }

    /// Whether this stage can run without `producer`'s artifact: every slot
    /// that binds it is partial.
    pub fn can_run_without(&self, producer: usize) -> bool {
        self.inputs
            .iter()
            .filter(|(_, producers)| producers.contains(&producer))
            .all(|(slot, _)| self.is_partial(slot))
    }
}

/// Reads and validates a recipe file.
pub fn load(path: &Path, registry: &OpRegistry) -> Result<Pipeline, LoadError> {
    load_with_overrides(path, &[], registry)
}

/// Reads a recipe file, applies `--set PATH=VALUE` overrides and validates
/// the result; problems in the flags are reported with the recipe's.
pub fn load_with_overrides(
    path: &Path,
    flags: &[String],
    registry: &OpRegistry,
) -> Result<Pipeline, LoadError> {
    let source = std::fs::read_to_string(path).map_err(|e| LoadError::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    let (overrides, result) = validate_with_flags(path, &source, flags, registry);
    let diagnostics = match result {
        Ok(pipeline) => return Ok(pipeline),
        Err(diagnostics) => diagnostics,
    };
    Err(LoadError::Invalid {
        path: path.to_path_buf(),
        source,
        overrides: Box::new(overrides),
        diagnostics,
    })
}

#[derive(Debug)]
pub enum LoadError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    Invalid {
        path: PathBuf,
        source: String,
        /// The `--set` flags, which spans past the source point into.
        overrides: Box<Overrides>,
        diagnostics: Vec<Diagnostic>,
    },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "cannot read recipe {}: {error}", path.display()),
            Self::Invalid {
                path, diagnostics, ..
            } => write!(
                f,
                "recipe {} has {} problem(s)",
                path.display(),
                diagnostics.len()
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// Validates recipe source; returns every problem found.
pub fn validate(
    path: &Path,
    source: &str,
    registry: &OpRegistry,
) -> Result<Pipeline, Vec<Diagnostic>> {
    validate_with_overrides(path, source, &Overrides::default(), registry)
}

/// Validates recipe source with `--set PATH=VALUE` flags applied. Returns
/// the parsed overrides (the spans of their problems point into its text)
/// and the pipeline, or every problem found, the flags' own included.
pub fn validate_with_flags(
    path: &Path,
    source: &str,
    flags: &[String],
    registry: &OpRegistry,
) -> (Overrides, Result<Pipeline, Vec<Diagnostic>>) {
    let (overrides, flag_problems) = Overrides::parse(flags, source.len());
    let result = match validate_with_overrides(path, source, &overrides, registry) {
        Ok(pipeline) if flag_problems.is_empty() => Ok(pipeline),
        Ok(_) => Err(flag_problems),
        Err(mut diagnostics) => {
            diagnostics.extend(flag_problems);
            Err(sorted(diagnostics))
        }
    };
    (overrides, result)
}

/// Validates recipe source with overrides applied; returns every problem found.
pub fn validate_with_overrides(
    path: &Path,
    source: &str,
    overrides: &Overrides,
    registry: &OpRegistry,
) -> Result<Pipeline, Vec<Diagnostic>> {
    let (recipe, mut diagnostics) = recipe::parse(path, source, overrides);
    let Some(recipe) = recipe else {
        return Err(sorted(diagnostics));
    };
    let names: Vec<&str> = recipe.stages.iter().map(|s| s.name.as_str()).collect();
    let index_of = |name: &str| recipe.stages.iter().position(|s| s.name == name);
    let ops: Vec<Option<Arc<dyn Op>>> = recipe
        .stages
        .iter()
        .map(|s| registry.get(&s.op).cloned())
        .collect();

    // Ops, slots and edges.
    let mut edges = Vec::new();
    let mut inputs: Vec<BTreeMap<String, Vec<usize>>> = vec![BTreeMap::new(); recipe.stages.len()];
    for (i, spec) in recipe.stages.iter().enumerate() {
        let Some(op) = &ops[i] else {
            if !spec.op.is_empty() {
                let known = registry.names();
                let mut d = Diagnostic::new(
                    "recipe::unknown-op",
                    format!("unknown op `{}` in stage `{}`", spec.op, spec.name),
                    spec.op_span,
                )
                .label("no such op");
                d.help = Some(match did_you_mean(&spec.op, &known) {
                    Some(hint) => hint,
                    None => format!("available ops: {}", quoted_list(&known)),
                });
                diagnostics.push(d);
            }
            // Still record edges so unknown stages and cycles are reported.
            for binding in &spec.inputs {
                for (target, span) in &binding.targets {
                    match index_of(target) {
                        Some(j) => edges.push((j, i)),
                        None => diagnostics.push(unknown_stage(spec, target, *span, &names)),
                    }
                }
            }
            continue;
        };
        let slots = op.slots();
        for binding in &spec.inputs {
            let Some(slot) = slots.iter().find(|s| s.name == binding.slot) else {
                let slot_names: Vec<&str> = slots.iter().map(|s| s.name).collect();
                let mut d = Diagnostic::new(
                    "recipe::unknown-slot",
                    format!("op `{}` has no input slot `{}`", spec.op, binding.slot),
                    binding.slot_span,
                )
                .label("unknown slot");
                d.help = Some(
                    match (
                        did_you_mean(&binding.slot, &slot_names),
                        slot_names.is_empty(),
                    ) {
                        (_, true) => format!("op `{}` takes no inputs", spec.op),
                        (Some(hint), _) => format!("{hint} (slots: {})", quoted_list(&slot_names)),
                        (None, _) => {
                            format!("slots of `{}`: {}", spec.op, quoted_list(&slot_names))
                        }
                    },
                );
                diagnostics.push(d);
                continue;
            };
            if binding.is_list && !slot.list {
                diagnostics.push(
                    Diagnostic::new(
                        "recipe::not-a-list-slot",
                        format!(
                            "input `{}` of op `{}` takes one stage, not a list",
                            slot.name, spec.op
                        ),
                        binding.value_span,
                    )
                    .label("a list")
                    .help("name a single stage"),
                );
            }
            if slot.list && binding.targets.is_empty() {
                diagnostics.push(
                    Diagnostic::new(
                        "recipe::empty-input-list",
                        format!("input `{}` needs at least one stage", slot.name),
                        binding.value_span,
                    )
                    .label("empty list"),
                );
            }
            let mut bound = Vec::new();
            for (target, span) in &binding.targets {
                let Some(j) = index_of(target) else {
                    diagnostics.push(unknown_stage(spec, target, *span, &names));
                    continue;
                };
                edges.push((j, i));
                bound.push(j);
                if let Some(producer) = &ops[j]
                    && producer.output() != slot.kind
                {
                    diagnostics.push(
                            Diagnostic::new(
                                "recipe::wrong-artifact-kind",
                                format!(
                                    "input `{}` of stage `{}` expects a {}, but stage `{target}` ({}) produces a {}",
                                    slot.name,
                                    spec.name,
                                    slot.kind,
                                    producer.name(),
                                    producer.output()
                                ),
                                *span,
                            )
                            .label(format!("produces a {}", producer.output()))
                            .with_secondary(recipe.stages[j].op_span, format!("`{target}` is a `{}` stage", producer.name())),
                        );
                }
            }
            inputs[i].insert(binding.slot.clone(), bound);
        }
        for slot in &slots {
            if !slot.optional
                && !spec.inputs_broken
                && !spec.inputs.iter().any(|b| b.slot == slot.name)
            {
                diagnostics.push(
                    Diagnostic::new(
                        "recipe::missing-input",
                        format!(
                            "stage `{}` is missing input `{}` (a {}{})",
                            spec.name,
                            slot.name,
                            slot.kind,
                            if slot.list { " list" } else { "" }
                        ),
                        spec.name_span,
                    )
                    .label(format!("needs `{}`", slot.name))
                    .help(format!(
                        "add `inputs: {{ {}: <stage> }}`; op `{}` takes {}",
                        slot.name,
                        spec.op,
                        quoted_list(&slots.iter().map(|s| s.name).collect::<Vec<_>>())
                    )),
                );
            }
        }
    }

    // Cycles.
    let graph = StageGraph::new(recipe.stages.len(), edges);
    for cycle in graph.cycles() {
        let loop_text = cycle
            .iter()
            .chain(std::iter::once(&cycle[0]))
            .map(|&i| recipe.stages[i].name.as_str())
            .collect::<Vec<_>>()
            .join(" -> ");
        // Point at the input that closes the loop: the first stage reads the last.
        let first = &recipe.stages[cycle[0]];
        let last_name = &recipe.stages[*cycle.last().unwrap()].name;
        let span = first
            .inputs
            .iter()
            .flat_map(|b| b.targets.iter())
            .find(|(t, _)| t == last_name)
            .map_or(first.name_span, |(_, s)| *s);
        let mut d = Diagnostic::new(
            "recipe::cycle",
            format!("the stages form a cycle: {loop_text}"),
            span,
        )
        .label("this input closes the loop")
        .help("a stage cannot depend on its own output; remove one of these inputs");
        for &i in &cycle[1..] {
            d = d.with_secondary(recipe.stages[i].name_span, "part of the cycle");
        }
        diagnostics.push(d);
    }

    // Parameters: typed deserialization, then the op's own checks.
    let mut params = vec![serde_json::Value::Null; recipe.stages.len()];
    for (i, spec) in recipe.stages.iter().enumerate() {
        let Some(op) = &ops[i] else { continue };
        if spec.with_broken {
            continue;
        }
        let with = spec
            .with
            .as_ref()
            .map_or(serde_json::Value::Object(Default::default()), Node::to_json);
        match op.normalize(with) {
            Ok(p) => params[i] = p,
            Err(e) => diagnostics.push(param_error(spec, op.as_ref(), &e.path, &e.message)),
        }
    }
    let recipe_dir = recipe.dir();
    let mut stages = Vec::with_capacity(recipe.stages.len());
    for (i, spec) in recipe.stages.iter().enumerate() {
        let Some(op) = &ops[i] else { continue };
        if params[i].is_null() {
            continue;
        }
        let upstream = upstream_of(i, &inputs, &params, &recipe, recipe.stages.len());
        let ctx = CheckContext {
            inputs: &upstream,
            recipe_dir: &recipe_dir,
        };
        for issue in op.check(&params[i], &ctx) {
            let (node_span, key_span) = locate(spec, &issue.path);
            let mut d = Diagnostic::new(
                "recipe::invalid-parameter",
                format!("stage `{}`: {}", spec.name, issue.message),
                node_span.or(key_span).unwrap_or_else(|| spec.with_span()),
            )
            .label("invalid value");
            d.help = issue.help;
            diagnostics.push(d);
        }
        let external_files = op.external_files(&params[i]);
        for file in &external_files {
            let full = recipe_dir.join(file);
            if !full.exists() {
                let text = file.to_string_lossy();
                let span =
                    find_string(spec.with.as_ref(), &text).unwrap_or_else(|| spec.with_span());
                diagnostics.push(
                    Diagnostic::new(
                        "recipe::missing-file",
                        format!("stage `{}` reads `{text}`, which does not exist", spec.name),
                        span,
                    )
                    .label("no such file or directory")
                    .help(format!(
                        "paths are relative to the recipe's folder ({})",
                        std::path::absolute(&recipe_dir)
                            .unwrap_or_else(|_| recipe_dir.clone())
                            .display()
                    )),
                );
            }
        }
        stages.push(Stage {
            name: spec.name.clone(),
            op: op.clone(),
            uses_accelerator: op.uses_accelerator(&params[i]),
            notes: op.notes(&params[i], &ctx),
            params: params[i].clone(),
            inputs: inputs[i].clone(),
            external_files,
            resources: spec.resources.over(&recipe.slurm.for_op(op.name())),
        });
    }
    if let Some(node) = &recipe.slurm_node {
        diagnostics.extend(resources::unknown_ops(
            node,
            &recipe.slurm,
            &registry.names(),
        ));
    }

    if diagnostics.is_empty() {
        Ok(Pipeline {
            recipe,
            stages,
            graph,
        })
    } else {
        Err(sorted(diagnostics))
    }
}

/// Orders diagnostics by position so output reads top to bottom.
fn sorted(mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(|d| (d.primary.span.start, d.primary.span.end));
    diagnostics
}

fn unknown_stage(spec: &StageSpec, target: &str, span: Span, names: &[&str]) -> Diagnostic {
    let others: Vec<&str> = names.iter().copied().filter(|n| *n != spec.name).collect();
    let mut d = Diagnostic::new(
        "recipe::unknown-stage",
        format!(
            "stage `{}` reads from `{target}`, which is not a stage",
            spec.name
        ),
        span,
    )
    .label("unknown stage");
    d.help = Some(match did_you_mean(target, &others) {
        Some(hint) => hint,
        None => format!("stages in this recipe: {}", quoted_list(&others)),
    });
    d
}

/// The value node and the key node at a path inside `with`.
fn locate(spec: &StageSpec, path: &[String]) -> (Option<Span>, Option<Span>) {
    let Some(with) = &spec.with else {
        return (None, None);
    };
    let (node, complete) = with.find_path(path);
    let key = with.find_key(path).map(|k| k.span);
    (complete.then_some(node.span), key)
}

fn param_error(spec: &StageSpec, op: &dyn Op, path: &[String], message: &str) -> Diagnostic {
    let op_name = op.name();
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        let allowed = allowed_fields(message);
        let span = spec
            .with
            .as_ref()
            .and_then(|w| w.find_key(path))
            .map_or(spec.with_span(), |k| k.span);
        let mut d = Diagnostic::new(
            "recipe::unknown-parameter",
            format!(
                "op `{op_name}` has no parameter `{field}` (stage `{}`)",
                spec.name
            ),
            span,
        )
        .label("unknown parameter");
        let allowed_refs: Vec<&str> = allowed.iter().map(String::as_str).collect();
        d.help = Some(match did_you_mean(field, &allowed_refs) {
            Some(hint) => format!("{hint} (allowed: {})", quoted_list(&allowed_refs)),
            None if allowed.is_empty() => format!("op `{op_name}` takes no parameters here"),
            None => format!("allowed: {}", quoted_list(&allowed_refs)),
        });
        return d;
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let (node_span, key_span) = locate(spec, path);
        let span = if spec.with.is_some() {
            key_span.or(node_span).unwrap_or_else(|| spec.with_span())
        } else {
            spec.name_span
        };
        let at = if path.is_empty() {
            String::new()
        } else {
            format!(" in `{}`", path.join("."))
        };
        return Diagnostic::new(
            "recipe::missing-parameter",
            format!(
                "stage `{}` is missing parameter `{field}`{at} (op `{op_name}`)",
                spec.name
            ),
            span,
        )
        .label(format!("`{field}` is required"))
        .help(format!("add `{field}: <value>` under `with`"));
    }
    let (node_span, key_span) = locate(spec, path);
    let where_ = if path.is_empty() {
        "`with`".to_string()
    } else {
        format!("`{}`", path.join("."))
    };
    let message = tidy_serde(message);
    let mut d = Diagnostic::new(
        "recipe::invalid-parameter",
        format!("stage `{}`: invalid {where_}: {message}", spec.name),
        node_span.or(key_span).unwrap_or_else(|| spec.with_span()),
    )
    .label("invalid value");
    // `2e6` is a float in YAML 1.2, so an integer parameter refuses it.
    if message.contains("floating point") && message.contains("integer") {
        d = d.help("in YAML a number with an exponent or a point is a float; write integers in full, `_` may group digits (`2_000_000`)");
    }
    d
}

/// The allowed names serde lists after "expected" (`a`, `b` or `c`).
fn allowed_fields(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected ") else {
        return Vec::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// serde's messages name Rust types (`u32`); say what a recipe author writes.
fn tidy_serde(message: &str) -> String {
    message
        .replace("expected u32", "expected a non-negative integer")
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected usize", "expected a non-negative integer")
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected f32", "expected a number")
}

/// The span of a string scalar equal to `text` inside `node`.
fn find_string(node: Option<&Node>, text: &str) -> Option<Span> {
    let node = node?;
    match &node.value {
        Value::Str(s) if s == text => Some(node.span),
        Value::Seq(items) => items.iter().find_map(|n| find_string(Some(n), text)),
        Value::Map(entries) => entries.iter().find_map(|(_, v)| find_string(Some(v), text)),
        _ => None,
    }
}

/// What a check of stage `i` sees of the stages bound to its slots, and of
/// theirs in turn. `depth` bounds the walk, so a cycle (reported elsewhere)
/// cannot recurse forever.
fn upstream_of(
    i: usize,
    inputs: &[BTreeMap<String, Vec<usize>>],
    params: &[serde_json::Value],
    recipe: &Recipe,
    depth: usize,
) -> BTreeMap<String, Vec<UpstreamInfo>> {
    if depth == 0 {
        return BTreeMap::new();
    }
    inputs[i]
        .iter()
        .map(|(slot, producers)| {
            let infos = producers
                .iter()
                .map(|&j| UpstreamInfo {
                    stage: recipe.stages[j].name.clone(),
                    op: recipe.stages[j].op.clone(),
                    params: params[j].clone(),
                    inputs: upstream_of(j, inputs, params, recipe, depth - 1),
                })
                .collect();
            (slot.clone(), infos)
        })
        .collect()
}
