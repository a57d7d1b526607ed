//! One AdamW update of one parameter as a backend op ([`AdamWOps`]): the
//! gradient's clipping scale, both moments, bias correction, decoupled
//! weight decay and the step, in one pass instead of a chain of about 15
//! tensor ops (each a pass over memory and a new buffer).
//!
//! Every backend computes the same f32 arithmetic in the same order (the
//! scalars rounded to f32 first, no fused multiply-adds), so the CPU kernel
//! gives bit for bit what the composition of tensor ops gives, and a run
//! resumed from a checkpoint written before the kernel existed continues
//! exactly:
//!
//! ```text
//! g  = grad * scale                       (when scale != 1)
//! m  = m * beta1 + g * (1 - beta1)
//! v  = v * beta2 + (g * g) * (1 - beta2)
//! s  = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
//! p  = p * (1 - lr * decay)               (when decay > 0)
//! p  = p - s * lr
//! ```
//!
//! [`AdamWOps::adamw_update_many`] updates several parameters at once: the
//! CubeCL backends launch one kernel for many, where a launch per parameter
//! cost a model 272 launches per step.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

/// The scalars of one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay for this parameter (0: none).
    pub decay: f64,
    /// The step number, from 1 (bias correction).
    pub t: i32,
    /// The gradient's clipping factor (1: not clipped).
    pub grad_scale: f64,
}

impl AdamWStep {
    /// The f32 scalars the update multiplies and divides by, each rounded
    /// from f64 once as Burn rounds a scalar operand.
    pub fn f32_scalars(&self) -> AdamWScalars {
        AdamWScalars {
            grad_scale: (self.grad_scale != 1.0).then_some(self.grad_scale as f32),
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            correction1: (1.0 - self.beta1.powi(self.t)) as f32,
            correction2: (1.0 - self.beta2.powi(self.t)) as f32,
            eps: self.eps as f32,
            keep: (self.decay > 0.0).then_some((1.0 - self.lr * self.decay) as f32),
            lr: self.lr as f32,
        }
    }
}

/// [`AdamWStep`] as the f32 operands of the update.
#[derive(Debug, Clone, Copy)]
pub struct AdamWScalars {
    pub grad_scale: Option<f32>,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub correction1: f32,
    pub correction2: f32,
    pub eps: f32,
    /// `1 - lr * decay`, when the parameter decays.
    pub keep: Option<f32>,
    pub lr: f32,
}

/// One parameter's update, for [`AdamWOps::adamw_update_many`].
pub struct ParamUpdate<B: Backend> {
    pub param: FloatTensor<B>,
    pub grad: FloatTensor<B>,
    /// `(m, v)`; `None` before the first update (zeros).
    pub moments: Option<(FloatTensor<B>, FloatTensor<B>)>,
    pub step: AdamWStep,
}

/// `(param, m, v)` after an update.
pub type Updated<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

pub trait AdamWOps: Backend {
    /// `(param, m, v)` after one update; `m`, `v` are `None` before the
    /// first (zeros). All of one shape, f32.
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        step: AdamWStep,
    ) -> Updated<Self> {
        composite::<Self>(param, grad, moments, step)
    }

    /// The updates of several parameters, the results in their order. The
    /// default runs [`AdamWOps::adamw_update`] on each in turn; the CubeCL
    /// backends update up to 16 parameters in one launch.
    fn adamw_update_many(updates: Vec<ParamUpdate<Self>>) -> Vec<Updated<Self>> {
        updates
            .into_iter()
            .map(|u| Self::adamw_update(u.param, u.grad, u.moments, u.step))
            .collect()
    }

    /// How many parameters the trainer hands [`AdamWOps::adamw_update_many`]
    /// at once. 1 (the default) updates them one at a time, each old value
    /// freed as soon as its new one replaces it, which lets the CPU update
    /// in place. A backend that launches fewer kernels for more says more;
    /// each batch then holds its parameters' old values until it returns.
    fn adamw_batch() -> usize {
        1
    }

    /// The sum of the squares of every element of `tensors` (at least
    /// one), the global gradient norm's square, as a one-element f32
    /// tensor. The default is the composition of tensor ops (a squared
    /// copy and a sum per tensor, then their sum, in order); the CubeCL
    /// backends read each tensor once and launch one kernel per tensor and
    /// one for the total.
    fn sum_of_squares(tensors: Vec<FloatTensor<Self>>) -> FloatTensor<Self> {
        let t = |x: FloatTensor<Self>| Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(x));
        tensors
            .into_iter()
            .map(|x| t(x).square().sum())
            .reduce(|total, squares| total + squares)
            .expect("the sum of squares of no tensor")
            .into_primitive()
            .tensor()
    }
}

