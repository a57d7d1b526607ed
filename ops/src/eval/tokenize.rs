//! The tokenizer a model artifact carries, as evaluation uses it: texts are
//! encoded through the same [`DocumentEncoder`] as the `dataset` op (so an
//! evaluated text gets exactly the ids a training row would), with the
//! special tokens the tokenizer itself puts in front (a BOS for Llama-style
//! tokenizers, nothing for GPT-2-style ones) and never any appended.

use crate::io::hf_folder::TOKENIZER_FILE;
use crate::text::DocumentEncoder;
use anyhow::{Context, Result, anyhow};
use rayon::prelude::*;
use serde_json::Value;
use std::path::Path;
use tokenizers::Tokenizer;

pub struct EvalTokenizer {
    tokenizer: Tokenizer,
    json: Value,
    prefix: Vec<u32>,
}

impl EvalTokenizer {
    /// The `tokenizer.json` of a model folder (a Model artifact).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!("the model {} has no readable tokenizer.json", dir.display())
        })?;
        let tokenizer = Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        let json = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::with_json(tokenizer, json)
    }

    /// A tokenizer already in memory (e.g. read from a GGUF file).
    pub fn new(tokenizer: Tokenizer) -> Result<Self> {
        let text = tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("cannot serialize the tokenizer: {e}"))?;
        let json = serde_json::from_str(&text)?;
        Self::with_json(tokenizer, json)
    }

    fn with_json(mut tokenizer: Tokenizer, json: Value) -> Result<Self> {
        // Texts are scored whole: a truncating or padding tokenizer would
        // change what is measured.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("cannot turn off truncation: {e}"))?;
        tokenizer.with_padding(None);
        let ids = |special| -> Result<Vec<u32>> {
            Ok(tokenizer
                .encode_fast("a", special)
                .map_err(|e| anyhow!("{e}"))?
                .get_ids()
                .to_vec())
        };
        let (with, without) = (ids(true)?, ids(false)?);
        let prefix = (0..=with.len().saturating_sub(without.len()))
            .find(|&i| with[i..].starts_with(&without))
            .map(|i| with[..i].to_vec())
            .unwrap_or_default();
        Ok(Self {
            tokenizer,
            json,
            prefix,
        })
    }

    /// What the tokenizer puts before every text (empty for SmolLM2).
    pub fn prefix(&self) -> &[u32] {
        &self.prefix
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Ids of each text, without special tokens, in parallel.
    pub fn encode_all(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encoder =
            DocumentEncoder::new(&self.tokenizer, &self.json, rayon::current_num_threads());
        texts.par_iter().map(|t| encoder.encode(t)).collect()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_all(&[text])?.pop().unwrap_or_default())
    }

    /// The text of `ids`, special tokens kept (as `transformers`' `decode`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| anyhow!("cannot decode: {e}"))
    }
}
