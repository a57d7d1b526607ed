//! `${vars.NAME}` substitution in a stage's `with` block.
//!
//! A scalar that is exactly `${vars.NAME}` takes the variable's value with
//! its type (a number stays a number, a list stays a list); a placeholder
//! inside a longer string is replaced by the variable's text. `$${` writes a
//! literal `${`.

use crate::diagnostic::{Diagnostic, Span, did_you_mean};
use crate::yaml::{Node, Value};

pub fn substitute(node: &Node, vars: &[(String, Node)]) -> Result<Node, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let out = walk(node, vars, &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn walk(node: &Node, vars: &[(String, Node)], errors: &mut Vec<Diagnostic>) -> Node {
    let value = match &node.value {
        Value::Str(s) if s.contains("${") => return expand(s, node.span, vars, errors),
        Value::Seq(items) => Value::Seq(items.iter().map(|n| walk(n, vars, errors)).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), walk(v, vars, errors)))
                .collect(),
        ),
        other => other.clone(),
    };
    Node {
        value,
        span: node.span,
    }
}

fn expand(text: &str, span: Span, vars: &[(String, Node)], errors: &mut Vec<Diagnostic>) -> Node {
    let lookup = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    // The whole scalar is one placeholder: keep the variable's type.
    if let Some(name) = text
        .strip_prefix("${vars.")
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|name| !name.contains(['}', '$']))
    {
        return match lookup(name) {
            Some(value) => Node {
                value: value.value.clone(),
                span,
            },
            None => {
                errors.push(undefined(name, span, vars));
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
        match reference.strip_prefix("vars.") {
            None => errors.push(
                Diagnostic::new(
                    "recipe::invalid-placeholder",
                    format!("unknown placeholder `${{{reference}}}`"),
                    span,
                )
                .label("only `${vars.NAME}` is supported")
                .help("write `$${` for a literal `${`"),
            ),
            Some(name) => match lookup(name).map(|v| &v.value) {
                Some(Value::Str(s)) => out.push_str(s),
                Some(Value::Int(i)) => out.push_str(&i.to_string()),
                Some(Value::Float(f)) => out.push_str(&f.to_string()),
                Some(Value::Bool(b)) => out.push_str(&b.to_string()),
                Some(_) => errors.push(
                    Diagnostic::new(
                        "recipe::invalid-placeholder",
                        format!("variable `{name}` is not a scalar and cannot be part of a string"),
                        span,
                    )
                    .label("used inside a string here")
                    .help("use the placeholder as the whole value to insert a list or mapping"),
                ),
                None => errors.push(undefined(name, span, vars)),
            },
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
        let out = substitute(&with.unwrap(), &vars).unwrap();
        assert_eq!(
            out.to_json(),
            serde_json::json!({"a": 384, "b": "data/wiki.jsonl", "c": [1, 2], "d": "${vars.n}"})
        );
    }

    #[test]
    fn undefined_variables_suggest_the_nearest() {
        let vars = vars("hidden: 384");
        let (with, _) = yaml::parse("a: ${vars.hiden}");
        let errors = substitute(&with.unwrap(), &vars).unwrap_err();
        assert_eq!(errors[0].code, "recipe::undefined-var");
        assert_eq!(errors[0].help.as_deref(), Some("did you mean `hidden`?"));
    }
}
