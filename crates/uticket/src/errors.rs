//! Errors of the u-Ticket crate. Every variant names what it concerns (a parameter, a layer, a tensor,
//! a file or a metadata key) so that a one-line message is enough to act on.

use thiserror::Error;

/// Everything that can go wrong while describing, measuring, balancing, reading or writing masked layers.
#[derive(Debug, Error)]
pub enum UticketError {
    /// A parameter of the hardware model or of a balancer is out of range.
    #[error("invalid parameter '{name}': {reason}")]
    InvalidParam {
        /// Parameter name as in the builder.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A layer description is inconsistent (mask length, geometry, weights of the wrong length, ...).
    #[error("layer '{name}': {reason}")]
    Layer {
        /// Layer name (module path).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No layer is counted by the layer selection, so there is nothing to measure.
    #[error(
        "no layer is counted: the first conv and all linear layers are skipped by default \
         (include them with the layer-selection options, e.g. --include-first / --include-linear)"
    )]
    NoCountedLayers,
    /// A cycle count does not fit in 64 bits.
    #[error("layer '{0}': cycle count overflows 64 bits")]
    Overflow(String),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The operating-system error (not a `source`, so that it is printed once).
        cause: std::io::Error,
    },
    /// A file is not a usable checkpoint (not safetensors, no layer tensors, ...).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor has an unusable dtype, shape or value (NaN, inf).
    #[error("tensor '{name}': {reason}")]
    Tensor {
        /// Tensor name in the file.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A mask tensor's shape differs from its weight tensor's shape.
    #[error(
        "mask '{mask}' has shape {mask_shape:?} but weight '{weight}' has shape {weight_shape:?}"
    )]
    MaskShape {
        /// Mask tensor name.
        mask: String,
        /// Its shape.
        mask_shape: Vec<usize>,
        /// Weight tensor name.
        weight: String,
        /// Its shape.
        weight_shape: Vec<usize>,
    },
    /// A metadata entry (or a geometry file in the same format) cannot be used.
    #[error("metadata '{key}': {reason}")]
    Metadata {
        /// The metadata key or the geometry file.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl UticketError {
    /// Shorthand for [`UticketError::Layer`].
    pub(crate) fn layer(name: &str, reason: impl Into<String>) -> Self {
        Self::Layer {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`UticketError::Tensor`].
    pub(crate) fn tensor(name: &str, reason: impl Into<String>) -> Self {
        Self::Tensor {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`UticketError::InvalidParam`].
    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}
