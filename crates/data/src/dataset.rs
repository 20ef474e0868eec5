//! The in-memory dataset, dataset kinds, splits and the loader.

use crate::{DataError, cifar, idx};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The datasets this crate can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// MNIST digits (IDX, 28×28 grey, 10 classes).
    Mnist,
    /// Fashion-MNIST (IDX, 28×28 grey, 10 classes).
    FashionMnist,
    /// CIFAR-10 binary batches (32×32 RGB, 10 classes).
    Cifar10,
}

impl DatasetKind {
    /// The canonical name (`mnist`, `fashion-mnist`, `cifar10`).
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
        }
    }
    /// `(channels, height, width)` of one image.
    pub fn image_shape(self) -> (usize, usize, usize) {
        match self {
            DatasetKind::Mnist | DatasetKind::FashionMnist => (1, 28, 28),
            DatasetKind::Cifar10 => (3, 32, 32),
        }
    }
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        10
    }
    /// The file names `load` looks for, for one split (IDX files may also carry a `.gz` suffix).
    pub fn file_names(self, split: Split) -> Vec<String> {
        match (self, split) {
            (DatasetKind::Cifar10, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            (DatasetKind::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (_, s) => {
                let p = s.idx_prefix();
                vec![
                    format!("{p}-images-idx3-ubyte"),
                    format!("{p}-labels-idx1-ubyte"),
                ]
            }
        }
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fmnist" | "fashionmnist" => Ok(DatasetKind::FashionMnist),
            "cifar10" | "cifar-10" => Ok(DatasetKind::Cifar10),
            _ => Err(DataError::Invalid(format!(
                "unknown dataset '{s}' (expected mnist, fashion-mnist or cifar10)"
            ))),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Training or test part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split (`train-*`, `data_batch_1..5.bin`).
    Train,
    /// The test split (`t10k-*`, `test_batch.bin`).
    Test,
}

impl Split {
    fn idx_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "test" | "t10k" => Ok(Split::Test),
            _ => Err(DataError::Invalid(format!(
                "unknown split '{s}' (expected train or test)"
            ))),
        }
    }
}

/// Labelled images held in memory as `f32` features.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `len() × feature_dim()` values, one sample per row (row-major). Each sample is CHW-ordered.
    /// Loaded values are pixel bytes scaled to `[0, 1]`; [`Dataset::normalise`] changes them in place.
    pub images: Vec<f32>,
    /// One label per sample, each `< num_classes`.
    pub labels: Vec<u8>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub num_classes: usize,
}

