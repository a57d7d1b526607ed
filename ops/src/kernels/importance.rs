//! Importance reductions (METHOD.md 3.2): per-channel statistics for the
//! Minitron width scores, and the per-token cosine distance for block
//! importance, as a Burn backend extension ([`ImportanceOps`]).
//!
//! Width. For a hooked activation `x` `[B, S, C]`, per call:
//! `a[b, c]` = sequence aggregate of `x[b, :, c]` (mean: `mean_s |x|`;
//! l2: `sqrt(sum_s x^2)`; var: `var_s x`), then `S1[c] += sum_b a[b, c]`,
//! `S2[c] += sum_b a[b, c]^2` and `N += B`. At the end the batch aggregate is
//! mean `S1/N`, l2 `sqrt(S2)` or var `S2/N - (S1/N)^2` ([`batch_aggregate`]).
//! The paper's choice, batch l2 of sequence mean, is
//! `score[c] = sqrt(sum over samples of (mean_s |x|)^2)`.
//!
//! Depth. For a layer's (or block's) input and output `[B, S, C]`, the sum
//! over tokens of `1 - cos(h_in[b, s, :], h_out[b, s, :])`, with cos = 1
//! when both vectors are zero and `dot / max(|u| |v|, 1e-8)` otherwise. The
//! CubeCL kernels compute each token's cosine in f32 (as ModelOpt's fp32
//! hooks do): for nearly parallel vectors `1 - cos` keeps an absolute error
//! of about 1e-7, not a relative one.
//!
//! Accumulators are f32 tensors on the device, updated by every call and
//! read back once ([`ChannelStats`], [`BlockDistance`]). Implementations:
//! Flex (a rayon twin, f64 inside a call), the CubeCL backends
//! (`CubeBackend<R, ..>`, so `Wgpu` and `Cuda` as Burn defines them without
//! its `fusion` feature, which this workspace leaves off), and `Autodiff<B>`
//! for any of those (through the inner backend; nothing is recorded for
//! backward). Any other backend can opt in with an empty `impl` and gets
//! [`generic`], built from Burn tensor ops. Were Burn's `fusion` feature
//! turned on, `Wgpu` and `Cuda` would name `Fusion<CubeBackend<..>>`, which
//! has no impl here: code naming them stops compiling rather than silently
//! falling back.

use super::{float, tensor};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, Tensor};
use std::fmt;
use std::str::FromStr;

/// Guard on the product of the norms in the cosine, as torch's
/// `cosine_similarity` uses.
pub const COSINE_EPS: f64 = 1e-8;

/// How a set of scores is reduced, over the sequence or over the batch
/// (Minitron, arXiv 2407.14679, section 2.2): mean of absolute values, L2 norm, or
/// population variance. Recipes and the Scores summary name them `mean`,
/// `l2`, `var`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Mean (of absolute values, over the sequence).
    #[default]
    Mean,
    /// L2 norm.
    L2,
    /// Population variance.
    Var,
}

impl Aggregation {
    pub const ALL: [Aggregation; 3] = [Aggregation::Mean, Aggregation::L2, Aggregation::Var];

    /// The name recipes and the Scores summary use: `mean`, `l2`, `var`.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Mean => "mean",
            Aggregation::L2 => "l2",
            Aggregation::Var => "var",
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mean" => Ok(Aggregation::Mean),
            "l2" => Ok(Aggregation::L2),
            "var" => Ok(Aggregation::Var),
            other => Err(format!(
                "unknown aggregation `{other}` (expected `mean`, `l2` or `var`)"
            )),
        }
    }
}

/// The importance reductions as a backend extension.
///
/// Inputs may be in any float dtype and layout; accumulators are f32 and are
/// returned updated (implementations write in place when they own them).
pub trait ImportanceOps: Backend {
    /// `x` `[B, S, C]` with `S >= 1`; `s1`, `s2` `[C]` f32. Returns
    /// `(s1 + sum_b a[b, :], s2 + sum_b a[b, :]^2)` where `a[b, c]` is the
    /// `seq_agg` aggregate of `x[b, :, c]`.
    fn channel_stats_accumulate(
        x: FloatTensor<Self>,
        seq_agg: Aggregation,
        s1: FloatTensor<Self>,
        s2: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        generic::channel_stats_accumulate::<Self>(x, seq_agg, s1, s2)
    }

