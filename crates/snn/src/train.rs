//! Training and evaluation: [`Snn`] (a network with its architecture and input geometry) and
//! [`Trainer`] (optimizer, masks, epochs, history).

use crate::arch::ArchSpec;
use crate::error::SnnError;
use crate::hyperparams::TrainParams;
use crate::model::{InputShape, SpikingNet, WeightLayer};
use crate::optim::MaskedOptimizer;
use crate::state::{self, HostTensor};
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use netxray_data::{Batches, Dataset};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// A spiking network with everything needed to run it.
#[derive(Debug)]
pub struct Snn {
    /// Architecture.
    pub spec: ArchSpec,
    /// Input geometry the network was built for.
    pub input: InputShape,
    /// Number of classes.
    pub classes: usize,
    /// The burn module (on the training device).
    pub net: SpikingNet,
    /// Training device (autodiff).
    pub device: Device,
}

impl Snn {
    /// Builds a freshly initialised network; the same seed gives the same weights.
    pub fn new(
        spec: &ArchSpec,
        input: InputShape,
        classes: usize,
        device: &Device,
        seed: u64,
    ) -> Result<Self, SnnError> {
        // The device RNG is process-global: hold a lock from seeding to the last draw, so that
        // networks built concurrently (threads, tests) still get exactly their seed's weights.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        device.seed(seed);
        let net = SpikingNet::new(spec, input, classes, device)?;
        // burn initialises parameters lazily, on first use; force it now, while the device RNG
        // is in the state the seed put it in, so the weights depend on the seed alone.
        let _ = state::shapes(&net);
        let _ = state::collect(&net);
        Ok(Self {
            spec: spec.clone(),
            input,
            classes,
            net,
            device: device.clone(),
        })
    }

    /// Conv and linear layers with output map sizes (the hardware model's view).
    pub fn weight_layers(&self) -> Vec<WeightLayer> {
        self.net.weight_layers(self.input)
    }

    /// Copies every tensor to the host (PyTorch layout, by path).
    pub fn tensors(&self) -> BTreeMap<String, HostTensor> {
        state::collect(&self.net)
    }

    /// Overwrites the tensors named in `values` (shapes checked).
    pub fn set_tensors(&mut self, values: &BTreeMap<String, HostTensor>) -> Result<(), SnnError> {
        let shapes = state::shapes(&self.net);
        if let Some(unknown) = values.keys().find(|k| !shapes.contains_key(*k)) {
            return Err(SnnError::BadArch(format!(
                "the network has no tensor named `{unknown}`"
            )));
        }
        let net = std::mem::replace(&mut self.net, SpikingNet { layers: Vec::new() });
        match state::assign(net, values, &self.device) {
            Ok(n) => {
                self.net = n;
                Ok(())
            }
            Err(e) => Err(SnnError::BadArch(e)),
        }
    }

    /// Trainable parameter count (conv/linear weights and biases, BN γ/β; not the BN running
    /// statistics, which burn counts as parameters).
    pub fn num_params(&self) -> usize {
        state::shapes(&self.net)
            .iter()
            .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// Names of the prunable tensors: every conv and linear weight (not BN, not biases), as in
    /// the LTH-for-SNN code.
    pub fn prunable(&self) -> Vec<String> {
        self.weight_layers()
            .into_iter()
            .map(|l| format!("{}.weight", l.name))
            .collect()
    }
}

/// Dataset held as the network expects it: normalised, padded to the network's input size.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `n × C·H·W` values.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<u8>,
    /// Geometry.
    pub shape: InputShape,
}

