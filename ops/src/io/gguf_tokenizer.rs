//! Rebuilds a Hugging Face `tokenizers::Tokenizer` (and its
//! `tokenizer_config.json`) from the `tokenizer.ggml.*` metadata of a GGUF
//! file, so a GGUF alone is enough to tokenize exactly like the original model.

use serde_json::{Value, json};
use thiserror::Error;
use tokenizers::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::sequence::Sequence as PostSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::io::gguf::{GgufError, GgufFile};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// `tokenizer.ggml.pre` values mapped to "digits one by one, then the GPT-2
/// regex" (llama.cpp's SMOLLM/STARCODER/REFACT/... pre-tokenizer types).
const DIGITS_THEN_GPT2: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
];
/// `tokenizer.ggml.pre` values that are the plain GPT-2 byte-level regex.
const GPT2: &[&str] = &["default", "gpt2", "gpt-2"];
/// `tokenizer.ggml.pre` values that use the Llama-3 regex.
const LLAMA3: &[&str] = &["llama-bpe", "llama3", "llama-v3"];

/// The Llama-3 pre-tokenizer regex, as in Meta's tokenizer.json.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Debug, Error)]
pub enum GgufTokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "unsupported tokenizer model {0:?} (tokenizer.ggml.model): only \"gpt2\" (byte-level BPE) is supported"
    )]
    UnsupportedModel(String),
    #[error(
        "unsupported pre-tokenizer {pre:?} (tokenizer.ggml.pre); supported: {}",
        supported_pre().join(", ")
    )]
    UnsupportedPre { pre: String },
    #[error("tokenizer metadata: {0}")]
    Invalid(String),
    #[error("building the tokenizer: {0}")]
    Build(String),
}

fn supported_pre() -> Vec<&'static str> {
    GPT2.iter()
        .chain(DIGITS_THEN_GPT2)
        .chain(LLAMA3)
        .copied()
        .collect()
}

type Result<T> = std::result::Result<T, GgufTokenizerError>;

fn build_err(e: impl std::fmt::Display) -> GgufTokenizerError {
    GgufTokenizerError::Build(e.to_string())
}

/// Vocabulary, types and special ids read from the metadata and checked
/// against each other.
struct Vocabulary<'a> {
    tokens: &'a [String],
    types: Vec<i64>,
    merges: &'a [String],
    pre: String,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl<'a> Vocabulary<'a> {
    fn read(gguf: &'a GgufFile) -> Result<Self> {
        let model = gguf.require_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufTokenizerError::UnsupportedModel(model.to_string()));
        }
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| GgufError::MissingKey {
                key: "tokenizer.ggml.tokens".into(),
            })?;
        let types = match gguf.get_int_array("tokenizer.ggml.token_type")? {
            Some(t) if t.len() != tokens.len() => {
                return Err(GgufTokenizerError::Invalid(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    t.len(),
                    tokens.len()
                )));
            }
            Some(t) => t,
            None => vec![token_type::NORMAL; tokens.len()],
        };
        if u32::try_from(tokens.len()).is_err() {
            return Err(GgufTokenizerError::Invalid(format!(
                "{} tokens do not fit 32-bit ids",
                tokens.len()
            )));
        }
        let merges = gguf.get_str_array("tokenizer.ggml.merges")?.unwrap_or(&[]);
        let id = |key: &str| -> Result<Option<u32>> {
            match gguf.get_u64(key)? {
                None => Ok(None),
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                Some(id) => Err(GgufTokenizerError::Invalid(format!(
                    "{key} = {id} is outside the vocabulary of {} tokens",
                    tokens.len()
                ))),
            }
        };
        Ok(Vocabulary {
            tokens,
            types,
            merges,
            pre: gguf
                .get_str("tokenizer.ggml.pre")?
                .unwrap_or("default")
                .to_string(),
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            // llama.cpp's default for byte-level BPE vocabularies is no BOS.
            add_bos: gguf
                .get_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
            add_eos: gguf
                .get_bool("tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
            add_space_prefix: gguf
                .get_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(false),
        })
    }

    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.map(|i| self.tokens[i as usize].as_str())
    }

    /// Unknown and control tokens are special; user-defined ones are added
    /// but not special (so `skip_special_tokens` keeps them).
    fn is_special(ty: i64) -> bool {
        ty == token_type::CONTROL || ty == token_type::UNKNOWN
    }

    fn is_added(ty: i64) -> bool {
        Self::is_special(ty) || ty == token_type::USER_DEFINED
    }
}

/// Builds the tokenizer described by the GGUF's `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
    let v = Vocabulary::read(gguf)?;
    let bpe = build_bpe(&v)?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre_tokenizer(&v.pre, v.add_space_prefix)?));
    tk.with_post_processor(Some(post_processor(&v)?));
    tk.with_decoder(Some(ByteLevel::new(true, true, true)));
    let added: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(&v.types)
        .filter(|(t, ty)| Vocabulary::is_added(**ty) && !t.is_empty())
        .map(|(t, &ty)| AddedToken::from(t.clone(), Vocabulary::is_special(ty)).normalized(false))
        .collect();
    tk.add_tokens(added).map_err(build_err)?;
    Ok(tk)
}

