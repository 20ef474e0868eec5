//! `netxray-uticket` owns everything of u-Ticket (Yin et al., "Workload-Balanced Pruning for Sparse
//! Spiking Neural Networks", TETCI 2024) that works on plain data — masks, shapes and weight slices,
//! never on a training framework:
//!
//! - [`layer`]: masked layers (shape, keep-mask, output map, spike sparsity) and which layers count;
//! - [`mapping`]: how weights are distributed over the PEs (whole filter per PE, or input channels
//!   split across PEs);
//! - [`hw`]: the weight-stationary PE-array model — per-group workloads, utilization (Eq. 2), work /
//!   idle / latency cycles, energy (Eq. 3), wall-clock time, and the PE-count sweep (Table III);
//! - [`mod@balance`]: the u-Ticket balancers (`random` as published, `magnitude` as an extension) that
//!   equalise the workload of every PE group;
//! - [`checkpoint`]: the safetensors layout of masked checkpoints (tensor names, mask convention,
//!   `netxray.layers` metadata) — reading, and writing back with new masks, atomically.
//!
//! A training loop (the LTH driver) builds [`MaskedLayer`]s from its masks, calls [`balance()`] after
//! each pruning step and [`analyze()`] for the per-round hardware report. The formulas, defaults and
//! interpretation choices are documented in `docs/hardware-model.md`.

pub mod balance;
pub mod checkpoint;
pub mod errors;
pub mod hw;
pub mod layer;
pub mod lth;
pub mod mapping;
pub mod plots;

pub use balance::{
    BalanceOutcome, BalanceParams, BalanceParamsBuilder, BalanceSummary, Balancer, LayerWeights,
    balance,
};
pub use errors::UticketError;
pub use hw::{HwParams, HwParamsBuilder, HwReport, TAvgMode, analyze, sweep};
pub use layer::{LayerKind, LayerSelection, LayerShape, MaskedLayer, SkipReason};
pub use mapping::Mapping;