impl Prepared {
    /// Normalises with per-channel `mean`/`std` (from the training set) and zero-pads each side
    /// to `target` (e.g. 28×28 Fashion-MNIST for the 32×32 VGG-16; the reference resizes).
    pub fn new(
        data: &Dataset,
        mean: &[f32],
        std: &[f32],
        target: InputShape,
    ) -> Result<Self, SnnError> {
        let (c, h, w) = (data.channels, data.height, data.width);
        if c != target.channels || h > target.height || w > target.width {
            return Err(SnnError::BadArch(format!(
                "dataset images are {c}×{h}×{w}, the network expects {}×{}×{}",
                target.channels, target.height, target.width
            )));
        }
        let (th, tw) = (target.height, target.width);
        let (py, px) = ((th - h) / 2, (tw - w) / 2);
        let mut images = vec![0.0f32; data.len() * c * th * tw];
        for i in 0..data.len() {
            let src = data.sample(i);
            let dst = &mut images[i * c * th * tw..(i + 1) * c * th * tw];
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        dst[ch * th * tw + (y + py) * tw + x + px] =
                            (src[ch * h * w + y * w + x] - mean[ch]) / std[ch];
                    }
                }
            }
        }
        Ok(Self {
            images,
            labels: data.labels.clone(),
            shape: target,
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

    fn sample_len(&self) -> usize {
        self.shape.channels * self.shape.height * self.shape.width
    }

    /// Gathers a batch, optionally with random crop (pad 4) and horizontal flip.
    fn batch(&self, idx: &[usize], augment: Option<&mut ChaCha8Rng>) -> (Vec<f32>, Vec<u8>) {
        let n = self.sample_len();
        let mut x = vec![0.0f32; idx.len() * n];
        let mut y = Vec::with_capacity(idx.len());
        let InputShape {
            channels: c,
            height: h,
            width: w,
        } = self.shape;
        match augment {
            None => {
                for (b, &i) in idx.iter().enumerate() {
                    x[b * n..(b + 1) * n].copy_from_slice(&self.images[i * n..(i + 1) * n]);
                    y.push(self.labels[i]);
                }
            }
            Some(rng) => {
                for (b, &i) in idx.iter().enumerate() {
                    let (dy, dx): (i64, i64) = (rng.random_range(-4..=4), rng.random_range(-4..=4));
                    let flip = rng.random_bool(0.5);
                    let src = &self.images[i * n..(i + 1) * n];
                    let dst = &mut x[b * n..(b + 1) * n];
                    for ch in 0..c {
                        for yy in 0..h {
                            let sy = yy as i64 + dy;
                            if sy < 0 || sy >= h as i64 {
                                continue;
                            }
                            for xx in 0..w {
                                let sx0 = xx as i64 + dx;
                                if sx0 < 0 || sx0 >= w as i64 {
                                    continue;
                                }
                                let ox = if flip { w - 1 - xx } else { xx };
                                dst[ch * h * w + yy * w + ox] =
                                    src[ch * h * w + sy as usize * w + sx0 as usize];
                            }
                        }
                    }
                    y.push(self.labels[i]);
                }
            }
        }
        (x, y)
    }
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on the augmented batches).
    pub train_accuracy: f64,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Wall time of the training part, seconds.
    pub train_seconds: f64,
    /// Training samples per second.
    pub samples_per_second: f64,
}

/// Result of an evaluation pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Accuracy of `argmax(mean_t output)`.
    pub accuracy: f64,
    /// Mean cross-entropy over time steps.
    pub loss: f64,
    /// Fraction of zero inputs per weight layer fed by spikes (name → sparsity), if measured.
    pub spike_sparsity: BTreeMap<String, f64>,
}

/// Progress of a training run.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// An epoch starts with this many steps.
    EpochStart {
        /// Epoch index.
        epoch: usize,
        /// Steps in it.
        steps: usize,
    },
    /// A step finished.
    Step {
        /// Step within the epoch (1-based count done).
        done: usize,
        /// Running mean loss of the epoch.
        loss: f64,
        /// Running training accuracy.
        accuracy: f64,
        /// Samples per second so far.
        samples_per_second: f64,
    },
    /// Evaluation is running.
    Evaluating,
    /// An epoch (training and evaluation) finished.
    EpochEnd(EpochRecord),
}

/// Optimizer, masks and progress around an [`Snn`].
#[derive(Debug)]
pub struct Trainer {
    /// Hyper-parameters.
    pub params: TrainParams,
    /// The network.
    pub snn: Snn,
    /// Optimizer state.
    pub optimizer: MaskedOptimizer,
    /// Pruning masks by weight path (PyTorch layout, 0/1).
    pub masks: BTreeMap<String, HostTensor>,
    mask_device: BTreeMap<String, Tensor<1>>,
    /// Completed epochs.
    pub epochs_done: usize,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// Per-channel normalisation the network was trained with.
    pub norm_mean: Vec<f32>,
    /// Per-channel normalisation the network was trained with.
    pub norm_std: Vec<f32>,
}

