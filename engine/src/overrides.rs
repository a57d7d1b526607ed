//! `--set PATH=VALUE`: changing a recipe from the command line.
//!
//! An override replaces (or adds) one value in the recipe's YAML tree before
//! the recipe is read, so it is typed and validated exactly like the YAML
//! it stands for: the value is parsed as YAML (`3e-4` is a number, `[1, 2]`
//! a list, `"3"` a string), and a parameter the op does not know is reported
//! like a misspelled key in the file.
//!
//! Diagnostics must point at the flag, not at the file. The flags are kept
//! as a source text of their own, one `--set PATH=VALUE` per line, and the
//! spans of the nodes an override brings live past the end of the recipe
//! (from [`Overrides::base`] on); [`Sources`] sends each
//! span to the text it belongs to.
//!
//! PATH is dotted: `vars.lr`, `seed`, `stages.distilled.with.train.tokens`,
//! `stages.s.matrix.k`; a number indexes a list (`...with.layers.0`). A stage
//! name may itself contain dots: the longest name the recipe has wins. Paths
//! that would change nothing are refused rather than ignored: a stage or a
//! var the recipe does not have, or the same path set twice.

// An error here is one report per flag, made once per command: its size
// does not matter, and boxing it would only add noise.
#![allow(clippy::result_large_err)]

use crate::diagnostic::{Diagnostic, Span, did_you_mean, quoted_list};
use crate::yaml::{self, Node, Value};

/// The flag, as diagnostics and the source text show it.
pub const FLAG: &str = "--set";

/// A recipe's overrides from the command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// One `--set PATH=VALUE` per line: what diagnostics show.
    pub text: String,
    /// Where `text` starts in the span space shared with the recipe source.
    pub base: usize,
    items: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq)]
struct Override {
    /// `PATH=VALUE` as given.
    flag: String,
    path: String,
    path_span: Span,
    value: Node,
}

impl Overrides {
    /// Parses `PATH=VALUE` flags for a recipe whose source is
    /// `recipe_len` bytes long. Returns the well-formed overrides, with the
    /// text of all flags (for rendering), and every malformed flag at once.
    pub fn parse(flags: &[String], recipe_len: usize) -> (Self, Vec<Diagnostic>) {
        // One byte of gap, so that an empty span at the recipe's very end
        // still belongs to the recipe.
        let base = recipe_len + 1;
        let mut text = String::new();
        let mut items: Vec<Override> = Vec::new();
        let mut errors = Vec::new();
        for flag in flags {
            let line_start = base + text.len() + FLAG.len() + 1;
            text.push_str(FLAG);
            text.push(' ');
            text.push_str(flag);
            text.push('\n');
            let whole = Span::new(line_start, line_start + flag.len());
            let Some((path, value_text)) = flag.split_once('=') else {
                errors.push(
                    Diagnostic::new(
                        "override::malformed",
                        format!("`{FLAG}` takes PATH=VALUE, found `{flag}`"),
                        whole,
                    )
                    .label("no `=` here")
                    .help("for example `--set vars.lr=3e-4` or `--set stages.distilled.with.train.tokens=2e6`"),
                );
                continue;
            };
            let path_span = Span::new(line_start, line_start + path.len());
            if path.is_empty() || path.split('.').any(str::is_empty) {
                errors.push(
                    Diagnostic::new(
                        "override::malformed",
                        format!("`{path}` is not a path: name keys separated by dots"),
                        path_span,
                    )
                    .label("empty key")
                    .help("for example `vars.lr` or `stages.distilled.with.train.tokens`"),
                );
                continue;
            }
            let value_start = path_span.end + 1;
            let (root, problems) = yaml::parse(value_text);
            if !problems.is_empty() {
                errors.extend(problems.into_iter().map(|mut d| {
                    d.primary.span = shifted(d.primary.span, value_start);
                    for label in &mut d.secondary {
                        label.span = shifted(label.span, value_start);
                    }
                    d
                }));
                continue;
            }
            let value = match root {
                Some(mut node) => {
                    shift_node(&mut node, value_start);
                    node
                }
                // `--set name=` is YAML's empty value: null.
                None => Node {
                    value: Value::Null,
                    span: Span::new(value_start, value_start),
                },
            };
            if let Some(earlier) = items.iter().find(|o| o.path == path) {
                errors.push(
                    Diagnostic::new(
                        "override::duplicate",
                        format!("`{path}` is set twice on the command line"),
                        path_span,
                    )
                    .label("set again here")
                    .with_secondary(earlier.path_span, "first set here")
                    .help("keep one `--set` per path"),
                );
                continue;
            }
            items.push(Override {
                flag: flag.clone(),
                path: path.to_string(),
                path_span,
                value,
            });
        }
        (Self { text, base, items }, errors)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The flags as given (`PATH=VALUE`), in order: for `plan` and `status`.
    pub fn flags(&self) -> Vec<String> {
        self.items.iter().map(|o| o.flag.clone()).collect()
    }

    /// Writes every override into the recipe's tree; returns the paths that
    /// name nothing the recipe can take. A root that is not a mapping is left
    /// alone (reading the recipe reports it).
    pub fn apply(&self, root: &mut Node) -> Vec<Diagnostic> {
        if root.as_map().is_none() {
            return Vec::new();
        }
        self.items
            .iter()
            .filter_map(|o| apply_one(root, o).err())
            .collect()
    }
}

/// The texts a recipe's spans point into: the recipe file, and past its
/// end the command line's `--set` flags (see [`Overrides`]).
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub recipe_name: &'a str,
    pub recipe: &'a str,
    pub overrides: &'a Overrides,
}

