//! An artifact folder reduced to a fingerprint that every machine computing
//! the same thing agrees on, and the comparison of two fingerprints (for
//! `op_pins.rs`).
//!
//! Discrete content is kept exactly: file names, shapes, dtypes, strings,
//! integers, token ids and other binary files (by digest). Floats are not:
//! matrix products dispatch at run time to kernels for the CPU's widest
//! vector instructions (AVX2 or AVX-512), which accumulate in another order,
//! so the same op gives floats that differ in their last bits from one
//! machine to another. A float tensor is kept as four sums over its
//! elements, a JSON float as itself, a number printed in a text file as
//! printed; they compare within [`FLOAT_TOLERANCE`].
#![allow(dead_code)]

use serde_json::{Map, Value, json};
use std::fmt::Display;
use std::path::Path;

/// Fields that say when something ran or how fast, which differ from run to
/// run: left out of the fingerprint of every JSON and JSONL file, at any
/// depth, by name.
pub const TIMING_FIELDS: [&str; 4] = ["elapsed_s", "seconds", "tokens_per_s", "items_per_s"];

/// Largest relative difference of a float between the fingerprint and its
/// pin (relative to the figure's scale) that is taken for rounding.
///
/// Measured on the pin recipe, whose `op_pins` run prints the largest
/// difference it took for rounding:
/// - one thread instead of two (`RAYON_NUM_THREADS=1`), and a build without
///   burn's `x86-v4` feature (AVX2 matrix kernels instead of AVX-512) on
///   the same machine: no float moved at all (a plain run prints about
///   1e-16: the pin file's decimals read back). Products this small sum
///   over their inner dimension in one block whatever the kernel; larger
///   ones, or other caches, may not.
/// - every weight of both models moved by one unit in the last place
///   (`DISTILLERY_PINS_NUDGE=1`), which changes the rounding of every
///   product as another summation order would: at most 3.1e-6 (importance's
///   perplexity metric, a difference of two losses), 5e-7 elsewhere.
/// - real changes, made by hand: importance's sequence mean divided by
///   `n + 1` moved its scores by 6e-2; prune keeping the same units but in
///   index order instead of rank order moved its tensors' signed sums by up
///   to 7e-2; the dataset putting the separator before each document
///   instead of after moved the results of every op that reads it by 1e-2
///   and more.
///
/// 1e-4 is 30 times the largest rounding difference seen and 100 times
/// below what those changes did.
pub const FLOAT_TOLERANCE: f64 = 1e-4;

/// JSON files larger than this whose fingerprint holds no float are kept as
/// a digest of that fingerprint (tokenizers, document lists): exact all the
/// same, and the pin file stays readable.
const LARGE_JSON_BYTES: usize = 2048;

/// The fingerprint of every file under `dir`, by path relative to it (with
/// `/`), in name order. `root` (the test's folder) is written `<root>` in
/// strings, so that absolute paths into it match from run to run.
pub fn fingerprint_dir(dir: &Path, root: &Path) -> Value {
    if dir
        .join(distillery_ops::teacher_logits::store::HEADER_FILE)
        .is_file()
    {
        return teacher_logits_print(dir);
    }
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files);
    files.sort();
    let mut out = Map::new();
    for rel in files {
        out.insert(rel.clone(), fingerprint_file(&dir.join(&rel), root));
    }
    Value::Object(out)
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(base, &path, out);
        } else {
            let rel = path.strip_prefix(base).unwrap();
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
}

fn fingerprint_file(path: &Path, root: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let roots = root_spellings(root);
    if name.ends_with(".safetensors") {
        safetensors_print(&bytes)
    } else if name.ends_with(".gguf") {
        gguf_print(bytes, &roots)
    } else if name.ends_with(".json") {
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        json_file_print(json_print(&value, &roots), bytes.len())
    } else if name.ends_with(".jsonl") {
        let lines: Vec<Value> = String::from_utf8(bytes.clone())
            .unwrap()
            .lines()
            .map(|l| {
                let value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: a line is not JSON: {e}", path.display()));
                json_print(&value, &roots)
            })
            .collect();
        json_file_print(Value::Array(lines), bytes.len())
    } else if name.ends_with(".md") || name.ends_with(".txt") {
        text_print(&String::from_utf8(bytes).unwrap(), &roots)
    } else {
        digest_print(&bytes)
    }
}

