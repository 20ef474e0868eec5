//! Training hyper-parameters: a builder with documented defaults, validated into [`TrainParams`].

use crate::error::SnnError;
use crate::neuron::{LifParams, Surrogate};
use crate::optim::OptimizerKind;
use serde::{Deserialize, Serialize};

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine annealing from the base rate to 0 over all steps of the run (per step rather than
    /// per epoch, so short CPU runs still anneal smoothly; a pure function of the global step, so
    /// resuming reproduces it exactly).
    Cosine,
    /// Constant rate.
    Constant,
}

/// Checked training parameters. Build with [`TrainParams::builder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// Epochs to train.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Update rule.
    pub optimizer: OptimizerKind,
    /// Schedule.
    pub schedule: Schedule,
    /// Time steps T.
    pub timesteps: usize,
    /// Neuron.
    pub lif: LifParams,
    /// Seed of shuffling, augmentation and initialisation.
    pub seed: u64,
    /// Use only the first K training samples (`None`: all).
    pub train_limit: Option<usize>,
    /// Use only the first K test samples for evaluation (`None`: all).
    pub test_limit: Option<usize>,
    /// Random crop (pad 4) and horizontal flip; the CIFAR recipe. Off for (Fashion-)MNIST.
    pub augment: bool,
}

/// Builder for [`TrainParams`].
#[derive(Debug, Clone)]
pub struct TrainParamsBuilder {
    p: TrainParams,
}

impl TrainParams {
    /// Defaults: 1 epoch, batch 128, SGD (momentum 0.9, weight decay 5e-4) at lr 0.1 with a
    /// cosine schedule (the papers' recipe; the reference code uses lr 0.1 at batch 128),
    /// T = 4, LIF τ = 4/3, V_th = 1, ATan α = 2, seed 0, no limits, no augmentation.
    pub fn builder() -> TrainParamsBuilder {
        TrainParamsBuilder {
            p: TrainParams {
                epochs: 1,
                batch_size: 128,
                lr: 0.1,
                optimizer: OptimizerKind::Sgd {
                    momentum: 0.9,
                    weight_decay: 5e-4,
                },
                schedule: Schedule::Cosine,
                timesteps: 4,
                lif: LifParams::default(),
                seed: 0,
                train_limit: None,
                test_limit: None,
                augment: false,
            },
        }
    }

