//! The recipe's JSON Schema, generated from the registered ops' parameter
//! types: one `oneOf` branch per op, selected by `op`, so that an editor
//! completes `with` for the op a stage names.

use crate::op::OpRegistry;
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
    let mut defs = generator.take_definitions(true);
    defs.extend(op_defs);
    defs.insert("stage".into(), json!({"oneOf": branches}));
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
