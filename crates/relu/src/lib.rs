//! # netxray-relu
//!
//! The dense, fully connected ReLU network that both the attack (as a target and as its output) and the
//! tools (`model new | inspect | compare | train`) work on. Everything is `f64` and built on `faer`.
//!
//! Owns:
//! - [`Arch`]: architecture strings such as `784-128-128-10`;
//! - [`Network`]: hidden layers ReLU, last layer linear, weights stored `[out, in]` (PyTorch layout),
//!   batched forward pass (one GEMM per layer);
//! - [`init`]: the random init recipes `he`, `cjm`, `balanced`;
//! - [`format`]: safetensors (canonical and PyTorch `nn.Sequential` names, f64 or f32) and `.npz` import;
//! - [`compare`]: alignment up to the network symmetries and the error report;
//! - [`train`]: a small Adam/SGD classifier trainer used to make realistic extraction targets.

pub mod arch;
pub mod compare;
pub mod error;
pub mod format;
pub mod init;
pub mod network;
pub mod train;

pub use arch::Arch;
pub use error::ReluError;
pub use init::InitRecipe;
pub use network::{Layer, Network, NetworkF32};