/// A `teacher_logits` folder by its contents rather than its bytes (its
/// frames compress floats whose last bits differ between machines): the
/// header without its byte counts, the kept ids exactly, and the sums of
/// the logits, log-sum-exps and tails.
fn teacher_logits_print(dir: &Path) -> Value {
    use distillery_ops::teacher_logits::TeacherLogitsStore;
    let store = TeacherLogitsStore::open(dir).expect("a teacher_logits folder");
    let mut header = serde_json::to_value(&store.header).unwrap();
    for field in ["stored_bytes", "raw_bytes"] {
        header.as_object_mut().unwrap().remove(field);
    }
    let (mut ids, mut logits, mut lse, mut tails) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..store.header.rows {
        let row = store.row(i).unwrap();
        ids.extend(row.ids.iter().flat_map(|id| id.to_le_bytes()));
        logits.extend(row.logits.iter().map(|&x| x as f64));
        lse.extend(row.lse.iter().map(|&x| x as f64));
        tails.extend(row.log_tail.iter().map(|&x| x as f64));
    }
    json!({
        "header": header,
        "ids_blake3": blake3::hash(&ids).to_hex().to_string(),
        "logits": tensor_sums(&logits),
        "lse": tensor_sums(&lse),
        "log_tail": tensor_sums(&tails),
    })
}

fn digest_print(bytes: &[u8]) -> Value {
    json!({"bytes": bytes.len(), "blake3": blake3::hash(bytes).to_hex().to_string()})
}

/// The test folder as the ops may have written it.
fn root_spellings(root: &Path) -> Vec<String> {
    let mut spellings = vec![root.display().to_string()];
    if let Ok(canonical) = root.canonicalize() {
        spellings.push(canonical.display().to_string());
    }
    spellings
}

// ---------------------------------------------------------------- JSON

fn json_file_print(print: Value, file_bytes: usize) -> Value {
    if file_bytes > LARGE_JSON_BYTES && !has_float(&print) {
        let canonical = distillery_engine::key::canonical_json(&print);
        json!({"exact_json_blake3": blake3::hash(canonical.as_bytes()).to_hex().to_string()})
    } else {
        json!({ "json": print })
    }
}

/// `value` without [`TIMING_FIELDS`], its object keys sorted, and the test
/// folder replaced in strings.
fn json_print(value: &Value, roots: &[String]) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map
                .keys()
                .filter(|k| !TIMING_FIELDS.contains(&k.as_str()))
                .collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), json_print(&map[k], roots)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| json_print(v, roots)).collect()),
        Value::String(s) => Value::String(without_root(s, roots)),
        other => other.clone(),
    }
}

fn without_root(s: &str, roots: &[String]) -> String {
    roots
        .iter()
        .fold(s.to_string(), |s, root| s.replace(root.as_str(), "<root>"))
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

// ---------------------------------------------------------------- text

/// A text file (tables) as its text with every decimal number replaced by
/// `#`, and those numbers as printed: the words exactly, the numbers
/// within a tolerance.
fn text_print(text: &str, roots: &[String]) -> Value {
    let text = without_root(text, roots);
    let mut template = String::new();
    let mut numbers = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let (before, from) = rest.split_at(start);
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let mut end = digits(from);
        let decimal = from[end..].starts_with('.')
            && from[end + 1..].starts_with(|c: char| c.is_ascii_digit());
        template.push_str(before);
        if decimal {
            end += 1 + digits(&from[end + 1..]);
            template.push('#');
            numbers.push(Value::String(from[..end].to_string()));
        } else {
            template.push_str(&from[..end]);
        }
        rest = &from[end..];
    }
    template.push_str(rest);
    json!({"text": template, "numbers": numbers})
}

// ---------------------------------------------------------------- tensors

/// Each tensor's dtype and shape, and four sums over its elements (float
/// dtypes) or the digest of its bytes (the others); the header's metadata.
fn safetensors_print(bytes: &[u8]) -> Value {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).expect("a safetensors file");
    let file = safetensors::SafeTensors::deserialize(bytes).expect("a safetensors file");
    let mut names = file.names();
    names.sort();
    let mut tensors = Map::new();
    for name in names {
        let view = file.tensor(name).unwrap();
        let mut print = json!({
            "dtype": format!("{:?}", view.dtype()),
            "shape": view.shape(),
        });
        let fields = print.as_object_mut().unwrap();
        match float_values(view.dtype(), view.data()) {
            Some(values) => fields.extend(tensor_sums(&values)),
            None => {
                fields.insert(
                    "blake3".into(),
                    blake3::hash(view.data()).to_hex().to_string().into(),
                );
            }
        }
        tensors.insert(name.to_string(), print);
    }
    let metadata: Option<std::collections::BTreeMap<_, _>> =
        header.metadata().as_ref().map(|m| m.iter().collect());
    json!({"metadata": metadata, "tensors": tensors})
}

