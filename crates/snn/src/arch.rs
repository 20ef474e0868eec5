//! Architectures as data: a network is a list of [`LayerSpec`]s, and the named presets
//! (`vgg16`, `resnet19`, `vgg-small`, `resnet-small`, the benchmark nets) are just such lists.
//!
//! Every conv is followed by batch norm and a LIF neuron (the papers' VGG-BN / ResNet-19); the
//! classifier is a plain linear layer whose output is read every time step (no neuron), as in the
//! reference code. The small variants keep the structure with every conv's output-channel count a
//! multiple of 16, because the hardware model maps filters to 16 PEs at a time.

use crate::error::SnnError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One entry of an architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum LayerSpec {
    /// 3×3 (or `kernel`) convolution, padding `kernel/2`, then batch norm, then LIF.
    Conv {
        /// Output channels.
        out: usize,
        /// Square kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Whether the conv has a bias (VGG: yes; ResNet: no, BN follows).
        bias: bool,
    },
    /// 2×2 max pooling, stride 2.
    MaxPool,
    /// ResNet basic block: conv3×3(stride)-BN-LIF-conv3×3-BN, plus the identity or a 1×1
    /// conv-BN shortcut when the shape changes, then LIF after the sum.
    BasicBlock {
        /// Output channels.
        out: usize,
        /// Stride of the first conv (and of the shortcut).
        stride: usize,
    },
    /// Global average pooling to 1×1, then flatten.
    GlobalAvgPool,
    /// Flatten `[C, H, W]` to features.
    Flatten,
    /// Hidden fully connected layer followed by LIF.
    Linear {
        /// Output features.
        out: usize,
    },
    /// Classifier: fully connected, no neuron; its output is read every time step.
    Classifier,
}

/// A whole architecture: a name and its layer list (the classifier's width comes from the
/// dataset's class count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Preset name (or `custom`).
    pub name: String,
    /// Layers in order.
    pub layers: Vec<LayerSpec>,
}

fn conv(out: usize, bias: bool) -> LayerSpec {
    LayerSpec::Conv {
        out,
        kernel: 3,
        stride: 1,
        bias,
    }
}

/// VGG-style list from a config (`0` = max pool), with biased convs, flatten and classifier.
fn vgg(name: &str, cfg: &[usize]) -> ArchSpec {
    let mut layers: Vec<LayerSpec> = cfg
        .iter()
        .map(|&c| {
            if c == 0 {
                LayerSpec::MaxPool
            } else {
                conv(c, true)
            }
        })
        .collect();
    layers.push(LayerSpec::Flatten);
    layers.push(LayerSpec::Classifier);
    ArchSpec {
        name: name.to_string(),
        layers,
    }
}

impl ArchSpec {
    /// Names of the presets, for help texts and errors.
    pub const PRESETS: [&'static str; 6] = [
        "vgg16",
        "resnet19",
        "vgg-small",
        "resnet-small",
        "mlp",
        "convnet",
    ];

    /// VGG-16 (cfg "D" with BN): 13 convs, 5 max-pools, `Linear(512, classes)`. Needs 32×32 input.
    pub fn vgg16() -> Self {
        const M: usize = 0;
        vgg(
            "vgg16",
            &[
                64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M,
            ],
        )
    }

    /// ResNet-19 as in the LTH-for-SNN code: conv 3→64, basic-block stages 3×128, 3×256, 2×512
    /// (each stage starting with stride 2), global average pool, `fc 512→256` + LIF, classifier.
    pub fn resnet19() -> Self {
        let mut layers = vec![LayerSpec::Conv {
            out: 64,
            kernel: 3,
            stride: 1,
            bias: false,
        }];
        for (out, blocks) in [(128, 3), (256, 3), (512, 2)] {
            for b in 0..blocks {
                layers.push(LayerSpec::BasicBlock {
                    out,
                    stride: if b == 0 { 2 } else { 1 },
                });
            }
        }
        layers.extend([
            LayerSpec::GlobalAvgPool,
            LayerSpec::Linear { out: 256 },
            LayerSpec::Classifier,
        ]);
        Self {
            name: "resnet19".into(),
            layers,
        }
    }