/// The name the command line's flags are shown under.
pub const COMMAND_LINE: &str = "command line";

impl<'a> Sources<'a> {
    /// The diagnostic with its spans made relative to the one text its
    /// primary span is in, with that text's name and content. Secondary
    /// labels in the other text are left out.
    pub fn locate(&self, d: &Diagnostic) -> (Diagnostic, &'a str, &'a str) {
        let base = self.overrides.base;
        let on_command_line = |span: Span| !self.overrides.text.is_empty() && span.start >= base;
        let primary_there = on_command_line(d.primary.span);
        let mut located = d.clone();
        located
            .secondary
            .retain(|l| on_command_line(l.span) == primary_there);
        if !primary_there {
            return (located, self.recipe_name, self.recipe);
        }
        let shift = |span: Span| Span::new(span.start - base, span.end - base);
        located.primary.span = shift(located.primary.span);
        for label in &mut located.secondary {
            label.span = shift(label.span);
        }
        (located, COMMAND_LINE, &self.overrides.text)
    }
}

/// One path segment with its place in the flag.
struct Segment<'a> {
    text: &'a str,
    span: Span,
}

fn apply_one(root: &mut Node, o: &Override) -> Result<(), Diagnostic> {
    let segments = segments(&o.path, o.path_span.start);
    let segments = match segments[0].text {
        "stages" => stage_path(root, &o.path, segments)?,
        "vars" => {
            check_var(root, &segments)?;
            segments
        }
        _ => segments,
    };
    set(root, &segments, 0, o.value.clone(), &o.path)
}

fn segments(path: &str, start: usize) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut offset = start;
    for text in path.split('.') {
        out.push(Segment {
            text,
            span: Span::new(offset, offset + text.len()),
        });
        offset += text.len() + 1;
    }
    out
}

