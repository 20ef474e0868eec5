//! The error type of the data crate.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong while finding, reading or preparing a dataset. Every file-related variant
/// carries the path it concerns.
#[derive(Debug, Error)]
pub enum DataError {
    /// An I/O error (open, read, decompress).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its content is not what the format requires (bad magic, wrong size, truncated).
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The files a dataset needs are not in the directory.
    #[error("{dataset}: missing {} in {} (expected {})", missing.join(", "), dir.display(), expected.join(", "))]
    Missing {
        /// The dataset looked for.
        dataset: String,
        /// The directory searched.
        dir: PathBuf,
        /// The files (or file patterns) that were not found.
        missing: Vec<String>,
        /// Every file the dataset needs, as accepted names.
        expected: Vec<String>,
    },
    /// An image file and its label file disagree on the number of samples.
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Number of images in it.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Number of labels in it.
        labels: usize,
    },
    /// An invalid argument (unknown dataset name, mismatched normalisation vectors, …).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
