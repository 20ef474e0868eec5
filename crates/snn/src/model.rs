//! The spiking network as a burn module, built from an [`ArchSpec`], and its multi-step forward
//! pass.
//!
//! Execution is "multi-step": every stateless layer (conv, BN, linear, pooling) runs once on the
//! merged time-major batch `[T·B, ...]`, and only the LIF neurons scan over T. Under direct
//! encoding the first layer's current does not depend on t, so the first conv+BN runs once on
//! `[B, ...]` and its LIF scans a constant input (T× less work in the most expensive layer).
//! Batch norm therefore normalises over all T·B rows (SpikingJelly's multi-step
//! `SeqToANNContainer` does the same; the single-step reference code normalises per time step).

use crate::arch::{ArchSpec, LayerSpec};
use crate::error::SnnError;
use crate::neuron::LifParams;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Conv followed by batch norm.
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution (`weight` is `[out, in, k, k]`, PyTorch layout).
    pub conv: Conv2d,
    /// Its batch norm.
    pub bn: BatchNorm,
}

/// ResNet basic block.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First conv + BN (carries the stride).
    pub first: ConvBn,
    /// Second conv + BN.
    pub second: ConvBn,
    /// 1×1 conv + BN on the shortcut when the shape changes.
    pub shortcut: Option<ConvBn>,
}

/// One layer of a [`SpikingNet`]; parameterless variants hold a placeholder number because burn
/// modules must be data.
// Variants differ in size (a basic block holds three convs), but a network has a few dozen
// layers at most and burn's derive does not see through `Box`, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Layer {
    /// Conv + BN + LIF.
    Conv(ConvBn),
    /// 2×2 max pool (the number is the kernel size).
    MaxPool(usize),
    /// Basic block + LIF after the sum.
    Basic(BasicBlock),
    /// Global average pooling and flatten (placeholder 0).
    GlobalAvgPool(usize),
    /// Flatten (placeholder 0).
    Flatten(usize),
    /// Hidden linear + LIF (burn's `Linear.weight` is `[in, out]`; checkpoints store `[out, in]`).
    Linear(Linear),
    /// Output layer: linear, read every time step.
    Classifier(Linear),
}

/// A spiking network: its layers (the only trainable state besides BN statistics).
#[derive(Module, Debug)]
pub struct SpikingNet {
    /// Layers in order.
    pub layers: Vec<Layer>,
}

/// What a weight layer is, for the hardware model and pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightKind {
    /// 2-D convolution, weight `[out, in, k, k]`.
    Conv,
    /// Fully connected, weight `[out, in]` in checkpoints.
    Linear,
}

/// A conv or linear layer as the hardware model sees it: checkpoint name (without `.weight`),
/// kind, and the spatial size of its output map (1×1 for linear layers). The contract of the
/// `netxray.layers` checkpoint metadata (docs/hardware-model.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightLayer {
    /// Parameter path without the trailing `.weight`, e.g. `layers.2.conv`.
    pub name: String,
    /// Conv or linear.
    pub kind: WeightKind,
    /// Output map height.
    pub out_h: usize,
    /// Output map width.
    pub out_w: usize,
}

/// Input geometry of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

fn conv_bn(
    in_ch: usize,
    out_ch: usize,
    kernel: usize,
    stride: usize,
    bias: bool,
    device: &Device,
) -> ConvBn {
    let pad = kernel / 2;
    ConvBn {
        // Kaiming normal, fan_out, ReLU gain: the reference VGG/ResNet init.
        conv: Conv2dConfig::new([in_ch, out_ch], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .with_initializer(Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: true,
            })
            .init(device),
        bn: BatchNormConfig::new(out_ch).init(device),
    }
}