/// `stages.NAME.rest` with NAME the longest stage name the recipe has
/// (stage names may contain dots), joined into one segment.
fn stage_path<'a>(
    root: &Node,
    path: &'a str,
    segments: Vec<Segment<'a>>,
) -> Result<Vec<Segment<'a>>, Diagnostic> {
    let names: Vec<String> = root
        .get("stages")
        .and_then(|(_, s)| s.as_map())
        .map(|entries| entries.iter().filter_map(|(k, _)| k.key_text()).collect())
        .unwrap_or_default();
    let rest = &path["stages.".len().min(path.len())..];
    let rest_start = segments[0].span.end + 1;
    let matched = names
        .iter()
        .filter(|name| {
            rest.strip_prefix(name.as_str())
                .is_some_and(|after| after.is_empty() || after.starts_with('.'))
        })
        .max_by_key(|name| name.len());
    let Some(name) = matched else {
        let wanted = segments.get(1).map_or("", |s| s.text);
        let span = segments.get(1).map_or(segments[0].span, |s| s.span);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut d = Diagnostic::new(
            "override::unknown-stage",
            if wanted.is_empty() {
                format!("`{path}` names no stage: write `stages.NAME.with.PARAM=VALUE`")
            } else {
                format!("the recipe has no stage `{wanted}`")
            },
            span,
        )
        .label("no such stage");
        d.help = Some(match did_you_mean(wanted, &refs) {
            Some(hint) => hint,
            None if refs.is_empty() => "the recipe has no stages".into(),
            None => format!("stages: {}", quoted_list(&refs)),
        });
        return Err(d);
    };
    let name_span = Span::new(rest_start, rest_start + name.len());
    let mut out = vec![
        Segment {
            text: "stages",
            span: segments[0].span,
        },
        Segment {
            text: &rest[..name.len()],
            span: name_span,
        },
    ];
    if rest.len() > name.len() {
        out.extend(segments_after(rest, name.len() + 1, rest_start));
    }
    if out.len() == 2 {
        return Err(Diagnostic::new(
            "override::whole-stage",
            format!("`{path}` would replace the whole stage `{name}`"),
            name_span,
        )
        .label("a stage")
        .help(format!(
            "set one of its keys, e.g. `stages.{name}.with.PARAM=VALUE`"
        )));
    }
    Ok(out)
}

fn segments_after(rest: &str, from: usize, rest_start: usize) -> Vec<Segment<'_>> {
    segments(&rest[from..], rest_start + from)
}

