//! The tensors a config implies, by Hugging Face name and shape, so that a
//! set of weights can be checked against a config without building the model.

use super::config::LlamaConfig;
use crate::io::StateDict;

impl LlamaConfig {
    /// Every tensor the model needs, `[out, in]` for linear weights.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, f, q, kv) = (
            self.hidden_size,
            self.intermediate_size,
            self.q_dim(),
            self.kv_dim(),
        );
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut add = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
            add("input_layernorm.weight", vec![h]);
            add("self_attn.q_proj.weight", vec![q, h]);
            add("self_attn.k_proj.weight", vec![kv, h]);
            add("self_attn.v_proj.weight", vec![kv, h]);
            add("self_attn.o_proj.weight", vec![h, q]);
            if self.attention_bias {
                add("self_attn.q_proj.bias", vec![q]);
                add("self_attn.k_proj.bias", vec![kv]);
                add("self_attn.v_proj.bias", vec![kv]);
                add("self_attn.o_proj.bias", vec![h]);
            }
            add("post_attention_layernorm.weight", vec![h]);
            add("mlp.gate_proj.weight", vec![f, h]);
            add("mlp.up_proj.weight", vec![f, h]);
            add("mlp.down_proj.weight", vec![h, f]);
            if self.mlp_bias {
                add("mlp.gate_proj.bias", vec![f]);
                add("mlp.up_proj.bias", vec![f]);
                add("mlp.down_proj.bias", vec![h]);
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }

    /// What is missing, misshapen or unexpected in `tensors`, one line each
    /// (empty when they fit). A tied model's spare `lm_head.weight` and rotary
    /// buffers are tolerated, as transformers does.
    pub fn tensor_problems(&self, tensors: &StateDict) -> Vec<String> {
        let expected = self.expected_tensors();
        let mut problems = Vec::new();
        for (name, shape) in &expected {
            match tensors.get(name) {
                None => problems.push(format!("missing tensor {name} {shape:?}")),
                Some(t) if &t.shape != shape => problems.push(format!(
                    "tensor {name} has shape {:?}, the config implies {shape:?}",
                    t.shape
                )),
                Some(_) => {}
            }
        }
        for name in tensors.keys() {
            let tolerated = name.ends_with("rotary_emb.inv_freq")
                || (self.tie_word_embeddings && name == "lm_head.weight");
            if !tolerated && !expected.iter().any(|(n, _)| n == name) {
                problems.push(format!("unexpected tensor {name}"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::HostTensor;

    #[test]
    fn expected_tensors_count_the_parameters() {
        let mut c = LlamaConfig::new(40, 96, 3, 5, 1, 101);
        c.head_dim = 12;
        c.attention_bias = true;
        let total: usize = c
            .expected_tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, c.num_parameters());
    }

    #[test]
    fn problems_name_the_tensor() {
        let c = LlamaConfig::new(8, 16, 1, 2, 1, 11);
        let mut tensors: StateDict = c
            .expected_tensors()
            .into_iter()
            .map(|(n, s)| {
                let len = s.iter().product();
                (n, HostTensor::new(s, vec![0.5; len]))
            })
            .collect();
        assert!(c.tensor_problems(&tensors).is_empty());
        tensors.remove("model.norm.weight");
        tensors.insert(
            "model.layers.0.mlp.up_proj.weight".into(),
            HostTensor::new(vec![2, 8], vec![0.0; 16]),
        );
        tensors.insert("extra.weight".into(), HostTensor::new(vec![1], vec![0.0]));
        let problems = c.tensor_problems(&tensors);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("up_proj") && problems[0].contains("[16, 8]"));
        assert!(problems[1].contains("missing tensor model.norm.weight"));
        assert!(problems[2].contains("unexpected tensor extra.weight"));
    }
}
