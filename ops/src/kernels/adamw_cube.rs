//! The AdamW update as CubeCL kernels: [`AdamWOps`] for every
//! `CubeBackend<R, ..>` (Burn's `Wgpu` and `Cuda` without `fusion`).
//!
//! One launch updates up to [`PARAMS_PER_LAUNCH`] parameters (each by its
//! own run of cubes, as many as its length needs): it reads each
//! parameter, its gradient and both moments once and writes the three
//! results, where the composition of tensor ops
//! ([`super::adamw::composite`]) launched about 15 kernels per parameter
//! and made as many buffers, and a launch per parameter cost a model 272
//! launches per step. The arithmetic is the composition's, operation for
//! operation, on the same f32 scalars ([`AdamWStep::f32_scalars`]); a GPU
//! compiler may contract a product and a sum into one fused multiply-add,
//! so the results match the composition within rounding, not always bit for
//! bit (the tests bound both against the float64 oracle).
//!
//! Units walk the elements in vectors of the widest width that divides the
//! parameter's length (the parameters of one launch share a width), over a
//! grid-strided loop, so no parameter exceeds the device's grid.

use super::adamw::{AdamWOps, AdamWStep, ParamUpdate, Updated};
use super::cube_common::{
    cube_grid, cube_runs, empty_f32, f32_contiguous, group_by_width, items_per_launch,
    units_per_cube,
};
use burn::tensor::TensorMetadata;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// Units per cube.
const UNITS: u32 = 256;
/// Most cubes per parameter; the units loop over the rest.
const MAX_CUBES: u32 = 4096;
/// Most parameters one launch updates (seven bindings each), fewer where
/// the device binds fewer buffers. Each distinct count compiles its own
/// kernel, so a model's launches reuse two or three.
const PARAMS_PER_LAUNCH: usize = 16;
/// The parameters the trainer hands over at once: two launches' worth.
const BATCH: usize = 2 * PARAMS_PER_LAUNCH;

/// One AdamW update of one parameter of `vectors` vectors of `N` elements,
/// by the units of its `cubes` cubes, of which this is cube `cube`. Without
/// `has_moments` (the first step) the moments start at zero and `m_in`,
/// `v_in` are not read.
#[cube]
#[allow(clippy::too_many_arguments)]
fn update_parameter<N: Size>(
    param: &Tensor<Vector<f32, N>>,
    grad: &Tensor<Vector<f32, N>>,
    m_in: &Tensor<Vector<f32, N>>,
    v_in: &Tensor<Vector<f32, N>>,
    p_out: &mut Tensor<Vector<f32, N>>,
    m_out: &mut Tensor<Vector<f32, N>>,
    v_out: &mut Tensor<Vector<f32, N>>,
    vectors: u32,
    cube: u32,
    cubes: u32,
    keep: f32,
    scalars: &AdamWArgs,
    #[comptime] has_moments: bool,
    #[comptime] scaled: bool,
) {
    let stride = cubes * CUBE_DIM_X;
    let mut i = cube * CUBE_DIM_X + UNIT_POS_X;
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
            // `keep` is exactly 1 for a parameter that does not decay, and
            // a product with 1 rounds to itself: the composition skips it.
            let p = p_in[l] * keep;
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

/// The updates of the parameters of one launch: parameter `t` of each
/// sequence (`vectors[t]` long, decay factor `keeps[t]`) is updated by the
/// cubes `first_cube[t] .. first_cube[t] + cubes[t]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adamw_parameters<N: Size>(
    params: &Sequence<Tensor<Vector<f32, N>>>,
    grads: &Sequence<Tensor<Vector<f32, N>>>,
    m_in: &Sequence<Tensor<Vector<f32, N>>>,
    v_in: &Sequence<Tensor<Vector<f32, N>>>,
    p_out: &mut Sequence<Tensor<Vector<f32, N>>>,
    m_out: &mut Sequence<Tensor<Vector<f32, N>>>,
    v_out: &mut Sequence<Tensor<Vector<f32, N>>>,
    vectors: Sequence<u32>,
    first_cube: Sequence<u32>,
    cubes: Sequence<u32>,
    keeps: Sequence<f32>,
    scalars: AdamWArgs,
    #[comptime] has_moments: bool,
    #[comptime] scaled: bool,
) {
    let c = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    // The sequences are indexed at compile time: each parameter is a
    // branch, and every unit of a cube takes the same one.
    #[unroll]
    for t in 0..params.len() {
        let first = *first_cube.index(t);
        let own = *cubes.index(t);
        if c >= first && c < first + own {
            update_parameter(
                params.index(t),
                grads.index(t),
                m_in.index(t),
                v_in.index(t),
                p_out.index_mut(t),
                m_out.index_mut(t),
                v_out.index_mut(t),
                *vectors.index(t),
                c - first,
                own,
                *keeps.index(t),
                &scalars,
                has_moments,
                scaled,
            );
        }
    }
}

