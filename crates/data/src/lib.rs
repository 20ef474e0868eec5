//! # netxray-data
//!
//! Datasets for the trainers: MNIST and Fashion-MNIST in the IDX format (plain or gzip), CIFAR-10 binary
//! batches, per-channel standardisation, and seeded shuffled mini-batches.
//!
//! ```no_run
//! use netxray_data::{load, DatasetKind, Split};
//! let dir = std::path::Path::new("datasets/fashion-mnist");
//! let mut train = load(DatasetKind::FashionMnist, dir, Split::Train)?;
//! let mut test = load(DatasetKind::FashionMnist, dir, Split::Test)?;
//! let (mean, std) = train.standardise(); // statistics of the training split…
//! test.normalise(&mean, &std)?;         // …applied to the test split
//! for batch in netxray_data::Batches::new(train.len(), 128, 1, 0) {
//!     let (_x, _y) = train.gather(&batch);
//! }
//! # Ok::<(), netxray_data::DataError>(())
//! ```

pub mod batches;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod idx;

pub use batches::{Batches, epoch_permutation};
pub use dataset::{Dataset, DatasetKind, Split, load};
pub use error::DataError;

#[cfg(test)]
mod tests;