    /// `h_in`, `h_out` `[B, S, C]` of one shape; `acc` `[1]` f32. Returns
    /// `acc + sum_{b, s} (1 - cos(h_in[b, s, :], h_out[b, s, :]))`.
    fn cosine_distance_accumulate(
        h_in: FloatTensor<Self>,
        h_out: FloatTensor<Self>,
        acc: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        generic::cosine_distance_accumulate::<Self>(h_in, h_out, acc)
    }
}

/// One hook call of the channel statistics: see [`ImportanceOps`].
///
/// Panics when `x` has an empty sequence or `s1`, `s2` are not `[C]`.
pub fn channel_stats_accumulate<B: ImportanceOps>(
    x: Tensor<B, 3>,
    seq_agg: Aggregation,
    s1: Tensor<B, 1>,
    s2: Tensor<B, 1>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [_, seq, channels] = x.dims();
    assert!(
        seq > 0,
        "channel statistics need at least one token per row"
    );
    assert!(
        s1.dims() == [channels] && s2.dims() == [channels],
        "accumulators of shape {:?} and {:?} for an activation of {channels} channels",
        s1.dims(),
        s2.dims()
    );
    let (s1, s2) = B::channel_stats_accumulate(float(x), seq_agg, float(s1), float(s2));
    (tensor(s1), tensor(s2))
}

/// One hook call of block importance: see [`ImportanceOps`].
pub fn cosine_distance_accumulate<B: ImportanceOps>(
    h_in: Tensor<B, 3>,
    h_out: Tensor<B, 3>,
    acc: Tensor<B, 1>,
) -> Tensor<B, 1> {
    assert_eq!(
        h_in.dims(),
        h_out.dims(),
        "block importance needs the block's input and output of one shape"
    );
    assert_eq!(acc.dims(), [1], "the cosine accumulator is a [1] tensor");
    tensor(B::cosine_distance_accumulate(
        float(h_in),
        float(h_out),
        float(acc),
    ))
}

/// Batch aggregation of accumulated sums over `samples` rows (f64 on the
/// host): mean `S1/N`, l2 `sqrt(S2)`, var `max(S2/N - (S1/N)^2, 0)`.
pub fn batch_aggregate(s1: &[f32], s2: &[f32], samples: u64, agg: Aggregation) -> Vec<f32> {
    let n = samples.max(1) as f64;
    s1.iter()
        .zip(s2)
        .map(|(&s1, &s2)| {
            let (s1, s2) = (s1 as f64, s2 as f64);
            let score = match agg {
                Aggregation::Mean => s1 / n,
                Aggregation::L2 => s2.sqrt(),
                Aggregation::Var => (s2 / n - (s1 / n) * (s1 / n)).max(0.0),
            };
            score as f32
        })
        .collect()
}

fn read_f32<B: Backend>(t: &Tensor<B, 1>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("an f32 accumulator")
}

/// The width statistics of one hooked tensor, accumulated over calls.
#[derive(Debug, Clone)]
pub struct ChannelStats<B: Backend> {
    /// `(S1, S2)`; taken out only while a call updates them.
    sums: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    samples: u64,
    seq_agg: Aggregation,
}

impl<B: ImportanceOps> ChannelStats<B> {
    /// Zeroed f32 accumulators for `channels` channels on `device`.
    pub fn new(channels: usize, seq_agg: Aggregation, device: &B::Device) -> Self {
        let zeros = || Tensor::<B, 1>::zeros([channels], (device, DType::F32));
        Self {
            sums: Some((zeros(), zeros())),
            samples: 0,
            seq_agg,
        }
    }

    /// Adds one activation `[B, S, C]` (`B` samples).
    pub fn add(&mut self, x: Tensor<B, 3>) {
        let batch = x.dims()[0];
        // The op gets the only references, so it may update them in place.
        let (s1, s2) = self
            .sums
            .take()
            .expect("accumulators present between calls");
        self.sums = Some(channel_stats_accumulate(x, self.seq_agg, s1, s2));
        self.samples += batch as u64;
    }

    pub fn seq_agg(&self) -> Aggregation {
        self.seq_agg
    }

    /// Rows added so far (`N`).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The accumulators, `S1` and `S2`, read back to the host.
    pub fn sums(&self) -> (Vec<f32>, Vec<f32>) {
        let (s1, s2) = self
            .sums
            .as_ref()
            .expect("accumulators present between calls");
        (read_f32(s1), read_f32(s2))
    }

    /// The per-channel score under `batch_agg` (reads the accumulators back).
    pub fn scores(&self, batch_agg: Aggregation) -> Vec<f32> {
        let (s1, s2) = self.sums();
        batch_aggregate(&s1, &s2, self.samples, batch_agg)
    }
}

