//! The recipe's JSON Schema, generated from the registered ops' parameter
//! types: one `oneOf` branch per op, selected by `op`, so that an editor
//! completes `with` for the op a stage names.

use crate::op::OpRegistry;
use crate::recipe::ExecutorKind;
use crate::slurm::resources::SlurmSettings;
use serde_json::{Value, json};

pub fn recipe_schema(registry: &OpRegistry) -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut branches = Vec::new();
    let mut op_defs = serde_json::Map::new();
    for op in registry.iter() {
        let params = op.params_schema(&mut generator).to_value();
        let mut inputs = serde_json::Map::new();
        let mut required_inputs = Vec::new();
        for slot in op.slots() {
            let stage_name = json!({"type": "string", "description": format!("a stage that produces a {}", slot.kind)});
            let schema = if slot.list {
                json!({
                    "description": format!("one or more stages producing a {}", slot.kind),
                    "oneOf": [stage_name, {"type": "array", "items": {"type": "string"}, "minItems": 1}]
                })
            } else {
                json!({"type": "string", "description": format!("a stage that produces a {}", slot.kind)})
            };
            inputs.insert(slot.name.to_string(), schema);
            if !slot.optional {
                required_inputs.push(slot.name);
            }
        }
        let mut properties = serde_json::Map::new();
        properties.insert("op".into(), json!({"const": op.name()}));
        properties.insert(
            "inputs".into(),
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": inputs,
                "required": required_inputs,
            }),
        );
        properties.insert("with".into(), params);
        properties.insert("matrix".into(), json!({"$ref": "#/$defs/matrix"}));
        properties.insert(
            "resources".into(),
            json!({"$ref": "#/$defs/Resources", "description": "What this stage's Slurm job asks for (over `slurm.ops` and `slurm.defaults`); not part of the stage's key."}),
        );
        let mut required = vec!["op"];
        if !required_inputs.is_empty() {
            required.push("inputs");
        }
        let def_name = format!("stage.{}", op.name());
        op_defs.insert(
            def_name.clone(),
            json!({
                "type": "object",
                "title": op.name(),
                "description": format!("{} Produces a {}.", op.description(), op.output()),
                "additionalProperties": false,
                "required": required,
                "properties": properties,
            }),
        );
        branches.push(json!({"$ref": format!("#/$defs/{def_name}")}));
    }
    // The Slurm types join the definitions (as `Resources` and `SlurmSettings`).
    let slurm = generator.subschema_for::<SlurmSettings>().to_value();
    let mut defs = generator.take_definitions(true);
    defs.extend(op_defs);
    defs.insert("stage".into(), json!({"oneOf": branches}));
    defs.insert(
        "matrix".into(),
        json!({
            "description": "One stage per combination of the values, named `stage[axis=value,...]`; `${matrix.AXIS}` inside `with` is the value. Inputs naming this stage bind the expansion with the same values (a stage with the same axes) or all of them (a list slot).",
            "oneOf": [
                {
                    "type": "object",
                    "description": "Axes and their values: every combination (a grid).",
                    "minProperties": 1,
                    "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "additionalProperties": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": true,
                        "items": {"type": ["string", "number", "boolean"]},
                    },
                },
                {
                    "type": "array",
                    "description": "The combinations, each a mapping of the same axes to values.",
                    "minItems": 1,
                    "uniqueItems": true,
                    "items": {
                        "type": "object",
                        "minProperties": 1,
                        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                        "additionalProperties": {"type": ["string", "number", "boolean"]},
                    },
                },
            ],
        }),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Distillery recipe",
        "description": "A pipeline of stages. See the README's recipe reference.",
        "type": "object",
        "additionalProperties": false,
        "required": ["stages"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "Name of the recipe (default: the file name)."},
            "seed": {"type": "integer", "minimum": 0, "description": "Seed for every stage (default 0); part of every stage key."},
            "device": {"enum": ["cpu", "cuda", "auto"], "description": "Where stages run (default auto: cuda when one is present)."},
            "executor": {"enum": ExecutorKind::NAMES, "description": "How stages run: `local` (default: threads of this process) or `slurm` (one sbatch job per stage; the store on a shared filesystem). `run --executor` overrides it."},
            "slurm": {
                "allOf": [slurm],
                "description": "Slurm resources by default and by op, used with the slurm executor; not part of any stage's key."
            },
            "vars": {"type": "object", "description": "Values usable as ${vars.NAME} inside `with`."},
            "stages": {
                "type": "object",
                "minProperties": 1,
                "description": "Stages by name; inputs name other stages.",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_.-]*$"},
                "additionalProperties": {"$ref": "#/$defs/stage"},
            },
        },
        "$defs": defs,
    })
}

