//! Masked optimizers keyed by parameter path: SGD with momentum and weight decay (the papers'
//! recipe) and Adam.
//!
//! Why not burn's optimizers: a pruned weight must stay exactly 0 and receive no update, and the
//! optimizer state must go into the same safetensors checkpoint as the weights, by name. Keying
//! state by path (not by burn's random `ParamId`) makes both straightforward: gradients of
//! masked weights are multiplied by the mask before they reach the momentum buffers, the
//! updated weight is multiplied by the mask again (so it is exactly 0, not merely tiny), and the
//! buffers are plain named tensors.

use crate::paths::PathTracker;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Gradients, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which update rule, with its constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerKind {
    /// PyTorch `SGD(momentum, weight_decay)`, no dampening, no Nesterov: `g ← g + wd·w`,
    /// `b ← μ·b + g` (b = g at the first step), `w ← w − lr·b`.
    Sgd {
        /// Momentum μ (papers: 0.9).
        momentum: f64,
        /// L2 weight decay (papers: 5e-4).
        weight_decay: f64,
    },
    /// PyTorch `Adam` with L2 weight decay added to the gradient.
    Adam {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        epsilon: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
}

/// Optimizer state: one or two buffers per parameter path, and the step count.
#[derive(Debug, Clone)]
pub struct MaskedOptimizer {
    /// The rule.
    pub kind: OptimizerKind,
    /// Steps taken (Adam's bias correction uses it).
    pub steps: u64,
    /// Buffers by `"<path>.<buffer>"` (`momentum`, `adam_m`, `adam_v`), flattened.
    pub state: BTreeMap<String, Tensor<1>>,
}

impl MaskedOptimizer {
    /// A fresh optimizer.
    pub fn new(kind: OptimizerKind) -> Self {
        Self {
            kind,
            steps: 0,
            state: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient. `masks` maps a parameter path to its
    /// flattened 0/1 mask on the inner (non-autodiff) device.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &Gradients,
        lr: f64,
        masks: &BTreeMap<String, Tensor<1>>,
    ) -> M {
        self.steps += 1;
        let mut mapper = StepMapper {
            path: PathTracker::default(),
            grads,
            lr,
            masks,
            opt: self,
        };
        module.map(&mut mapper)
    }
}

struct StepMapper<'a> {
    path: PathTracker,
    grads: &'a Gradients,
    lr: f64,
    masks: &'a BTreeMap<String, Tensor<1>>,
    opt: &'a mut MaskedOptimizer,
}

impl ModuleMapper for StepMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = tensor.grad(self.grads) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let path = self.path.path();
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let w: Tensor<1> = tensor.inner().reshape([n]);
        let mut g: Tensor<1> = grad.reshape([n]);
        let mask = self.masks.get(&path);
        if let Some(m) = mask {
            g = g * m.clone();
        }
        let opt = &mut *self.opt;
        let w_new = match opt.kind {
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => {
                if weight_decay > 0.0 {
                    g = g + w.clone().mul_scalar(weight_decay);
                }
                let key = format!("{path}.momentum");
                let buf = match (momentum > 0.0, opt.state.remove(&key)) {
                    (false, _) => g,
                    (true, Some(b)) => b.mul_scalar(momentum) + g,
                    (true, None) => g,
                };
                if momentum > 0.0 {
                    opt.state.insert(key, buf.clone());
                }
                w - buf.mul_scalar(self.lr)
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => {
                if weight_decay > 0.0 {
                    g = g + w.clone().mul_scalar(weight_decay);
                }
                let km = format!("{path}.adam_m");
                let kv = format!("{path}.adam_v");
                let m_new = match opt.state.remove(&km) {
                    Some(m) => m.mul_scalar(beta1) + g.clone().mul_scalar(1.0 - beta1),
                    None => g.clone().mul_scalar(1.0 - beta1),
                };
                let g2 = g.clone() * g;
                let v_new = match opt.state.remove(&kv) {
                    Some(v) => v.mul_scalar(beta2) + g2.mul_scalar(1.0 - beta2),
                    None => g2.mul_scalar(1.0 - beta2),
                };
                let t = opt.steps as i32;
                let c1 = 1.0 - beta1.powi(t);
                let c2 = 1.0 - beta2.powi(t);
                let denom = v_new.clone().div_scalar(c2).sqrt().add_scalar(epsilon);
                let update = m_new.clone().div_scalar(c1).div(denom).mul_scalar(self.lr);
                opt.state.insert(km, m_new);
                opt.state.insert(kv, v_new);
                w - update
            }
        };
        let w_new = match mask {
            Some(m) => w_new * m.clone(),
            None => w_new,
        };
        let mut t: Tensor<D> = Tensor::from_inner(w_new.reshape(dims));
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}
