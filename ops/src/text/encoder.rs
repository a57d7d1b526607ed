//! Token ids of one document, exactly as `Tokenizer::encode(text, false)`
//! gives them, through a faster path for byte-level BPE tokenizers: the
//! `dataset` op and evaluation both encode through [`DocumentEncoder`], so
//! an evaluated text gets the ids a training row would.

use anyhow::{Result, anyhow};
use serde_json::Value;
use tokenizers::Tokenizer;

/// The GPT-2 pattern of `tokenizers`' ByteLevel pre-tokenizer (`use_regex`).
const BYTE_LEVEL_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Pieces longer than this are not cached (as in `tokenizers`' BPE cache).
const CACHE_MAX_PIECE: usize = 256;
/// A word cache is emptied when it grows past this many entries.
const CACHE_MAX_ENTRIES: usize = 1 << 20;

/// Set to `1` to tokenize through `Tokenizer::encode` only.
pub const EXACT_ENV: &str = "DISTILLERY_EXACT_TOKENIZER";

/// One splitting step of a pre-tokenizer, before the byte-level mapping.
enum Step {
    /// `Digits`: numeric characters isolated one by one, or in runs.
    Digits { individual: bool },
    /// A regex whose matches and gaps are both pieces (`Isolated`).
    Regex(tokenizers::utils::SysRegex),
}

/// Pre-tokenization of a byte-level BPE tokenizer, done on `&str` slices.
struct FastPath {
    steps: Vec<Step>,
    byte_chars: [char; 256],
}

/// The byte-to-character table of GPT-2's byte-level BPE.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("a valid char")
        };
    }
    table
}

impl FastPath {
    /// The fast path for a `tokenizer.json`, when its pipeline is one this
    /// path reproduces exactly: no normalizer; a BPE model without dropout;
    /// pre-tokenizers made of `Digits`, `Split` (regex, isolated) and a final
    /// `ByteLevel` without prefix space.
    fn for_tokenizer(json: &Value) -> Option<Self> {
        if !json.get("normalizer").is_none_or(Value::is_null) {
            return None;
        }
        let model = json.get("model")?;
        if model.get("type")?.as_str()? != "BPE" {
            return None;
        }
        if !model
            .get("dropout")
            .is_none_or(|d| d.is_null() || d.as_f64() == Some(0.0))
        {
            return None;
        }
        let pre = json.get("pre_tokenizer")?;
        let list: Vec<&Value> = match pre.get("type")?.as_str()? {
            "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
            _ => vec![pre],
        };
        let (last, rest) = list.split_last()?;
        let mut steps = Vec::new();
        for step in rest {
            match step.get("type")?.as_str()? {
                "Digits" => steps.push(Step::Digits {
                    individual: step
                        .get("individual_digits")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }),
                "Split" => {
                    if step.get("behavior")?.as_str()? != "Isolated"
                        || step.get("invert").and_then(Value::as_bool) != Some(false)
                    {
                        return None;
                    }
                    let pattern = step.get("pattern")?.get("Regex")?.as_str()?;
                    steps.push(Step::Regex(tokenizers::utils::SysRegex::new(pattern).ok()?));
                }
                _ => return None,
            }
        }
        if last.get("type")?.as_str()? != "ByteLevel" || last.get("add_prefix_space")?.as_bool()? {
            return None;
        }
        if last
            .get("use_regex")
            .and_then(Value::as_bool)
            .unwrap_or(true)
        {
            steps.push(Step::Regex(
                tokenizers::utils::SysRegex::new(BYTE_LEVEL_PATTERN).ok()?,
            ));
        }
        Some(Self {
            steps,
            byte_chars: byte_chars(),
        })
    }

    /// Splits `text` into the pieces the model sees (before the byte-level
    /// mapping), appending them to `out`; `scratch` is reused.
    fn split<'t>(&self, text: &'t str, out: &mut Vec<&'t str>, scratch: &mut Vec<&'t str>) {
        out.clear();
        if !text.is_empty() {
            out.push(text);
        }
        for step in &self.steps {
            std::mem::swap(out, scratch);
            out.clear();
            for &piece in scratch.iter() {
                match step {
                    Step::Digits { individual } => split_digits(piece, *individual, out),
                    Step::Regex(re) => {
                        let mut prev = 0;
                        for (start, end) in re.find_iter(piece) {
                            if prev != start {
                                out.push(&piece[prev..start]);
                            }
                            if start != end {
                                out.push(&piece[start..end]);
                            }
                            prev = end;
                        }
                        if prev != piece.len() {
                            out.push(&piece[prev..]);
                        }
                    }
                }
            }
        }
    }
}

