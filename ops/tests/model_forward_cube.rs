//! The model on a CubeCL backend (wgpu in CI, CUDA with `--features cuda`),
//! where attention, RMSNorm, RoPE, SwiGLU and the matrix products run as
//! compositions of Burn's tensor ops rather than the CPU kernels: logits
//! against the float64 reference of every test config, and one training
//! backward against the CPU kernels' gradients.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod model_support;

use burn::backend::Autodiff;
use distillery_ops::model::{Llama, tokens_tensor};
use model_support::*;

#[cfg(feature = "cuda")]
type Cube = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
type Cube = burn::backend::Wgpu;

/// In a cuda build these tests are a GPU check: without a CUDA device they
/// skip, and fail under `CI=true`.
#[cfg(feature = "cuda")]
fn device_present() -> bool {
    let found = distillery_ops::device::resolve(distillery_engine::Device::Cuda);
    testkit::require_device("a CUDA device", found).is_some()
}
/// Wgpu needs a Vulkan driver, which the test command (scripts/test.sh)
/// checks for before it runs these tests.
#[cfg(not(feature = "cuda"))]
fn device_present() -> bool {
    true
}

fn cube_device() -> burn::tensor::Device<Cube> {
    Default::default()
}

fn cube_model<B: burn::tensor::backend::Backend>(
    c: &distillery_ops::model::LlamaConfig,
    sd: &distillery_ops::io::StateDict,
    device: &B::Device,
) -> Llama<B> {
    Llama::from_state_dict(c.clone(), sd.clone(), device).expect("model builds")
}

#[test]
fn logits_match_float64_reference_on_the_cube_backend() {
    if !device_present() {
        return;
    }
    for (i, (name, c)) in all_configs().into_iter().enumerate() {
        let mut rng = Rng::new(300 + i as u64);
        let sd = random_weights(&c, &mut rng);
        let model = cube_model::<Cube>(&c, &sd, &cube_device());
        let tokens = rng.tokens(11, c.vocab_size);
        let got: Vec<f32> = model
            .forward(tokens_tensor(&[&tokens], &cube_device()))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let want = reference_forward(&c, &sd, &tokens).logits;
        let err = rel_err(&got, &want);
        assert!(err <= 1e-4, "{name}: relative error {err:e}");
    }
}

#[test]
fn gradients_match_the_cpu_kernels() {
    if !device_present() {
        return;
    }
    let c = cfg_gqa();
    let mut rng = Rng::new(7);
    let sd = random_weights(&c, &mut rng);
    let rows = [rng.tokens(9, c.vocab_size), rng.tokens(9, c.vocab_size)];
    let row_refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();

    let cpu = cube_model::<Autodiff<B>>(&c, &sd, &device());
    let gpu = cube_model::<Autodiff<Cube>>(&c, &sd, &cube_device());
    let want = parameter_gradients(&cpu, &row_refs, &device());
    let got = parameter_gradients(&gpu, &row_refs, &cube_device());
    assert_eq!(want.len(), got.len());
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let unit = w.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30);
        let err = w
            .iter()
            .zip(g)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-4 * unit,
            "parameter {i}: gradients differ by {err} (largest {unit})"
        );
    }
}
