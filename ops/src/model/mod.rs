//! A Llama-architecture decoder generic over the Burn backend.
//!
//! Reading order: [`config`] (the hyper-parameters), [`layers`] (linear and
//! RMSNorm), [`rope`], [`attention`], [`mlp`], [`decoder`] (one layer),
//! [`llama`] (the whole model and its forward passes), with [`capture`]
//! (activations a forward can hand back) and [`cache`] (keys and values for
//! generation); then [`weights`] and [`hf`] (building it from, and exporting
//! it to, Hugging Face tensors and folders).
//!
//! Attention, RMSNorm, RoPE and SwiGLU run as the fused ops of
//! [`crate::kernels`], so running the model asks for [`ModelBackend`].
pub mod attention;
pub mod cache;
pub mod capture;
pub mod config;
pub mod decoder;
pub mod error;
pub mod hf;
pub mod init;
pub mod layers;
pub mod llama;
pub mod mlp;
pub mod rope;
pub mod shapes;
pub mod surgery;
pub mod weights;

pub use cache::KvCache;
pub use capture::{Capture, ForwardOutput, LayerActivations};
pub use config::{LlamaConfig, RopeScaling, TokenIds};
pub use error::ModelError;
pub use llama::{Llama, tokens_tensor};

use crate::kernels::{AttentionOps, MatmulOps, ProductInputOps, RowOps};
use burn::tensor::backend::Backend;

/// What running the model asks of a backend: Burn's tensor ops plus the
/// fused attention and row kernels, the matrix products' precision, and
/// the row ops that write the products' operands.
pub trait ModelBackend: Backend + AttentionOps + MatmulOps + RowOps + ProductInputOps {}

impl<B: Backend + AttentionOps + MatmulOps + RowOps + ProductInputOps> ModelBackend for B {}
