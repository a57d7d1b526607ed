#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The CubeCL AdamW kernel on `Cuda` in a cuda build (a GPU machine), else
//! on `Wgpu` (Mesa's lavapipe), against the update computed in float64 from
//! the same inputs, over several steps: with and without weight decay and
//! gradient clipping, lengths that are and are not multiples of the vector
//! width and of the cube, longer than one launch's grid, a 2-D parameter,
//! and gradients across many magnitudes with exact zeros; and many
//! parameters updated at once (several launches, mixed vector widths, with
//! and without moments or decay, an empty one), each against its own
//! oracle. And the sum of squares behind the global gradient norm, against
//! float64, for one tensor and for more than one launch takes.

use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::{AdamWOps, AdamWStep, ParamUpdate};
use distillery_ops::rng::SplitMix64;

mod cube_support;

use cube_support::{Cube, device, device_present};

/// Relative error allowed against float64: a few f32 roundings.
const TOL: f64 = 1e-5;

fn random(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

fn on_device(values: &[f32], dims: [usize; 2]) -> burn::tensor::ops::FloatTensor<Cube> {
    Tensor::<Cube, 2>::from_data(TensorData::new(values.to_vec(), dims), &device())
        .into_primitive()
        .tensor()
}

fn read(t: burn::tensor::ops::FloatTensor<Cube>) -> Vec<f32> {
    Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(t))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

/// One result in float64, with the sum of its terms' magnitudes (what
/// f32 rounding is relative to where the terms nearly cancel).
#[derive(Default)]
struct Exact {
    value: Vec<f64>,
    scale: Vec<f64>,
}

impl Exact {
    fn push(&mut self, value: f64, scale: f64) {
        self.value.push(value);
        self.scale.push(scale);
    }

    /// The largest error relative to the terms' magnitudes.
    fn worst(&self, got: &[f32]) -> f64 {
        got.iter()
            .zip(self.value.iter().zip(&self.scale))
            .map(|(&g, (&w, &s))| (g as f64 - w).abs() / s.max(1e-30))
            .fold(0.0, f64::max)
    }
}

/// `(param, m, v)` after one update, in float64 from the f32 inputs.
fn oracle(
    p: &[f32],
    g: &[f32],
    moments: Option<&(Vec<f32>, Vec<f32>)>,
    s: &AdamWStep,
) -> (Exact, Exact, Exact) {
    let (c1, c2) = (1.0 - s.beta1.powi(s.t), 1.0 - s.beta2.powi(s.t));
    let (mut param, mut first, mut second) = Default::default();
    for i in 0..p.len() {
        let g = g[i] as f64 * s.grad_scale;
        let (m0, v0) = moments.map_or((0.0, 0.0), |(m, v)| (m[i] as f64, v[i] as f64));
        let m = m0 * s.beta1 + g * (1.0 - s.beta1);
        let v = v0 * s.beta2 + g * g * (1.0 - s.beta2);
        let update = (m / c1) / ((v / c2).sqrt() + s.eps);
        let kept = p[i] as f64 * (1.0 - s.lr * s.decay);
        Exact::push(
            &mut first,
            m,
            (m0 * s.beta1).abs() + (g * (1.0 - s.beta1)).abs(),
        );
        Exact::push(&mut second, v, v);
        // The step's own size bounds the error where the moment cancels.
        Exact::push(
            &mut param,
            kept - update * s.lr,
            kept.abs() + s.lr * update.abs().max(1.0),
        );
    }
    (param, first, second)
}

#[test]
fn the_cube_update_matches_the_float64_oracle() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(17);
    // [rows, cols]: one element; odd (vector width 1); a multiple of 4;
    // more vectors than one launch's 4096 cubes of 256 units cover.
    for (dims, decay, grad_scale) in [
        ([1, 1], 0.1, 1.0),
        ([7, 143], 0.0, 1.0),
        ([576, 40], 0.1, 0.37),
        ([2100, 2100], 0.05, 1.0),
    ] {
        let n = dims[0] * dims[1];
        let mut p = random(&mut rng, n, 0.5);
        let mut moments: Option<(Vec<f32>, Vec<f32>)> = None;
        for t in 1..=3 {
            let g: Vec<f32> = random(&mut rng, n, 1.0)
                .into_iter()
                .enumerate()
                .map(|(i, x)| {
                    if i % 97 == 0 {
                        0.0
                    } else {
                        x * 10f32.powi((i % 7) as i32 - 4)
                    }
                })
                .collect();
            let step = AdamWStep {
                lr: 3e-4 * t as f64,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                decay,
                t,
                grad_scale,
            };
            let (want_p, want_m, want_v) = oracle(&p, &g, moments.as_ref(), &step);
            let (got_p, got_m, got_v) = Cube::adamw_update(
                on_device(&p, dims),
                on_device(&g, dims),
                moments
                    .as_ref()
                    .map(|(m, v)| (on_device(m, dims), on_device(v, dims))),
                step,
            );
            let (got_p, got_m, got_v) = (read(got_p), read(got_m), read(got_v));
            let what = format!("{dims:?}, step {t}");
            let e = want_p.worst(&got_p);
            assert!(e <= TOL, "{what}: parameters off by {e:e}");
            let e = want_m.worst(&got_m);
            assert!(e <= TOL, "{what}: first moments off by {e:e}");
            let e = want_v.worst(&got_v);
            assert!(e <= TOL, "{what}: second moments off by {e:e}");
            p = got_p;
            moments = Some((got_m, got_v));
        }
    }
}