/// `Digits`: each numeric character alone (`individual`) or runs of them,
/// and the text between them, as pieces.
fn split_digits<'t>(piece: &'t str, individual: bool, out: &mut Vec<&'t str>) {
    let mut start = 0;
    let mut in_digits = false;
    for (i, c) in piece.char_indices() {
        let numeric = c.is_numeric();
        if numeric {
            if i > start && (!in_digits || individual) {
                out.push(&piece[start..i]);
                start = i;
            }
        } else if in_digits && i > start {
            out.push(&piece[start..i]);
            start = i;
        }
        in_digits = numeric;
    }
    if start < piece.len() {
        out.push(&piece[start..]);
    }
}

/// A small, fast hasher for the word caches (FxHash).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(26) ^ w).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = (self.0.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(26) ^ b as u64).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type WordCache =
    std::collections::HashMap<Box<str>, Box<[u32]>, std::hash::BuildHasherDefault<FxHasher>>;

/// Encodes documents to ids exactly as `Tokenizer::encode(text, false)`.
///
/// For byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen style) it
/// takes a faster path: the added tokens are split out by `tokenizers`
/// itself, the pre-tokenization runs on string slices with the same regex
/// engine and patterns, and each piece's ids come from a per-thread word
/// cache filled by the tokenizer's own BPE model. This avoids the per-piece
/// allocations of the general pipeline (offsets, alignments, token strings),
/// which dominate its run time. Other tokenizers go through `encode`.
pub struct DocumentEncoder<'a> {
    tokenizer: &'a Tokenizer,
    fast: Option<FastPath>,
    /// One cache per worker thread, by rayon thread index; the last one
    /// serves threads outside a pool.
    caches: Vec<std::sync::Mutex<WordCache>>,
}

impl<'a> DocumentEncoder<'a> {
    /// `tokenizer_json` is the parsed `tokenizer.json` the tokenizer was
    /// loaded from; `threads` the size of the pool that will call `encode`.
    pub fn new(tokenizer: &'a Tokenizer, tokenizer_json: &Value, threads: usize) -> Self {
        let exact = std::env::var(EXACT_ENV).is_ok_and(|v| v == "1");
        let fast = if exact {
            None
        } else {
            FastPath::for_tokenizer(tokenizer_json)
        };
        Self {
            tokenizer,
            fast,
            caches: (0..=threads).map(|_| Default::default()).collect(),
        }
    }

    /// Whether the fast path is in use.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.fast {
            None => self.encode_exact(text),
            Some(fast) => self.encode_fast(fast, text),
        }
    }

    /// The ids through `Tokenizer::encode`.
    pub fn encode_exact(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }

    fn encode_fast(&self, fast: &FastPath, text: &str) -> Result<Vec<u32>> {
        use tokenizers::{Model, OffsetReferential, OffsetType};
        let slot = rayon::current_thread_index()
            .filter(|&i| i + 1 < self.caches.len())
            .unwrap_or(self.caches.len() - 1);
        let mut cache = self.caches[slot]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let model = self.tokenizer.get_model();
        let extracted = self
            .tokenizer
            .get_added_vocabulary()
            .extract_and_normalize(None::<&tokenizers::NormalizerWrapper>, text);
        let mut ids = Vec::with_capacity(text.len() / 3 + 8);
        let mut pieces = Vec::new();
        let mut scratch = Vec::new();
        let mut mapped = String::new();
        for (split, _, tokens) in
            extracted.get_splits(OffsetReferential::Original, OffsetType::None)
        {
            if let Some(tokens) = tokens {
                ids.extend(tokens.iter().map(|t| t.id));
                continue;
            }
            fast.split(split, &mut pieces, &mut scratch);
            for &piece in &pieces {
                if let Some(hit) = cache.get(piece) {
                    ids.extend_from_slice(hit);
                    continue;
                }
                mapped.clear();
                mapped.extend(piece.bytes().map(|b| fast.byte_chars[b as usize]));
                let tokens = model.tokenize(&mapped).map_err(|e| anyhow!("{e}"))?;
                let start = ids.len();
                ids.extend(tokens.iter().map(|t| t.id));
                if piece.len() < CACHE_MAX_PIECE {
                    if cache.len() >= CACHE_MAX_ENTRIES {
                        cache.clear();
                    }
                    cache.insert(piece.into(), ids[start..].into());
                }
            }
        }
        Ok(ids)
    }
}
