//! Errors of the SNN crate.

use std::path::PathBuf;

/// Everything that can go wrong while building, training, saving or loading a spiking network.
#[derive(Debug, thiserror::Error)]
pub enum SnnError {
    /// The architecture does not exist or does not fit the input shape.
    #[error("bad architecture: {0}")]
    BadArch(String),
    /// A training or model parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParam {
        /// Parameter name.
        name: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Dataset problem.
    #[error(transparent)]
    Data(#[from] netxray_data::DataError),
    /// A checkpoint file is unreadable, truncated, or does not match the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error with the path it concerns.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Training diverged (loss became NaN or infinite).
    #[error("training diverged at epoch {epoch}, step {step}: loss is {loss}")]
    Diverged {
        /// Epoch index.
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// The non-finite loss.
        loss: f64,
    },
    /// Unknown or unavailable device.
    #[error("device `{0}` is not available in this build (available: cpu)")]
    Device(String),
}