    /// CPU-sized VGG: conv16-pool-conv32-pool-conv64-conv64-pool-classifier (28×28 → 3×3 maps).
    pub fn vgg_small() -> Self {
        const M: usize = 0;
        vgg("vgg-small", &[16, M, 32, M, 64, 64, M])
    }

    /// CPU-sized ResNet: conv 16, blocks 32 (stride 2) and 64 (stride 2), global pool,
    /// classifier.
    pub fn resnet_small() -> Self {
        Self {
            name: "resnet-small".into(),
            layers: vec![
                LayerSpec::Conv {
                    out: 16,
                    kernel: 3,
                    stride: 1,
                    bias: false,
                },
                LayerSpec::BasicBlock { out: 32, stride: 2 },
                LayerSpec::BasicBlock { out: 64, stride: 2 },
                LayerSpec::GlobalAvgPool,
                LayerSpec::Classifier,
            ],
        }
    }

    /// The spiking MLP of the speed benchmark: 512-512 hidden LIF layers, classifier.
    pub fn mlp() -> Self {
        Self {
            name: "mlp".into(),
            layers: vec![
                LayerSpec::Flatten,
                LayerSpec::Linear { out: 512 },
                LayerSpec::Linear { out: 512 },
                LayerSpec::Classifier,
            ],
        }
    }

    /// The small spiking conv net of the speed benchmark: conv32-pool-conv64-pool-classifier.
    pub fn convnet() -> Self {
        const M: usize = 0;
        vgg("convnet", &[32, M, 64, M])
    }

