//! The importance reductions against the float64 oracle
//! (`kernels::reference`): the Flex twin always, the CubeCL kernel on Wgpu
//! (Mesa's lavapipe on a CPU-only machine) under `--features wgpu`.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use distillery_ops::kernels::importance::{self, generic};
use distillery_ops::kernels::reference;
use distillery_ops::kernels::{Aggregation, BlockDistance, ChannelStats, ImportanceOps};

/// Seeded xorshift64*, uniform floats in [-1, 1).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// `len` values `offset + scale * u`, u uniform in [-1, 1).
    fn fill(&mut self, len: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..len).map(|_| offset + scale * self.next()).collect()
    }
}

/// Odd sizes, a long sequence, and rows on both sides of the CPU twin's
/// row-layout switch (narrow rows read from four quarters of a task, rows of
/// 16 KiB and more four adjacent ones), with row counts not divisible by 4.
const SHAPES: [[usize; 3]; 5] = [
    [1, 1, 1],
    [3, 17, 77],
    [2, 4096, 96],
    [5, 33, 576],
    [2, 67, 4099],
];

/// `max_i |got_i - want_i| / max(|want_i|, floor)` where the floor is
/// `floor_frac` of the largest `|want|` (so exact zeros compare absolutely).
fn max_rel_err(got: &[f32], want: &[f64], floor_frac: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let floor = (floor_frac * scale).max(f64::MIN_POSITIVE);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(floor))
        .fold(0.0, f64::max)
}

fn input<B: ImportanceOps>(x: &[f32], dims: [usize; 3], device: &B::Device) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(x.to_vec(), dims), device)
}

/// Several calls per hooked tensor into one `ChannelStats`, against the
/// oracle's sums and all three batch aggregations.
fn check_channel_stats<B: ImportanceOps>(device: &B::Device, tol: f64) {
    let mut rng = Rng::new(7);
    for dims in SHAPES {
        for seq_agg in Aggregation::ALL {
            let mut stats = ChannelStats::<B>::new(dims[2], seq_agg, device);
            let mut s1 = vec![0.0f64; dims[2]];
            let mut s2 = vec![0.0f64; dims[2]];
            // Magnitudes from 1e-2 to 1e4, one call with a large offset.
            for (scale, offset) in [(1.0, 0.0), (1e4, 0.0), (1e-2, 0.0), (10.0, 3e3)] {
                let x = rng.fill(dims.iter().product(), scale, offset);
                reference::channel_stats_accumulate(&x, dims, seq_agg, &mut s1, &mut s2);
                stats.add(input::<B>(&x, dims, device));
            }
            let (g1, g2) = stats.sums();
            let what = format!("{dims:?} seq {seq_agg}");
            let e1 = max_rel_err(&g1, &s1, 1e-6);
            let e2 = max_rel_err(&g2, &s2, 1e-6);
            eprintln!("{what}: relative error S1 {e1:.1e}, S2 {e2:.1e}");
            assert!(e1 <= tol, "S1 of {what}: relative error {e1:e}");
            assert!(e2 <= tol, "S2 of {what}: relative error {e2:e}");

            let samples = 4 * dims[0] as u64;
            assert_eq!(stats.samples(), samples);
            for batch_agg in Aggregation::ALL {
                let want = reference::batch_aggregate(&s1, &s2, samples, batch_agg);
                let got = stats.scores(batch_agg);
                let err = match batch_agg {
                    // S2/N - (S1/N)^2 cancels: its error is relative to S2/N.
                    Aggregation::Var => {
                        let scale = s2.iter().fold(0.0f64, |m, &v| m.max(v)) / samples as f64;
                        got.iter()
                            .zip(&want)
                            .map(|(&g, &w)| (g as f64 - w).abs() / scale.max(f64::MIN_POSITIVE))
                            .fold(0.0, f64::max)
                    }
                    _ => max_rel_err(&got, &want, 1e-6),
                };
                assert!(
                    err <= tol,
                    "batch {batch_agg} of {what}: relative error {err:e}"
                );
            }
        }
    }
}