    /// Learning rate at global step `step` of `total_steps`.
    pub fn lr_at(&self, step: usize, total_steps: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let frac = step as f64 / total_steps.max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

fn invalid(name: &'static str, reason: impl Into<String>) -> SnnError {
    SnnError::InvalidParam {
        name,
        reason: reason.into(),
    }
}

impl TrainParamsBuilder {
    /// Epochs (≥ 1).
    pub fn epochs(mut self, v: usize) -> Self {
        self.p.epochs = v;
        self
    }
    /// Batch size (≥ 1).
    pub fn batch_size(mut self, v: usize) -> Self {
        self.p.batch_size = v;
        self
    }
    /// Base learning rate (finite, > 0).
    pub fn lr(mut self, v: f64) -> Self {
        self.p.lr = v;
        self
    }
    /// Update rule.
    pub fn optimizer(mut self, v: OptimizerKind) -> Self {
        self.p.optimizer = v;
        self
    }
    /// Schedule.
    pub fn schedule(mut self, v: Schedule) -> Self {
        self.p.schedule = v;
        self
    }
    /// Time steps (1 ..= 64).
    pub fn timesteps(mut self, v: usize) -> Self {
        self.p.timesteps = v;
        self
    }
    /// Neuron parameters (τ > 1, threshold > 0, surrogate constant > 0).
    pub fn lif(mut self, v: LifParams) -> Self {
        self.p.lif = v;
        self
    }
    /// Seed.
    pub fn seed(mut self, v: u64) -> Self {
        self.p.seed = v;
        self
    }
    /// Training-set limit (≥ 1 if set).
    pub fn train_limit(mut self, v: Option<usize>) -> Self {
        self.p.train_limit = v;
        self
    }
    /// Test-set limit (≥ 1 if set).
    pub fn test_limit(mut self, v: Option<usize>) -> Self {
        self.p.test_limit = v;
        self
    }
    /// Augmentation on/off.
    pub fn augment(mut self, v: bool) -> Self {
        self.p.augment = v;
        self
    }

    /// Validates every value.
    pub fn build(self) -> Result<TrainParams, SnnError> {
        let p = self.p;
        if p.epochs == 0 {
            return Err(invalid("epochs", "must be at least 1"));
        }
        if p.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1"));
        }
        if !(p.lr.is_finite() && p.lr > 0.0) {
            return Err(invalid(
                "lr",
                format!("must be finite and > 0, got {}", p.lr),
            ));
        }
        if p.timesteps == 0 || p.timesteps > 64 {
            return Err(invalid("timesteps", "must be in 1..=64"));
        }
        if !(p.lif.tau.is_finite() && p.lif.tau > 1.0) {
            return Err(invalid(
                "tau",
                "must be finite and > 1 (λ = 1 − 1/τ in (0, 1))",
            ));
        }
        if !(p.lif.threshold.is_finite() && p.lif.threshold > 0.0) {
            return Err(invalid("threshold", "must be finite and > 0"));
        }
        let sharp = match p.lif.surrogate {
            Surrogate::Atan { alpha } => alpha,
            Surrogate::FastSigmoid { slope } => slope,
        };
        if !(sharp.is_finite() && sharp > 0.0) {
            return Err(invalid("surrogate", "its constant must be finite and > 0"));
        }
        match p.optimizer {
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(invalid("momentum", "must be in [0, 1)"));
                }
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(invalid("weight_decay", "must be finite and ≥ 0"));
                }
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => {
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return Err(invalid("beta", "β1 and β2 must be in [0, 1)"));
                }
                if !(epsilon.is_finite() && epsilon > 0.0) {
                    return Err(invalid("epsilon", "must be finite and > 0"));
                }
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(invalid("weight_decay", "must be finite and ≥ 0"));
                }
            }
        }
        if p.train_limit == Some(0) {
            return Err(invalid("train_limit", "must be at least 1"));
        }
        if p.test_limit == Some(0) {
            return Err(invalid("test_limit", "must be at least 1"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(r: Result<TrainParams, SnnError>) -> &'static str {
        match r {
            Err(SnnError::InvalidParam { name, .. }) => name,
            other => panic!("expected InvalidParam, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let p = TrainParams::builder().build().unwrap();
        assert_eq!(p.timesteps, 4);
        assert!((p.lr_at(0, 10) - 0.1).abs() < 1e-12);
        assert!(p.lr_at(10, 10).abs() < 1e-12);
    }
    #[test]
    fn zero_epochs() {
        assert_eq!(name_of(TrainParams::builder().epochs(0).build()), "epochs");
    }
    #[test]
    fn zero_batch() {
        assert_eq!(
            name_of(TrainParams::builder().batch_size(0).build()),
            "batch_size"
        );
    }
    #[test]
    fn bad_lr() {
        assert_eq!(name_of(TrainParams::builder().lr(f64::NAN).build()), "lr");
        assert_eq!(name_of(TrainParams::builder().lr(0.0).build()), "lr");
    }
    #[test]
    fn bad_timesteps() {
        assert_eq!(
            name_of(TrainParams::builder().timesteps(0).build()),
            "timesteps"
        );
    }
    #[test]
    fn bad_tau() {
        let lif = LifParams {
            tau: 1.0,
            ..LifParams::default()
        };
        assert_eq!(name_of(TrainParams::builder().lif(lif).build()), "tau");
    }
    #[test]
    fn bad_threshold() {
        let lif = LifParams {
            threshold: -1.0,
            ..LifParams::default()
        };
        assert_eq!(
            name_of(TrainParams::builder().lif(lif).build()),
            "threshold"
        );
    }
    #[test]
    fn bad_surrogate() {
        let lif = LifParams {
            surrogate: Surrogate::Atan { alpha: 0.0 },
            ..LifParams::default()
        };
        assert_eq!(
            name_of(TrainParams::builder().lif(lif).build()),
            "surrogate"
        );
    }
    #[test]
    fn bad_momentum() {
        let o = OptimizerKind::Sgd {
            momentum: 1.0,
            weight_decay: 0.0,
        };
        assert_eq!(
            name_of(TrainParams::builder().optimizer(o).build()),
            "momentum"
        );
    }
    #[test]
    fn bad_weight_decay() {
        let o = OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: -1.0,
        };
        assert_eq!(
            name_of(TrainParams::builder().optimizer(o).build()),
            "weight_decay"
        );
    }
    #[test]
    fn bad_adam() {
        let o = OptimizerKind::Adam {
            beta1: 1.5,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        };
        assert_eq!(name_of(TrainParams::builder().optimizer(o).build()), "beta");
        let o = OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 0.0,
            weight_decay: 0.0,
        };
        assert_eq!(
            name_of(TrainParams::builder().optimizer(o).build()),
            "epsilon"
        );
    }
    #[test]
    fn zero_limits() {
        assert_eq!(
            name_of(TrainParams::builder().train_limit(Some(0)).build()),
            "train_limit"
        );
        assert_eq!(
            name_of(TrainParams::builder().test_limit(Some(0)).build()),
            "test_limit"
        );
    }
}