fn build_bpe(v: &Vocabulary<'_>) -> Result<BPE> {
    let mut vocab = Vocab::default();
    for (i, t) in v.tokens.iter().enumerate() {
        // Some vocabularies repeat a string (e.g. padding entries); the first
        // id wins, as in llama.cpp's text-to-token map.
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    // Checked here because the `tokenizers` merge builder indexes a buffer
    // sized by the longest token and panics on a merge whose parts or result
    // are not in the vocabulary.
    let mut merges = Vec::with_capacity(v.merges.len());
    for (i, m) in v.merges.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            GgufTokenizerError::Invalid(format!(
                "merge #{i} {m:?} is not two space-separated tokens"
            ))
        })?;
        for part in [a, b, &format!("{a}{b}")] {
            if !vocab.contains_key(part) {
                return Err(GgufTokenizerError::Invalid(format!(
                    "merge #{i} {m:?}: {part:?} is not in the vocabulary"
                )));
            }
        }
        merges.push((a.to_string(), b.to_string()));
    }
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges);
    if let Some(unk) = v.token(v.unk) {
        builder = builder.unk_token(unk.to_string());
    }
    builder.build().map_err(build_err)
}

fn pre_tokenizer(pre: &str, add_prefix_space: bool) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(add_prefix_space, true, true);
    Ok(if GPT2.contains(&pre) {
        byte_level.into()
    } else if DIGITS_THEN_GPT2.contains(&pre) {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else if LLAMA3.contains(&pre) {
        let split = Split::new(
            SplitPattern::Regex(LLAMA3_REGEX.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(build_err)?;
        // The regex already split the text; ByteLevel only maps bytes.
        Sequence::new(vec![split.into(), byte_level.use_regex(false).into()]).into()
    } else {
        return Err(GgufTokenizerError::UnsupportedPre {
            pre: pre.to_string(),
        });
    })
}

fn post_processor(v: &Vocabulary<'_>) -> Result<PostProcessorWrapper> {
    let byte_level = ByteLevel::new(false, false, true);
    let bos = v.token(v.bos).filter(|_| v.add_bos);
    let eos = v.token(v.eos).filter(|_| v.add_eos);
    if bos.is_none() && eos.is_none() {
        return Ok(byte_level.into());
    }
    let mut specials = Vec::new();
    if let (Some(t), Some(id)) = (bos, v.bos) {
        specials.push((t.to_string(), id));
    }
    // BOS and EOS may be the same token; the template lists it once.
    if let (Some(t), Some(id)) = (eos, v.eos)
        && !specials.iter().any(|(s, _)| s == t)
    {
        specials.push((t.to_string(), id));
    }
    // Each sequence gets its own BOS/EOS, as in Meta's Llama-3 tokenizer.json.
    let wrap = |seq: &str, type_id: u32| -> Vec<String> {
        bos.map(|t| format!("{t}:{type_id}"))
            .into_iter()
            .chain([format!("{seq}:{type_id}")])
            .chain(eos.map(|t| format!("{t}:{type_id}")))
            .collect()
    };
    let single = wrap("$A", 0);
    let pair = [wrap("$A", 0), wrap("$B", 1)].concat();
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(build_err)?
        .try_pair(pair)
        .map_err(build_err)?
        .special_tokens(specials)
        .build()
        .map_err(build_err)?;
    Ok(PostSequence::new(vec![byte_level.into(), template.into()]).into())
}

/// A Hugging Face `tokenizer_config.json` for the GGUF's tokenizer: special
/// tokens, BOS/EOS policy, chat template and maximum length.
pub fn tokenizer_config(gguf: &GgufFile) -> Result<Value> {
    let v = Vocabulary::read(gguf)?;
    let named = [v.bos, v.eos, v.pad, v.unk];
    let additional: Vec<&str> = v
        .tokens
        .iter()
        .zip(&v.types)
        .enumerate()
        .filter(|(i, (_, ty))| Vocabulary::is_special(**ty) && !named.contains(&Some(*i as u32)))
        .map(|(_, (t, _))| t.as_str())
        .collect();
    // The slow GPT2Tokenizer only reproduces the GPT-2 regex split.
    let class = if LLAMA3.contains(&v.pre.as_str()) {
        "PreTrainedTokenizerFast"
    } else {
        "GPT2Tokenizer"
    };
    let context = match gguf.get_str("general.architecture")? {
        Some(arch) => gguf.get_u64(&format!("{arch}.context_length"))?,
        None => None,
    };
    Ok(json!({
        "bos_token": v.token(v.bos),
        "eos_token": v.token(v.eos),
        "pad_token": v.token(v.pad),
        "unk_token": v.token(v.unk),
        "additional_special_tokens": additional,
        "tokenizer_class": class,
        "add_bos_token": v.add_bos,
        "add_eos_token": v.add_eos,
        "add_prefix_space": v.add_space_prefix,
        "clean_up_tokenization_spaces": false,
        "model_max_length": context,
        "chat_template": gguf.get_str("tokenizer.chat_template")?,
    }))
}
