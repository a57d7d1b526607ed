//! Why a model could not be configured or built from its weights.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("invalid Llama config: {0}")]
    Config(String),
    #[error("missing tensor {name} (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("unexpected tensors not used by the model: {}", .names.join(", "))]
    UnexpectedTensors { names: Vec<String> },
}