/// The update's f32 scalars that its parameters share, as one kernel
/// argument (each parameter's decay factor travels on its own).
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
    lr: f32,
}

/// A [`ParamUpdate`] of any `CubeBackend<R, ..>` (they share the tensor
/// type).
struct Inputs<R: CubeRuntime> {
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    moments: Option<(CubeTensor<R>, CubeTensor<R>)>,
    step: AdamWStep,
}

/// `(param, m, v)` after the update.
type Outputs<R> = (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>);

/// One parameter's update, ready to launch: contiguous f32 inputs and its
/// new buffers.
struct Prepared<R: CubeRuntime> {
    /// Its place in the caller's list.
    index: usize,
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    /// The moments, or (not read) the gradient twice before the first step.
    m_in: CubeTensor<R>,
    v_in: CubeTensor<R>,
    out: Outputs<R>,
    keep: f32,
}

/// What the parameters of one launch share: whether they have moments,
/// whether their gradients are scaled, and the bits of [`AdamWArgs`] in
/// its field order (bits, so that keys compare exactly).
#[derive(Clone, Copy, PartialEq)]
struct LaunchKey {
    has_moments: bool,
    scaled: bool,
    scalars: [u32; 9],
}

fn prepare<R: CubeRuntime>(index: usize, u: Inputs<R>) -> (LaunchKey, Prepared<R>) {
    let shape = u.param.shape();
    let n = shape.num_elements();
    assert_eq!(
        u.grad.shape().num_elements(),
        n,
        "AdamW: the gradient's shape differs from the parameter's"
    );
    let param = f32_contiguous(u.param);
    let grad = f32_contiguous(u.grad);
    let has_moments = u.moments.is_some();
    let (m_in, v_in) = match u.moments {
        Some((m, v)) => {
            assert!(
                m.shape().num_elements() == n && v.shape().num_elements() == n,
                "AdamW: the moments' shapes differ from the parameter's"
            );
            (f32_contiguous(m), f32_contiguous(v))
        }
        None => (grad.clone(), grad.clone()),
    };
    let out = (
        empty_f32(&param, shape.clone()),
        empty_f32(&param, shape.clone()),
        empty_f32(&param, shape),
    );
    let s = u.step.f32_scalars();
    let key = LaunchKey {
        has_moments,
        scaled: s.grad_scale.is_some(),
        scalars: [
            s.grad_scale.unwrap_or(1.0),
            s.beta1,
            s.one_minus_beta1,
            s.beta2,
            s.one_minus_beta2,
            s.correction1,
            s.correction2,
            s.eps,
            s.lr,
        ]
        .map(f32::to_bits),
    };
    let prepared = Prepared {
        index,
        param,
        grad,
        m_in,
        v_in,
        out,
        keep: s.keep.unwrap_or(1.0),
    };
    (key, prepared)
}