/// A permuted and a sliced activation give what their contiguous copies give.
fn check_channel_stats_non_contiguous<B: ImportanceOps>(device: &B::Device, tol: f64) {
    let mut rng = Rng::new(11);
    let [b, s, c] = [3, 40, 50];
    // Stored as [B, C, S], viewed as [B, S, C].
    let stored = rng.fill(b * c * s, 100.0, 0.0);
    let mut x = vec![0.0f32; b * s * c];
    for bi in 0..b {
        for ci in 0..c {
            for si in 0..s {
                x[(bi * s + si) * c + ci] = stored[(bi * c + ci) * s + si];
            }
        }
    }
    for seq_agg in Aggregation::ALL {
        let permuted = input::<B>(&stored, [b, c, s], device).swap_dims(1, 2);
        let (g1, g2) = importance::channel_stats_accumulate(
            permuted,
            seq_agg,
            Tensor::zeros([c], (device, DType::F32)),
            Tensor::zeros([c], (device, DType::F32)),
        );
        let (mut s1, mut s2) = (vec![0.0; c], vec![0.0; c]);
        reference::channel_stats_accumulate(&x, [b, s, c], seq_agg, &mut s1, &mut s2);
        let g1 = g1.into_data().into_vec::<f32>().unwrap();
        let g2 = g2.into_data().into_vec::<f32>().unwrap();
        assert!(
            max_rel_err(&g1, &s1, 1e-6) <= tol,
            "permuted S1, seq {seq_agg}"
        );
        assert!(
            max_rel_err(&g2, &s2, 1e-6) <= tol,
            "permuted S2, seq {seq_agg}"
        );

        // Channels 5..45 and tokens 3..40 of the same activation.
        let sliced = input::<B>(&x, [b, s, c], device).slice([0..b, 3..s, 5..45]);
        let mut y = Vec::new();
        for bi in 0..b {
            for si in 3..s {
                y.extend_from_slice(&x[(bi * s + si) * c + 5..(bi * s + si) * c + 45]);
            }
        }
        let mut stats = ChannelStats::<B>::new(40, seq_agg, device);
        stats.add(sliced);
        let (mut s1, mut s2) = (vec![0.0; 40], vec![0.0; 40]);
        reference::channel_stats_accumulate(&y, [b, s - 3, 40], seq_agg, &mut s1, &mut s2);
        let (g1, g2) = stats.sums();
        assert!(
            max_rel_err(&g1, &s1, 1e-6) <= tol,
            "sliced S1, seq {seq_agg}"
        );
        assert!(
            max_rel_err(&g2, &s2, 1e-6) <= tol,
            "sliced S2, seq {seq_agg}"
        );
    }
}

/// Block importance over several calls: random pairs, zero tokens (both and
/// one side), parallel and opposite outputs.
fn check_cosine<B: ImportanceOps>(device: &B::Device, tol: f64) {
    let mut rng = Rng::new(3);
    for dims in SHAPES {
        let [b, s, c] = dims;
        let len = b * s * c;
        let mut distance = BlockDistance::<B>::new(device);
        let mut want = 0.0f64;
        let mut calls = Vec::new();
        let u = rng.fill(len, 1e4, 0.0);
        let v = rng.fill(len, 1.0, 0.5);
        calls.push((u.clone(), v));
        calls.push((u.clone(), u.iter().map(|x| 2.5 * x).collect()));
        calls.push((u.clone(), u.iter().map(|x| -x).collect()));
        // Every third token zero in h_in, every fifth zero in h_out.
        let mut zu = rng.fill(len, 3.0, 0.0);
        let mut zv = rng.fill(len, 3.0, 0.0);
        for (t, row) in zu.chunks_mut(c).enumerate() {
            if t % 3 == 0 {
                row.fill(0.0);
            }
        }
        for (t, row) in zv.chunks_mut(c).enumerate() {
            if t % 5 == 0 {
                row.fill(0.0);
            }
        }
        calls.push((zu, zv));
        for (h_in, h_out) in &calls {
            want += reference::cosine_distance_sum(h_in, h_out, c);
            distance.add(
                input::<B>(h_in, dims, device),
                input::<B>(h_out, dims, device),
            );
        }
        let tokens = (calls.len() * b * s) as u64;
        assert_eq!(distance.tokens(), tokens);
        let got = distance.sum();
        let err = (got - want).abs() / want.abs().max(tokens as f64);
        eprintln!("cosine {dims:?}: {got} vs {want}, relative error {err:.1e}");
        assert!(
            err <= tol,
            "cosine sum of {dims:?}: {got} vs {want} ({err:e})"
        );
    }
}

