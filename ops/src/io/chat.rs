//! Chat templates: the Jinja `chat_template` of a `tokenizer_config.json`,
//! rendered the way transformers' `apply_chat_template` does.

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

/// A tokenizer's chat template (`chat_template` of `tokenizer_config.json`),
/// rendered with the settings transformers uses: `trim_blocks`,
/// `lstrip_blocks`, Python string methods, `raise_exception`.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    special: serde_json::Map<String, Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// The template of a `tokenizer_config.json`, or `None` when it has none.
    /// A list of named templates picks `default`.
    pub fn from_tokenizer_config(config: &Value) -> Result<Option<Self>> {
        let source = match config.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("chat_template is a list without a `default` template"))?,
            Some(other) => bail!("chat_template must be a string, found {other}"),
        };
        let mut special = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(token) = special_token(config, key) {
                special.insert(key.to_string(), Value::String(token));
            }
        }
        Self::new(source, special).map(Some)
    }

    /// A template from its source; `special` is passed to it as variables
    /// (`bos_token`, `eos_token`, ...).
    pub fn new(source: String, special: serde_json::Map<String, Value>) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| anyhow!("{e}"))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| anyhow!("invalid chat template: {e:#}"))?;
        Ok(Self { env, special })
    }

    /// Renders `messages` (a list of `{role, content}`).
    pub fn render(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        let mut ctx = self.special.clone();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("{e:#}"))?;
        template
            .render(minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| anyhow!("chat template failed: {e:#}"))
    }
}

/// A special token of a `tokenizer_config.json`: a string, or an object with
/// `content` (an `AddedToken`).
pub fn special_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}
