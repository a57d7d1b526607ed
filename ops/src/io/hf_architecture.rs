//! Which transformers architecture an exported folder declares.
//!
//! Every model this crate runs is a Llama computation, but transformers'
//! `LlamaConfig` refuses a hidden size that is not a multiple of the head
//! count, whatever `head_dim` says, and width pruning makes such shapes
//! (576 / 9 heads pruned to 448). Mistral without a sliding window is the
//! same computation (RMSNorm, rotate-half RoPE, grouped-query attention,
//! SwiGLU, explicit `head_dim`) and has no such check, so those students are
//! exported as Mistral. Mistral has no bias terms, which is the one shape
//! neither can carry.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::LlamaConfig;

/// A transformers model class with the Llama computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HfArchitecture {
    /// `LlamaForCausalLM`: needs `hidden_size` divisible by the head count.
    Llama,
    /// `MistralForCausalLM` with `sliding_window: null`: any head size, no biases.
    Mistral,
}

/// What the user asks for: a fixed class, or the first that loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArchitectureChoice {
    // Llama where transformers accepts the shape, otherwise Mistral.
    #[default]
    Auto,
    Llama,
    Mistral,
}

impl fmt::Display for HfArchitecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class())
    }
}

impl HfArchitecture {
    /// The class name written to `architectures`.
    pub fn class(self) -> &'static str {
        match self {
            HfArchitecture::Llama => "LlamaForCausalLM",
            HfArchitecture::Mistral => "MistralForCausalLM",
        }
    }

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            HfArchitecture::Llama => "llama",
            HfArchitecture::Mistral => "mistral",
        }
    }

    /// Why transformers cannot load `config` under this class, if it cannot.
    pub fn refusal(self, config: &LlamaConfig) -> Option<String> {
        match self {
            HfArchitecture::Llama => {
                let heads = config.num_attention_heads;
                (!config.hidden_size.is_multiple_of(heads)).then(|| {
                    format!(
                        "transformers' LlamaConfig needs hidden_size ({}) to be a multiple of \
                         num_attention_heads ({heads})",
                        config.hidden_size
                    )
                })
            }
            HfArchitecture::Mistral => {
                let biases: Vec<&str> = [
                    ("attention_bias", config.attention_bias),
                    ("mlp_bias", config.mlp_bias),
                ]
                .into_iter()
                .filter_map(|(name, on)| on.then_some(name))
                .collect();
                (!biases.is_empty()).then(|| {
                    format!(
                        "MistralForCausalLM has no bias terms, and this model has {}",
                        biases.join(" and ")
                    )
                })
            }
        }
    }
}

/// The class an export declares, with the reason when it is not Llama.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub architecture: HfArchitecture,
    /// Why Llama was not chosen (only for `auto`).
    pub reason: Option<String>,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Some(reason) => write!(f, "{} ({reason})", self.architecture),
            None => write!(f, "{}", self.architecture),
        }
    }
}

/// The class to export `config` as; an error says why none (or not the
/// forced one) can load it.
pub fn resolve(config: &LlamaConfig, choice: ArchitectureChoice) -> Result<Resolved, String> {
    let forced = |architecture: HfArchitecture| match architecture.refusal(config) {
        None => Ok(Resolved {
            architecture,
            reason: None,
        }),
        Some(why) => Err(format!("cannot export as {architecture}: {why}")),
    };
    match choice {
        ArchitectureChoice::Llama => forced(HfArchitecture::Llama),
        ArchitectureChoice::Mistral => forced(HfArchitecture::Mistral),
        ArchitectureChoice::Auto => match HfArchitecture::Llama.refusal(config) {
            None => forced(HfArchitecture::Llama),
            Some(llama_refusal) => match HfArchitecture::Mistral.refusal(config) {
                None => Ok(Resolved {
                    architecture: HfArchitecture::Mistral,
                    reason: Some(llama_refusal),
                }),
                Some(mistral_refusal) => Err(format!(
                    "no transformers architecture can load this shape: {llama_refusal}, and \
                     {mistral_refusal}"
                )),
            },
        },
    }
}

/// `config.json` rewritten to declare `architecture`: its class and
/// `model_type`, and for Mistral an explicit `sliding_window: null` (its
/// default is a 4096-token window, which Llama does not have).
pub fn declare(config: &Value, architecture: HfArchitecture) -> Value {
    let mut config = config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("architectures".into(), json!([architecture.class()]));
        obj.insert("model_type".into(), architecture.model_type().into());
        match architecture {
            HfArchitecture::Mistral => {
                obj.insert("sliding_window".into(), Value::Null);
            }
            HfArchitecture::Llama => {
                obj.remove("sliding_window");
            }
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hidden: usize, heads: usize, bias: bool) -> LlamaConfig {
        let mut c = LlamaConfig::new(hidden, 64, 2, heads, heads, 100);
        c.head_dim = 64;
        c.attention_bias = bias;
        c
    }

    #[test]
    fn auto_keeps_llama_where_transformers_accepts_it() {
        let r = resolve(&config(576, 9, false), ArchitectureChoice::Auto).unwrap();
        assert_eq!(r.architecture, HfArchitecture::Llama);
        assert_eq!(r.reason, None);
    }

    #[test]
    fn auto_falls_back_to_mistral_and_says_why() {
        let r = resolve(&config(448, 9, false), ArchitectureChoice::Auto).unwrap();
        assert_eq!(r.architecture, HfArchitecture::Mistral);
        let reason = r.reason.unwrap();
        assert!(reason.contains("448") && reason.contains('9'), "{reason}");
    }

    #[test]
    fn forcing_a_class_that_cannot_load_the_shape_is_an_error() {
        let err = resolve(&config(448, 9, false), ArchitectureChoice::Llama).unwrap_err();
        assert!(err.contains("LlamaForCausalLM"), "{err}");
        let err = resolve(&config(576, 9, true), ArchitectureChoice::Mistral).unwrap_err();
        assert!(err.contains("attention_bias"), "{err}");
    }

    #[test]
    fn biases_on_an_indivisible_shape_have_no_class() {
        let err = resolve(&config(448, 9, true), ArchitectureChoice::Auto).unwrap_err();
        assert!(
            err.contains("hidden_size") && err.contains("attention_bias"),
            "{err}"
        );
    }

    #[test]
    fn declaring_mistral_turns_the_window_off_and_llama_removes_it() {
        let c = config(448, 9, false).to_json();
        let m = declare(&c, HfArchitecture::Mistral);
        assert_eq!(m["architectures"], json!(["MistralForCausalLM"]));
        assert_eq!(m["model_type"], "mistral");
        assert!(m.get("sliding_window").is_some_and(Value::is_null));
        let l = declare(&m, HfArchitecture::Llama);
        assert_eq!(l["model_type"], "llama");
        assert!(l.get("sliding_window").is_none());
    }
}