impl Dataset {
    /// Builds a dataset from pixel bytes (scaled to `[0, 1]` by dividing by 255), checking sizes and labels.
    pub fn from_bytes(
        pixels: &[u8],
        labels: Vec<u8>,
        (channels, height, width): (usize, usize, usize),
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let d = channels * height * width;
        if d == 0 {
            return Err(DataError::Invalid(
                "image shape has a zero dimension".into(),
            ));
        }
        if pixels.len() != labels.len() * d {
            return Err(DataError::Invalid(format!(
                "{} pixel bytes do not make {} images of {d} values",
                pixels.len(),
                labels.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= num_classes)
        {
            return Err(DataError::Invalid(format!(
                "sample {i} has label {l} but there are {num_classes} classes"
            )));
        }
        Ok(Self {
            images: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
            labels,
            channels,
            height,
            width,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per sample (`channels × height × width`).
    pub fn feature_dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The features of sample `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let d = self.feature_dim();
        &self.images[i * d..(i + 1) * d]
    }

    /// The first `k` samples (all of them when `k >= len()`).
    pub fn limit(&self, k: usize) -> Dataset {
        let k = k.min(self.len());
        let d = self.feature_dim();
        Dataset {
            images: self.images[..k * d].to_vec(),
            labels: self.labels[..k].to_vec(),
            ..*self
        }
    }

    /// Gathers the samples `indices` into a contiguous `indices.len() × feature_dim()` buffer and labels.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn gather(&self, indices: &[usize]) -> (Vec<f32>, Vec<u8>) {
        let d = self.feature_dim();
        let mut x = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            x.extend_from_slice(self.sample(i));
        }
        (x, indices.iter().map(|&i| self.labels[i]).collect())
    }

    /// Per-channel mean and standard deviation (population) over all samples and pixels, computed in f64.
    /// A channel with zero spread reports a standard deviation of 1 so that normalising by it is safe.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let d = self.feature_dim();
        let mut sum = vec![0.0f64; self.channels];
        let mut sq = vec![0.0f64; self.channels];
        for s in self.images.chunks_exact(d) {
            for c in 0..self.channels {
                for &v in &s[c * plane..(c + 1) * plane] {
                    let v = f64::from(v);
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std: Vec<f32> = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let var = (q / count - m * m).max(0.0);
                let s = var.sqrt();
                if s > 1e-12 { s as f32 } else { 1.0 }
            })
            .collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }

    /// Applies `(x - mean[c]) / std[c]` to every value of channel `c`. Use the statistics of the *training*
    /// split for both splits (see [`Dataset::standardise`]).
    pub fn normalise(&mut self, mean: &[f32], std: &[f32]) -> Result<(), DataError> {
        if mean.len() != self.channels || std.len() != self.channels {
            return Err(DataError::Invalid(format!(
                "normalisation needs {} means and stds, got {} and {}",
                self.channels,
                mean.len(),
                std.len()
            )));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(DataError::Invalid(format!(
                "standard deviation {s} is not positive and finite"
            )));
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(DataError::Invalid(format!("mean {m} is not finite")));
        }
        let plane = self.height * self.width;
        let d = self.feature_dim();
        for s in self.images.chunks_exact_mut(d) {
            for c in 0..self.channels {
                let (m, inv) = (mean[c], 1.0 / std[c]);
                for v in &mut s[c * plane..(c + 1) * plane] {
                    *v = (*v - m) * inv;
                }
            }
        }
        Ok(())
    }

    /// Computes the per-channel statistics of this dataset, applies them, and returns `(mean, std)` so the
    /// same transform can be applied to another split with [`Dataset::normalise`].
    pub fn standardise(&mut self) -> (Vec<f32>, Vec<f32>) {
        let (m, s) = self.channel_stats();
        self.normalise(&m, &s)
            .expect("statistics of this dataset fit it");
        (m, s)
    }
}

/// Finds `name` or `name.gz` in `dir`.
fn find_idx(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Loads one split of a dataset from `data_dir`, pixels scaled to `[0, 1]` (not standardised).
///
/// - MNIST / Fashion-MNIST: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte` (train) or
///   `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (test), each plain or with a `.gz` suffix.
/// - CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` (train) or `test_batch.bin` (test), in `data_dir` or
///   in `data_dir/cifar-10-batches-bin`.
pub fn load(kind: DatasetKind, data_dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let names = kind.file_names(split);
    match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            let found: Vec<Option<PathBuf>> = names.iter().map(|n| find_idx(data_dir, n)).collect();
            let missing: Vec<String> = names
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|(n, _)| format!("{n}[.gz]"))
                .collect();
            if !missing.is_empty() {
                return Err(DataError::Missing {
                    dataset: kind.name().into(),
                    dir: data_dir.to_path_buf(),
                    missing,
                    expected: names.iter().map(|n| format!("{n}[.gz]")).collect(),
                });
            }
            let img_path = found[0].clone().expect("checked");
            let lab_path = found[1].clone().expect("checked");
            let images = idx::read_images(&img_path)?;
            let labels = idx::read_labels(&lab_path)?;
            if images.count != labels.len() {
                return Err(DataError::CountMismatch {
                    images_path: img_path,
                    images: images.count,
                    labels_path: lab_path,
                    labels: labels.len(),
                });
            }
            let (c, h, w) = kind.image_shape();
            if (images.rows, images.cols) != (h, w) {
                return Err(DataError::format(
                    img_path,
                    format!(
                        "{kind} images are {h}×{w}, this file holds {}×{}",
                        images.rows, images.cols
                    ),
                ));
            }
            if let Some((i, l)) = labels
                .iter()
                .enumerate()
                .find(|(_, l)| **l as usize >= kind.num_classes())
            {
                return Err(DataError::format(
                    lab_path,
                    format!(
                        "label {i} is {l}, {kind} has {} classes",
                        kind.num_classes()
                    ),
                ));
            }
            Dataset::from_bytes(&images.pixels, labels, (c, h, w), kind.num_classes())
        }
        DatasetKind::Cifar10 => {
            let sub = data_dir.join("cifar-10-batches-bin");
            let dir = if names.iter().all(|n| data_dir.join(n).is_file()) || !sub.is_dir() {
                data_dir.to_path_buf()
            } else {
                sub
            };
            let missing: Vec<String> = names
                .iter()
                .filter(|n| !dir.join(n).is_file())
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(DataError::Missing {
                    dataset: kind.name().into(),
                    dir: data_dir.to_path_buf(),
                    missing,
                    expected: names
                        .iter()
                        .map(|n| format!("[cifar-10-batches-bin/]{n}"))
                        .collect(),
                });
            }
            let mut pixels = Vec::new();
            let mut labels = Vec::new();
            for n in &names {
                let (p, l) = cifar::read_batch(&dir.join(n))?;
                pixels.extend_from_slice(&p);
                labels.extend_from_slice(&l);
            }
            Dataset::from_bytes(&pixels, labels, kind.image_shape(), kind.num_classes())
        }
    }
}