impl SpikingNet {
    /// Builds the network for `input` and `classes`, drawing initial weights from the device's
    /// RNG (seed it first with `device.seed(seed)` for reproducibility).
    pub fn new(
        spec: &ArchSpec,
        input: InputShape,
        classes: usize,
        device: &Device,
    ) -> Result<Self, SnnError> {
        spec.shapes(input.channels, input.height, input.width, classes)?;
        let (mut c, mut h, mut w) = (input.channels, input.height, input.width);
        let mut features: Option<usize> = None;
        let mut layers = Vec::with_capacity(spec.layers.len());
        for l in &spec.layers {
            match *l {
                LayerSpec::Conv {
                    out,
                    kernel,
                    stride,
                    bias,
                } => {
                    layers.push(Layer::Conv(conv_bn(c, out, kernel, stride, bias, device)));
                    c = out;
                    h = (h - 1) / stride + 1;
                    w = (w - 1) / stride + 1;
                }
                LayerSpec::MaxPool => {
                    layers.push(Layer::MaxPool(2));
                    h /= 2;
                    w /= 2;
                }
                LayerSpec::BasicBlock { out, stride } => {
                    let shortcut = (stride != 1 || c != out)
                        .then(|| conv_bn(c, out, 1, stride, false, device));
                    layers.push(Layer::Basic(BasicBlock {
                        first: conv_bn(c, out, 3, stride, false, device),
                        second: conv_bn(out, out, 3, 1, false, device),
                        shortcut,
                    }));
                    c = out;
                    h = (h - 1) / stride + 1;
                    w = (w - 1) / stride + 1;
                }
                LayerSpec::GlobalAvgPool => {
                    layers.push(Layer::GlobalAvgPool(0));
                    features = Some(c);
                }
                LayerSpec::Flatten => {
                    layers.push(Layer::Flatten(0));
                    features = Some(features.unwrap_or(c * h * w));
                }
                LayerSpec::Linear { out } => {
                    let f = features.expect("checked by shapes()");
                    layers.push(Layer::Linear(LinearConfig::new(f, out).init(device)));
                    features = Some(out);
                }
                LayerSpec::Classifier => {
                    let f = features.unwrap_or(c * h * w);
                    // N(0, 0.01) as in the reference VGG; the classifier has no neuron, so it
                    // learns from step 0 even when it starts small.
                    layers.push(Layer::Classifier(
                        LinearConfig::new(f, classes)
                            .with_initializer(Initializer::Normal {
                                mean: 0.0,
                                std: 0.01,
                            })
                            .init(device),
                    ));
                }
            }
        }
        Ok(Self { layers })
    }

    /// The conv and linear layers in network order with their output map sizes.
    pub fn weight_layers(&self, input: InputShape) -> Vec<WeightLayer> {
        let (mut h, mut w) = (input.height, input.width);
        let mut out = Vec::new();
        let mut push = |name: String, kind, oh, ow| {
            out.push(WeightLayer {
                name,
                kind,
                out_h: oh,
                out_w: ow,
            })
        };
        for (i, l) in self.layers.iter().enumerate() {
            match l {
                Layer::Conv(cb) => {
                    let s = cb.conv.stride[0];
                    h = (h - 1) / s + 1;
                    w = (w - 1) / s + 1;
                    push(format!("layers.{i}.conv"), WeightKind::Conv, h, w);
                }
                Layer::MaxPool(k) => {
                    h /= k;
                    w /= k;
                }
                Layer::Basic(b) => {
                    let s = b.first.conv.stride[0];
                    h = (h - 1) / s + 1;
                    w = (w - 1) / s + 1;
                    push(format!("layers.{i}.first.conv"), WeightKind::Conv, h, w);
                    push(format!("layers.{i}.second.conv"), WeightKind::Conv, h, w);
                    if b.shortcut.is_some() {
                        push(format!("layers.{i}.shortcut.conv"), WeightKind::Conv, h, w);
                    }
                }
                Layer::GlobalAvgPool(_) => {
                    h = 1;
                    w = 1;
                }
                Layer::Flatten(_) => {}
                Layer::Linear(_) | Layer::Classifier(_) => {
                    push(format!("layers.{i}"), WeightKind::Linear, 1, 1)
                }
            }
        }
        out
    }

