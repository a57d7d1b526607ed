//! Fan-out: a stage with `matrix: { AXIS: [values], ... }` stands for one
//! stage per combination of the values (in the order written), named
//! `stage[axis=value,...]`, each with `${matrix.AXIS}` set to its values and
//! keyed, cached and run on its own. Adding a value adds only its stages.
//! `matrix: [{AXIS: value, ...}, ...]` lists the combinations instead (for
//! sets that are not a grid, such as the architectures near a parameter
//! budget).
//!
//! A stage that names a matrix stage in its inputs is bound to the
//! expansions whose values agree with its own on the axes both have: a
//! stage with the same matrix gets the one matching expansion (so chains of
//! matrix stages line up), a list slot gets every matching one (so a later
//! stage sees all candidates).

use crate::diagnostic::{Diagnostic, Span};
use crate::yaml::{Node, Value};

/// One axis as written: its name and values.
#[derive(Debug, Clone)]
pub struct Axis {
    pub name: String,
    pub values: Vec<Node>,
}

/// Which expansion a stage is: the stage's name as written and this
/// expansion's value on each axis.
#[derive(Debug, Clone)]
pub struct Expansion {
    pub base: String,
    pub values: Vec<(String, Node)>,
}

/// The combinations `matrix:` stands for: the grid of a mapping of axes, or
/// the list of mappings as written.
pub fn parse(stage: &str, node: &Node) -> Result<Vec<Vec<(String, Node)>>, Vec<Diagnostic>> {
    match &node.value {
        Value::Seq(items) => parse_list(stage, node, items),
        _ => parse_axes(stage, node).map(|axes| combinations(&axes)),
    }
}

/// `matrix: [{a: 1, b: x}, ...]`: every item a mapping of the same axes to
/// scalars, no combination twice.
fn parse_list(
    stage: &str,
    node: &Node,
    items: &[Node],
) -> Result<Vec<Vec<(String, Node)>>, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    if items.is_empty() {
        errors.push(
            Diagnostic::new(
                "recipe::invalid-matrix",
                format!("`matrix` of stage `{stage}` lists no combinations"),
                node.span,
            )
            .label("empty list"),
        );
    }
    let mut combinations: Vec<Vec<(String, Node)>> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        let Some(entries) = item.as_map().filter(|e| !e.is_empty()) else {
            errors.push(
                Diagnostic::new(
                    "recipe::invalid-matrix",
                    format!(
                        "each combination of a `matrix` list is a mapping `{{AXIS: value}}`, found {}",
                        item.kind_name()
                    ),
                    item.span,
                )
                .label("expected a mapping"),
            );
            continue;
        };
        let mut values = Vec::new();
        for (key, value) in entries {
            match axis_name(key).and_then(|name| scalar(value).map(|_| name)) {
                Ok(name) => values.push((name, value.clone())),
                Err(e) => errors.push(*e),
            }
        }
        let axes = |v: &[(String, Node)]| {
            let mut names: Vec<String> = v.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            names
        };
        if let Some(first) = combinations.first()
            && axes(first) != axes(&values)
        {
            errors.push(
                Diagnostic::new(
                    "recipe::invalid-matrix",
                    format!(
                        "every combination names the same axes ({}), this one names {}",
                        axes(first).join(", "),
                        axes(&values).join(", ")
                    ),
                    item.span,
                )
                .label("different axes"),
            );
            continue;
        }
        // Named in the first combination's axis order, whatever the order written.
        if let Some(first) = combinations.first() {
            values.sort_by_key(|(axis, _)| first.iter().position(|(a, _)| a == axis));
        }
        let name = expanded_name("", &values);
        if seen.contains(&name) {
            errors.push(
                Diagnostic::new(
                    "recipe::invalid-matrix",
                    format!("the combination {name} is listed twice"),
                    item.span,
                )
                .label("repeated combination"),
            );
            continue;
        }
        seen.push(name);
        combinations.push(values);
    }
    if errors.is_empty() {
        Ok(combinations)
    } else {
        Err(errors)
    }
}

