//! AdamW with decoupled weight decay on matrices only, global-norm gradient
//! clipping, and gradient accumulation, over every float parameter of a
//! module. Its state is addressable by parameter path, so a checkpoint can
//! save it and a resumed run continue bit for bit.
//!
//! Parameters are visited in the module's field order, which is the same on
//! every run of a model of one shape; checkpoints record the paths and a
//! resume checks them.

use std::collections::BTreeMap;
use std::ops::Range;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

use crate::io::{HostTensor, StateDict};
use crate::kernels::{AdamWOps, AdamWStep, ParamUpdate};

/// The hyper-parameters that do not change during a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm limit; 0 turns clipping off.
    pub grad_clip: f64,
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Builds `a.b.c` paths while a visitor or mapper walks a module.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    /// Option wrappers do not enter; every other level (struct field, Vec
    /// index) names one.
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn leaf(&self) -> String {
        self.0.join(".")
    }
}

/// The summed gradients of the micro-batches of one optimizer step, one
/// slot per float parameter in visit order.
pub struct GradientSum<B: Backend> {
    slots: Vec<Option<FloatTensor<B>>>,
}

impl<B: Backend> Default for GradientSum<B> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

struct Accumulate<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    sum: &'a mut GradientSum<B::InnerBackend>,
    index: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Accumulate<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let i = self.index;
        self.index += 1;
        if self.sum.slots.len() <= i {
            self.sum.slots.resize_with(i + 1, || None);
        }
        let Some(grad) = param.val().grad(self.grads) else {
            return;
        };
        self.sum.slots[i] = Some(match self.sum.slots[i].take() {
            None => float(grad),
            Some(acc) => float(tensor::<_, D>(acc) + grad),
        });
    }
}

impl<B: AdamWOps> GradientSum<B> {
    /// Adds the gradients of one backward pass.
    pub fn add<A, M>(&mut self, module: &M, grads: &A::Gradients)
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        module.visit(&mut Accumulate::<A> {
            grads,
            sum: self,
            index: 0,
        });
    }

    /// The global L2 norm of all gradients (one read-back).
    pub fn norm(&self) -> f64 {
        let slots: Vec<_> = self.slots.iter().flatten().cloned().collect();
        if slots.is_empty() {
            return 0.0;
        }
        tensor::<B, 1>(B::sum_of_squares(slots))
            .into_scalar()
            .elem::<f64>()
            .sqrt()
    }
}

/// First and second moments of one parameter.
#[derive(Clone)]
struct Moments<B: Backend> {
    m: FloatTensor<B>,
    v: FloatTensor<B>,
}

/// AdamW state: the step count and each parameter's moments, keyed by path.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Optimizer steps taken so far (bias correction uses it).
    pub steps: u64,
    moments: BTreeMap<String, Moments<B>>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
}

struct Update<'a, B: Backend> {
    adam: &'a mut AdamW<B>,
    grads: &'a mut GradientSum<B>,
    lr: f64,
    scale: f64,
    index: usize,
    path: PathStack,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Update<'_, A::InnerBackend>
where
    A::InnerBackend: AdamWOps,
{
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, value, mapper) = param.consume();
        let i = self.index;
        self.index += 1;
        let path = self.path.leaf();
        let Some(grad) = self.grads.slots.get_mut(i).and_then(Option::take) else {
            return Param::from_mapped_value(id, value, mapper);
        };
        let step = self.adam.step_scalars(self.lr, self.scale, D);
        let moments = self.adam.moments.remove(&path).map(|s| (s.m, s.v));
        let (p, m, v) = A::InnerBackend::adamw_update(float(value.inner()), grad, moments, step);
        self.adam.moments.insert(path, Moments { m, v });
        let p = tensor::<A::InnerBackend, D>(p);
        Param::from_mapped_value(id, Tensor::from_inner(p).require_grad(), mapper)
    }
}

/// The float parameters with an index in `range`: each one's index, path,
/// value and rank, in visit order.
struct Collect<B: Backend> {
    range: Range<usize>,
    index: usize,
    path: PathStack,
    found: Vec<(usize, String, FloatTensor<B>, usize)>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for Collect<A::InnerBackend> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let i = self.index;
        self.index += 1;
        if self.range.contains(&i) {
            let value = float(param.val().inner());
            self.found.push((i, self.path.leaf(), value, D));
        }
    }
}

