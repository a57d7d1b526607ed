//! Keys and values of past positions, so generation feeds one token at a
//! time instead of recomputing the whole prefix.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The cached keys and values of one layer, after RoPE:
/// both `[batch, past, kv_heads, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> LayerKv<B> {
    /// Appends `k, v: [batch, new, kv_heads, head_dim]` and returns the keys
    /// and values of every position so far. (Each append copies the cache
    /// once; for the short generations of evaluation that costs less than
    /// the weights read per token.)
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 1), Tensor::cat(vec![pv, v], 1)),
            None => (k, v),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// This layer's cache of batch 1 repeated for `rows` sequences.
    fn repeated(&self, rows: usize) -> Self {
        Self {
            kv: self.kv.as_ref().map(|(k, v)| {
                assert_eq!(k.dims()[0], 1, "only a cache of one sequence is repeated");
                (k.clone().repeat_dim(0, rows), v.clone().repeat_dim(0, rows))
            }),
        }
    }
}

/// The cache of a whole model. Positions are shared by the batch: every
/// sequence of a batch is at the same length.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerKv<B>>,
    pub(crate) len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerKv { kv: None }).collect(),
            len: 0,
        }
    }

    /// Number of positions already cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A cache of one sequence repeated for `rows` sequences that continue
    /// it differently (a shared prompt, then one continuation per row).
    /// Panics if this cache holds more than one sequence.
    pub fn repeated(&self, rows: usize) -> Self {
        Self {
            layers: self.layers.iter().map(|l| l.repeated(rows)).collect(),
            len: self.len,
        }
    }
}