/// A GGUF file: its metadata (arrays by length and digest, floats as
/// floats) and each tensor's type and shape with the sums of its
/// dequantized elements.
fn gguf_print(bytes: Vec<u8>, roots: &[String]) -> Value {
    use distillery_ops::io::gguf::{GgufFile, GgufValue};
    let file = GgufFile::from_bytes(bytes).expect("a GGUF file");
    let mut metadata = Map::new();
    for entry in file.metadata() {
        let print = match &entry.value {
            GgufValue::F32(x) => json!(*x as f64),
            GgufValue::F64(x) => json!(x),
            GgufValue::String(s) => json!(without_root(s, roots)),
            GgufValue::Array(a) => {
                json!({"len": a.len(), "blake3": blake3::hash(format!("{a:?}").as_bytes()).to_hex().to_string()})
            }
            other => json!(format!("{other:?}")),
        };
        metadata.insert(entry.key.clone(), print);
    }
    let mut tensors = Map::new();
    for info in file.tensors() {
        let values: Vec<f64> = file
            .dequantize_info(info)
            .expect("a readable tensor")
            .data
            .iter()
            .map(|&x| x as f64)
            .collect();
        let mut print = json!({"type": info.ggml_type.name(), "shape": info.shape()});
        print.as_object_mut().unwrap().extend(tensor_sums(&values));
        tensors.insert(info.name.clone(), print);
    }
    json!({"metadata": metadata, "tensors": tensors})
}

fn float_values(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f64>> {
    use safetensors::Dtype;
    let values = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        _ => return None,
    };
    Some(values)
}

/// `abs_sum`, `sum`, `sum_sq` and `signed_sum` (the dot product with a
/// fixed pseudo-random vector of signs, which sees elements that moved or
/// swapped places). `abs_sum` is the scale `sum` and `signed_sum` are
/// compared at: their rounding error is bounded by it, even where the
/// terms cancel.
fn tensor_sums(values: &[f64]) -> Map<String, Value> {
    let mut signs = 0x9E37_79B9_7F4A_7C15u64;
    let (mut abs_sum, mut sum, mut sum_sq, mut signed_sum) = (0.0, 0.0, 0.0, 0.0);
    for &v in values {
        // xorshift64: the same signs on every machine and for every run.
        signs ^= signs << 13;
        signs ^= signs >> 7;
        signs ^= signs << 17;
        abs_sum += v.abs();
        sum += v;
        sum_sq += v * v;
        signed_sum += if signs & 1 == 1 { v } else { -v };
    }
    [
        ("abs_sum", abs_sum),
        ("sum", sum),
        ("sum_sq", sum_sq),
        ("signed_sum", signed_sum),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), json!(v)))
    .collect()
}

// ---------------------------------------------------------------- comparison

/// What a comparison found: the differences beyond tolerance, each as
/// `path: pinned -> now` (discrete ones first), and the largest relative
/// difference of a float that was within it.
#[derive(Debug, Default)]
pub struct Comparison {
    pub differences: Vec<String>,
    pub largest_deviation: f64,
    pub largest_deviation_at: String,
    float_differences: Vec<String>,
}

impl Comparison {
    fn float(&mut self, path: &str, pinned: impl Display, now: impl Display, deviation: f64) {
        if deviation > FLOAT_TOLERANCE {
            self.float_differences.push(format!(
                "{path}: {pinned} -> {now} (relative difference {deviation:.1e})"
            ));
        } else if deviation > self.largest_deviation {
            self.largest_deviation = deviation;
            self.largest_deviation_at = path.to_string();
        }
    }
}

/// Compares a fingerprint with its pin: everything exactly but floats,
/// which may differ by [`FLOAT_TOLERANCE`] relative to their scale.
pub fn compare(pinned: &Value, now: &Value) -> Comparison {
    let mut comparison = Comparison::default();
    compare_at("", pinned, now, &mut comparison);
    let floats = std::mem::take(&mut comparison.float_differences);
    comparison.differences.extend(floats);
    comparison
}