#[test]
fn many_updates_at_once_each_match_their_oracle() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(23);
    // 45 parameters: lengths of vector width 1, 2 and 4 (interleaved, so
    // the launches regroup them), every third without moments (a first
    // step), every other one decaying, and an empty one.
    let dims: Vec<[usize; 2]> = (0..45)
        .map(|i| match i {
            20 => [0, 3],
            _ => [[3, 5], [6, 7], [8, 4], [1, 1], [300, 4]][i % 5],
        })
        .collect();
    let mut cases = Vec::new();
    for (i, d) in dims.iter().enumerate() {
        let n = d[0] * d[1];
        let p = random(&mut rng, n, 0.5);
        let g = random(&mut rng, n, 1.0);
        let moments = (i % 3 != 0).then(|| {
            let m = random(&mut rng, n, 0.1);
            let v: Vec<f32> = random(&mut rng, n, 0.01).iter().map(|x| x.abs()).collect();
            (m, v)
        });
        let step = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            decay: if i % 2 == 0 { 0.1 } else { 0.0 },
            t: 4,
            grad_scale: 0.5,
        };
        cases.push((p, g, moments, step));
    }
    let updates = cases
        .iter()
        .zip(&dims)
        .map(|((p, g, moments, step), &d)| ParamUpdate {
            param: on_device(p, d),
            grad: on_device(g, d),
            moments: moments
                .as_ref()
                .map(|(m, v)| (on_device(m, d), on_device(v, d))),
            step: *step,
        })
        .collect();
    let results = Cube::adamw_update_many(updates);
    assert_eq!(results.len(), cases.len(), "one result per update");
    for (i, ((p, g, moments, step), (got_p, got_m, got_v))) in cases.iter().zip(results).enumerate()
    {
        let (want_p, want_m, want_v) = oracle(p, g, moments.as_ref(), step);
        let (got_p, got_m, got_v) = (read(got_p), read(got_m), read(got_v));
        assert_eq!(got_p.len(), p.len(), "parameter {i}: length");
        let e = want_p.worst(&got_p);
        assert!(e <= TOL, "parameter {i} {:?}: values off by {e:e}", dims[i]);
        let e = want_m.worst(&got_m);
        assert!(e <= TOL, "parameter {i}: first moments off by {e:e}");
        let e = want_v.worst(&got_v);
        assert!(e <= TOL, "parameter {i}: second moments off by {e:e}");
    }
}

#[test]
fn the_cube_update_leaves_its_inputs_as_they_were() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(5);
    let values = random(&mut rng, 4096, 1.0);
    let param = on_device(&values, [64, 64]);
    let step = AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        decay: 0.1,
        t: 1,
        grad_scale: 1.0,
    };
    let grad = on_device(&random(&mut rng, 4096, 1.0), [64, 64]);
    let (updated, _, _) = Cube::adamw_update(param.clone(), grad, None, step);
    assert_eq!(read(param), values, "the update wrote into its input");
    assert_ne!(read(updated), values, "the update changed nothing");
}

#[test]
fn the_cube_sum_of_squares_matches_float64() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(29);
    // One element; odd (vector width 1); a multiple of 4; empty; more
    // vectors than 1024 cubes of 256 units cover; magnitudes over 1e-4..1e2.
    let shapes = [[1, 1], [7, 143], [576, 40], [0, 8], [1536, 1000]];
    let values: Vec<Vec<f32>> = shapes
        .iter()
        .map(|d| {
            random(&mut rng, d[0] * d[1], 1.0)
                .into_iter()
                .enumerate()
                .map(|(i, x)| x * 10f32.powi((i % 7) as i32 - 4))
                .collect()
        })
        .collect();
    // The tensors `which` of the list, summed in float64 and on the device.
    let exact = |which: &[usize]| -> f64 {
        which
            .iter()
            .flat_map(|&i| &values[i])
            .map(|&x| (x as f64).powi(2))
            .sum()
    };
    let on_cube = |which: &[usize]| -> f64 {
        let tensors = which
            .iter()
            .map(|&i| on_device(&values[i], shapes[i]))
            .collect();
        let total = Tensor::<Cube, 1>::from_primitive(TensorPrimitive::Float(
            Cube::sum_of_squares(tensors),
        ));
        assert_eq!(total.dims(), [1], "the sum of squares is one value");
        total.into_data().to_vec::<f32>().unwrap()[0] as f64
    };
    // All at once, then each alone (the empty one included), then 150 of
    // the small ones (more than one launch takes, the widths interleaved).
    let all: Vec<usize> = (0..shapes.len()).collect();
    let many: Vec<usize> = (0..150).map(|i| i % 4).collect();
    let cases = std::iter::once(all)
        .chain((0..shapes.len()).map(|i| vec![i]))
        .chain(std::iter::once(many));
    for which in cases {
        let (want, got) = (exact(&which), on_cube(&which));
        let err = (got - want).abs() / want.max(1e-30);
        assert!(
            err <= TOL,
            "tensors {which:?}: sum of squares {got} against {want} (relative error {err:e})"
        );
    }
}