/// Zero vectors: both zero count as cos = 1, one zero as cos = 0.
fn check_cosine_zero_rows<B: ImportanceOps>(device: &B::Device) {
    let zeros = vec![0.0f32; 2 * 8];
    let mut ones = vec![0.0f32; 2 * 8];
    ones[..8].fill(1.0);
    let mut distance = BlockDistance::<B>::new(device);
    distance.add(
        input::<B>(&zeros, [1, 2, 8], device),
        input::<B>(&zeros, [1, 2, 8], device),
    );
    assert_eq!(distance.sum(), 0.0);
    // Token 0: zero vs ones (distance 1); token 1: both zero (0).
    distance.add(
        input::<B>(&zeros, [1, 2, 8], device),
        input::<B>(&ones, [1, 2, 8], device),
    );
    assert!(
        (distance.sum() - 1.0).abs() < 1e-6,
        "got {}",
        distance.sum()
    );
    assert_eq!(distance.tokens(), 4);
}

#[test]
fn flex_channel_stats_match_the_oracle() {
    check_channel_stats::<Flex>(&Default::default(), 1e-5);
}

#[test]
fn flex_channel_stats_read_non_contiguous_inputs() {
    check_channel_stats_non_contiguous::<Flex>(&Default::default(), 1e-5);
}

#[test]
fn flex_cosine_distance_matches_the_oracle() {
    check_cosine::<Flex>(&Default::default(), 1e-5);
}

#[test]
fn flex_cosine_distance_of_zero_vectors() {
    check_cosine_zero_rows::<Flex>(&Default::default());
}

#[test]
fn flex_reads_half_precision_inputs() {
    let device = Default::default();
    let dims = [2, 9, 33];
    let x = Rng::new(5).fill(dims.iter().product(), 50.0, 0.0);
    let x16 = input::<Flex>(&x, dims, &device).cast(FloatDType::F16);
    let rounded = x16
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let mut stats = ChannelStats::<Flex>::new(dims[2], Aggregation::Mean, &device);
    stats.add(x16);
    let (mut s1, mut s2) = (vec![0.0; dims[2]], vec![0.0; dims[2]]);
    reference::channel_stats_accumulate(&rounded, dims, Aggregation::Mean, &mut s1, &mut s2);
    let (g1, g2) = stats.sums();
    assert!(max_rel_err(&g1, &s1, 1e-6) <= 1e-5);
    assert!(max_rel_err(&g2, &s2, 1e-6) <= 1e-5);
}

#[test]
fn autodiff_flex_runs_the_inner_kernels() {
    let device = Default::default();
    let dims = [2, 31, 64];
    let mut rng = Rng::new(9);
    let x = rng.fill(dims.iter().product(), 10.0, 0.0);
    let mut stats = ChannelStats::<Autodiff<Flex>>::new(dims[2], Aggregation::L2, &device);
    stats.add(input::<Autodiff<Flex>>(&x, dims, &device));
    let (mut s1, mut s2) = (vec![0.0; dims[2]], vec![0.0; dims[2]]);
    reference::channel_stats_accumulate(&x, dims, Aggregation::L2, &mut s1, &mut s2);
    let (g1, g2) = stats.sums();
    assert!(max_rel_err(&g1, &s1, 1e-6) <= 1e-5);
    assert!(max_rel_err(&g2, &s2, 1e-6) <= 1e-5);

    let y = rng.fill(x.len(), 10.0, 0.0);
    let mut distance = BlockDistance::<Autodiff<Flex>>::new(&device);
    distance.add(input(&x, dims, &device), input(&y, dims, &device));
    let want = reference::cosine_distance_sum(&x, &y, dims[2]);
    assert!((distance.sum() - want).abs() <= 1e-5 * want);
}

