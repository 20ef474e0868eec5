//! # netxray-extract
//!
//! Black-box extraction of fully connected ReLU networks from raw outputs: the attack sees the target
//! only through [`oracle::Oracle`] (batched queries, every row counted) and recovers every weight and bias
//! up to the network's symmetries (neuron permutation, positive scaling).
//!
//! Layer by layer ([`pipeline`]): critical points on random lines ([`critical`]), partial signatures from
//! the jump of directional derivatives across each hyperplane ([`signature`]), witnesses unified into
//! neurons by stacking their linear constraints and taking the null space ([`cluster`], [`layer`]),
//! polynomial-time signs ([`sign`]), and finally the output layer by least squares ([`output`]). Every
//! tolerance lives in [`params::ExtractParams`].

pub mod aim;
pub mod checkpoint;
pub mod cluster;
pub mod critical;
pub mod error;
pub mod known;
pub mod layer;
pub mod linalg;
pub mod oracle;
pub mod output;
pub mod params;
pub mod pipeline;
pub mod place;
pub mod polish;
pub mod precision;
pub mod sign;
pub mod signature;

pub use error::{ExtractError, OracleError};
pub use oracle::{CountingOracle, NetworkOracle, Oracle};
pub use params::{ExtractParams, ExtractParamsBuilder, Precision};
pub use pipeline::{Extraction, ExtractionReport, extract, extract_resumable};