fn compare_at(path: &str, pinned: &Value, now: &Value, out: &mut Comparison) {
    match (pinned, now) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                out.differences.push(format!("{}: gone", join(path, key)));
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.differences.push(format!("{}: new", join(path, key)));
            }
            // The sums of a tensor that may cancel compare at its abs_sum.
            let scale = match (a.get("abs_sum"), b.get("abs_sum")) {
                (Some(x), Some(y)) => x.as_f64().zip(y.as_f64()).map(|(x, y)| x.max(y)),
                _ => None,
            };
            for (key, x) in a.iter().filter(|(k, _)| b.contains_key(*k)) {
                let y = &b[key];
                let at = join(path, key);
                match (key.as_str(), scale, x.as_f64(), y.as_f64()) {
                    ("sum" | "signed_sum", Some(scale), Some(x), Some(y)) => {
                        out.float(&at, x, y, relative(x, y, scale))
                    }
                    ("numbers", _, _, _) => compare_printed(&at, x, y, out),
                    _ => compare_at(&at, x, y, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare_at(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            out.float(path, x, y, relative(x, y, x.abs().max(y.abs())));
        }
        (a, b) if a == b => {}
        (a, b) => out
            .differences
            .push(format!("{path}: {} -> {}", short(a), short(b))),
    }
}

/// Numbers printed in a text file (strings like `"12.3456"`): equal within
/// the tolerance, plus one unit of the last printed digit (a value next to a
/// rounding boundary may print either way).
fn compare_printed(path: &str, pinned: &Value, now: &Value, out: &mut Comparison) {
    let (Some(a), Some(b)) = (pinned.as_array(), now.as_array()) else {
        return compare_at(path, pinned, now, out);
    };
    if a.len() != b.len() {
        return compare_at(path, pinned, now, out);
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let at = format!("{path}[{i}]");
        let (Some(xs), Some(ys)) = (x.as_str(), y.as_str()) else {
            compare_at(&at, x, y, out);
            continue;
        };
        let (Ok(xv), Ok(yv)) = (xs.parse::<f64>(), ys.parse::<f64>()) else {
            compare_at(&at, x, y, out);
            continue;
        };
        let decimals = xs.split('.').nth(1).map_or(0, str::len) as i32;
        let unit = 10f64.powi(-decimals);
        let slack = ((xv - yv).abs() - unit).max(0.0);
        out.float(&at, xs, ys, relative(slack, 0.0, xv.abs().max(yv.abs())));
    }
}

fn relative(x: f64, y: f64, scale: f64) -> f64 {
    let diff = (x - y).abs();
    if diff == 0.0 { 0.0 } else { diff / scale }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path} > {key}")
    }
}

/// A value for a message, cut to a readable length.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 80 {
        text
    } else {
        format!(
            "{}... ({} characters)",
            &text[..text.floor_char_boundary(77)],
            text.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: &[f64]) -> Value {
        Value::Object(tensor_sums(values))
    }

    #[test]
    fn floats_within_tolerance_match_and_discrete_values_must_be_equal() {
        let pinned = json!({"loss": 2.0, "rows": 7, "name": "a"});
        let rounded = json!({"loss": 2.0 * (1.0 + FLOAT_TOLERANCE / 2.0), "rows": 7, "name": "a"});
        assert!(compare(&pinned, &rounded).differences.is_empty());
        let changed = json!({"loss": 2.0 * (1.0 + FLOAT_TOLERANCE * 2.0), "rows": 8, "name": "a"});
        let differences = compare(&pinned, &changed).differences;
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(
            differences[0].starts_with("rows: 7 -> 8"),
            "{differences:?}"
        );
    }

    #[test]
    fn tensor_sums_see_moved_elements_and_forgive_cancellation() {
        let values = [0.5, -0.25, 1.0, -1.25, 0.75, 0.125];
        let mut swapped = values;
        swapped.swap(0, 2);
        assert!(
            !compare(&tensor(&values), &tensor(&swapped))
                .differences
                .is_empty()
        );
        // A sum near zero compares at the scale of the elements.
        let balanced = [1.0, -1.0, 2.0, -2.0];
        let nudged = [1.0, -1.0, 2.0 + 1e-12, -2.0];
        assert!(
            compare(&tensor(&balanced), &tensor(&nudged))
                .differences
                .is_empty()
        );
    }

    #[test]
    fn printed_numbers_may_differ_in_their_last_digit() {
        let pinned = text_print("| loss | 5.4321 | 12 |\n", &[]);
        let rounded = text_print("| loss | 5.4322 | 12 |\n", &[]);
        assert!(compare(&pinned, &rounded).differences.is_empty());
        let changed = text_print("| loss | 5.4400 | 12 |\n", &[]);
        assert!(!compare(&pinned, &changed).differences.is_empty());
        let words = text_print("| loss | 5.4321 | 13 |\n", &[]);
        assert!(!compare(&pinned, &words).differences.is_empty());
    }
}
