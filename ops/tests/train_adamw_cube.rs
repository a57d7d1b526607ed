#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The trainer's AdamW step on a CubeCL backend, which hands the kernels
//! its parameters in batches (`AdamWOps::adamw_batch`), against a float64
//! oracle over three clipped steps: a module of 71 parameters (more than
//! two batches, and more than one launch per batch) whose matrices decay
//! and whose vectors do not, lengths of every vector width, and one
//! parameter without a gradient, which must stay as it was and get no
//! moments. The optimizer state must name the same parameters as the CPU's
//! one-at-a-time path does.
//!
//! The loss is linear in the parameters, `sum_i sum(p_i * c_i)`, so every
//! gradient is exactly its `c_i` on every backend and the oracle sees the
//! gradients the device saw.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use distillery_ops::rng::SplitMix64;
use distillery_ops::train::{AdamW, AdamWConfig, GradientSum};

mod cube_support;

use cube_support::{Cube, device_present};

/// A matrix that decays and a vector that does not.
#[derive(Module, Debug)]
struct Layer<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
struct Net<B: Backend> {
    layers: Vec<Layer<B>>,
    /// Not in the loss: no gradient.
    frozen: Param<Tensor<B, 2>>,
}

const LAYERS: usize = 35;
const CONFIG: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
    grad_clip: 2.0,
};

fn random(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

/// Layer `i`'s shapes: rows and columns cycling through lengths whose
/// widest dividing vector is 1, 2 and 4 (and one past a cube's units).
fn shapes(i: usize) -> ([usize; 2], usize) {
    let rows = [3, 8, 6, 1, 300][i % 5];
    let cols = [5, 4, 7, 2][i % 4];
    ([rows, cols], [7, 64, 10, 1, 513][i % 5])
}

/// Every parameter's values in visit order (layers, then `frozen`).
fn values(rng: &mut SplitMix64) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for i in 0..LAYERS {
        let ([r, c], n) = shapes(i);
        out.push(random(rng, r * c, 0.5));
        out.push(random(rng, n, 0.5));
    }
    out.push(random(rng, 12, 0.5));
    out
}

fn net<B: Backend>(values: &[Vec<f32>], device: &B::Device) -> Net<B> {
    let layers = (0..LAYERS)
        .map(|i| {
            let ([r, c], n) = shapes(i);
            Layer {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(values[2 * i].clone(), [r, c]),
                    device,
                )),
                bias: Param::from_tensor(Tensor::from_data(
                    TensorData::new(values[2 * i + 1].clone(), [n]),
                    device,
                )),
            }
        })
        .collect();
    Net {
        layers,
        frozen: Param::from_tensor(Tensor::from_data(
            TensorData::new(values[2 * LAYERS].clone(), [3, 4]),
            device,
        )),
    }
}

/// `sum_i sum(p_i * c_i)` over the layers' parameters: gradients `c_i`.
fn loss<B: Backend>(net: &Net<B>, coefficients: &[Vec<f32>]) -> Tensor<B, 1> {
    let device = net.frozen.val().device();
    let mut total = Tensor::<B, 1>::zeros([1], &device);
    for (i, layer) in net.layers.iter().enumerate() {
        let w = layer.weight.val();
        let c = Tensor::<B, 2>::from_data(
            TensorData::new(coefficients[2 * i].clone(), w.dims()),
            &device,
        );
        total = total + (w * c).sum();
        let b = layer.bias.val();
        let c = Tensor::<B, 1>::from_data(
            TensorData::new(coefficients[2 * i + 1].clone(), b.dims()),
            &device,
        );
        total = total + (b * c).sum();
    }
    total
}

/// Every parameter's values read back, in visit order.
fn read<B: Backend>(net: &Net<B>) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for layer in &net.layers {
        out.push(layer.weight.val().into_data().to_vec::<f32>().unwrap());
        out.push(layer.bias.val().into_data().to_vec::<f32>().unwrap());
    }
    out.push(net.frozen.val().into_data().to_vec::<f32>().unwrap());
    out
}

/// One optimizer step of `net` on the gradients `coefficients`.
fn step<B: burn::tensor::backend::AutodiffBackend>(
    net: Net<B>,
    adam: &mut AdamW<B::InnerBackend>,
    coefficients: &[Vec<f32>],
    lr: f64,
) -> Net<B>
where
    B::InnerBackend: distillery_ops::kernels::AdamWOps,
{
    let grads = loss(&net, coefficients).backward();
    let mut sum = GradientSum::<B::InnerBackend>::default();
    sum.add::<B, _>(&net, &grads);
    adam.step::<B, _>(net, &mut sum, lr).0
}

