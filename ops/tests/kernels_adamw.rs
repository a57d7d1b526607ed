//! The fused AdamW update on the CPU against the chain of tensor ops it
//! replaces, bit for bit, on random parameters, gradients and moments over
//! several steps: with and without weight decay and gradient clipping,
//! lengths that are not a multiple of the kernel's blocks, and a parameter
//! whose buffer is shared (the update must not write into it).

use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::adamw::composite;
use distillery_ops::kernels::{AdamWOps, AdamWStep};
use distillery_ops::rng::SplitMix64;

fn random(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

fn prim(v: &[f32]) -> FloatTensor<Flex> {
    Tensor::<Flex, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
        .into_primitive()
        .tensor()
}

fn read(t: FloatTensor<Flex>) -> Vec<u32> {
    let t = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(t));
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn the_fused_update_equals_the_tensor_ops_bit_for_bit() {
    let mut rng = SplitMix64::new(9);
    for (n, decay, grad_scale) in [
        (1, 0.1, 1.0),
        (1000, 0.0, 1.0),
        (40_000, 0.1, 0.37),
        (16_384, 0.05, 1.0),
    ] {
        let mut fused_p = random(&mut rng, n, 0.5);
        let mut plain_p = fused_p.clone();
        let mut fused_m: Option<(Vec<f32>, Vec<f32>)> = None;
        let mut plain_m: Option<(Vec<f32>, Vec<f32>)> = None;
        for t in 1..=4 {
            // Gradients spanning many magnitudes, some exactly zero.
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
            let moments =
                |m: &Option<(Vec<f32>, Vec<f32>)>| m.as_ref().map(|(m, v)| (prim(m), prim(v)));
            let (p, m, v) = Flex::adamw_update(prim(&fused_p), prim(&g), moments(&fused_m), step);
            let (p2, m2, v2) = composite::<Flex>(prim(&plain_p), prim(&g), moments(&plain_m), step);
            let (p, m, v) = (read(p), read(m), read(v));
            assert_eq!(p, read(p2), "n {n}, step {t}: parameters differ");
            assert_eq!(m, read(m2), "n {n}, step {t}: first moments differ");
            assert_eq!(v, read(v2), "n {n}, step {t}: second moments differ");
            let back = |b: Vec<u32>| b.into_iter().map(f32::from_bits).collect::<Vec<f32>>();
            fused_p = back(p);
            plain_p = fused_p.clone();
            fused_m = Some((back(m), back(v)));
            plain_m = fused_m.clone();
        }
    }
}

#[test]
fn a_shared_parameter_buffer_is_left_as_it_was() {
    let mut rng = SplitMix64::new(2);
    let values = random(&mut rng, 5000, 1.0);
    let param = prim(&values);
    let kept = param.clone();
    let step = AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        decay: 0.1,
        t: 1,
        grad_scale: 1.0,
    };
    let (updated, _, _) = Flex::adamw_update(param, prim(&random(&mut rng, 5000, 1.0)), None, step);
    let before: Vec<u32> = values.iter().map(|x| x.to_bits()).collect();
    assert_eq!(
        read(kept),
        before,
        "the update wrote into a buffer another tensor holds"
    );
    assert_ne!(read(updated), before, "the update changed nothing");
}