impl Trainer {
    /// A trainer for `snn` without masks.
    pub fn new(snn: Snn, params: TrainParams, norm_mean: Vec<f32>, norm_std: Vec<f32>) -> Self {
        Self {
            optimizer: MaskedOptimizer::new(params.optimizer),
            params,
            snn,
            masks: BTreeMap::new(),
            mask_device: BTreeMap::new(),
            epochs_done: 0,
            history: Vec::new(),
            norm_mean,
            norm_std,
        }
    }

    /// Installs masks (by weight path, PyTorch layout, non-zero = keep) and zeroes the masked
    /// weights at once. Masks for unknown tensors or of the wrong shape are errors.
    pub fn set_masks(&mut self, masks: BTreeMap<String, HostTensor>) -> Result<(), SnnError> {
        let mut tensors = self.snn.tensors();
        let inner = self.snn.device.clone().inner();
        let mut device_masks = BTreeMap::new();
        let mut normalised = BTreeMap::new();
        for (name, m) in masks {
            let w = tensors
                .get_mut(&name)
                .ok_or_else(|| SnnError::BadArch(format!("mask for unknown tensor `{name}`")))?;
            if w.shape != m.shape {
                return Err(SnnError::BadArch(format!(
                    "mask `{name}` has shape {:?}, the weight {:?}",
                    m.shape, w.shape
                )));
            }
            let m01: Vec<f32> = m
                .data
                .iter()
                .map(|&v| if v != 0.0 { 1.0 } else { 0.0 })
                .collect();
            for (x, k) in w.data.iter_mut().zip(&m01) {
                *x *= k;
            }
            let host = HostTensor {
                shape: m.shape.clone(),
                data: m01,
            };
            let dev: Tensor<1> = match host.shape.len() {
                2 => state::from_host::<2>(&host, &inner).reshape([host.len()]),
                4 => state::from_host::<4>(&host, &inner).reshape([host.len()]),
                1 => state::from_host::<1>(&host, &inner),
                d => {
                    return Err(SnnError::BadArch(format!(
                        "mask `{name}` has unsupported rank {d}"
                    )));
                }
            };
            device_masks.insert(name.clone(), dev);
            normalised.insert(name, host);
        }
        let masked: BTreeMap<String, HostTensor> = tensors
            .into_iter()
            .filter(|(k, _)| normalised.contains_key(k))
            .collect();
        self.snn.set_tensors(&masked)?;
        self.masks = normalised;
        self.mask_device = device_masks;
        Ok(())
    }

    /// Steps per epoch for a training set of `n` samples.
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        let n = self.params.train_limit.map_or(n, |k| k.min(n));
        n.div_ceil(self.params.batch_size)
    }

    /// Trains one epoch and evaluates on `test`.
    pub fn train_epoch(
        &mut self,
        train: &Prepared,
        test: &Prepared,
        on_event: &mut dyn FnMut(TrainEvent),
    ) -> Result<EpochRecord, SnnError> {
        let epoch = self.epochs_done;
        let p = self.params.clone();
        let n = p.train_limit.map_or(train.len(), |k| k.min(train.len()));
        let steps = self.steps_per_epoch(train.len());
        let total_steps = steps * p.epochs;
        on_event(TrainEvent::EpochStart { epoch, steps });
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut aug_rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5eed_a11c ^ (epoch as u64) << 32);
        for (s, idx) in Batches::new(n, p.batch_size, p.seed, epoch as u64).enumerate() {
            let (x, y) = train.batch(&idx, p.augment.then_some(&mut aug_rng));
            let lr = p.lr_at(epoch * steps + s, total_steps);
            let (loss, hits) = self.step(&x, &y, train.shape, lr)?;
            if !loss.is_finite() {
                return Err(SnnError::Diverged {
                    epoch,
                    step: s,
                    loss,
                });
            }
            loss_sum += loss * idx.len() as f64;
            correct += hits;
            seen += idx.len();
            on_event(TrainEvent::Step {
                done: s + 1,
                loss: loss_sum / seen as f64,
                accuracy: correct as f64 / seen as f64,
                samples_per_second: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        on_event(TrainEvent::Evaluating);
        let eval = self.evaluate(test, false)?;
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_accuracy: eval.accuracy,
            test_loss: eval.loss,
            train_seconds,
            samples_per_second: seen as f64 / train_seconds.max(1e-9),
        };
        self.epochs_done += 1;
        self.history.push(record.clone());
        on_event(TrainEvent::EpochEnd(record.clone()));
        Ok(record)
    }

    /// One optimizer step on a batch; returns (loss, correct predictions).
    pub fn step(
        &mut self,
        x: &[f32],
        y: &[u8],
        shape: InputShape,
        lr: f64,
    ) -> Result<(f64, usize), SnnError> {
        let b = y.len();
        let t = self.params.timesteps;
        let dev = &self.snn.device;
        let xt = Tensor::<4>::from_data(
            TensorData::new(x.to_vec(), [b, shape.channels, shape.height, shape.width]),
            dev,
        );
        let out = self.snn.net.forward(xt, t, &self.params.lif, None);
        let (loss, hits) = loss_and_hits(out.clone(), y, t, self.snn.classes, dev);
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        let grads = loss.backward();
        let net = std::mem::replace(&mut self.snn.net, SpikingNet { layers: Vec::new() });
        self.snn.net = self.optimizer.step(net, &grads, lr, &self.mask_device);
        Ok((loss_value, hits))
    }

    /// Accuracy and loss on `test` (respecting `test_limit`), optionally with the input spike
    /// sparsity of every weight layer.
    pub fn evaluate(&self, test: &Prepared, spike_sparsity: bool) -> Result<Evaluation, SnnError> {
        evaluate(&self.snn, &self.params, test, spike_sparsity)
    }
}

