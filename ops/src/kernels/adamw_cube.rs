//! The AdamW update as one CubeCL kernel: [`AdamWOps`] for every
//! `CubeBackend<R, ..>` (Burn's `Wgpu` and `Cuda` without `fusion`).
//!
//! One launch per parameter reads the parameter, its gradient and both
//! moments once and writes the three results, where the composition of
//! tensor ops ([`super::adamw::composite`]) launched about 15 kernels and
//! made as many buffers. The arithmetic is the composition's, operation for
//! operation, on the same f32 scalars ([`AdamWStep::f32_scalars`]); a GPU
//! compiler may contract a product and a sum into one fused multiply-add,
//! so the results match the composition within rounding, not always bit for
//! bit (the tests bound both against the float64 oracle).
//!
//! Units walk the elements in vectors of the widest width that divides the
//! parameter's length, over a grid-strided loop, so no parameter exceeds
//! the device's grid.

use super::adamw::{AdamWOps, AdamWStep};
use super::cube_common::{empty_f32, f32_contiguous, strided_grid, vector_width};
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// Units per cube.
const UNITS: u32 = 256;
/// Most cubes one launch asks for; the units loop over the rest.
const MAX_CUBES: u32 = 4096;

/// One AdamW update of `vectors` vectors of `N` elements. Without
/// `has_moments` (the first step) the moments start at zero and `m_in`,
/// `v_in` are not read.
#[cube(launch)]
fn adamw_vectors<N: Size>(
    param: &Tensor<Vector<f32, N>>,
    grad: &Tensor<Vector<f32, N>>,
    m_in: &Tensor<Vector<f32, N>>,
    v_in: &Tensor<Vector<f32, N>>,
    p_out: &mut Tensor<Vector<f32, N>>,
    m_out: &mut Tensor<Vector<f32, N>>,
    v_out: &mut Tensor<Vector<f32, N>>,
    vectors: u32,
    scalars: AdamWArgs,
    #[comptime] has_moments: bool,
    #[comptime] scaled: bool,
    #[comptime] decays: bool,
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    while i < vectors {
        let at = i as usize;
        let g_in = grad[at];
        let p_in = param[at];
        let mut m_prev = Vector::<f32, N>::empty().fill(f32::new(0.0));
        let mut v_prev = Vector::<f32, N>::empty().fill(f32::new(0.0));
        if comptime!(has_moments) {
            m_prev = m_in[at];
            v_prev = v_in[at];
        }
        let mut p_new = Vector::<f32, N>::empty();
        let mut m_new = Vector::<f32, N>::empty();
        let mut v_new = Vector::<f32, N>::empty();
        #[unroll]
        for l in 0..N::value() {
            let mut g = g_in[l];
            if comptime!(scaled) {
                g *= scalars.grad_scale;
            }
            let m = m_prev[l] * scalars.beta1 + g * scalars.one_minus_beta1;
            let v = v_prev[l] * scalars.beta2 + (g * g) * scalars.one_minus_beta2;
            let update =
                (m / scalars.correction1) / (f32::sqrt(v / scalars.correction2) + scalars.eps);
            let mut p = p_in[l];
            if comptime!(decays) {
                p *= scalars.keep;
            }
            p_new[l] = p - update * scalars.lr;
            m_new[l] = m;
            v_new[l] = v;
        }
        p_out[at] = p_new;
        m_out[at] = m_new;
        v_out[at] = v_new;
        i += stride;
    }
}

/// The update's f32 scalars as one kernel argument.
#[derive(CubeLaunch, CubeType, Clone, Copy)]
pub struct AdamWArgs {
    grad_scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    correction1: f32,
    correction2: f32,
    eps: f32,
    keep: f32,
    lr: f32,
}

fn adamw_update<R: CubeRuntime>(
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    moments: Option<(CubeTensor<R>, CubeTensor<R>)>,
    step: AdamWStep,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let shape = param.shape();
    let n = shape.num_elements();
    assert_eq!(
        grad.shape().num_elements(),
        n,
        "AdamW: the gradient's shape differs from the parameter's"
    );
    let param = f32_contiguous(param);
    let grad = f32_contiguous(grad);
    let has_moments = moments.is_some();
    let (m_in, v_in) = match moments {
        Some((m, v)) => {
            assert!(
                m.shape().num_elements() == n && v.shape().num_elements() == n,
                "AdamW: the moments' shapes differ from the parameter's"
            );
            (f32_contiguous(m), f32_contiguous(v))
        }
        // Not read: the kernel starts from zeros.
        None => (grad.clone(), grad.clone()),
    };
    let p_out = empty_f32(&param, shape.clone());
    let m_out = empty_f32(&param, shape.clone());
    let v_out = empty_f32(&param, shape);
    if n == 0 {
        return (p_out, m_out, v_out);
    }
    let s = step.f32_scalars();
    let scalars = AdamWArgsLaunch::new(
        s.grad_scale.unwrap_or(1.0),
        s.beta1,
        s.one_minus_beta1,
        s.beta2,
        s.one_minus_beta2,
        s.correction1,
        s.correction2,
        s.eps,
        s.keep.unwrap_or(1.0),
        s.lr,
    );
    let client = param.client.clone();
    let width = vector_width(&client, DType::F32, n);
    let vectors = n / width;
    let (cubes, cube) = strided_grid(&client, vectors, UNITS, MAX_CUBES);
    adamw_vectors::launch::<R>(
        &client,
        CubeCount::new_1d(cubes),
        CubeDim::new_1d(cube),
        width,
        param.into_tensor_arg(),
        grad.into_tensor_arg(),
        m_in.into_tensor_arg(),
        v_in.into_tensor_arg(),
        p_out.clone().into_tensor_arg(),
        m_out.clone().into_tensor_arg(),
        v_out.clone().into_tensor_arg(),
        vectors as u32,
        scalars,
        has_moments,
        s.grad_scale.is_some(),
        s.keep.is_some(),
    );
    (p_out, m_out, v_out)
}

impl<R, F, I, BT> AdamWOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn adamw_update(
        param: CubeTensor<R>,
        grad: CubeTensor<R>,
        moments: Option<(CubeTensor<R>, CubeTensor<R>)>,
        step: AdamWStep,
    ) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
        adamw_update(param, grad, moments, step)
    }

    fn sum_of_squares(tensors: Vec<CubeTensor<R>>) -> CubeTensor<R> {
        super::norm_cube::sum_of_squares(tensors)
    }
}