/// Launches the updates of parameters that share `key` and a vector width.
fn launch<R: CubeRuntime>(key: LaunchKey, width: usize, params: &[Prepared<R>]) {
    let [
        grad_scale,
        beta1,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        c1,
        c2,
        eps,
        lr,
    ] = key.scalars.map(f32::from_bits);
    let scalars = AdamWArgsLaunch::new(
        grad_scale,
        beta1,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        c1,
        c2,
        eps,
        lr,
    );
    let client = params[0].param.client.clone();
    let cube = units_per_cube(&client, UNITS);
    let vectors: Vec<u32> = params
        .iter()
        .map(|p| {
            let n = p.param.shape().num_elements() / width;
            u32::try_from(n).expect("a parameter of over 2^32 vectors")
        })
        .collect();
    let runs = cube_runs(&client, &vectors, cube, MAX_CUBES);
    let arg = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
    let sequence =
        |pick: &dyn Fn(&Prepared<R>) -> &CubeTensor<R>| -> SequenceArg<R, Tensor<Vector<f32, _>>> {
            params.iter().map(|p| arg(pick(p))).collect()
        };
    adamw_parameters::launch::<R>(
        &client,
        cube_grid(&client, runs.total as usize, "AdamW"),
        CubeDim::new_1d(cube),
        width,
        sequence(&|p| &p.param),
        sequence(&|p| &p.grad),
        sequence(&|p| &p.m_in),
        sequence(&|p| &p.v_in),
        sequence(&|p| &p.out.0),
        sequence(&|p| &p.out.1),
        sequence(&|p| &p.out.2),
        vectors.into_iter().collect(),
        runs.first.into_iter().collect(),
        runs.cubes.into_iter().collect(),
        params.iter().map(|p| p.keep).collect(),
        scalars,
        key.has_moments,
        key.scaled,
    );
}

/// See [`AdamWOps::adamw_update_many`].
fn adamw_update_many<R: CubeRuntime>(updates: Vec<Inputs<R>>) -> Vec<Outputs<R>> {
    let count = updates.len();
    // Grouped by what a launch shares, each group in the caller's order.
    let mut groups: Vec<(LaunchKey, Vec<Prepared<R>>)> = Vec::new();
    let mut results: Vec<Option<Outputs<R>>> = (0..count).map(|_| None).collect();
    for (index, update) in updates.into_iter().enumerate() {
        let (key, prepared) = prepare(index, update);
        if prepared.param.shape().num_elements() == 0 {
            results[index] = Some(prepared.out);
            continue;
        }
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(prepared),
            None => groups.push((key, vec![prepared])),
        }
    }
    for (key, group) in groups {
        let Some(first) = group.first() else { continue };
        let client = first.param.client.clone();
        let per_launch = items_per_launch(&client, PARAMS_PER_LAUNCH, 7, 0);
        for (width, params) in group_by_width(
            &client,
            group,
            |p| p.param.shape().num_elements(),
            per_launch,
        ) {
            launch(key, width, &params);
            // The inputs are dropped here, launch by launch.
            for p in params {
                results[p.index] = Some(p.out);
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every update has its result"))
        .collect()
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
    ) -> Updated<Self> {
        let inputs = Inputs {
            param,
            grad,
            moments,
            step,
        };
        let [out] = adamw_update_many(vec![inputs])
            .try_into()
            .unwrap_or_else(|_| unreachable!("one update has one result"));
        out
    }

    fn adamw_update_many(updates: Vec<ParamUpdate<Self>>) -> Vec<Updated<Self>> {
        let inputs = updates
            .into_iter()
            .map(|u| Inputs {
                param: u.param,
                grad: u.grad,
                moments: u.moments,
                step: u.step,
            })
            .collect();
        adamw_update_many(inputs)
    }

    fn adamw_batch() -> usize {
        BATCH
    }

    fn sum_of_squares(tensors: Vec<CubeTensor<R>>) -> CubeTensor<R> {
        super::norm_cube::sum_of_squares(tensors)
    }
}
