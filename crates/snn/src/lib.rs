//! Spiking neural networks on burn 0.22 (the pure-Rust `flex` CPU backend; the model code is
//! backend-agnostic, so `cuda`/`wgpu` are a cargo feature away).
//!
//! Owns: the LIF neuron and its surrogate gradients ([`neuron`]), architectures as data
//! ([`arch`]), the burn module and its multi-step forward pass ([`model`]), masked optimizers
//! keyed by parameter path ([`optim`]), training and evaluation ([`train`]), and safetensors
//! checkpoints that hold weights, masks, optimizer state and the hardware model's layer geometry
//! ([`checkpoint`]).

pub mod arch;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod hyperparams;
pub mod model;
pub mod neuron;
pub mod optim;
mod paths;
pub mod session;
pub mod state;
pub mod train;

pub use arch::{ArchSpec, LayerSpec};
/// The burn device type, re-exported so that users of this crate need no direct burn dependency.
pub use burn::tensor::Device;
pub use error::SnnError;
pub use hyperparams::{Schedule, TrainParams};
pub use model::{InputShape, SpikingNet, WeightKind, WeightLayer};
pub use neuron::{LifParams, Surrogate};
pub use optim::{MaskedOptimizer, OptimizerKind};
pub use state::HostTensor;
pub use train::{EpochRecord, Evaluation, Prepared, Snn, TrainEvent, Trainer};