    /// Number of trainable parameters for an input of `channels × height × width` and `classes`
    /// outputs (conv/linear weights and biases, BN γ and β; running statistics excluded).
    pub fn num_params(
        &self,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<usize, SnnError> {
        Ok(self.shapes(channels, height, width, classes)?.params)
    }

    /// Walks the layer list, checking that every shape works out.
    pub(crate) fn shapes(
        &self,
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<ShapeWalk, SnnError> {
        let bad = |msg: String| SnnError::BadArch(format!("{}: {msg}", self.name));
        let (mut c, mut h, mut w) = (channels, height, width);
        let mut features: Option<usize> = None;
        let mut params = 0usize;
        let mut classifier = false;
        for (i, layer) in self.layers.iter().enumerate() {
            if classifier {
                return Err(bad(format!("layer {i} comes after the classifier")));
            }
            match *layer {
                LayerSpec::Conv {
                    out,
                    kernel,
                    stride,
                    bias,
                } => {
                    if features.is_some() {
                        return Err(bad(format!("conv at layer {i} after flatten")));
                    }
                    if out == 0 || kernel == 0 || stride == 0 {
                        return Err(bad(format!("zero size in conv at layer {i}")));
                    }
                    params += out * c * kernel * kernel + if bias { out } else { 0 } + 2 * out;
                    c = out;
                    h = (h + 2 * (kernel / 2) - kernel) / stride + 1;
                    w = (w + 2 * (kernel / 2) - kernel) / stride + 1;
                }
                LayerSpec::MaxPool => {
                    if features.is_some() || h < 2 || w < 2 {
                        return Err(bad(format!(
                            "max pool at layer {i} on a {h}×{w} map (input too small for this architecture)"
                        )));
                    }
                    h /= 2;
                    w /= 2;
                }
                LayerSpec::BasicBlock { out, stride } => {
                    if features.is_some() || out == 0 || stride == 0 {
                        return Err(bad(format!("bad basic block at layer {i}")));
                    }
                    params += out * c * 9 + 2 * out + out * out * 9 + 2 * out;
                    if stride != 1 || c != out {
                        params += out * c + 2 * out;
                    }
                    c = out;
                    h = (h - 1) / stride + 1;
                    w = (w - 1) / stride + 1;
                }
                LayerSpec::GlobalAvgPool => {
                    features = Some(c);
                    h = 1;
                    w = 1;
                }
                LayerSpec::Flatten => {
                    features = Some(features.unwrap_or(c * h * w));
                }
                LayerSpec::Linear { out } => {
                    let f = features
                        .ok_or_else(|| bad(format!("linear at layer {i} before flatten")))?;
                    params += f * out + out;
                    features = Some(out);
                }
                LayerSpec::Classifier => {
                    let f = features.unwrap_or(c * h * w);
                    params += f * classes + classes;
                    classifier = true;
                }
            }
            if h == 0 || w == 0 {
                return Err(bad(format!("feature map vanishes at layer {i}")));
            }
        }
        if !classifier {
            return Err(bad("no classifier at the end".into()));
        }
        Ok(ShapeWalk { params })
    }
}

/// Result of [`ArchSpec::shapes`].
pub(crate) struct ShapeWalk {
    pub(crate) params: usize,
}

impl FromStr for ArchSpec {
    type Err = SnnError;
    fn from_str(s: &str) -> Result<Self, SnnError> {
        match s {
            "vgg16" => Ok(Self::vgg16()),
            "resnet19" => Ok(Self::resnet19()),
            "vgg-small" => Ok(Self::vgg_small()),
            "resnet-small" => Ok(Self::resnet_small()),
            "mlp" => Ok(Self::mlp()),
            "convnet" => Ok(Self::convnet()),
            other => Err(SnnError::BadArch(format!(
                "unknown architecture `{other}` (known: {})",
                Self::PRESETS.join(", ")
            ))),
        }
    }
}

impl fmt::Display for ArchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand count of VGG-16 for 3×32×32 input and 10 classes (docs/snn.md lists the layers):
    /// convs (3·64 + 64·64 + 64·128 + 128·128 + 128·256 + 2·256·256 + 256·512 + 5·512·512)·9
    /// = 14,710,464 weights; conv biases 4,224; BN γ,β 2·4,224 = 8,448; classifier 5,120 + 10.
    #[test]
    fn vgg16_parameter_count_matches_the_hand_count() {
        let weights = (3 * 64
            + 64 * 64
            + 64 * 128
            + 128 * 128
            + 128 * 256
            + 2 * 256 * 256
            + 256 * 512
            + 5 * 512 * 512)
            * 9;
        assert_eq!(weights, 14_710_464);
        let channels = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512;
        assert_eq!(channels, 4_224);
        let hand = weights + channels + 2 * channels + 512 * 10 + 10;
        assert_eq!(hand, 14_728_266);
        assert_eq!(ArchSpec::vgg16().num_params(3, 32, 32, 10).unwrap(), hand);
    }

    /// Hand count of ResNet-19 for 3×32×32 input, 10 classes.
    #[test]
    fn resnet19_parameter_count_matches_the_hand_count() {
        let stem = 3 * 64 * 9 + 2 * 64;
        // First block of a stage: conv in→out, conv out→out, 1×1 shortcut, three BNs.
        let first = |i: usize, o: usize| i * o * 9 + o * o * 9 + i * o + 6 * o;
        let rest = |o: usize| 2 * o * o * 9 + 4 * o;
        let stages = first(64, 128)
            + 2 * rest(128)
            + first(128, 256)
            + 2 * rest(256)
            + first(256, 512)
            + rest(512);
        let head = 512 * 256 + 256 + 256 * 10 + 10;
        let hand = stem + stages + head;
        assert_eq!(hand, 12_630_858);
        assert_eq!(
            ArchSpec::resnet19().num_params(3, 32, 32, 10).unwrap(),
            hand
        );
    }

    #[test]
    fn small_variants_fit_28x28_and_use_multiples_of_16() {
        for spec in [ArchSpec::vgg_small(), ArchSpec::resnet_small()] {
            spec.num_params(1, 28, 28, 10).unwrap();
            for l in &spec.layers {
                if let LayerSpec::Conv { out, .. } | LayerSpec::BasicBlock { out, .. } = l {
                    assert_eq!(out % 16, 0, "{spec}");
                }
            }
        }
    }

    #[test]
    fn impossible_shapes_are_errors() {
        // VGG-16 pools five times: 28×28 vanishes.
        assert!(ArchSpec::vgg16().num_params(1, 28, 28, 10).is_err());
        assert!("vgg17".parse::<ArchSpec>().is_err());
    }
}