/// Reads `matrix:`: a mapping of axis names to non-empty lists of scalars.
pub fn parse_axes(stage: &str, node: &Node) -> Result<Vec<Axis>, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let Some(entries) = node.as_map().filter(|e| !e.is_empty()) else {
        return Err(vec![
            Diagnostic::new(
                "recipe::invalid-matrix",
                format!(
                    "`matrix` of stage `{stage}` must map axes to lists of values, or list \
                     combinations, found {}",
                    node.kind_name()
                ),
                node.span,
            )
            .label("expected `AXIS: [value, ...]`"),
        ]);
    };
    let mut axes = Vec::new();
    for (key, value) in entries {
        let name = match axis_name(key) {
            Ok(name) => name,
            Err(e) => {
                errors.push(*e);
                continue;
            }
        };
        let values = match &value.value {
            Value::Seq(items) if !items.is_empty() => items,
            _ => {
                errors.push(
                    Diagnostic::new(
                        "recipe::invalid-matrix",
                        format!(
                            "matrix axis `{name}` must be a non-empty list, found {}",
                            value.kind_name()
                        ),
                        value.span,
                    )
                    .label("expected `[value, ...]`"),
                );
                continue;
            }
        };
        let mut seen: Vec<String> = Vec::new();
        for item in values {
            match scalar(item) {
                Err(e) => errors.push(*e),
                Ok(t) if seen.contains(&t) => errors.push(
                    Diagnostic::new(
                        "recipe::invalid-matrix",
                        format!("matrix axis `{name}` lists `{t}` twice"),
                        item.span,
                    )
                    .label("repeated value"),
                ),
                Ok(t) => seen.push(t),
            }
        }
        axes.push(Axis {
            name,
            values: values.clone(),
        });
    }
    if errors.is_empty() {
        Ok(axes)
    } else {
        Err(errors)
    }
}

/// Every combination of one value per axis: the first axis varies slowest.
pub fn combinations(axes: &[Axis]) -> Vec<Vec<(String, Node)>> {
    axes.iter().fold(vec![Vec::new()], |partial, axis| {
        partial
            .iter()
            .flat_map(|prefix| {
                axis.values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push((axis.name.clone(), v.clone()));
                    next
                })
            })
            .collect()
    })
}

/// `stage[axis=value,...]`.
pub fn expanded_name(base: &str, values: &[(String, Node)]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|(axis, v)| format!("{axis}={}", text(v).unwrap_or_default()))
        .collect();
    format!("{base}[{}]", parts.join(","))
}

/// The names of the expansions whose values agree with `own` (see
/// [`agrees`]), in the order written.
pub fn matching(expansions: &[Expansion], own: Option<&[(String, Node)]>) -> Vec<String> {
    expansions
        .iter()
        .filter(|e| agrees(&e.values, own))
        .map(|e| expanded_name(&e.base, &e.values))
        .collect()
}

/// An input that takes one stage names a matrix stage that expands to
/// several matches.
pub fn ambiguous(
    stage: &str,
    slot: &str,
    target: &str,
    matches: &[String],
    span: Span,
) -> Diagnostic {
    Diagnostic::new(
        "recipe::ambiguous-input",
        format!(
            "input `{slot}` of stage `{stage}` takes one stage, and `{target}` expands to {}",
            matches.len()
        ),
        span,
    )
    .label("a matrix stage")
    .help(format!(
        "bind all of them in a list slot (`[{target}]`), give this stage the same matrix, or \
         name one (`{}`)",
        matches[0]
    ))
}

/// Whether an expansion's values agree with the consumer's on every axis
/// both have (a consumer without a matrix agrees with all).
pub fn agrees(values: &[(String, Node)], own: Option<&[(String, Node)]>) -> bool {
    let Some(own) = own else { return true };
    values.iter().all(|(axis, v)| {
        own.iter()
            .find(|(a, _)| a == axis)
            .is_none_or(|(_, mine)| mine.value == v.value)
    })
}

