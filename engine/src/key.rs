//! Stage keys: blake3 over a canonical encoding of exactly what determines a
//! stage's output: op name and version, parameters with defaults, the keys of
//! upstream stages by slot, the content digests of external files, the seed,
//! and the engine's format version. No paths of the store, no times.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped when the store layout or key encoding changes.
pub const ENGINE_FORMAT: u32 = 1;

/// What a stage key is computed from; stored in each manifest so that
/// `status --why` can say which field changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMaterial {
    pub engine_format: u32,
    pub op: String,
    pub op_version: u32,
    pub params: serde_json::Value,
    /// Upstream stage keys by slot, in the order written.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Positions in a partial slot (`Slot::partial`) whose stage failed in
    /// the run that computed this one; empty, and left out of the encoding,
    /// for every stage that had all its inputs, so their keys are as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub absent_inputs: BTreeMap<String, Vec<usize>>,
    /// Content digests of external files, by path as written in the recipe.
    pub files: BTreeMap<String, String>,
    pub seed: u64,
}

impl KeyMaterial {
    pub fn key(&self) -> String {
        let canonical = canonical_json(&serde_json::to_value(self).expect("key material is JSON"));
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"distillery-stage-key\0");
        hasher.update(canonical.as_bytes());
        hasher.finalize().to_hex().to_string()
    }
}

/// JSON with object keys sorted at every level and no whitespace: the same
/// value always encodes to the same bytes.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).unwrap()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// One difference between the key material a stage was stored with and
/// what it is now, for `status --why`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyChange {
    /// `params.hidden`, `inputs.model`, `files.data/train.jsonl`, `seed`, ...
    pub field: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<serde_json::Value>| match v {
            None => "(absent)".to_string(),
            Some(serde_json::Value::String(s)) if s.len() == 64 => format!("{}…", &s[..12]),
            Some(v) => v.to_string(),
        };
        write!(
            f,
            "{}: {} -> {}",
            self.field,
            show(&self.before),
            show(&self.after)
        )
    }
}

/// Field-by-field differences between two key materials.
pub fn diff(before: &KeyMaterial, after: &KeyMaterial) -> Vec<KeyChange> {
    let b = serde_json::to_value(before).unwrap();
    let a = serde_json::to_value(after).unwrap();
    let mut changes = Vec::new();
    diff_values("", Some(&b), Some(&a), &mut changes);
    changes
}

fn diff_values(
    path: &str,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
    out: &mut Vec<KeyChange>,
) {
    use serde_json::Value;
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(&sub, b.get(k), a.get(k), out);
            }
        }
        (b, a) if b != a => out.push(KeyChange {
            field: path.to_string(),
            before: b.cloned(),
            after: a.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn material() -> KeyMaterial {
        KeyMaterial {
            engine_format: ENGINE_FORMAT,
            op: "prune".into(),
            op_version: 1,
            params: json!({"hidden": 384, "ffn": 1024}),
            inputs: BTreeMap::from([("model".into(), vec!["abc".into()])]),
            absent_inputs: BTreeMap::new(),
            files: BTreeMap::new(),
            seed: 1,
        }
    }

    #[test]
    fn key_ignores_object_key_order() {
        let mut other = material();
        other.params = json!({"ffn": 1024, "hidden": 384});
        assert_eq!(material().key(), other.key());
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = material().key();
        let mut m = material();
        m.params["hidden"] = json!(448);
        assert_ne!(m.key(), base);
        let mut m = material();
        m.seed = 2;
        assert_ne!(m.key(), base);
        let mut m = material();
        m.op_version = 2;
        assert_ne!(m.key(), base);
        let mut m = material();
        m.inputs.insert("model".into(), vec!["abd".into()]);
        assert_ne!(m.key(), base);
        let mut m = material();
        m.files.insert("x".into(), "d".into());
        assert_ne!(m.key(), base);
        let mut m = material();
        m.absent_inputs.insert("model".into(), vec![0]);
        assert_ne!(m.key(), base);
    }

    #[test]
    fn no_absent_inputs_encode_as_before_they_existed() {
        // Keys of stages with all their inputs must not move.
        let encoded = serde_json::to_value(material()).unwrap();
        assert!(encoded.get("absent_inputs").is_none());
        let old: KeyMaterial = serde_json::from_value(encoded).unwrap();
        assert_eq!(old, material());
    }

    #[test]
    fn diff_names_the_changed_parameter() {
        let mut after = material();
        after.params["hidden"] = json!(448);
        let changes = diff(&material(), &after);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "params.hidden");
        assert_eq!(changes[0].to_string(), "params.hidden: 384 -> 448");
    }
}
