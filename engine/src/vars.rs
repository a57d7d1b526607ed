//! `${vars.NAME}` and `${matrix.AXIS}` substitution in a stage's `with`
//! block.
//!
//! A scalar that is exactly one placeholder takes the value with its type
//! (a number stays a number, a list stays a list); a placeholder inside a
//! longer string is replaced by the value's text. `$${` writes a literal
//! `${`.

use crate::diagnostic::{Diagnostic, Span, did_you_mean};
use crate::yaml::{Node, Value};

/// What placeholders can name: the recipe's `vars`, and for a stage with a
/// `matrix`, the values of one of its expansions (`None` otherwise).
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    pub vars: &'a [(String, Node)],
    pub matrix: Option<&'a [(String, Node)]>,
}

impl Scope<'_> {
    /// The value `reference` (`vars.NAME` or `matrix.AXIS`) names, or the
    /// error that explains why it names nothing.
    fn lookup(&self, reference: &str, span: Span) -> Result<&Node, Box<Diagnostic>> {
        if let Some(name) = reference.strip_prefix("vars.") {
            return find(self.vars, name).ok_or_else(|| Box::new(undefined(name, span, self.vars)));
        }
        if let Some(axis) = reference.strip_prefix("matrix.") {
            let Some(values) = self.matrix else {
                return Err(Box::new(
                    Diagnostic::new(
                        "recipe::invalid-placeholder",
                        format!("`${{matrix.{axis}}}` in a stage without a `matrix`"),
                        span,
                    )
                    .label("used here")
                    .help("add `matrix: { AXIS: [values] }` to the stage"),
                ));
            };
            return find(values, axis).ok_or_else(|| {
                let axes: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
                Box::new(
                    Diagnostic::new(
                        "recipe::undefined-var",
                        format!("the stage's matrix has no axis `{axis}`"),
                        span,
                    )
                    .label("used here")
                    .help(match did_you_mean(axis, &axes) {
                        Some(hint) => hint,
                        None => format!("axes: {}", crate::diagnostic::quoted_list(&axes)),
                    }),
                )
            });
        }
        Err(Box::new(
            Diagnostic::new(
                "recipe::invalid-placeholder",
                format!("unknown placeholder `${{{reference}}}`"),
                span,
            )
            .label("only `${vars.NAME}` and `${matrix.AXIS}` are supported")
            .help("write `$${` for a literal `${`"),
        ))
    }
}

fn find<'a>(entries: &'a [(String, Node)], name: &str) -> Option<&'a Node> {
    entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

pub fn substitute(node: &Node, scope: Scope<'_>) -> Result<Node, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let out = walk(node, scope, &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn walk(node: &Node, scope: Scope<'_>, errors: &mut Vec<Diagnostic>) -> Node {
    let value = match &node.value {
        Value::Str(s) if s.contains("${") => return expand(s, node.span, scope, errors),
        Value::Seq(items) => Value::Seq(items.iter().map(|n| walk(n, scope, errors)).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), walk(v, scope, errors)))
                .collect(),
        ),
        other => other.clone(),
    };
    Node {
        value,
        span: node.span,
    }
}

fn expand(text: &str, span: Span, scope: Scope<'_>, errors: &mut Vec<Diagnostic>) -> Node {
    // The whole scalar is one placeholder: keep the value's type.
    if let Some(reference) = text
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|r| !r.contains(['}', '$']) && (r.starts_with("vars.") || r.starts_with("matrix.")))
    {
        return match scope.lookup(reference, span) {
            Ok(value) => Node {
                value: value.value.clone(),
                span,
            },
            Err(e) => {
                errors.push(*e);
                Node {
                    value: Value::Null,
                    span,
                }
            }
        };
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            errors.push(
                Diagnostic::new(
                    "recipe::invalid-placeholder",
                    "unterminated `${` placeholder",
                    span,
                )
                .label("missing `}`")
                .help("write `${vars.NAME}`, or `$${` for a literal `${`"),
            );
            return Node {
                value: Value::Str(text.to_string()),
                span,
            };
        };
        let reference = &after[..end];
        match scope.lookup(reference, span).map(|v| &v.value) {
            Ok(Value::Str(s)) => out.push_str(s),
            Ok(Value::Int(i)) => out.push_str(&i.to_string()),
            Ok(Value::Float(f)) => out.push_str(&f.to_string()),
            Ok(Value::Bool(b)) => out.push_str(&b.to_string()),
            Ok(_) => errors.push(
                Diagnostic::new(
                    "recipe::invalid-placeholder",
                    format!("`{reference}` is not a scalar and cannot be part of a string"),
                    span,
                )
                .label("used inside a string here")
                .help("use the placeholder as the whole value to insert a list or mapping"),
            ),
            Err(e) => errors.push(*e),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Node {
        value: Value::Str(out),
        span,
    }
}

fn undefined(name: &str, span: Span, vars: &[(String, Node)]) -> Diagnostic {
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let d = Diagnostic::new(
        "recipe::undefined-var",
        format!("undefined variable `{name}`"),
        span,
    )
    .label("used here");
    match did_you_mean(name, &names) {
        Some(hint) => d.help(hint),
        None if names.is_empty() => d.help(format!(
            "define it under `vars:` (`vars: {{ {name}: ... }}`)"
        )),
        None => d.help(format!(
            "defined variables: {}",
            crate::diagnostic::quoted_list(&names)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn vars(source: &str) -> Vec<(String, Node)> {
        let (root, _) = yaml::parse(source);
        root.unwrap()
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.key_text().unwrap(), v.clone()))
            .collect()
    }

    #[test]
    fn whole_placeholders_keep_their_type_and_partial_ones_interpolate() {
        let vars = vars("n: 384\nname: wiki\nlist: [1, 2]");
        let (with, _) =
            yaml::parse("a: ${vars.n}\nb: data/${vars.name}.jsonl\nc: ${vars.list}\nd: $${vars.n}");
        let scope = Scope {
            vars: &vars,
            matrix: None,
        };
        let out = substitute(&with.unwrap(), scope).unwrap();
        assert_eq!(
            out.to_json(),
            serde_json::json!({"a": 384, "b": "data/wiki.jsonl", "c": [1, 2], "d": "${vars.n}"})
        );
    }

    #[test]
    fn undefined_variables_suggest_the_nearest() {
        let vars = vars("hidden: 384");
        let (with, _) = yaml::parse("a: ${vars.hiden}");
        let scope = Scope {
            vars: &vars,
            matrix: None,
        };
        let errors = substitute(&with.unwrap(), scope).unwrap_err();
        assert_eq!(errors[0].code, "recipe::undefined-var");
        assert_eq!(errors[0].help.as_deref(), Some("did you mean `hidden`?"));
    }
}