/// No expansion of `target` agrees with the reading stage's values.
pub fn no_match(
    stage: &str,
    target: &str,
    span: Span,
    own: Option<&[(String, Node)]>,
) -> Diagnostic {
    let values = own.map(|v| expanded_name("", v)).unwrap_or_default();
    Diagnostic::new(
        "recipe::unmatched-input",
        format!("stage `{stage}` has no counterpart in `{target}` with the values {values}"),
        span,
    )
    .label("no expansion with these values")
    .help(format!("add the values to the matrix of `{target}`"))
}

/// An axis name from its key, or the error saying it is not one.
fn axis_name(key: &Node) -> Result<String, Box<Diagnostic>> {
    let name = key.key_text().unwrap_or_default();
    if is_identifier(&name) {
        Ok(name)
    } else {
        Err(Box::new(
            Diagnostic::new(
                "recipe::invalid-matrix",
                format!("matrix axis `{name}` is not a name"),
                key.span,
            )
            .label("use letters, digits and `_`"),
        ))
    }
}

/// A matrix value's text, or the error saying it is not a scalar.
fn scalar(value: &Node) -> Result<String, Box<Diagnostic>> {
    text(value).ok_or_else(|| {
        Box::new(
            Diagnostic::new(
                "recipe::invalid-matrix",
                format!(
                    "matrix values are scalars (text, numbers, booleans), found {}",
                    value.kind_name()
                ),
                value.span,
            )
            .label("not a scalar"),
        )
    })
}

/// A scalar's text, as it appears in expanded names and placeholders.
fn text(node: &Node) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn axes(source: &str) -> Vec<Axis> {
        let (root, _) = yaml::parse(source);
        parse_axes("s", &root.unwrap()).unwrap()
    }

    #[test]
    fn combinations_vary_the_first_axis_slowest_and_name_each() {
        let names: Vec<String> = combinations(&axes("a: [1, 2]\nb: [x, 0.5, true]"))
            .iter()
            .map(|values| expanded_name("s", values))
            .collect();
        assert_eq!(
            names,
            [
                "s[a=1,b=x]",
                "s[a=1,b=0.5]",
                "s[a=1,b=true]",
                "s[a=2,b=x]",
                "s[a=2,b=0.5]",
                "s[a=2,b=true]",
            ]
        );
    }

    #[test]
    fn an_expansion_agrees_on_shared_axes_only() {
        let all = combinations(&axes("a: [1, 2]\nb: [x, y]"));
        let own = combinations(&axes("a: [2]\nc: [9]"));
        let matching: Vec<String> = all
            .iter()
            .filter(|v| agrees(v, Some(&own[0])))
            .map(|v| expanded_name("s", v))
            .collect();
        assert_eq!(matching, ["s[a=2,b=x]", "s[a=2,b=y]"]);
        assert!(all.iter().all(|v| agrees(v, None)));
    }

    #[test]
    fn a_list_gives_its_combinations_in_the_first_ones_axis_order() {
        let (root, _) = yaml::parse("- {h: 448, f: 1024}\n- {f: 896, h: 512}");
        let names: Vec<String> = parse("s", &root.unwrap())
            .unwrap()
            .iter()
            .map(|values| expanded_name("s", values))
            .collect();
        assert_eq!(names, ["s[h=448,f=1024]", "s[h=512,f=896]"]);
        for (source, message) in [
            ("[]", "lists no combinations"),
            ("- {h: 1}\n- {f: 2}", "names the same axes"),
            ("- {h: 1}\n- {h: 1}", "listed twice"),
            ("- 3", "is a mapping"),
            ("- {h: [1]}", "scalars"),
        ] {
            let (root, _) = yaml::parse(source);
            let errors = parse("s", &root.unwrap()).unwrap_err();
            assert!(
                errors[0].message.contains(message),
                "{source}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn malformed_axes_are_each_reported() {
        let (root, _) = yaml::parse("1bad: [1]\nempty: []\nnested: [[1]]\nok: [1]");
        let errors = parse_axes("s", &root.unwrap()).unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("`1bad` is not a name"));
        assert!(messages[1].contains("non-empty list"));
        assert!(messages[2].contains("scalars"));
    }
}