/// Cross-entropy averaged over time steps and samples, and the number of correct predictions of
/// `argmax(mean_t output)`.
fn loss_and_hits(
    out: Tensor<2>,
    y: &[u8],
    timesteps: usize,
    classes: usize,
    device: &Device,
) -> (Tensor<1>, usize) {
    let b = y.len();
    let mut onehot = vec![0.0f32; timesteps * b * classes];
    for t in 0..timesteps {
        for (i, &label) in y.iter().enumerate() {
            onehot[(t * b + i) * classes + label as usize] = 1.0;
        }
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [timesteps * b, classes]), device);
    let loss = (log_softmax(out.clone(), 1) * onehot)
        .sum()
        .neg()
        .div_scalar((timesteps * b) as f64);
    let mean_out = out
        .detach()
        .reshape([timesteps, b, classes])
        .mean_dim(0)
        .reshape([b, classes]);
    let pred = mean_out
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap();
    let hits = pred
        .iter()
        .zip(y)
        .filter(|(p, l)| **p == **l as i64)
        .count();
    (loss, hits)
}

/// Evaluates `snn` on `test` without autodiff (batch = the training batch size).
pub fn evaluate(
    snn: &Snn,
    params: &TrainParams,
    test: &Prepared,
    spike_sparsity: bool,
) -> Result<Evaluation, SnnError> {
    let net = snn.net.valid();
    let dev = snn.device.clone().inner();
    let n = params.test_limit.map_or(test.len(), |k| k.min(test.len()));
    let t = params.timesteps;
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let layers = snn.weight_layers();
    let mut zero_sums = vec![0.0f64; layers.len().saturating_sub(1)];
    let bs = params.batch_size.max(256);
    let mut start = 0;
    while start < n {
        let idx: Vec<usize> = (start..(start + bs).min(n)).collect();
        start += idx.len();
        let (x, y) = test.batch(&idx, None);
        let s = test.shape;
        let xt = Tensor::<4>::from_data(
            TensorData::new(x, [idx.len(), s.channels, s.height, s.width]),
            &dev,
        );
        let mut stats = Vec::new();
        let out = net.forward(xt, t, &params.lif, spike_sparsity.then_some(&mut stats));
        let (loss, hits) = loss_and_hits(out, &y, t, snn.classes, &dev);
        loss_sum += loss.into_scalar::<f32>() as f64 * idx.len() as f64;
        correct += hits;
        for (acc, v) in zero_sums.iter_mut().zip(&stats) {
            *acc += v * idx.len() as f64;
        }
    }
    let spike_sparsity = if spike_sparsity {
        layers
            .iter()
            .skip(1)
            .zip(&zero_sums)
            .map(|(l, z)| (l.name.clone(), z / n.max(1) as f64))
            .collect()
    } else {
        BTreeMap::new()
    };
    if !loss_sum.is_finite() {
        return Err(SnnError::Diverged {
            epoch: 0,
            step: 0,
            loss: loss_sum,
        });
    }
    Ok(Evaluation {
        accuracy: correct as f64 / n.max(1) as f64,
        loss: loss_sum / n.max(1) as f64,
        spike_sparsity,
    })
}
