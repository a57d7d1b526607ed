//! The recipe as the user wrote it: name, seed, device, vars and stages, each
//! part with its place in the source. Reading the YAML tree into this shape
//! reports structural problems; what ops and stages mean is checked later
//! (`validate`).

use crate::diagnostic::{Diagnostic, Span, did_you_mean, quoted_list};
use crate::matrix::{self, Expansion};
use crate::op::Device;
use crate::overrides::Overrides;
use crate::slurm::resources::{self, Resources, SlurmSettings};
use crate::vars::{self, Scope};
use crate::yaml::{self, Node, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const TOP_LEVEL_KEYS: &[&str] = &[
    "name", "seed", "device", "executor", "slurm", "vars", "stages",
];
const STAGE_KEYS: &[&str] = &["op", "inputs", "with", "matrix", "resources"];

/// Where a recipe's stages run: threads of this process, or one Slurm job
/// each. `run --executor` (or `DISTILLERY_EXECUTOR`) comes first, then the
/// recipe's `executor:`, then the machine's config file (`config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

impl ExecutorKind {
    pub const NAMES: &[&str] = &["local", "slurm"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "local" => Some(Self::Local),
            "slurm" => Some(Self::Slurm),
            _ => None,
        }
    }
}

/// A parsed recipe, before its ops are resolved.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Where the recipe was read from (for messages and relative paths).
    pub path: PathBuf,
    pub source: String,
    /// `--set` overrides applied on top of the file (empty when none).
    pub overrides: Overrides,
    pub name: String,
    pub seed: u64,
    pub device: Device,
    /// The recipe's `executor:`, if it names one.
    pub executor: Option<ExecutorKind>,
    /// The recipe's `slurm:` block, and the node it came from (for
    /// diagnostics that need the op registry).
    pub slurm: SlurmSettings,
    pub slurm_node: Option<Node>,
    pub stages: Vec<StageSpec>,
}

impl Recipe {
    /// Folder that relative paths in the recipe are resolved against.
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// One stage as written.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub name_span: Span,
    pub op: String,
    pub op_span: Span,
    pub inputs: Vec<InputBinding>,
    /// The `with` block after `${vars.x}` substitution; None when absent.
    pub with: Option<Node>,
    /// `with` had a problem already reported; its parameters are not checked.
    pub with_broken: bool,
    /// `inputs` was not a mapping (already reported); slots are not checked.
    pub inputs_broken: bool,
    /// Which expansion of a `matrix` stage this is; `None` for a plain stage.
    pub expansion: Option<Expansion>,
    /// The stage's own Slurm `resources:` (empty when absent).
    pub resources: Resources,
}

impl StageSpec {
    /// Where `with` problems without a more precise place should point.
    pub fn with_span(&self) -> Span {
        self.with.as_ref().map_or(self.name_span, |w| w.span)
    }
}

/// `slot: stage` or `slot: [stage, ...]`.
#[derive(Debug, Clone)]
pub struct InputBinding {
    pub slot: String,
    pub slot_span: Span,
    pub targets: Vec<(String, Span)>,
    /// Written as a YAML list.
    pub is_list: bool,
    pub value_span: Span,
}

/// Parses recipe source with the command line's overrides applied. Returns
/// the recipe whenever its root is a mapping (parts with problems left out),
/// and every problem found.
pub fn parse(
    path: &Path,
    source: &str,
    overrides: &Overrides,
) -> (Option<Recipe>, Vec<Diagnostic>) {
    let (root, mut diagnostics) = yaml::parse(source);
    let Some(mut root) = root else {
        if diagnostics.is_empty() {
            diagnostics.push(
                Diagnostic::new("recipe::empty", "the recipe is empty", Span::new(0, 0))
                    .help("a recipe needs at least `stages:` with one stage"),
            );
        }
        return (None, diagnostics);
    };
    diagnostics.extend(overrides.apply(&mut root));
    let mut reader = Reader {
        diagnostics: &mut diagnostics,
    };
    // Structural problems do not stop here: validation goes on and reports
    // what else is wrong, all at once.
    let recipe = reader.recipe(path, source, &root).map(|recipe| Recipe {
        overrides: overrides.clone(),
        ..recipe
    });
    (recipe, diagnostics)
}