/// The op reference in Markdown, generated from the same schema: for each
/// op its inputs, output and parameters (type, default, description).
pub fn reference_markdown(registry: &OpRegistry) -> String {
    let schema = recipe_schema(registry);
    let defs = &schema["$defs"];
    let mut out = String::new();
    for op in registry.iter() {
        let stage = &defs[format!("stage.{}", op.name())];
        out.push_str(&format!("### `{}`\n\n{}\n\n", op.name(), op.description()));
        out.push_str(&format!("Output: {}.", op.output()));
        let slots = op.slots();
        if slots.is_empty() {
            out.push_str(" No inputs.\n\n");
        } else {
            out.push_str(" Inputs: ");
            let listed: Vec<String> = slots
                .iter()
                .map(|s| {
                    format!(
                        "`{}` ({}{}{}{})",
                        s.name,
                        s.kind,
                        if s.list { ", one or more" } else { "" },
                        if s.optional { ", optional" } else { "" },
                        if s.partial {
                            "; goes on without those that fail"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            out.push_str(&listed.join(", "));
            out.push_str(".\n\n");
        }
        let params = resolve(&stage["properties"]["with"], defs);
        let required: Vec<&str> = params["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(properties) = params["properties"].as_object().filter(|p| !p.is_empty()) else {
            out.push_str("No parameters.\n\n");
            continue;
        };
        out.push_str("| parameter | type | default | description |\n|---|---|---|---|\n");
        for (name, property) in properties {
            let property = resolve(property, defs);
            let default = if required.contains(&name.as_str()) {
                "required".to_string()
            } else {
                match property.get("default") {
                    None | Some(Value::Null) => "none".to_string(),
                    Some(d) => format!("`{d}`"),
                }
            };
            let description = property["description"]
                .as_str()
                .unwrap_or("")
                .replace('\n', " ");
            out.push_str(&format!(
                "| `{name}` | {} | {default} | {description} |\n",
                type_name(&property, defs)
            ));
        }
        out.push('\n');
    }
    out
}

/// Follows a `$ref` into `$defs`, keeping the referring node's description.
fn resolve(schema: &Value, defs: &Value) -> Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => {
            let mut target = defs[name].clone();
            if let (Some(d), Some(obj)) = (schema.get("description"), target.as_object_mut()) {
                obj.insert("description".into(), d.clone());
            }
            if let (Some(d), Some(obj)) = (schema.get("default"), target.as_object_mut()) {
                obj.insert("default".into(), d.clone());
            }
            target
        }
        None => schema.clone(),
    }
}

fn type_name(schema: &Value, defs: &Value) -> String {
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .map(|v| format!("`{}`", v.as_str().map_or(v.to_string(), String::from)))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    for combinator in ["oneOf", "anyOf"] {
        if let Some(options) = schema[combinator].as_array() {
            return options
                .iter()
                .map(|o| type_name(&resolve(o, defs), defs))
                .filter(|t| t != "null")
                .collect::<Vec<_>>()
                .join(" or ");
        }
    }
    if let Some(c) = schema.get("const") {
        return format!("`{}`", c.as_str().map_or(c.to_string(), String::from));
    }
    let base = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_string(),
    };
    if base == "array" {
        let items = resolve(&schema["items"], defs);
        return format!("list of {}", type_name(&items, defs));
    }
    let mut bounds = Vec::new();
    if let Some(min) = schema.get("minimum") {
        bounds.push(format!(">= {min}"));
    }
    if let Some(max) = schema.get("maximum") {
        bounds.push(format!("<= {max}"));
    }
    if bounds.is_empty() {
        base
    } else {
        format!("{base} ({})", bounds.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> OpRegistry {
        let mut r = OpRegistry::new();
        crate::testing::register(&mut r);
        r
    }

    #[test]
    fn schema_has_one_branch_per_op_keyed_by_op() {
        let registry = registry();
        let schema = recipe_schema(&registry);
        let branches = schema["$defs"]["stage"]["oneOf"].as_array().unwrap();
        assert_eq!(branches.len(), registry.names().len());
        let emit = &schema["$defs"]["stage.emit"];
        assert_eq!(emit["properties"]["op"]["const"], "emit");
        assert_eq!(emit["additionalProperties"], false);
        let train = &schema["$defs"]["stage.mock_train"];
        assert_eq!(
            train["properties"]["inputs"]["required"],
            serde_json::json!(["model", "data"])
        );
    }

    #[test]
    fn reference_lists_parameters_with_types_and_defaults() {
        let text = reference_markdown(&registry());
        assert!(text.contains("### `emit`"), "{text}");
        assert!(text.contains("| `text` | string | required |"), "{text}");
        assert!(
            text.contains(
                "| `repeat` | integer (>= 0) | `1` | How many times to write the text (1-1000). |"
            ),
            "{text}"
        );
        assert!(
            text.contains("Inputs: `parts` (Files, one or more)."),
            "{text}"
        );
    }
}
