//! Masked layers as plain data: a weight shape, a keep-mask per weight, and the output map size the
//! layer computes. This is the common input of the hardware model and the balancers; it holds no
//! training state, so a trainer (or a checkpoint reader) builds it from whatever tensors it has.

use crate::errors::UticketError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What kind of weight layer this is. Only the rank of the weight and which layers count by default
/// depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// 2-D convolution, weight `[out_channels, in_channels, kh, kw]` (PyTorch layout).
    Conv,
    /// Fully connected layer, weight `[out_features, in_features]` (PyTorch layout).
    Linear,
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerKind::Conv => "conv",
            LayerKind::Linear => "linear",
        })
    }
}

impl FromStr for LayerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "conv" => Ok(LayerKind::Conv),
            "linear" => Ok(LayerKind::Linear),
            other => Err(format!(
                "unknown layer kind '{other}' (expected conv or linear)"
            )),
        }
    }
}

/// Shape of a weight tensor. A linear layer is stored as a 1×1 "convolution" so that every routine
/// sees one row-major layout: filter `k` (output channel / row) occupies the flat range
/// `k·filter_len .. (k+1)·filter_len`, and within it input channel `c` occupies `c·kh·kw .. (c+1)·kh·kw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerShape {
    kind: LayerKind,
    out_channels: usize,
    in_channels: usize,
    kh: usize,
    kw: usize,
}

impl LayerShape {
    /// A conv weight `[out_channels, in_channels, kh, kw]`; every dimension must be at least 1.
    pub fn conv(
        out_channels: usize,
        in_channels: usize,
        kh: usize,
        kw: usize,
    ) -> Result<Self, UticketError> {
        Self::checked(LayerKind::Conv, out_channels, in_channels, kh, kw)
    }

    /// A linear weight `[out_features, in_features]`; both must be at least 1.
    pub fn linear(out_features: usize, in_features: usize) -> Result<Self, UticketError> {
        Self::checked(LayerKind::Linear, out_features, in_features, 1, 1)
    }

    /// The shape of a tensor with dimensions `dims`: 4-D is a conv, 2-D a linear layer. `kind`, when
    /// given, must agree with the rank.
    pub fn from_dims(dims: &[usize], kind: Option<LayerKind>) -> Result<Self, UticketError> {
        let shape = match dims {
            [k, c, h, w] => Self::conv(*k, *c, *h, *w),
            [o, i] => Self::linear(*o, *i),
            _ => Err(UticketError::param(
                "shape",
                format!("{dims:?} is neither 4-D [K, C, kh, kw] (conv) nor 2-D [out, in] (linear)"),
            )),
        }?;
        if let Some(k) = kind
            && k != shape.kind
        {
            return Err(UticketError::param(
                "shape",
                format!(
                    "{dims:?} is a {} weight, but the layer is declared {k}",
                    shape.kind
                ),
            ));
        }
        Ok(shape)
    }

    fn checked(
        kind: LayerKind,
        out_channels: usize,
        in_channels: usize,
        kh: usize,
        kw: usize,
    ) -> Result<Self, UticketError> {
        let s = Self {
            kind,
            out_channels,
            in_channels,
            kh,
            kw,
        };
        if [out_channels, in_channels, kh, kw].contains(&0) {
            return Err(UticketError::param(
                "shape",
                format!("{:?} has a zero dimension", s.dims()),
            ));
        }
        if out_channels
            .checked_mul(in_channels)
            .and_then(|v| v.checked_mul(kh))
            .and_then(|v| v.checked_mul(kw))
            .is_none()
        {
            return Err(UticketError::param("shape", "too many weights"));
        }
        Ok(s)
    }