struct Reader<'d> {
    diagnostics: &'d mut Vec<Diagnostic>,
}

impl Reader<'_> {
    fn error(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    fn recipe(&mut self, path: &Path, source: &str, root: &Node) -> Option<Recipe> {
        let Some(entries) = root.as_map() else {
            self.error(
                Diagnostic::new(
                    "recipe::not-a-mapping",
                    format!(
                        "a recipe is a mapping with `stages:`, found {}",
                        root.kind_name()
                    ),
                    root.span,
                )
                .label("expected a mapping"),
            );
            return None;
        };
        for (key, _) in entries {
            let text = key.key_text().unwrap_or_default();
            if !TOP_LEVEL_KEYS.contains(&text.as_str()) {
                let mut d = Diagnostic::new(
                    "recipe::unknown-key",
                    format!("unknown top-level key `{text}`"),
                    key.span,
                )
                .label("not a recipe key");
                d.help = Some(match did_you_mean(&text, TOP_LEVEL_KEYS) {
                    Some(hint) => format!("{hint} (allowed: {})", quoted_list(TOP_LEVEL_KEYS)),
                    None => format!("allowed keys: {}", quoted_list(TOP_LEVEL_KEYS)),
                });
                self.error(d);
            }
        }

        let default_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "recipe".into());
        let name = match root.get("name") {
            None => default_name,
            Some((_, node)) => match &node.value {
                Value::Str(s) if !s.trim().is_empty() => s.clone(),
                _ => {
                    self.error(
                        Diagnostic::new(
                            "recipe::invalid-name",
                            format!(
                                "`name` must be a non-empty string, found {}",
                                node.kind_name()
                            ),
                            node.span,
                        )
                        .label("expected a string"),
                    );
                    default_name
                }
            },
        };
        let seed = match root.get("seed") {
            None => 0,
            Some((_, node)) => match node.value {
                Value::Int(i) if i >= 0 => i as u64,
                _ => {
                    self.error(
                        Diagnostic::new(
                            "recipe::invalid-seed",
                            format!(
                                "`seed` must be a non-negative integer, found {}",
                                describe(node)
                            ),
                            node.span,
                        )
                        .label("expected an integer >= 0"),
                    );
                    0
                }
            },
        };
        let device = match root.get("device") {
            None => Device::Auto,
            Some((_, node)) => match node.as_str() {
                Some("cpu") => Device::Cpu,
                Some("cuda") => Device::Cuda,
                Some("auto") => Device::Auto,
                _ => {
                    let found = describe(node);
                    let mut d = Diagnostic::new(
                        "recipe::invalid-device",
                        format!("`device` must be one of `cpu`, `cuda`, `auto`, found {found}"),
                        node.span,
                    )
                    .label("unknown device");
                    if let Some(hint) = node
                        .as_str()
                        .and_then(|s| did_you_mean(s, &["cpu", "cuda", "auto"]))
                    {
                        d = d.help(hint);
                    }
                    self.error(d);
                    Device::Auto
                }
            },
        };
        let executor = match root.get("executor") {
            None => None,
            Some((_, node)) => match node.as_str().and_then(ExecutorKind::parse) {
                Some(kind) => Some(kind),
                None => {
                    self.error(
                        Diagnostic::new(
                            "recipe::invalid-executor",
                            format!(
                                "`executor` must be one of {}, found {}",
                                quoted_list(ExecutorKind::NAMES),
                                describe(node)
                            ),
                            node.span,
                        )
                        .label("unknown executor"),
                    );
                    None
                }
            },
        };
        let (slurm, slurm_node) = match root.get("slurm") {
            None => (SlurmSettings::default(), None),
            Some((_, node)) => {
                let (settings, problems) = resources::parse_settings(node);
                self.diagnostics.extend(problems);
                match settings {
                    Some(settings) => (settings, Some(node.clone())),
                    None => (SlurmSettings::default(), None),
                }
            }
        };
        let vars = match root.get("vars") {
            None => Vec::new(),
            Some((_, node)) => match node.as_map() {
                Some(entries) => entries
                    .iter()
                    .map(|(k, v)| (k.key_text().unwrap_or_default(), v.clone()))
                    .collect(),
                None => {
                    self.error(
                        Diagnostic::new(
                            "recipe::invalid-vars",
                            format!("`vars` must be a mapping, found {}", node.kind_name()),
                            node.span,
                        )
                        .label("expected `name: value` pairs"),
                    );
                    Vec::new()
                }
            },
        };

        let stages = match root.get("stages") {
            None => {
                self.error(
                    Diagnostic::new(
                        "recipe::missing-stages",
                        "the recipe has no `stages`",
                        Span::new(root.span.start, root.span.start),
                    )
                    .help("add `stages:` with at least one stage"),
                );
                Vec::new()
            }
            Some((key, node)) => self.stages(key, node, &vars),
        };
        Some(Recipe {
            path: path.to_path_buf(),
            source: source.to_string(),
            overrides: Overrides::default(),
            name,
            seed,
            device,
            executor,
            slurm,
            slurm_node,
            stages,
        })
    }

    fn stages(&mut self, key: &Node, node: &Node, vars: &[(String, Node)]) -> Vec<StageSpec> {
        let entries = match &node.value {
            Value::Map(entries) if !entries.is_empty() => entries,
            Value::Map(_) | Value::Null => {
                self.error(
                    Diagnostic::new("recipe::empty", "the recipe has no stages", key.span)
                        .label("no stages under this key")
                        .help("add at least one stage: `name: { op: ..., with: {...} }`"),
                );
                return Vec::new();
            }
            _ => {
                self.error(
                    Diagnostic::new(
                        "recipe::invalid-stages",
                        format!(
                            "`stages` must be a mapping of stage names, found {}",
                            node.kind_name()
                        ),
                        node.span,
                    )
                    .label("expected `stage_name: {op: ...}` entries"),
                );
                return Vec::new();
            }
        };
        let mut stages: Vec<StageSpec> = entries
            .iter()
            .flat_map(|(k, v)| self.stage(k, v, vars))
            .collect();
        bind_matrix_inputs(&mut stages, self.diagnostics);
        stages
    }

    /// The stage as written, or one stage per combination of its `matrix`.
    fn stage(&mut self, key: &Node, node: &Node, vars: &[(String, Node)]) -> Vec<StageSpec> {
        let Some(spec) = self.stage_spec(key, node) else {
            return Vec::new();
        };
        let with = node
            .get("with")
            .map(|(_, v)| v)
            .filter(|v| v.as_map().is_some());
        let substituted = |errors: &mut Vec<Diagnostic>, values: Option<&[(String, Node)]>| {
            let scope = Scope {
                vars,
                matrix: values,
            };
            match with.map(|w| vars::substitute(w, scope)) {
                None => (None, false),
                Some(Ok(node)) => (Some(node), false),
                Some(Err(e)) => {
                    errors.extend(e);
                    (None, true)
                }
            }
        };
        let combinations = match node.get("matrix") {
            None => None,
            Some((_, m)) => match matrix::parse(&spec.name, m) {
                Ok(combinations) => Some(combinations),
                Err(errors) => {
                    self.diagnostics.extend(errors);
                    return vec![StageSpec {
                        with_broken: true,
                        ..spec
                    }];
                }
            },
        };
        let Some(combinations) = combinations else {
            let (with, broken) = substituted(self.diagnostics, None);
            return vec![StageSpec {
                with_broken: spec.with_broken || broken,
                with,
                ..spec
            }];
        };
        let mut expanded = Vec::new();
        for values in combinations {
            // One report per placeholder problem, not one per expansion.
            let mut errors = Vec::new();
            let (with, broken) = substituted(&mut errors, Some(&values));
            for e in errors {
                if !self.diagnostics.contains(&e) {
                    self.diagnostics.push(e);
                }
            }
            expanded.push(StageSpec {
                name: matrix::expanded_name(&spec.name, &values),
                with_broken: spec.with_broken || broken,
                with,
                expansion: Some(Expansion {
                    base: spec.name.clone(),
                    values,
                }),
                ..spec.clone()
            });
        }
        expanded
    }

    /// A stage's name, op and inputs, checked; `with` is only checked to be
    /// a mapping here (its placeholders are filled in per expansion).
    fn stage_spec(&mut self, key: &Node, node: &Node) -> Option<StageSpec> {
        let name = key.key_text().unwrap_or_default();
        if !valid_stage_name(&name) {
            self.error(
                Diagnostic::new(
                    "recipe::invalid-stage-name",
                    format!("invalid stage name `{name}`"),
                    key.span,
                )
                .label("use letters, digits, `_`, `-` and `.`")
                .help("stage names appear in commands (`run --until NAME`) and must start with a letter or `_`"),
            );
        }
        let Some(entries) = node.as_map() else {
            self.error(
                Diagnostic::new(
                    "recipe::invalid-stage",
                    format!(
                        "stage `{name}` must be a mapping with `op`, found {}",
                        node.kind_name()
                    ),
                    if node.value == Value::Null {
                        key.span
                    } else {
                        node.span
                    },
                )
                .label("expected `op:`, `inputs:` and `with:`"),
            );
            return None;
        };
        for (k, _) in entries {
            let text = k.key_text().unwrap_or_default();
            if !STAGE_KEYS.contains(&text.as_str()) {
                let hint = did_you_mean(&text, STAGE_KEYS);
                self.error(
                    Diagnostic::new(
                        "recipe::unknown-stage-key",
                        format!("unknown key `{text}` in stage `{name}`"),
                        k.span,
                    )
                    .label("not a stage key")
                    .help(match hint {
                        Some(h) => format!("{h} (a stage has {})", quoted_list(STAGE_KEYS)),
                        None => format!(
                            "a stage has {}; op parameters go under `with`",
                            quoted_list(STAGE_KEYS)
                        ),
                    }),
                );
            }
        }
        let (op, op_span) = match node.get("op") {
            None => {
                self.error(
                    Diagnostic::new(
                        "recipe::missing-op",
                        format!("stage `{name}` has no `op`"),
                        key.span,
                    )
                    .label("this stage needs `op: <operation>`"),
                );
                (String::new(), key.span)
            }
            Some((_, v)) => match v.as_str() {
                Some(s) => (s.to_string(), v.span),
                None => {
                    self.error(
                        Diagnostic::new(
                            "recipe::invalid-op",
                            format!("`op` must be an operation name, found {}", v.kind_name()),
                            v.span,
                        )
                        .label("expected a name"),
                    );
                    (String::new(), v.span)
                }
            },
        };
        let inputs = match node.get("inputs") {
            None => Vec::new(),
            Some((_, v)) => self.inputs(&name, v),
        };
        let inputs_broken = node
            .get("inputs")
            .is_some_and(|(_, v)| v.as_map().is_none() && v.value != Value::Null);
        let mut with_broken = false;
        if let Some((_, v)) = node.get("with")
            && v.value != Value::Null
            && v.as_map().is_none()
        {
            with_broken = true;
            self.error(
                Diagnostic::new(
                    "recipe::invalid-with",
                    format!(
                        "`with` must be a mapping of parameters, found {}",
                        v.kind_name()
                    ),
                    v.span,
                )
                .label("expected `parameter: value` pairs"),
            );
        }
        let resources = match node.get("resources") {
            None => Resources::default(),
            Some((_, v)) => {
                match resources::parse_resources(v, &format!("`resources` of stage `{name}`")) {
                    Ok(r) => r,
                    Err(errors) => {
                        self.diagnostics.extend(errors);
                        Resources::default()
                    }
                }
            }
        };
        Some(StageSpec {
            name,
            name_span: key.span,
            op,
            op_span,
            inputs,
            with: None,
            with_broken,
            inputs_broken,
            expansion: None,
            resources,
        })
    }

    fn inputs(&mut self, stage: &str, node: &Node) -> Vec<InputBinding> {
        let Some(entries) = node.as_map() else {
            if node.value != Value::Null {
                self.error(
                    Diagnostic::new(
                        "recipe::invalid-inputs",
                        format!(
                            "`inputs` of stage `{stage}` must map slots to stages, found {}",
                            node.kind_name()
                        ),
                        node.span,
                    )
                    .label("expected `slot: stage` pairs"),
                );
            }
            return Vec::new();
        };
        let mut bindings = Vec::new();
        for (k, v) in entries {
            let slot = k.key_text().unwrap_or_default();
            let (targets, is_list) = match &v.value {
                Value::Str(s) => (vec![(s.clone(), v.span)], false),
                Value::Seq(items) => {
                    let mut targets = Vec::new();
                    for item in items {
                        match item.as_str() {
                            Some(s) => targets.push((s.to_string(), item.span)),
                            None => self.error(
                                Diagnostic::new(
                                    "recipe::invalid-input",
                                    format!(
                                        "an input must name a stage, found {}",
                                        item.kind_name()
                                    ),
                                    item.span,
                                )
                                .label("expected a stage name"),
                            ),
                        }
                    }
                    (targets, true)
                }
                _ => {
                    self.error(
                        Diagnostic::new(
                            "recipe::invalid-input",
                            format!(
                                "input `{slot}` must name a stage or a list of stages, found {}",
                                v.kind_name()
                            ),
                            v.span,
                        )
                        .label("expected a stage name"),
                    );
                    continue;
                }
            };
            bindings.push(InputBinding {
                slot,
                slot_span: k.span,
                targets,
                is_list,
                value_span: v.span,
            });
        }
        bindings
    }
}

