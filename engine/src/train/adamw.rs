//! AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, and global-norm gradient
//! clipping. Written here rather than taken from burn-optim so that its state is a set of
//! named tensors (saved in a checkpoint like the weights) and so that clipping uses the norm
//! of all gradients together, as PyTorch's `clip_grad_norm_` does.
//!
//! For each parameter x with gradient g at update t:
//!   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
//!   x = x - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) - lr wd x   (wd: matrices only)
//! with lr multiplied by `router_lr_multiplier` for the routers and `shared_lr_multiplier` for
//! the shared weights (everything but FFNs, experts and routers).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::config::OptimizerConfig;
use crate::kernels::vector_math::AdamWScalars;
use crate::checkpoint::module_tensors::{to_device, to_host};
use crate::checkpoint::tensor_file::{HostTensor, TensorMap};

/// First and second moments of one parameter, flattened.
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

pub struct AdamW {
    pub config: OptimizerConfig,
    /// Updates applied so far (t in the bias corrections).
    pub updates: u64,
    moments: HashMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: OptimizerConfig) -> Self {
        Self { config, updates: 0, moments: HashMap::new() }
    }

    /// Applies one update with learning rate `lr`, the gradients first multiplied by
    /// `grad_scale` (the clipping factor). Parameters without a gradient are left alone.
    pub fn step<M: Module>(&mut self, model: M, grads: GradientsParams, lr: f64, grad_scale: f64) -> M {
        self.updates += 1;
        let t = self.updates as i32;
        let c = &self.config;
        let mut update = Update {
            path: Vec::new(),
            grads,
            moments: &mut self.moments,
            lr,
            grad_scale,
            b1: c.beta1,
            b2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            router_lr_multiplier: c.router_lr_multiplier,
            shared_lr_multiplier: c.shared_lr_multiplier,
            m_correction: 1.0 / (1.0 - c.beta1.powi(t)),
            v_correction: 1.0 / (1.0 - c.beta2.powi(t)),
        };
        model.map(&mut update)
    }

    /// Writes the moments as named tensors (`exp_avg.PATH`, `exp_avg_sq.PATH`), one at a time
    /// from the device (never the whole state as a second host copy).
    pub fn write_state(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let mut layout: Vec<(String, Vec<usize>)> = Vec::new();
        for (path, s) in &self.moments {
            layout.push((format!("exp_avg.{path}"), s.m.dims().to_vec()));
            layout.push((format!("exp_avg_sq.{path}"), s.v.dims().to_vec()));
        }
        layout.sort();
        crate::checkpoint::tensor_file::write_tensors_from(path, layout, Default::default(), |name| {
            let (moment, path) = name.split_once('.').expect("names written above");
            let s = &self.moments[path];
            Ok(std::borrow::Cow::Owned(to_host(if moment == "exp_avg" { s.m.clone() } else { s.v.clone() })))
        })
    }

    /// Restores moments saved by [`write_state`](Self::write_state).
    pub fn load_state_tensors(&mut self, tensors: &TensorMap, updates: u64, device: &Device) {
        self.updates = updates;
        self.moments.clear();
        for (name, m) in tensors {
            let Some(path) = name.strip_prefix("exp_avg.") else { continue };
            let Some(v) = tensors.get(&format!("exp_avg_sq.{path}")) else { continue };
            let flat = |h: &HostTensor| to_device::<1>(HostTensor::new(vec![h.values.len()], h.values.clone()), device);
            self.moments.insert(path.to_string(), Moments { m: flat(m), v: flat(v) });
        }
    }
}

struct Update<'a> {
    path: Vec<String>,
    grads: GradientsParams,
    moments: &'a mut HashMap<String, Moments>,
    lr: f64,
    grad_scale: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    weight_decay: f64,
    router_lr_multiplier: f64,
    shared_lr_multiplier: f64,
    m_correction: f64,
    v_correction: f64,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let strategy = tensor.gradient_checkpointing_strategy();
        let x = tensor.inner();
        let shape = x.dims();
        let n = shape.iter().product::<usize>();
        let g = grad.reshape([n]);
        let path = self.path.join(".");
        let lr = match () {
            _ if crate::checkpoint::tensor_names::is_router(&path) => self.lr * self.router_lr_multiplier,
            _ if crate::checkpoint::tensor_names::is_ffn(&path) => self.lr,
            _ => self.lr * self.shared_lr_multiplier,
        };
        let Moments { m, v } = self.moments.remove(&path).unwrap_or_else(|| Moments {
            m: g.zeros_like(),
            v: g.zeros_like(),
        });
        let decayed = D >= 2 && self.weight_decay > 0.0;
        let scalars = AdamWScalars {
            lr: lr as f32,
            grad_scale: self.grad_scale as f32,
            b1: self.b1 as f32,
            one_minus_b1: (1.0 - self.b1) as f32,
            b2: self.b2 as f32,
            one_minus_b2: (1.0 - self.b2) as f32,
            eps: self.eps as f32,
            decay: if decayed { (1.0 - lr * self.weight_decay) as f32 } else { 1.0 },
            m_correction: self.m_correction as f32,
            v_correction: self.v_correction as f32,
        };
        let (x, m, v) = crate::kernels::adamw_update(x.reshape([n]), g, m, v, scalars);
        self.moments.insert(path, Moments { m, v });
        let mut x = crate::model::onto_autodiff(x.reshape(shape), strategy);
        if require_grad {
            x = x.require_grad();
        }
        Param::from_mapped_value(id, x, mapper)
    }
}

/// The L2 norm of all gradients together (one device read).
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut visitor = SumSquares { grads, total: None };
    model.visit(&mut visitor);
    visitor.total.map_or(0.0, |t| (t.into_scalar::<f32>() as f64).sqrt())
}