/// Block importance of one layer or block, accumulated over calls: the sum
/// of `1 - cos` on the device, the token count on the host.
#[derive(Debug, Clone)]
pub struct BlockDistance<B: Backend> {
    /// Taken out only while a call updates it.
    sum: Option<Tensor<B, 1>>,
    tokens: u64,
}

impl<B: ImportanceOps> BlockDistance<B> {
    pub fn new(device: &B::Device) -> Self {
        Self {
            sum: Some(Tensor::zeros([1], (device, DType::F32))),
            tokens: 0,
        }
    }

    /// Adds one call: the block's input and output, `[B, S, C]` each.
    pub fn add(&mut self, h_in: Tensor<B, 3>, h_out: Tensor<B, 3>) {
        let [batch, seq, _] = h_in.dims();
        let sum = self.sum.take().expect("accumulator present between calls");
        self.sum = Some(cosine_distance_accumulate(h_in, h_out, sum));
        self.tokens += (batch * seq) as u64;
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Sum over tokens of `1 - cos` (reads the accumulator back).
    pub fn sum(&self) -> f64 {
        read_f32(
            self.sum
                .as_ref()
                .expect("accumulator present between calls"),
        )[0] as f64
    }

    /// `1 - mean cos` over all tokens so far (0 before any).
    pub fn mean(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            self.sum() / self.tokens as f64
        }
    }
}

/// The reductions from Burn tensor ops (f32), for backends without a kernel.
pub mod generic {
    use super::*;

    pub fn channel_stats_accumulate<B: Backend>(
        x: FloatTensor<B>,
        seq_agg: Aggregation,
        s1: FloatTensor<B>,
        s2: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let x: Tensor<B, 3> = tensor::<B, 3>(x).cast(FloatDType::F32);
        let [batch, seq, channels] = x.dims();
        let a = match seq_agg {
            Aggregation::Mean => x.abs().sum_dim(1).div_scalar(seq as f32),
            Aggregation::L2 => x.square().sum_dim(1).sqrt(),
            Aggregation::Var => {
                let mean = x.clone().mean_dim(1);
                (x - mean).square().mean_dim(1)
            }
        }
        .reshape([batch, channels]);
        let s1 =
            tensor::<B, 1>(s1).cast(FloatDType::F32) + a.clone().sum_dim(0).reshape([channels]);
        let s2 =
            tensor::<B, 1>(s2).cast(FloatDType::F32) + a.square().sum_dim(0).reshape([channels]);
        (float(s1), float(s2))
    }

    pub fn cosine_distance_accumulate<B: Backend>(
        h_in: FloatTensor<B>,
        h_out: FloatTensor<B>,
        acc: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let u: Tensor<B, 3> = tensor::<B, 3>(h_in).cast(FloatDType::F32);
        let v: Tensor<B, 3> = tensor::<B, 3>(h_out).cast(FloatDType::F32);
        let dot = (u.clone() * v.clone()).sum_dim(2);
        let uu = u.square().sum_dim(2);
        let vv = v.square().sum_dim(2);
        let both_zero = uu
            .clone()
            .equal_elem(0.0)
            .bool_and(vv.clone().equal_elem(0.0));
        let norms = (uu.sqrt() * vv.sqrt()).clamp_min(COSINE_EPS as f32);
        let cos = (dot / norms).mask_fill(both_zero, 1.0);
        let distance = cos.neg().add_scalar(1.0).sum();
        float(tensor::<B, 1>(acc).cast(FloatDType::F32) + distance)
    }
}

/// Under autodiff the reductions run on the inner backend: the statistics
/// are never differentiated, so nothing is recorded for backward.
mod on_autodiff {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::tensor::backend::AutodiffBackend;

    impl<B: ImportanceOps, C: CheckpointStrategy> ImportanceOps for Autodiff<B, C> {
        fn channel_stats_accumulate(
            x: FloatTensor<Self>,
            seq_agg: Aggregation,
            s1: FloatTensor<Self>,
            s2: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (s1, s2) = B::channel_stats_accumulate(
                Self::inner(x),
                seq_agg,
                Self::inner(s1),
                Self::inner(s2),
            );
            (Self::from_inner(s1), Self::from_inner(s2))
        }

        fn cosine_distance_accumulate(
            h_in: FloatTensor<Self>,
            h_out: FloatTensor<Self>,
            acc: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            Self::from_inner(B::cosine_distance_accumulate(
                Self::inner(h_in),
                Self::inner(h_out),
                Self::inner(acc),
            ))
        }
    }
}