/// AdamW in float64 over every parameter but the frozen one.
struct Oracle {
    params: Vec<Vec<f64>>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

impl Oracle {
    fn step(&mut self, grads: &[Vec<f32>], t: i32, lr: f64) {
        let c = CONFIG;
        let norm = grads
            .iter()
            .flatten()
            .map(|&g| (g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = if norm > c.grad_clip {
            c.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        for (k, g) in grads.iter().enumerate() {
            let decays = k % 2 == 0;
            for (i, &g) in g.iter().enumerate() {
                let g = g as f64 * scale;
                let (m, v) = (&mut self.m[k][i], &mut self.v[k][i]);
                *m = c.beta1 * *m + (1.0 - c.beta1) * g;
                *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
                let m_hat = *m / (1.0 - c.beta1.powi(t));
                let v_hat = *v / (1.0 - c.beta2.powi(t));
                let p = &mut self.params[k][i];
                if decays {
                    *p *= 1.0 - lr * c.weight_decay;
                }
                *p -= lr * m_hat / (v_hat.sqrt() + c.eps);
            }
        }
    }
}

#[test]
fn the_batched_step_matches_float64_and_names_the_same_state_as_the_cpu() {
    if !device_present() {
        return;
    }
    assert!(
        <Cube as distillery_ops::kernels::AdamWOps>::adamw_batch() > 1,
        "the CubeCL backend should batch its updates, or this test checks nothing new"
    );
    let mut rng = SplitMix64::new(41);
    let start = values(&mut rng);
    let trained = 2 * LAYERS;
    let mut oracle = Oracle {
        params: start[..trained]
            .iter()
            .map(|p| p.iter().map(|&x| x as f64).collect())
            .collect(),
        m: start[..trained]
            .iter()
            .map(|p| vec![0.0; p.len()])
            .collect(),
        v: start[..trained]
            .iter()
            .map(|p| vec![0.0; p.len()])
            .collect(),
    };
    let mut on_cube = net::<Autodiff<Cube>>(&start, &Default::default());
    let mut on_cpu = net::<Autodiff<Flex>>(&start, &Default::default());
    let mut adam_cube = AdamW::<Cube>::new(CONFIG);
    let mut adam_cpu = AdamW::<Flex>::new(CONFIG);
    let mut clipped = 0;
    for t in 1..=3 {
        // Gradients over several magnitudes, with exact zeros.
        let grads: Vec<Vec<f32>> = start[..trained]
            .iter()
            .map(|p| {
                random(&mut rng, p.len(), 1.0)
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| {
                        if i % 31 == 0 {
                            0.0
                        } else {
                            x * 10f32.powi((i % 5) as i32 - 2)
                        }
                    })
                    .collect()
            })
            .collect();
        let norm: f64 = grads
            .iter()
            .flatten()
            .map(|&g| (g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        clipped += usize::from(norm > CONFIG.grad_clip);
        let lr = 1e-2 * t as f64;
        oracle.step(&grads, t, lr);
        on_cube = step(on_cube, &mut adam_cube, &grads, lr);
        on_cpu = step(on_cpu, &mut adam_cpu, &grads, lr);
        let got = read(&on_cube);
        for (k, want) in oracle.params.iter().enumerate() {
            for (i, (&a, &b)) in got[k].iter().zip(want).enumerate() {
                let tol = 1e-5 * (1.0 + b.abs()) + 1e-4 * lr;
                assert!(
                    (a as f64 - b).abs() <= tol,
                    "step {t}, parameter {k}, element {i}: {a} against {b}"
                );
            }
        }
        assert_eq!(
            got[trained], start[trained],
            "step {t}: the parameter without a gradient changed"
        );
    }
    assert!(clipped >= 1, "the test must exercise clipping");
    let (cube_state, cpu_state) = (adam_cube.to_state_dict(), adam_cpu.to_state_dict());
    let names = |s: &distillery_ops::io::StateDict| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&cube_state),
        names(&cpu_state),
        "the batched step's optimizer state names other parameters than the CPU's"
    );
    assert_eq!(
        cube_state.len(),
        2 * trained,
        "one m and one v per trained parameter"
    );
    for (k, key) in names(&cube_state).iter().enumerate() {
        let (a, b) = (&cube_state[key], &cpu_state[key]);
        assert_eq!(a.shape, b.shape, "{key}: shapes differ");
        for (&x, &y) in a.data.iter().zip(&b.data) {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{key} ({k}): {x} on the device against {y} on the CPU"
            );
        }
    }
}