/// Puts new values in place of the float parameters at their indices.
struct Replace<B: Backend> {
    index: usize,
    values: BTreeMap<usize, FloatTensor<B>>,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Replace<A::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let i = self.index;
        self.index += 1;
        let Some(p) = self.values.remove(&i) else {
            return param;
        };
        let (id, _old, mapper) = param.consume();
        let p = tensor::<A::InnerBackend, D>(p);
        Param::from_mapped_value(id, Tensor::from_inner(p).require_grad(), mapper)
    }
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            steps: 0,
            moments: BTreeMap::new(),
        }
    }

    /// One update of `module` with the summed gradients `grads` (consumed)
    /// at learning rate `lr`, clipping their global norm first.
    pub fn step<A, M>(&mut self, module: M, grads: &mut GradientSum<B>, lr: f64) -> (M, StepReport)
    where
        B: AdamWOps,
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        let grad_norm = grads.norm();
        let clip = self.config.grad_clip;
        let clip_scale = if clip > 0.0 && grad_norm > clip {
            clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        self.steps += 1;
        let module = if B::adamw_batch() > 1 {
            self.update_in_batches(module, grads, lr, clip_scale)
        } else {
            module.map(&mut Update::<B> {
                adam: self,
                grads,
                lr,
                scale: clip_scale,
                index: 0,
                path: PathStack::default(),
            })
        };
        grads.slots.clear();
        (
            module,
            StepReport {
                grad_norm,
                clip_scale,
            },
        )
    }

    /// The scalars of this step's update of a parameter of rank `rank`.
    fn step_scalars(&self, lr: f64, grad_scale: f64, rank: usize) -> AdamWStep {
        let c = self.config;
        AdamWStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            // Matrices decay; norms and biases (vectors) do not.
            decay: if rank >= 2 { c.weight_decay } else { 0.0 },
            t: self.steps as i32,
            grad_scale,
        }
    }

    /// The update of every parameter with a gradient, [`AdamWOps::adamw_batch`]
    /// parameters at a time (in visit order): the same arithmetic as
    /// [`Update`], in fewer launches. Each batch collects its parameters'
    /// values, updates them in one [`AdamWOps::adamw_update_many`], and
    /// puts the results in place, so at most one batch's old values are
    /// held beside the new ones.
    fn update_in_batches<A, M>(
        &mut self,
        mut module: M,
        grads: &mut GradientSum<B>,
        lr: f64,
        scale: f64,
    ) -> M
    where
        B: AdamWOps,
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        let batch = B::adamw_batch();
        let mut start = 0;
        loop {
            let mut collect = Collect::<B> {
                range: start..start + batch,
                index: 0,
                path: PathStack::default(),
                found: Vec::new(),
            };
            module.visit(&mut collect);
            let mut indices = Vec::new();
            let mut updates = Vec::new();
            for (i, path, param, rank) in collect.found {
                let Some(grad) = grads.slots.get_mut(i).and_then(Option::take) else {
                    continue;
                };
                let moments = self.moments.remove(&path).map(|s| (s.m, s.v));
                updates.push(ParamUpdate {
                    param,
                    grad,
                    moments,
                    step: self.step_scalars(lr, scale, rank),
                });
                indices.push((i, path));
            }
            let mut values = BTreeMap::new();
            for ((i, path), (p, m, v)) in indices.into_iter().zip(B::adamw_update_many(updates)) {
                self.moments.insert(path, Moments { m, v });
                values.insert(i, p);
            }
            if !values.is_empty() {
                module = module.map(&mut Replace::<B> { index: 0, values });
            }
            start += batch;
            if start >= collect.index {
                return module;
            }
        }
    }

    /// The moments as host tensors named `m.<path>` and `v.<path>`.
    pub fn to_state_dict(&self) -> StateDict {
        let mut out = StateDict::new();
        for (path, s) in &self.moments {
            out.insert(format!("m.{path}"), host::<B>(&s.m));
            out.insert(format!("v.{path}"), host::<B>(&s.v));
        }
        out
    }

    /// Restores moments saved by [`AdamW::to_state_dict`] after `steps`
    /// steps.
    pub fn load_state_dict(
        config: AdamWConfig,
        steps: u64,
        mut saved: StateDict,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        let mut moments = BTreeMap::new();
        let paths: Vec<String> = saved
            .keys()
            .filter_map(|k| k.strip_prefix("m.").map(str::to_string))
            .collect();
        for path in paths {
            let m = saved.remove(&format!("m.{path}")).expect("listed above");
            let v = saved.remove(&format!("v.{path}")).ok_or_else(|| {
                anyhow::anyhow!("optimizer state has `m.{path}` but no `v.{path}`")
            })?;
            moments.insert(
                path,
                Moments {
                    m: device_tensor::<B>(m, device),
                    v: device_tensor::<B>(v, device),
                },
            );
        }
        if let Some(extra) = saved.keys().next() {
            anyhow::bail!("unexpected tensor `{extra}` in the optimizer state");
        }
        Ok(Self {
            config,
            steps,
            moments,
        })
    }
}

fn host<B: Backend>(t: &FloatTensor<B>) -> HostTensor {
    // The rank parameter is only a type-level label here: the data read
    // back carries the primitive's real shape.
    let data = tensor::<B, 1>(t.clone()).into_data().convert::<f32>();
    let shape = data.shape.to_vec();
    HostTensor::new(shape, data.into_vec::<f32>().expect("f32 data"))
}

fn device_tensor<B: Backend>(h: HostTensor, device: &B::Device) -> FloatTensor<B> {
    let data = burn::tensor::TensorData::new(h.data, h.shape);
    B::float_from_data(data, device)
}