/// `vars.NAME...` must name a var the recipe declares: an override of a var
/// nothing reads would change nothing.
fn check_var(root: &Node, segments: &[Segment<'_>]) -> Result<(), Diagnostic> {
    let names: Vec<String> = root
        .get("vars")
        .and_then(|(_, v)| v.as_map())
        .map(|entries| entries.iter().filter_map(|(k, _)| k.key_text()).collect())
        .unwrap_or_default();
    let Some(wanted) = segments.get(1) else {
        return Err(Diagnostic::new(
            "override::unknown-var",
            "`vars` names no var: write `vars.NAME=VALUE`",
            segments[0].span,
        )
        .label("which var?"));
    };
    if names.iter().any(|n| n == wanted.text) {
        return Ok(());
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut d = Diagnostic::new(
        "override::unknown-var",
        format!("the recipe declares no var `{}`", wanted.text),
        wanted.span,
    )
    .label("no such var");
    d.help = Some(match did_you_mean(wanted.text, &refs) {
        Some(hint) => hint,
        None if refs.is_empty() => {
            "the recipe has no `vars:`; declare the var there, then override it".into()
        }
        None => format!("vars: {}", quoted_list(&refs)),
    });
    Err(d)
}

/// Sets `segments[depth..]` under `node` to `value`, creating mappings on
/// the way where keys are missing.
fn set(
    node: &mut Node,
    segments: &[Segment<'_>],
    depth: usize,
    value: Node,
    path: &str,
) -> Result<(), Diagnostic> {
    let segment = &segments[depth];
    let last = depth + 1 == segments.len();
    if matches!(node.value, Value::Null) {
        // `with:` left empty is an empty mapping to set keys in.
        node.value = Value::Map(Vec::new());
    }
    let child = match &mut node.value {
        Value::Map(entries) => {
            let found = entries
                .iter()
                .position(|(k, _)| k.key_text().as_deref() == Some(segment.text));
            match found {
                Some(i) => &mut entries[i].1,
                None => {
                    entries.push((
                        Node {
                            value: Value::Str(segment.text.to_string()),
                            span: segment.span,
                        },
                        Node {
                            value: Value::Null,
                            span: segment.span,
                        },
                    ));
                    &mut entries.last_mut().expect("just pushed").1
                }
            }
        }
        Value::Seq(items) => {
            let len = items.len();
            match segment.text.parse::<usize>().ok().filter(|&i| i < len) {
                Some(i) => &mut items[i],
                None => {
                    return Err(Diagnostic::new(
                        "override::not-an-index",
                        format!(
                            "`{}` is a list of {len}; `{}` is not an index in it",
                            prefix(segments, depth),
                            segment.text
                        ),
                        segment.span,
                    )
                    .label(format!("expected 0..{}", len.saturating_sub(1)))
                    .help(format!(
                        "to replace the whole list, set `{}`",
                        prefix(segments, depth)
                    )));
                }
            }
        }
        _ => {
            return Err(Diagnostic::new(
                "override::not-a-mapping",
                format!(
                    "cannot set `{path}`: `{}` is {}, not a mapping",
                    prefix(segments, depth),
                    node.kind_name()
                ),
                segment.span,
            )
            .label("nothing to set this in"));
        }
    };
    if last {
        *child = value;
        Ok(())
    } else {
        set(child, segments, depth + 1, value, path)
    }
}

/// The dotted path of `segments[..depth]`.
fn prefix(segments: &[Segment<'_>], depth: usize) -> String {
    segments[..depth]
        .iter()
        .map(|s| s.text)
        .collect::<Vec<_>>()
        .join(".")
}

fn shifted(span: Span, by: usize) -> Span {
    Span::new(span.start + by, span.end + by)
}

fn shift_node(node: &mut Node, by: usize) {
    node.span = shifted(node.span, by);
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| shift_node(n, by)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift_node(k, by);
            shift_node(v, by);
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "\
vars:
  lr: 1.0e-4
stages:
  base.v2:
    op: load
    with: { path: a }
  distilled:
    op: distill
    with:
      train: { tokens: 1000 }
      layers: [1, 2, 3]
";

    fn applied(flags: &[&str]) -> Result<Node, Vec<Diagnostic>> {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let (overrides, mut errors) = Overrides::parse(&flags, RECIPE.len());
        let (root, problems) = yaml::parse(RECIPE);
        assert!(problems.is_empty());
        let mut root = root.unwrap();
        errors.extend(overrides.apply(&mut root));
        if errors.is_empty() {
            Ok(root)
        } else {
            Err(errors)
        }
    }

    fn at<'a>(root: &'a Node, path: &str) -> &'a Node {
        let path: Vec<String> = path.split('/').map(str::to_string).collect();
        let (node, complete) = root.find_path(&path);
        assert!(complete, "{path:?} not found");
        node
    }

    /// The text a diagnostic's primary span covers in the flags' source.
    fn pointed_at(flags: &[&str], d: &Diagnostic) -> String {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        let (overrides, _) = Overrides::parse(&flags, RECIPE.len());
        let base = overrides.base;
        overrides.text[d.primary.span.start - base..d.primary.span.end - base].to_string()
    }

    #[test]
    fn values_are_typed_like_yaml() {
        let root = applied(&[
            "vars.lr=3e-4",
            "stages.distilled.with.train.tokens=2_000_000",
            "stages.distilled.with.layers=[4, 5]",
            "stages.distilled.with.name='07'",
        ])
        .unwrap();
        assert_eq!(at(&root, "vars/lr").value, Value::Float(3e-4));
        assert_eq!(
            at(&root, "stages/distilled/with/train/tokens").value,
            Value::Int(2_000_000)
        );
        assert_eq!(
            at(&root, "stages/distilled/with/layers").to_json(),
            serde_json::json!([4, 5])
        );
        assert_eq!(
            at(&root, "stages/distilled/with/name").value,
            Value::Str("07".into())
        );
    }

    #[test]
    fn missing_keys_are_created_and_list_items_replaced() {
        let root = applied(&[
            "stages.distilled.with.optimizer.lr=0.5",
            "stages.distilled.with.layers.1=9",
            "seed=7",
        ])
        .unwrap();
        assert_eq!(
            at(&root, "stages/distilled/with/optimizer/lr").value,
            Value::Float(0.5)
        );
        assert_eq!(
            at(&root, "stages/distilled/with/layers").to_json(),
            serde_json::json!([1, 9, 3])
        );
        assert_eq!(at(&root, "seed").value, Value::Int(7));
    }

    #[test]
    fn a_stage_name_with_dots_is_matched_whole() {
        let root = applied(&["stages.base.v2.with.path=b"]).unwrap();
        assert_eq!(
            at(&root, "stages/base.v2/with/path").value,
            Value::Str("b".into())
        );
    }

    #[test]
    fn new_nodes_point_at_the_flag() {
        let flags = ["seed=7", "stages.distilled.with.extra=1"];
        let root = applied(&flags).unwrap();
        let key = root
            .find_key(&[
                "stages".into(),
                "distilled".into(),
                "with".into(),
                "extra".into(),
            ])
            .unwrap();
        let d = Diagnostic::new("t", "t", key.span);
        assert_eq!(pointed_at(&flags, &d), "extra");
        let d = Diagnostic::new("t", "t", at(&root, "seed").span);
        assert_eq!(pointed_at(&flags, &d), "7");
    }

    #[test]
    fn unknown_stages_and_vars_are_refused_with_a_hint() {
        let flags = ["stages.distiled.with.x=1", "vars.rl=1"];
        let errors = applied(&flags).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].code, "override::unknown-stage");
        assert_eq!(pointed_at(&flags, &errors[0]), "distiled");
        assert_eq!(errors[0].help.as_deref(), Some("did you mean `distilled`?"));
        assert_eq!(errors[1].code, "override::unknown-var");
        assert_eq!(pointed_at(&flags, &errors[1]), "rl");
    }

    #[test]
    fn malformed_flags_are_all_reported() {
        let flags = [
            "vars.lr",
            "vars..lr=1",
            "vars.lr=[1",
            "vars.lr=1",
            "vars.lr=2",
        ];
        let errors = applied(&flags).unwrap_err();
        let codes: Vec<&str> = errors.iter().map(|d| d.code).collect();
        assert_eq!(codes[0], "override::malformed");
        assert_eq!(codes[1], "override::malformed");
        assert_eq!(codes[2], "recipe::yaml-syntax");
        assert_eq!(codes[3], "override::duplicate");
        assert_eq!(errors.len(), 4);
        assert_eq!(pointed_at(&flags, &errors[0]), "vars.lr");
        assert_eq!(pointed_at(&flags, &errors[3]), "vars.lr");
    }

    #[test]
    fn setting_inside_a_scalar_or_past_a_list_is_an_error() {
        let flags = [
            "stages.distilled.with.train.tokens.x=1",
            "stages.distilled.with.layers.3=1",
            "stages.distilled=1",
        ];
        let errors = applied(&flags).unwrap_err();
        let codes: Vec<&str> = errors.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            [
                "override::not-a-mapping",
                "override::not-an-index",
                "override::whole-stage"
            ]
        );
        assert_eq!(pointed_at(&flags, &errors[0]), "x");
        assert_eq!(pointed_at(&flags, &errors[1]), "3");
        assert!(
            errors[0]
                .message
                .contains("`stages.distilled.with.train.tokens` is an integer")
        );
    }
}