    /// Conv or linear.
    pub fn kind(&self) -> LayerKind {
        self.kind
    }
    /// Output channels (conv) or output features (linear): the number of filters.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }
    /// Input channels (conv) or input features (linear).
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }
    /// Kernel size `(kh, kw)`; `(1, 1)` for a linear layer.
    pub fn kernel(&self) -> (usize, usize) {
        (self.kh, self.kw)
    }
    /// Weights per input channel of one filter (`kh·kw`).
    pub fn kernel_len(&self) -> usize {
        self.kh * self.kw
    }
    /// Weights of one filter (`in_channels·kh·kw`).
    pub fn filter_len(&self) -> usize {
        self.in_channels * self.kernel_len()
    }
    /// Total number of weights (the layer's parameter count, biases excluded).
    pub fn numel(&self) -> usize {
        self.out_channels * self.filter_len()
    }
    /// The tensor dimensions in PyTorch layout: `[K, C, kh, kw]` or `[out, in]`.
    pub fn dims(&self) -> Vec<usize> {
        match self.kind {
            LayerKind::Conv => vec![self.out_channels, self.in_channels, self.kh, self.kw],
            LayerKind::Linear => vec![self.out_channels, self.in_channels],
        }
    }
}

/// One prunable layer: name, weight shape, keep-mask (one `bool` per weight, row-major in the PyTorch
/// layout, `true` = the weight is kept and costs a cycle), and the output map `out_h × out_w` it
/// computes (1×1 for linear layers), plus an optional measured input spike sparsity.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedLayer {
    name: String,
    shape: LayerShape,
    mask: Vec<bool>,
    out_h: usize,
    out_w: usize,
    spike_sparsity: Option<f64>,
}

impl MaskedLayer {
    /// A layer from an explicit mask. Fails when the mask length is not `shape.numel()` or the output
    /// map has a zero side.
    pub fn new(
        name: impl Into<String>,
        shape: LayerShape,
        mask: Vec<bool>,
        out_h: usize,
        out_w: usize,
    ) -> Result<Self, UticketError> {
        let name = name.into();
        if out_h == 0 || out_w == 0 {
            return Err(UticketError::layer(
                &name,
                format!("output map {out_h}x{out_w} has a zero side"),
            ));
        }
        let l = Self {
            name,
            shape,
            mask: Vec::new(),
            out_h,
            out_w,
            spike_sparsity: None,
        };
        l.with_mask(mask)
    }

    /// A layer whose mask is `weight != 0` (the deployable mask of a pruned model without a stored mask).
    pub fn from_weights(
        name: impl Into<String>,
        shape: LayerShape,
        weights: &[f32],
        out_h: usize,
        out_w: usize,
    ) -> Result<Self, UticketError> {
        let mask = weights.iter().map(|&w| w != 0.0).collect();
        Self::new(name, shape, mask, out_h, out_w)
    }

    /// A layer whose mask is `mask[i] != 0` (masks stored as bytes, e.g. by a trainer).
    pub fn from_mask_bytes(
        name: impl Into<String>,
        shape: LayerShape,
        mask: &[u8],
        out_h: usize,
        out_w: usize,
    ) -> Result<Self, UticketError> {
        Self::new(
            name,
            shape,
            mask.iter().map(|&m| m != 0).collect(),
            out_h,
            out_w,
        )
    }

    /// The same layer with another mask (e.g. the balanced one). Fails on a wrong length.
    pub fn with_mask(mut self, mask: Vec<bool>) -> Result<Self, UticketError> {
        if mask.len() != self.shape.numel() {
            return Err(UticketError::layer(
                &self.name,
                format!(
                    "mask has {} entries but the weight {:?} has {}",
                    mask.len(),
                    self.shape.dims(),
                    self.shape.numel()
                ),
            ));
        }
        self.mask = mask;
        Ok(self)
    }

    /// The same layer with a measured input spike sparsity `s ∈ [0, 1]` (fraction of zero input spikes),
    /// which overrides the global value of the hardware model for this layer.
    pub fn with_spike_sparsity(mut self, s: f64) -> Result<Self, UticketError> {
        if !(0.0..=1.0).contains(&s) {
            return Err(UticketError::layer(
                &self.name,
                format!("spike sparsity {s} is not in [0, 1]"),
            ));
        }
        self.spike_sparsity = Some(s);
        Ok(self)
    }