    /// Multi-step forward. `x` is `[B, C, H, W]` (MLPs flatten it); returns the classifier's
    /// output for every time step, `[T·B, classes]`, time major. With `stats`, the fraction of
    /// zero inputs of every weight layer fed by spikes is pushed in the order of
    /// [`SpikingNet::weight_layers`] (the first layer, which sees the analog image, is skipped).
    pub fn forward(
        &self,
        x: Tensor<4>,
        timesteps: usize,
        lif: &LifParams,
        mut stats: Option<&mut Vec<f64>>,
    ) -> Tensor<2> {
        // Until the first neuron fires, activations are per sample ([B, ...]); after it, merged
        // over time ([T·B, ...]).
        let mut run = Run {
            lif,
            timesteps,
            merged: false,
            first_weight_layer: true,
        };
        let mut act = Act::Map(x);
        for l in &self.layers {
            act = match (l, act) {
                (Layer::Conv(cb), Act::Map(m)) => {
                    run.input_of_weight_layer(&Act::Map(m.clone()), &mut stats);
                    let y = cb.bn.forward(cb.conv.forward(m));
                    run.spike(Act::Map(y))
                }
                (Layer::MaxPool(k), Act::Map(m)) => Act::Map(burn::tensor::module::max_pool2d(
                    m,
                    burn::tensor::ops::MaxPoolOptions::new([*k, *k]),
                )),
                (Layer::Basic(b), Act::Map(m)) => {
                    run.input_of_weight_layer(&Act::Map(m.clone()), &mut stats);
                    let inner = b.first.bn.forward(b.first.conv.forward(m.clone()));
                    let s1 = run.spike(Act::Map(inner)).into_map();
                    run.input_of_weight_layer(&Act::Map(s1.clone()), &mut stats);
                    let y = b.second.bn.forward(b.second.conv.forward(s1));
                    let skip = match &b.shortcut {
                        Some(sc) => {
                            run.input_of_weight_layer(&Act::Map(m.clone()), &mut stats);
                            sc.bn.forward(sc.conv.forward(m))
                        }
                        None => m,
                    };
                    // The skip input comes from before the block; if that was still per sample
                    // (a block as first layer), repeat it over time.
                    let skip = if skip.dims()[0] == y.dims()[0] {
                        skip
                    } else {
                        Tensor::cat(vec![skip; timesteps], 0)
                    };
                    run.spike(Act::Map(y + skip))
                }
                (Layer::GlobalAvgPool(_), Act::Map(m)) => {
                    let [n, c, _, _] = m.dims();
                    Act::Flat(m.mean_dims(&[2, 3]).reshape([n, c]))
                }
                (Layer::Flatten(_), a) => Act::Flat(a.into_flat()),
                (Layer::Linear(lin), a) => {
                    let f = a.into_flat();
                    run.input_of_weight_layer(&Act::Flat(f.clone()), &mut stats);
                    run.spike(Act::Flat(lin.forward(f)))
                }
                (Layer::Classifier(lin), a) => {
                    let f = a.into_flat();
                    run.input_of_weight_layer(&Act::Flat(f.clone()), &mut stats);
                    let out = lin.forward(f);
                    Act::Flat(if run.merged {
                        out
                    } else {
                        Tensor::cat(vec![out; timesteps], 0)
                    })
                }
                (layer, _) => unreachable!("layer {layer:?} got an activation of the wrong rank"),
            };
        }
        act.into_flat()
    }
}

/// An activation between layers: a feature map or a feature vector per row.
enum Act {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

impl Act {
    fn into_flat(self) -> Tensor<2> {
        match self {
            Act::Map(m) => m.flatten(1, 3),
            Act::Flat(f) => f,
        }
    }
    fn into_map(self) -> Tensor<4> {
        match self {
            Act::Map(m) => m,
            Act::Flat(_) => unreachable!("a conv block produced a flat activation"),
        }
    }
}

/// Per-forward state: whether activations are merged over time yet.
struct Run<'a> {
    lif: &'a LifParams,
    timesteps: usize,
    merged: bool,
    first_weight_layer: bool,
}

impl Run<'_> {
    fn spike(&mut self, a: Act) -> Act {
        let was_merged = self.merged;
        self.merged = true;
        let (lif, t) = (self.lif, self.timesteps);
        match (a, was_merged) {
            (Act::Map(m), false) => Act::Map(lif.scan_constant(m, t)),
            (Act::Map(m), true) => Act::Map(lif.scan(m, t)),
            (Act::Flat(f), false) => Act::Flat(lif.scan_constant(f, t)),
            (Act::Flat(f), true) => Act::Flat(lif.scan(f, t)),
        }
    }

    /// Records the zero fraction of a weight layer's input (skipping the analog first layer).
    fn input_of_weight_layer(&mut self, a: &Act, stats: &mut Option<&mut Vec<f64>>) {
        let first = std::mem::replace(&mut self.first_weight_layer, false);
        if first {
            return;
        }
        if let Some(s) = stats.as_deref_mut() {
            let zero = match a {
                Act::Map(m) => m.clone().equal_elem(0.0).float().mean(),
                Act::Flat(f) => f.clone().equal_elem(0.0).float().mean(),
            };
            s.push(zero.into_scalar::<f32>() as f64);
        }
    }
}
