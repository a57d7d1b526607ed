//! The tokenizer folder a dataset is built with: `tokenizer.json` (loaded
//! with truncation and padding off, and parsed for the encoder's fast path),
//! `tokenizer_config.json` (eos token, chat template) and the name and
//! digest the dataset index records; and the separator appended after each
//! document.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::io::chat::{ChatTemplate, special_token};
use crate::io::dataset::{SeparatorInfo, TokenizerInfo};
use crate::io::hf_folder::{CONFIG_FILE, TOKENIZER_FILE, read_tokenizer_config};

/// The tokenizer folder's pieces a dataset build needs.
pub(super) struct TokenizerAssets {
    pub tokenizer: Tokenizer,
    /// `tokenizer.json`, parsed.
    pub json: Value,
    pub info: TokenizerInfo,
    /// `tokenizer_config.json`, when the folder has one.
    config: Option<Value>,
}

impl TokenizerAssets {
    /// Reads the tokenizer folder `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "the tokenizer input {} has no readable tokenizer.json",
                dir.display()
            )
        })?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        let json: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        // Documents are packed whole: no truncation, no padding.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        tokenizer.with_padding(None);

        let config = read_tokenizer_config(dir)?;
        let model_config: Option<Value> = std::fs::read_to_string(dir.join(CONFIG_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let name = [config.as_ref(), model_config.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|c| ["name_or_path", "_name_or_path"].map(|k| c.get(k)))
            .flatten()
            .filter_map(Value::as_str)
            .find(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                std::path::absolute(dir)
                    .unwrap_or_else(|_| dir.to_path_buf())
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        let info = TokenizerInfo {
            name,
            digest: blake3::hash(&bytes).to_hex().to_string(),
            vocab_size: tokenizer.get_vocab_size(true) as u64,
        };
        Ok(TokenizerAssets {
            tokenizer,
            json,
            info,
            config,
        })
    }

    /// The separator's text and ids: `requested` (the `separator` parameter),
    /// or else the tokenizer's eos token.
    pub fn separator(&self, requested: Option<&str>) -> Result<SeparatorInfo> {
        let text = match requested {
            Some(text) => text.to_string(),
            None => self
                .config
                .as_ref()
                .and_then(|c| special_token(c, "eos_token"))
                .ok_or_else(|| {
                    anyhow!(
                        "the tokenizer has no `eos_token` in tokenizer_config.json to separate documents; set `separator`"
                    )
                })?,
        };
        let ids = if text.is_empty() {
            Vec::new()
        } else if let Some(id) = self.tokenizer.token_to_id(&text) {
            vec![id]
        } else {
            self.tokenizer
                .encode_fast(text.as_str(), false)
                .map_err(|e| anyhow!("cannot tokenize the separator {text:?}: {e}"))?
                .get_ids()
                .to_vec()
        };
        Ok(SeparatorInfo { text, ids })
    }

    /// The chat template of `tokenizer_config.json`, when it has one.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        Ok(match &self.config {
            Some(config) => ChatTemplate::from_tokenizer_config(config)
                .context("the tokenizer's chat_template")?,
            None => None,
        })
    }
}