/// Rewrites inputs that name a matrix stage by its written name into the
/// expansions they mean (`matrix` module docs); an input that would need one
/// stage but matches several, or matches none, is an error.
fn bind_matrix_inputs(stages: &mut [StageSpec], errors: &mut Vec<Diagnostic>) {
    let mut expansions: HashMap<String, Vec<Expansion>> = HashMap::new();
    for s in stages.iter() {
        if let Some(e) = &s.expansion {
            expansions
                .entry(e.base.clone())
                .or_default()
                .push(e.clone());
        }
    }
    if expansions.is_empty() {
        return;
    }
    let exact: HashSet<String> = stages.iter().map(|s| s.name.clone()).collect();
    for stage in stages.iter_mut() {
        let own = stage.expansion.as_ref().map(|e| e.values.clone());
        for binding in &mut stage.inputs {
            let mut targets = Vec::new();
            for (target, span) in std::mem::take(&mut binding.targets) {
                let Some(candidates) = expansions.get(&target).filter(|_| !exact.contains(&target))
                else {
                    targets.push((target, span));
                    continue;
                };
                let matches = matrix::matching(candidates, own.as_deref());
                match (matches.len(), binding.is_list) {
                    (0, _) => {
                        errors.push(matrix::no_match(&stage.name, &target, span, own.as_deref()))
                    }
                    (_, true) | (1, false) => {
                        targets.extend(matches.into_iter().map(|n| (n, span)))
                    }
                    (_, false) => errors.push(matrix::ambiguous(
                        &stage.name,
                        &binding.slot,
                        &target,
                        &matches,
                        span,
                    )),
                }
            }
            binding.targets = targets;
        }
    }
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A value as it reads in a message: `"fast"`, `-3`, `a list`.
fn describe(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => format!("\"{s}\""),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => node.kind_name().to_string(),
    }
}