/// The update as a chain of Burn's tensor ops: the default, and the tests'
/// reference for the kernels (which must match it bit for bit).
pub fn composite<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moments: Option<(FloatTensor<B>, FloatTensor<B>)>,
    step: AdamWStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let t = |x: FloatTensor<B>| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(x));
    let f = |x: Tensor<B, 1>| x.into_primitive().tensor();
    let mut g = t(grad);
    if step.grad_scale != 1.0 {
        g = g.mul_scalar(step.grad_scale);
    }
    let (m, v) = match moments {
        Some((m, v)) => (t(m), t(v)),
        None => (g.zeros_like(), g.zeros_like()),
    };
    let m = m.mul_scalar(step.beta1) + g.clone().mul_scalar(1.0 - step.beta1);
    let v = v.mul_scalar(step.beta2) + g.square().mul_scalar(1.0 - step.beta2);
    let m_hat = m.clone().div_scalar(1.0 - step.beta1.powi(step.t));
    let v_hat = v.clone().div_scalar(1.0 - step.beta2.powi(step.t));
    let update = m_hat / v_hat.sqrt().add_scalar(step.eps);
    let mut p = t(param);
    if step.decay > 0.0 {
        p = p.mul_scalar(1.0 - step.lr * step.decay);
    }
    let p = p - update.mul_scalar(step.lr);
    (f(p), f(m), f(v))
}

/// One update on the CPU: rayon tasks over blocks of elements, in place
/// wherever a buffer is not shared.
mod flex {
    use super::*;
    use crate::kernels::importance_flex::host_f32;
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{TensorData, TensorMetadata};
    use rayon::prelude::*;

    /// Elements per rayon task.
    const BLOCK: usize = 1 << 14;

    /// `t` as a uniquely held contiguous f32 buffer (a copy if shared).
    fn owned(t: FlexTensor) -> FlexTensor {
        let t = host_f32(t);
        if t.is_unique() {
            t
        } else {
            FlexTensor::from_data(TensorData::new(
                t.as_slice::<f32>().expect("contiguous f32").to_vec(),
                t.shape(),
            ))
        }
    }

    /// The update of one element: `(p, m, v)` in place.
    #[inline(always)]
    fn element(s: &AdamWScalars, g: f32, p: &mut f32, m: &mut f32, v: &mut f32) {
        let g = match s.grad_scale {
            Some(k) => g * k,
            None => g,
        };
        *m = *m * s.beta1 + g * s.one_minus_beta1;
        *v = *v * s.beta2 + (g * g) * s.one_minus_beta2;
        let update = (*m / s.correction1) / ((*v / s.correction2).sqrt() + s.eps);
        if let Some(keep) = s.keep {
            *p *= keep;
        }
        *p -= update * s.lr;
    }

    fn block(s: &AdamWScalars, g: &[f32], p: &mut [f32], m: &mut [f32], v: &mut [f32]) {
        for (((g, p), m), v) in g.iter().zip(p).zip(m).zip(v) {
            element(s, *g, p, m, v);
        }
    }

    mod simd {
        use super::AdamWScalars;
        use crate::kernels::cpu_dispatch::dispatch;

        // No `fmadd` here: the update must round exactly as the
        // composition does, and the compiler never contracts `a * b + c`.
        dispatch! {
            /// [`super::block`].
            fn block(s: &AdamWScalars, g: &[f32], p: &mut [f32], m: &mut [f32], v: &mut [f32]) -> () = super::block;
        }
    }

    impl AdamWOps for Flex {
        fn adamw_update(
            param: FlexTensor,
            grad: FlexTensor,
            moments: Option<(FlexTensor, FlexTensor)>,
            step: AdamWStep,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let grad = host_f32(grad);
            let g = grad.as_slice::<f32>().expect("contiguous f32");
            let mut p = owned(param);
            let (mut m, mut v) = match moments {
                Some((m, v)) => (owned(m), owned(v)),
                None => {
                    let zeros = || {
                        FlexTensor::from_data(TensorData::new(vec![0.0f32; g.len()], grad.shape()))
                    };
                    (zeros(), zeros())
                }
            };
            let s = step.f32_scalars();
            p.storage_mut::<f32>()
                .par_chunks_mut(BLOCK)
                .zip(m.storage_mut::<f32>().par_chunks_mut(BLOCK))
                .zip(v.storage_mut::<f32>().par_chunks_mut(BLOCK))
                .zip(g.par_chunks(BLOCK))
                .for_each(|(((p, m), v), g)| simd::block(&s, g, p, m, v));
            (p, m, v)
        }
    }
}
