//! `bench kd --check` and `bench importance --check`: the kernels on the
//! bench's device compared with the float64 oracles (`kernels::reference`)
//! before they are timed, so figures from a GPU machine (where the test
//! binaries do not run) come with the evidence that the kernel they time
//! computes the right thing.

use burn::tensor::{FloatDType, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::importance::{Aggregation, ChannelStats, ImportanceOps};
use distillery_ops::kernels::{KdOps, KdSpec, reference};
use distillery_ops::rng::SplitMix64;

/// Rows of the KD problem compared with the oracle (which runs in f64 on
/// one CPU core).
const KD_CHECK_ROWS: usize = 64;

/// Relative error allowed on the KD loss and on the importance sums in f32;
/// inputs rounded to 16 bits are compared with the oracle on the rounded
/// values, so the same bound holds for them (the kernel accumulates in f32).
const REL_TOL: f64 = 1e-5;
/// Gradient error allowed, relative to the largest gradient entry, in f32;
/// a 16-bit gradient is also rounded on output.
const GRAD_TOL_F32: f64 = 1e-5;
const GRAD_TOL_16: f64 = 1e-2;

/// `values` rounded through `dtype` and back, as the device sees them.
fn rounded(values: &[f32], dtype: FloatDType) -> Vec<f32> {
    match dtype {
        FloatDType::BF16 => values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
        FloatDType::F16 => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect(),
        _ => values.to_vec(),
    }
}

fn read_f32<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

/// The fused KD op on the first [`KD_CHECK_ROWS`] rows of the bench's
/// logits (every third row masked) against the oracle; an error when the
/// loss or the gradient is off.
pub fn kd_against_oracle<B: KdOps>(
    device: &B::Device,
    student: &TensorData,
    teacher: &TensorData,
    vocab: usize,
    spec: KdSpec,
    dtype: FloatDType,
) -> anyhow::Result<()> {
    let all_rows = student.shape.dims::<2>()[0];
    let rows = all_rows.min(KD_CHECK_ROWS);
    let take = |d: &TensorData| -> Vec<f32> {
        let v = d.as_slice::<f32>().expect("f32 logits");
        rounded(&v[..rows * vocab], dtype)
    };
    let (s, t) = (take(student), take(teacher));
    let kept = (0..rows).filter(|n| n % 3 != 1).count().max(1);
    let weights: Vec<f32> = (0..rows)
        .map(|n| if n % 3 == 1 { 0.0 } else { 1.0 / kept as f32 })
        .collect();
    let (want_loss, want_grad) = reference::kd_loss(&s, &t, &weights, vocab, spec);

    let on_device = |v: &[f32]| {
        Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [rows, vocab]), device).cast(dtype)
    };
    let (loss, grad) = B::kd_loss_fused(
        on_device(&s).into_primitive().tensor(),
        on_device(&t).into_primitive().tensor(),
        Tensor::<B, 1>::from_data(TensorData::new(weights, [rows]), device)
            .into_primitive()
            .tensor(),
        spec,
    );
    let loss = read_f32(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(loss)))[0] as f64;
    let grad = read_f32(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grad)));

    let loss_err = (loss - want_loss).abs() / want_loss.abs().max(1e-12);
    let grad_scale = want_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    let grad_err = grad
        .iter()
        .zip(&want_grad)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0f64, f64::max)
        / grad_scale.max(f64::MIN_POSITIVE);
    let grad_tol = if dtype == FloatDType::F32 {
        GRAD_TOL_F32
    } else {
        GRAD_TOL_16
    };
    println!(
        "check against the float64 oracle ({rows} rows, every third masked): loss {loss:.8} vs {want_loss:.8}, \
         relative error {loss_err:.1e} (bound {REL_TOL:.0e}); gradient max error {grad_err:.1e} of its largest entry (bound {grad_tol:.0e})"
    );
    anyhow::ensure!(
        loss_err <= REL_TOL && grad_err <= grad_tol,
        "the KD kernel disagrees with the float64 oracle"
    );
    Ok(())
}

/// The channel statistics (every sequence aggregation) and the block
/// cosine distance on `B` against the oracle, on odd shapes and inputs of
/// magnitude 1e-2 to 1e4 with a large offset; an error when off.
pub fn importance_against_oracle<B: ImportanceOps>(device: &B::Device) -> anyhow::Result<()> {
    let mut rng = SplitMix64::new(7);
    let mut fill = |len: usize, scale: f64, offset: f64| -> Vec<f32> {
        (0..len)
            .map(|_| (offset + scale * (2.0 * rng.next_f64() - 1.0)) as f32)
            .collect()
    };
    let input = |x: &[f32], dims: [usize; 3]| {
        Tensor::<B, 3>::from_data(TensorData::new(x.to_vec(), dims), device)
    };
    let mut worst = 0.0f64;
    for dims in [[3, 37, 1000], [2, 1025, 576], [1, 4096, 1536]] {
        for seq_agg in Aggregation::ALL {
            let mut stats = ChannelStats::<B>::new(dims[2], seq_agg, device);
            let (mut s1, mut s2) = (vec![0.0f64; dims[2]], vec![0.0f64; dims[2]]);
            for (scale, offset) in [(1.0, 0.0), (1e4, 0.0), (1e-2, 0.0), (10.0, 3e3)] {
                let x = fill(dims.iter().product(), scale, offset);
                reference::channel_stats_accumulate(&x, dims, seq_agg, &mut s1, &mut s2);
                stats.add(input(&x, dims));
            }
            let (g1, g2) = stats.sums();
            for (got, want) in [(&g1, &s1), (&g2, &s2)] {
                let err = got
                    .iter()
                    .zip(want.iter())
                    .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(1e-6))
                    .fold(0.0f64, f64::max);
                worst = worst.max(err);
                anyhow::ensure!(
                    err <= REL_TOL,
                    "channel statistics {dims:?}, sequence {seq_agg}: relative error {err:.2e} against the float64 oracle"
                );
            }
        }
    }
    println!(
        "check: channel statistics (3 shapes x 3 sequence aggregations, magnitudes 1e-2..1e4) match the float64 oracle, worst relative error {worst:.1e} (bound {REL_TOL:.0e})"
    );

    let dims = [2, 333, 576];
    let len = dims.iter().product();
    let (h_in, h_out) = (fill(len, 3.0, 0.0), fill(len, 3.0, 0.5));
    let mut distance = distillery_ops::kernels::importance::BlockDistance::<B>::new(device);
    distance.add(input(&h_in, dims), input(&h_out, dims));
    let want = reference::cosine_distance_sum(&h_in, &h_out, dims[2]);
    let err = (distance.sum() - want).abs() / want.abs();
    println!(
        "check: block cosine distance over {} tokens {:.6} vs {want:.6}, relative error {err:.1e} (bound {REL_TOL:.0e})",
        dims[0] * dims[1],
        distance.sum()
    );
    anyhow::ensure!(
        err <= REL_TOL,
        "block cosine distance: relative error {err:.2e} against the float64 oracle"
    );
    Ok(())
}
