//! Tensors in host memory, the common currency between the file formats
//! (GGUF, safetensors) and the model: every reader produces a `StateDict`
//! under Hugging Face names and shapes, and the model is built from one.

use std::collections::BTreeMap;

/// A dense row-major f32 tensor with its Hugging Face shape
/// (`[out_features, in_features]` for a linear weight).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not match {} elements",
            data.len()
        );
        Self { shape, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Weights by Hugging Face parameter name (`model.layers.0.self_attn.q_proj.weight`).
pub type StateDict = BTreeMap<String, HostTensor>;
