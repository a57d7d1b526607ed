//! Chat templates: the Jinja `chat_template` of a `tokenizer_config.json`,
//! rendered the way transformers' `apply_chat_template` does.
//!
//! [`ChatTemplate::render_with_replies`] also finds the assistant replies in
//! the rendered text, for training on them alone, with any template: the
//! reply of assistant message `i` is what rendering `messages[..=i]` adds to
//! rendering `messages[..i]` with the generation prompt (the role header),
//! so it holds the content and the end-of-turn token but not the header.

use std::ops::Range;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
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
        self.render_value(messages, add_generation_prompt)
    }

    /// Renders `messages` given as anything that serializes to a list, so
    /// that prefixes of a conversation are rendered without copying it.
    fn render_value<M: Serialize + ?Sized>(
        &self,
        messages: &M,
        add_generation_prompt: bool,
    ) -> Result<String> {
        #[derive(Serialize)]
        struct Vars<'a, M: ?Sized> {
            #[serde(flatten)]
            special: &'a serde_json::Map<String, Value>,
            messages: &'a M,
            add_generation_prompt: bool,
        }
        let ctx = Vars {
            special: &self.special,
            messages,
            add_generation_prompt,
        };
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| anyhow!("{e:#}"))?;
        template
            .render(minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| anyhow!("chat template failed: {e:#}"))
    }

    /// Renders a conversation (as [`Self::render`] without the generation
    /// prompt) and finds the assistant replies in the text.
    ///
    /// For each message `i` whose role is `assistant`, `messages[..i]` is
    /// rendered with the generation prompt and `messages[..=i]` without it;
    /// the reply is what the latter adds to the former, less its trailing
    /// whitespace (the newline a template writes after the end-of-turn token
    /// is never generated: decoding stops at that token). It is an error
    /// when a render is not a prefix of the next one (the former of the
    /// latter, each of the whole conversation, or a generation prompt that
    /// rewrites the previous reply): the replies of such a template cannot
    /// be located this way.
    pub fn render_with_replies(&self, messages: &Value) -> Result<RenderedChat> {
        let Value::Array(list) = messages else {
            bail!("`messages` must be a list");
        };
        let text = self.render_value(list, false)?;
        let mut replies: Vec<Range<usize>> = Vec::new();
        // End of the previous reply's render (`messages[..=i]`).
        let mut covered = 0usize;
        for (i, message) in list.iter().enumerate() {
            if message.get("role").and_then(Value::as_str) != Some("assistant") {
                continue;
            }
            let before = self
                .render_value(&list[..i], true)
                .with_context(|| format!("rendering messages[..{i}] with the generation prompt"))?;
            let through = self
                .render_value(&list[..=i], false)
                .with_context(|| format!("rendering messages[..={i}]"))?;
            if !through.starts_with(&before) {
                bail!(
                    "the chat template cannot be masked: the conversation up to message {i} (an assistant reply) does not start with its render before that message plus the generation prompt ({})",
                    first_difference(&before, &through)
                );
            }
            if !text.starts_with(&through) {
                bail!(
                    "the chat template cannot be masked: the whole conversation does not start with its render up to message {i} (an assistant reply) ({})",
                    first_difference(&through, &text)
                );
            }
            if before.len() < covered {
                bail!(
                    "the chat template cannot be masked: the generation prompt before message {i} rewrites the text of the previous reply"
                );
            }
            let end = before.len() + through[before.len()..].trim_end().len();
            replies.push(before.len()..end);
            covered = through.len();
        }
        Ok(RenderedChat { text, replies })
    }
}

/// Where two renders part, for errors.
fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    let excerpt = |s: &str| -> String { s[at..].chars().take(40).collect() };
    format!(
        "they differ at byte {at}: {:?} against {:?}",
        excerpt(a),
        excerpt(b)
    )
}

/// A rendered conversation and where its assistant replies are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The whole conversation, as [`ChatTemplate::render`] gives it.
    pub text: String,
    /// Byte ranges of `text`, in order and disjoint: each assistant reply
    /// with its end-of-turn token, without the role header before it.
    pub replies: Vec<Range<usize>>,
}

impl RenderedChat {
    /// `text` cut at the replies' bounds, in order, each piece with whether
    /// it is a reply; they concatenate to `text`. Empty pieces are left out.
    pub fn segments(&self) -> Vec<(&str, bool)> {
        let mut out = Vec::with_capacity(2 * self.replies.len() + 1);
        let mut at = 0;
        for reply in &self.replies {
            if reply.start > at {
                out.push((&self.text[at..reply.start], false));
            }
            if reply.end > reply.start {
                out.push((&self.text[reply.clone()], true));
            }
            at = reply.end;
        }
        if at < self.text.len() {
            out.push((&self.text[at..], false));
        }
        out
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