/// The tensor-op fallback any backend gets by default (f32 throughout).
#[test]
fn generic_fallback_matches_the_oracle() {
    let device = Default::default();
    let mut rng = Rng::new(13);
    for dims in [[1, 1, 1], [3, 17, 77], [2, 512, 96]] {
        let x = rng.fill(dims.iter().product(), 1e3, 0.0);
        for seq_agg in Aggregation::ALL {
            let zeros = || Tensor::<Flex, 1>::zeros([dims[2]], (&device, DType::F32));
            let (g1, g2) = generic::channel_stats_accumulate::<Flex>(
                input::<Flex>(&x, dims, &device).into_primitive().tensor(),
                seq_agg,
                zeros().into_primitive().tensor(),
                zeros().into_primitive().tensor(),
            );
            let (mut s1, mut s2) = (vec![0.0; dims[2]], vec![0.0; dims[2]]);
            reference::channel_stats_accumulate(&x, dims, seq_agg, &mut s1, &mut s2);
            let g1 = burn::backend::flex::FlexTensor::into_data(g1)
                .into_vec::<f32>()
                .unwrap();
            let g2 = burn::backend::flex::FlexTensor::into_data(g2)
                .into_vec::<f32>()
                .unwrap();
            assert!(max_rel_err(&g1, &s1, 1e-6) <= 1e-4, "{dims:?} {seq_agg}");
            assert!(max_rel_err(&g2, &s2, 1e-6) <= 1e-4, "{dims:?} {seq_agg}");
        }
        let y = rng.fill(x.len(), 1.0, 0.0);
        let acc = generic::cosine_distance_accumulate::<Flex>(
            input::<Flex>(&x, dims, &device).into_primitive().tensor(),
            input::<Flex>(&y, dims, &device).into_primitive().tensor(),
            Tensor::<Flex, 1>::zeros([1], (&device, DType::F32))
                .into_primitive()
                .tensor(),
        );
        let got = burn::backend::flex::FlexTensor::into_data(acc)
            .into_vec::<f32>()
            .unwrap()[0];
        let want = reference::cosine_distance_sum(&x, &y, dims[2]);
        assert!(
            (got as f64 - want).abs() <= 1e-4 * want.max(1.0),
            "{dims:?}"
        );
    }
}

/// Not a check: prints the CPU twin's read rate against the machine's
/// memory bandwidth (`cargo test --release -p distillery-ops --test
/// kernels_importance -- --ignored --nocapture`).
#[test]
fn aggregation_names_round_trip() {
    for agg in Aggregation::ALL {
        assert_eq!(agg.name().parse::<Aggregation>().unwrap(), agg);
    }
    assert!("median".parse::<Aggregation>().is_err());
}

#[cfg(feature = "wgpu")]
mod wgpu {
    //! The CubeCL kernels on `Wgpu` (lavapipe without a GPU).

    use super::*;
    use burn::backend::Wgpu;
    use burn::backend::wgpu::WgpuDevice;

    fn device() -> WgpuDevice {
        WgpuDevice::default()
    }

    #[test]
    fn wgpu_channel_stats_match_the_oracle() {
        check_channel_stats::<Wgpu>(&device(), 1e-5);
    }

    #[test]
    fn wgpu_channel_stats_read_non_contiguous_inputs() {
        check_channel_stats_non_contiguous::<Wgpu>(&device(), 1e-5);
    }

    #[test]
    fn wgpu_cosine_distance_matches_the_oracle() {
        check_cosine::<Wgpu>(&device(), 1e-5);
    }

    #[test]
    fn wgpu_cosine_distance_of_zero_vectors() {
        check_cosine_zero_rows::<Wgpu>(&device());
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The CubeCL kernels on `Cuda`; skipped where no CUDA device is present
    //! (a failure under `CI=true`).

    use super::*;
    use burn::backend::Cuda;
    use burn::backend::cuda::CudaDevice;

    fn device() -> Option<CudaDevice> {
        let found = distillery_ops::device::resolve(distillery_engine::Device::Cuda);
        testkit::require_device("a CUDA device", found).map(|_| CudaDevice::new(0))
    }

    #[test]
    fn cuda_channel_stats_match_the_oracle() {
        if let Some(device) = device() {
            check_channel_stats::<Cuda>(&device, 1e-5);
        }
    }

    #[test]
    fn cuda_channel_stats_read_non_contiguous_inputs() {
        if let Some(device) = device() {
            check_channel_stats_non_contiguous::<Cuda>(&device, 1e-5);
        }
    }

    #[test]
    fn cuda_cosine_distance_matches_the_oracle() {
        if let Some(device) = device() {
            check_cosine::<Cuda>(&device, 1e-5);
        }
    }

    #[test]
    fn cuda_cosine_distance_of_zero_vectors() {
        if let Some(device) = device() {
            check_cosine_zero_rows::<Cuda>(&device);
        }
    }
}