    /// Layer name (module path, e.g. `features.3`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Weight shape.
    pub fn shape(&self) -> &LayerShape {
        &self.shape
    }
    /// Keep-mask, one entry per weight, row-major.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }
    /// Output map `(out_h, out_w)`.
    pub fn out_hw(&self) -> (usize, usize) {
        (self.out_h, self.out_w)
    }
    /// Measured input spike sparsity, if any.
    pub fn spike_sparsity(&self) -> Option<f64> {
        self.spike_sparsity
    }
    /// Kept weights.
    pub fn nnz(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
    /// Kept weights of every filter (output channel), in order.
    pub fn filter_nnz(&self) -> Vec<usize> {
        self.mask
            .chunks(self.shape.filter_len())
            .map(|f| f.iter().filter(|&&m| m).count())
            .collect()
    }
}

/// Which layers the hardware model measures and the balancers balance.
///
/// The defaults follow the reference code: the first conv is skipped (under direct encoding it sees
/// the analog image, not spikes, so it does not run on the spiking PE array) and linear layers are
/// skipped (tiny, and not mapped by the reference code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LayerSelection {
    /// Count the first conv layer too.
    pub include_first_conv: bool,
    /// Count linear layers too.
    pub include_linear: bool,
}

/// Why a layer is not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The first conv layer (analog input under direct encoding).
    FirstConv,
    /// A linear layer.
    Linear,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::FirstConv => "first conv",
            SkipReason::Linear => "linear",
        })
    }
}

impl LayerSelection {
    /// For each layer (in network order): `None` when it counts, otherwise why it is skipped.
    pub fn classify(&self, kinds: impl IntoIterator<Item = LayerKind>) -> Vec<Option<SkipReason>> {
        let mut seen_conv = false;
        kinds
            .into_iter()
            .map(|kind| match kind {
                LayerKind::Conv => {
                    let first = !seen_conv;
                    seen_conv = true;
                    (first && !self.include_first_conv).then_some(SkipReason::FirstConv)
                }
                LayerKind::Linear => (!self.include_linear).then_some(SkipReason::Linear),
            })
            .collect()
    }

    /// [`Self::classify`] applied to masked layers.
    pub fn classify_layers(&self, layers: &[MaskedLayer]) -> Vec<Option<SkipReason>> {
        self.classify(layers.iter().map(|l| l.shape().kind()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_filter_counts() {
        let s = LayerShape::conv(2, 3, 2, 2).unwrap();
        assert_eq!(s.filter_len(), 12);
        assert_eq!(s.numel(), 24);
        assert_eq!(s.dims(), vec![2, 3, 2, 2]);
        let mut mask = vec![false; 24];
        mask[0] = true;
        mask[13] = true;
        mask[23] = true;
        let l = MaskedLayer::new("c", s, mask, 4, 4).unwrap();
        assert_eq!(l.filter_nnz(), vec![1, 2]);
        assert_eq!(l.nnz(), 3);
        let lin = LayerShape::from_dims(&[5, 7], None).unwrap();
        assert_eq!(lin.kind(), LayerKind::Linear);
        assert_eq!(lin.filter_len(), 7);
    }

    #[test]
    fn bad_layers_are_rejected() {
        assert!(LayerShape::conv(0, 1, 1, 1).is_err());
        assert!(LayerShape::from_dims(&[1, 2, 3], None).is_err());
        assert!(LayerShape::from_dims(&[1, 2], Some(LayerKind::Conv)).is_err());
        let s = LayerShape::linear(2, 2).unwrap();
        assert!(MaskedLayer::new("l", s, vec![true; 3], 1, 1).is_err());
        assert!(MaskedLayer::new("l", s, vec![true; 4], 0, 1).is_err());
        let l = MaskedLayer::new("l", s, vec![true; 4], 1, 1).unwrap();
        assert!(l.clone().with_spike_sparsity(1.5).is_err());
        assert!(l.with_spike_sparsity(f64::NAN).is_err());
    }

    #[test]
    fn default_selection_skips_first_conv_and_linear() {
        use LayerKind::*;
        let kinds = [Conv, Conv, Linear, Conv, Linear];
        let d = LayerSelection::default().classify(kinds);
        assert_eq!(
            d,
            vec![
                Some(SkipReason::FirstConv),
                None,
                Some(SkipReason::Linear),
                None,
                Some(SkipReason::Linear)
            ]
        );
        let all = LayerSelection {
            include_first_conv: true,
            include_linear: true,
        }
        .classify(kinds);
        assert!(all.iter().all(Option::is_none));
        // A linear layer before the first conv does not make the conv "not first".
        let d = LayerSelection::default().classify([Linear, Conv]);
        assert_eq!(d[1], Some(SkipReason::FirstConv));
    }
}
