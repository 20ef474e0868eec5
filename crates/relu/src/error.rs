//! Errors of the `relu` crate.

use thiserror::Error;

/// Everything that can go wrong while building, reading, writing or comparing a network.
#[derive(Debug, Error)]
pub enum ReluError {
    /// An architecture string could not be parsed.
    #[error("invalid architecture '{arch}': {reason}")]
    BadArch {
        /// The string as given.
        arch: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A tensor has the wrong shape, or layer sizes do not chain.
    #[error("tensor '{tensor}': {reason}")]
    BadTensor {
        /// Name of the tensor (as in the file, or `layers.{i}.weight` for in-memory networks).
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the format requires is absent.
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: String,
        /// Why it could not be used.
        reason: String,
    },
    /// Input data has the wrong dimension.
    #[error("dimension mismatch: {0}")]
    Dimension(String),
    /// I/O error with the path it concerns.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error (shown in the message; not chained, so it is printed once).
        cause: std::io::Error,
    },
    /// Invalid hyper-parameter or option.
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
}

impl ReluError {
    /// Helper for tensor-shaped problems.
    pub fn tensor(tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        ReluError::BadTensor {
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}
