//! Classifier training for ReLU MLPs: softmax cross-entropy on the linear logits of a [`Network`], mini-batch
//! Adam or SGD (with momentum), optional L2 weight decay.
//!
//! Inputs are plain row-major slices (`n × d`, `f32` or `f64`) and `u8` labels, so this crate does not depend
//! on any dataset loader; preprocessing (scaling, standardisation) is the caller's business and a trained
//! model expects the same preprocessing at inference time.
//!
//! Every batch is one GEMM per layer forward and two per layer backward (faer, f64). Runs are reproducible:
//! the sample order of epoch `e` is a ChaCha20 permutation keyed by [`TrainParams::seed`] on stream `e` (the
//! same permutation as `netxray_data::epoch_permutation`), and nothing else is random, so the same network,
//! data and parameters give the same weights.
//!
//! ```
//! use netxray_relu::{Network, InitRecipe, train::{TrainParams, Optimizer, train_classifier, accuracy}};
//! // Two Gaussian blobs in 2-D.
//! let x: Vec<f64> = (0..200).flat_map(|i| {
//!     let s = if i % 2 == 0 { 1.0 } else { -1.0 };
//!     [s + 0.1 * ((i * 7 % 13) as f64 - 6.0) / 6.0, s]
//! }).collect();
//! let y: Vec<u8> = (0..200).map(|i| (i % 2) as u8).collect();
//! let mut net = Network::random(&"2-8-2".parse().unwrap(), InitRecipe::He, 1);
//! let params = TrainParams::builder().optimizer(Optimizer::adam(1e-2)).epochs(20).batch_size(32).build()?;
//! let report = train_classifier(&mut net, &x, &y, &params, |_| {})?;
//! assert_eq!(report.epochs.len(), 20);
//! assert!(accuracy(&net, &x, &y)? > 0.99);
//! # Ok::<(), netxray_relu::ReluError>(())
//! ```

use crate::{Layer, Network, ReluError};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use std::time::Instant;

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// Adam (Kingma & Ba), PyTorch's formulation with bias correction.
    Adam {
        /// Learning rate (default `1e-3`).
        lr: f64,
        /// First-moment decay (default `0.9`), in `[0, 1)`.
        beta1: f64,
        /// Second-moment decay (default `0.999`), in `[0, 1)`.
        beta2: f64,
        /// Denominator guard (default `1e-8`), `> 0`.
        eps: f64,
    },
    /// Stochastic gradient descent with heavy-ball momentum (`buf = μ·buf + g; w -= lr·buf`).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum `μ` in `[0, 1)`; `0` is plain SGD.
        momentum: f64,
    },
}

impl Optimizer {
    /// Adam with the given learning rate and the default `β1 = 0.9, β2 = 0.999, eps = 1e-8`.
    pub fn adam(lr: f64) -> Self {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// SGD with the given learning rate and momentum.
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        Optimizer::Sgd { lr, momentum }
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            Optimizer::Adam { lr, .. } | Optimizer::Sgd { lr, .. } => lr,
        }
    }

    /// The same optimizer with another learning rate.
    pub fn with_lr(self, new_lr: f64) -> Self {
        match self {
            Optimizer::Adam {
                beta1, beta2, eps, ..
            } => Optimizer::Adam {
                lr: new_lr,
                beta1,
                beta2,
                eps,
            },
            Optimizer::Sgd { momentum, .. } => Optimizer::Sgd {
                lr: new_lr,
                momentum,
            },
        }
    }

    fn validate(&self) -> Result<(), ReluError> {
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(invalid(format!(
                "learning rate must be positive and finite, got {lr}"
            )));
        }
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(format!("{name} must be in [0, 1), got {v}")))
            }
        };
        match *self {
            Optimizer::Adam {
                beta1, beta2, eps, ..
            } => {
                unit("beta1", beta1)?;
                unit("beta2", beta2)?;
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(invalid(format!(
                        "eps must be positive and finite, got {eps}"
                    )));
                }
                Ok(())
            }
            Optimizer::Sgd { momentum, .. } => unit("momentum", momentum),
        }
    }
}

impl Default for Optimizer {
    /// `Optimizer::adam(1e-3)`.
    fn default() -> Self {
        Optimizer::adam(1e-3)
    }
}

fn invalid(msg: String) -> ReluError {
    ReluError::InvalidParam(msg)
}

/// Validated training hyper-parameters; build them with [`TrainParams::builder`].
///
/// Defaults: Adam (`lr 1e-3, β1 0.9, β2 0.999, eps 1e-8`), batch size 128, 10 epochs, seed 0, weight decay 0.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams {
    optimizer: Optimizer,
    batch_size: usize,
    epochs: usize,
    seed: u64,
    weight_decay: f64,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            optimizer: Optimizer::default(),
            batch_size: 128,
            epochs: 10,
            seed: 0,
            weight_decay: 0.0,
        }
    }
}

impl TrainParams {
    /// A builder starting from the defaults.
    pub fn builder() -> TrainParamsBuilder {
        TrainParamsBuilder(TrainParams::default())
    }
    /// The optimizer.
    pub fn optimizer(&self) -> Optimizer {
        self.optimizer
    }
    /// Samples per mini-batch (the last batch of an epoch may be smaller).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
    /// Passes over the training data.
    pub fn epochs(&self) -> usize {
        self.epochs
    }
    /// Seed of the per-epoch sample order.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// L2 penalty `λ`: `λ·w` is added to the gradient of every weight (not the biases).
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay
    }

    /// Checks every value; the builder calls it, and so does [`train_classifier`].
    pub fn validate(&self) -> Result<(), ReluError> {
        self.optimizer.validate()?;
        if self.batch_size == 0 {
            return Err(invalid("batch size must be at least 1".into()));
        }
        if self.epochs == 0 {
            return Err(invalid("epochs must be at least 1".into()));
        }
        let wd = self.weight_decay;
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(invalid(format!(
                "weight decay must be finite and >= 0, got {wd}"
            )));
        }
        Ok(())
    }
}

/// Builder of [`TrainParams`]; [`TrainParamsBuilder::build`] validates.
#[derive(Debug, Clone)]
pub struct TrainParamsBuilder(TrainParams);

impl TrainParamsBuilder {
    /// Sets the optimizer (default Adam, lr `1e-3`).
    pub fn optimizer(mut self, o: Optimizer) -> Self {
        self.0.optimizer = o;
        self
    }
    /// Sets the learning rate of the current optimizer.
    pub fn lr(mut self, lr: f64) -> Self {
        self.0.optimizer = self.0.optimizer.with_lr(lr);
        self
    }
    /// Sets the batch size (default 128, must be ≥ 1).
    pub fn batch_size(mut self, b: usize) -> Self {
        self.0.batch_size = b;
        self
    }
    /// Sets the number of epochs (default 10, must be ≥ 1).
    pub fn epochs(mut self, e: usize) -> Self {
        self.0.epochs = e;
        self
    }
    /// Sets the shuffling seed (default 0).
    pub fn seed(mut self, s: u64) -> Self {
        self.0.seed = s;
        self
    }
    /// Sets the L2 weight decay (default 0, must be finite and ≥ 0).
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.0.weight_decay = wd;
        self
    }
    /// Validates and returns the parameters; invalid values give [`ReluError::InvalidParam`].
    pub fn build(self) -> Result<TrainParams, ReluError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Total number of epochs of the run.
    pub epochs: usize,
    /// Mean cross-entropy over the epoch's batches (each measured before its update).
    pub loss: f64,
    /// Fraction of training samples classified correctly during the epoch (before each batch's update).
    pub train_accuracy: f64,
    /// Mean cross-entropy on the validation set after the epoch, if one was given.
    pub val_loss: Option<f64>,
    /// Accuracy on the validation set after the epoch, if one was given.
    pub val_accuracy: Option<f64>,
    /// Wall-clock seconds of the epoch (including validation).
    pub seconds: f64,
}

/// Progress events of [`train_classifier_with`].
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A mini-batch was applied.
    Batch {
        /// Epoch number, from 1.
        epoch: usize,
        /// Batches done in this epoch.
        batch: usize,
        /// Batches per epoch.
        batches: usize,
    },
    /// An epoch ended.
    Epoch(EpochStats),
}

/// Summary of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// One entry per epoch.
    pub epochs: Vec<EpochStats>,
    /// Total wall-clock seconds.
    pub seconds: f64,
    /// Optimizer steps taken.
    pub steps: usize,
}

/// Trains `net` as a classifier on `x` (`n × d` row-major, `d = net.input_dim()`) with `labels` (`n`, each
/// `< net.output_dim()`). Calls `progress` after every epoch. On error (bad shapes, labels, non-finite inputs,
/// invalid parameters, or a diverging loss) the network is left as it was.
pub fn train_classifier<T: Copy + Into<f64>>(
    net: &mut Network,
    x: &[T],
    labels: &[u8],
    params: &TrainParams,
    mut progress: impl FnMut(EpochStats),
) -> Result<TrainReport, ReluError> {
    train_classifier_with(net, x, labels, None, params, |p| {
        if let Progress::Epoch(s) = p {
            progress(s)
        }
    })
}

/// [`train_classifier`] with an optional validation set `(x, labels)`, evaluated after every epoch, and
/// per-batch progress events.
pub fn train_classifier_with<T: Copy + Into<f64>>(
    net: &mut Network,
    x: &[T],
    labels: &[u8],
    validation: Option<(&[T], &[u8])>,
    params: &TrainParams,
    mut progress: impl FnMut(Progress),
) -> Result<TrainReport, ReluError> {
    params.validate()?;
    check_data(net, x, labels, "training")?;
    if let Some((vx, vy)) = validation {
        check_data(net, vx, vy, "validation")?;
    }
    let start = Instant::now();
    let backup = net.layers().to_vec();
    let mut state = State::new(net, params.batch_size.min(labels.len()));
    let n = labels.len();
    let d0 = net.input_dim();
    let batches = n.div_ceil(params.batch_size);
    let mut report = TrainReport {
        epochs: Vec::with_capacity(params.epochs),
        seconds: 0.0,
        steps: 0,
    };
    for epoch in 0..params.epochs {
        let t0 = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(params.seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for (bi, idx) in order.chunks(params.batch_size).enumerate() {
            let b = idx.len();
            for (r, &i) in idx.iter().enumerate() {
                for (dst, src) in state.xb[r * d0..(r + 1) * d0]
                    .iter_mut()
                    .zip(&x[i * d0..(i + 1) * d0])
                {
                    *dst = (*src).into();
                }
                state.yb[r] = labels[i];
            }
            let (l, c) = state.step(net, b, params, report.steps + 1);
            loss_sum += l;
            correct += c;
            report.steps += 1;
            progress(Progress::Batch {
                epoch: epoch + 1,
                batch: bi + 1,
                batches,
            });
        }
        let loss = loss_sum / n as f64;
        let diverged = !loss.is_finite()
            || net
                .layers()
                .iter()
                .any(|l| l.bias.iter().any(|b| !b.is_finite()) || !all_finite(&l.weight));
        if diverged {
            net.layers_mut().clone_from_slice(&backup);
            return Err(invalid(format!(
                "training diverged in epoch {} (loss {loss}); try a smaller learning rate",
                epoch + 1
            )));
        }
        let (val_loss, val_accuracy) = match validation {
            Some((vx, vy)) => {
                let (l, a) = evaluate_unchecked(net, vx, vy);
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            epochs: params.epochs,
            loss,
            train_accuracy: correct as f64 / n as f64,
            val_loss,
            val_accuracy,
            seconds: t0.elapsed().as_secs_f64(),
        };
        report.epochs.push(stats.clone());
        progress(Progress::Epoch(stats));
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Fraction of samples whose arg-max logit equals the label. `x` is `n × d` row-major.
pub fn accuracy<T: Copy + Into<f64>>(
    net: &Network,
    x: &[T],
    labels: &[u8],
) -> Result<f64, ReluError> {
    Ok(evaluate(net, x, labels)?.1)
}

/// `(mean cross-entropy, accuracy)` of `net` on `x` (`n × d` row-major) and `labels`.
pub fn evaluate<T: Copy + Into<f64>>(
    net: &Network,
    x: &[T],
    labels: &[u8],
) -> Result<(f64, f64), ReluError> {
    check_data(net, x, labels, "evaluation")?;
    Ok(evaluate_unchecked(net, x, labels))
}

/// Rows per forward pass in [`evaluate`].
const EVAL_CHUNK: usize = 2048;

fn evaluate_unchecked<T: Copy + Into<f64>>(net: &Network, x: &[T], labels: &[u8]) -> (f64, f64) {
    let d = net.input_dim();
    let mut buf = vec![0.0f64; EVAL_CHUNK.min(labels.len()) * d];
    let (mut loss, mut correct) = (0.0, 0usize);
    for (ci, ys) in labels.chunks(EVAL_CHUNK).enumerate() {
        let b = ys.len();
        let start = ci * EVAL_CHUNK * d;
        for (dst, src) in buf[..b * d].iter_mut().zip(&x[start..start + b * d]) {
            *dst = (*src).into();
        }
        let out = net
            .forward(MatRef::from_row_major_slice(&buf[..b * d], b, d))
            .expect("width checked");
        let k = out.ncols();
        let mut row = vec![0.0; k];
        for (r, &y) in ys.iter().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = out[(r, j)];
            }
            let (l, ok) = softmax_ce(&mut row, y as usize);
            loss += l;
            correct += ok as usize;
        }
    }
    let n = labels.len() as f64;
    (loss / n, correct as f64 / n)
}

/// Shapes, labels and finiteness of a data set for `net`.
fn check_data<T: Copy + Into<f64>>(
    net: &Network,
    x: &[T],
    labels: &[u8],
    what: &str,
) -> Result<(), ReluError> {
    let d = net.input_dim();
    let k = net.output_dim();
    if labels.is_empty() {
        return Err(ReluError::Dimension(format!("the {what} set is empty")));
    }
    if x.len() != labels.len() * d {
        return Err(ReluError::Dimension(format!(
            "{what} inputs hold {} values, expected {} samples × {d} inputs = {}",
            x.len(),
            labels.len(),
            labels.len() * d
        )));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= k) {
        return Err(ReluError::Dimension(format!(
            "{what} label {i} is {l} but the network has {k} outputs"
        )));
    }
    if let Some(p) = x.iter().position(|v| !(*v).into().is_finite()) {
        return Err(ReluError::InvalidParam(format!(
            "{what} input of sample {}, feature {} is not finite",
            p / d,
            p % d
        )));
    }
    Ok(())
}

fn all_finite(m: &Mat<f64>) -> bool {
    (0..m.ncols()).all(|j| m.col_as_slice(j).iter().all(|v| v.is_finite()))
}

/// In-place softmax of `row`; returns `(−log p[y], arg-max == y)`.
fn softmax_ce(row: &mut [f64], y: usize) -> (f64, bool) {
    let mut arg = 0;
    for j in 1..row.len() {
        if row[j] > row[arg] {
            arg = j;
        }
    }
    let m = row[arg];
    let mut s = 0.0;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    let loss = s.ln() - (row[y].ln());
    let inv = 1.0 / s;
    for v in row.iter_mut() {
        *v *= inv;
    }
    (if loss.is_nan() { f64::INFINITY } else { loss }, arg == y)
}

/// Parallelism for one GEMM of `m × n × k` multiply-adds: rayon only when the product is big enough to pay for
/// the thread hand-off.
fn par_for(m: usize, n: usize, k: usize) -> Par {
    if m * n * k >= 1 << 21 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// Buffers and optimizer state of one training run.
struct State {
    /// Batch inputs, `bs × d0` row-major.
    xb: Vec<f64>,
    /// Batch labels.
    yb: Vec<u8>,
    /// Per layer: its output (post-ReLU for hidden layers, logits for the last), `bs × d_{l+1}` row-major.
    acts: Vec<Vec<f64>>,
    /// Per layer: gradient w.r.t. its pre-activation, `bs × d_{l+1}` row-major.
    grads: Vec<Vec<f64>>,
    gw: Vec<Mat<f64>>,
    gb: Vec<Vec<f64>>,
    /// First moment (Adam) or momentum buffer (SGD).
    mw: Vec<Mat<f64>>,
    mb: Vec<Vec<f64>>,
    /// Second moment (Adam only).
    vw: Vec<Mat<f64>>,
    vb: Vec<Vec<f64>>,
}

impl State {
    fn new(net: &Network, bs: usize) -> Self {
        let ls = net.layers();
        let zeros_like = |l: &Layer| Mat::<f64>::zeros(l.fan_out(), l.fan_in());
        Self {
            xb: vec![0.0; bs * net.input_dim()],
            yb: vec![0; bs],
            acts: ls.iter().map(|l| vec![0.0; bs * l.fan_out()]).collect(),
            grads: ls.iter().map(|l| vec![0.0; bs * l.fan_out()]).collect(),
            gw: ls.iter().map(zeros_like).collect(),
            gb: ls.iter().map(|l| vec![0.0; l.fan_out()]).collect(),
            mw: ls.iter().map(zeros_like).collect(),
            mb: ls.iter().map(|l| vec![0.0; l.fan_out()]).collect(),
            vw: ls.iter().map(zeros_like).collect(),
            vb: ls.iter().map(|l| vec![0.0; l.fan_out()]).collect(),
        }
    }

    /// Forward, backward and update on the first `b` rows of `xb`/`yb`; returns `(summed loss, correct)`.
    fn step(&mut self, net: &mut Network, b: usize, p: &TrainParams, t: usize) -> (f64, usize) {
        let nl = net.layers().len();
        let d0 = net.input_dim();
        // Forward.
        for l in 0..nl {
            let layer = &net.layers()[l];
            let (fi, fo) = (layer.fan_in(), layer.fan_out());
            let (before, rest) = self.acts.split_at_mut(l);
            let out = &mut rest[0][..b * fo];
            for row in out.chunks_exact_mut(fo) {
                row.copy_from_slice(&layer.bias);
            }
            let input = if l == 0 {
                MatRef::from_row_major_slice(&self.xb[..b * d0], b, d0)
            } else {
                MatRef::from_row_major_slice(&before[l - 1][..b * fi], b, fi)
            };
            faer::linalg::matmul::matmul(
                MatMut::from_row_major_slice_mut(out, b, fo),
                Accum::Add,
                input,
                layer.weight.transpose(),
                1.0,
                par_for(b, fo, fi),
            );
            if l + 1 < nl {
                for v in out.iter_mut() {
                    if *v < 0.0 {
                        *v = 0.0;
                    }
                }
            }
        }
        // Loss and gradient of the logits: (softmax − onehot) / b.
        let k = net.output_dim();
        let (mut loss, mut correct) = (0.0, 0usize);
        let inv_b = 1.0 / b as f64;
        {
            let logits = &self.acts[nl - 1][..b * k];
            let g = &mut self.grads[nl - 1][..b * k];
            g.copy_from_slice(logits);
            for (r, row) in g.chunks_exact_mut(k).enumerate() {
                let y = self.yb[r] as usize;
                let (l, ok) = softmax_ce(row, y);
                loss += l;
                correct += ok as usize;
                row[y] -= 1.0;
                for v in row.iter_mut() {
                    *v *= inv_b;
                }
            }
        }
        // Backward.
        for l in (0..nl).rev() {
            let layer = &net.layers()[l];
            let (fi, fo) = (layer.fan_in(), layer.fan_out());
            let (gbefore, grest) = self.grads.split_at_mut(l);
            let g = &grest[0][..b * fo];
            let gm = MatRef::from_row_major_slice(g, b, fo);
            let input = if l == 0 {
                MatRef::from_row_major_slice(&self.xb[..b * d0], b, d0)
            } else {
                MatRef::from_row_major_slice(&self.acts[l - 1][..b * fi], b, fi)
            };
            faer::linalg::matmul::matmul(
                self.gw[l].as_mut(),
                Accum::Replace,
                gm.transpose(),
                input,
                1.0,
                par_for(fo, fi, b),
            );
            let gb = &mut self.gb[l];
            gb.fill(0.0);
            for row in g.chunks_exact(fo) {
                for (s, v) in gb.iter_mut().zip(row) {
                    *s += v;
                }
            }
            if l > 0 {
                let gprev = &mut gbefore[l - 1][..b * fi];
                faer::linalg::matmul::matmul(
                    MatMut::from_row_major_slice_mut(gprev, b, fi),
                    Accum::Replace,
                    gm,
                    layer.weight.as_ref(),
                    1.0,
                    par_for(b, fi, fo),
                );
                for (gv, av) in gprev.iter_mut().zip(&self.acts[l - 1][..b * fi]) {
                    if *av <= 0.0 {
                        *gv = 0.0;
                    }
                }
            }
        }
        // Update.
        let wd = p.weight_decay;
        for (l, layer) in net.layers_mut().iter_mut().enumerate() {
            for j in 0..layer.fan_in() {
                let w = layer.weight.col_as_slice_mut(j);
                let g = self.gw[l].col_as_slice(j);
                let m = self.mw[l].col_as_slice_mut(j);
                let v = self.vw[l].col_as_slice_mut(j);
                update(&p.optimizer, t, wd, w, g, m, v);
            }
            update(
                &p.optimizer,
                t,
                0.0,
                &mut layer.bias,
                &self.gb[l],
                &mut self.mb[l],
                &mut self.vb[l],
            );
        }
        (loss, correct)
    }
}

/// One optimizer update of the parameters `w` with gradient `g` (plus `wd·w`), at step `t` (from 1).
fn update(
    o: &Optimizer,
    t: usize,
    wd: f64,
    w: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
) {
    match *o {
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            let bc1 = 1.0 - beta1.powi(t as i32);
            let bc2 = 1.0 - beta2.powi(t as i32);
            let step = lr / bc1;
            let inv_sqrt_bc2 = 1.0 / bc2.sqrt();
            for i in 0..w.len() {
                let gi = g[i] + wd * w[i];
                m[i] = beta1 * m[i] + (1.0 - beta1) * gi;
                v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
                w[i] -= step * m[i] / (v[i].sqrt() * inv_sqrt_bc2 + eps);
            }
        }
        Optimizer::Sgd { lr, momentum } => {
            for i in 0..w.len() {
                let gi = g[i] + wd * w[i];
                m[i] = momentum * m[i] + gi;
                w[i] -= lr * m[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, InitRecipe};

    fn err(b: TrainParamsBuilder) -> String {
        match b.build() {
            Err(ReluError::InvalidParam(m)) => m,
            other => panic!("expected InvalidParam, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_documented_values() {
        let p = TrainParams::builder().build().unwrap();
        assert_eq!(p.optimizer(), Optimizer::adam(1e-3));
        assert_eq!(
            (p.batch_size(), p.epochs(), p.seed(), p.weight_decay()),
            (128, 10, 0, 0.0)
        );
        assert_eq!(p, TrainParams::default());
    }

    #[test]
    fn rejects_zero_lr() {
        assert!(err(TrainParams::builder().lr(0.0)).contains("learning rate"));
    }
    #[test]
    fn rejects_negative_lr() {
        assert!(
            err(TrainParams::builder().optimizer(Optimizer::sgd(-0.1, 0.0)))
                .contains("learning rate")
        );
    }
    #[test]
    fn rejects_nan_lr() {
        assert!(err(TrainParams::builder().lr(f64::NAN)).contains("learning rate"));
    }
    #[test]
    fn rejects_zero_batch() {
        assert!(err(TrainParams::builder().batch_size(0)).contains("batch size"));
    }
    #[test]
    fn rejects_zero_epochs() {
        assert!(err(TrainParams::builder().epochs(0)).contains("epochs"));
    }
    #[test]
    fn rejects_bad_betas_and_eps() {
        let a = |beta1, beta2, eps| Optimizer::Adam {
            lr: 1e-3,
            beta1,
            beta2,
            eps,
        };
        assert!(err(TrainParams::builder().optimizer(a(1.0, 0.999, 1e-8))).contains("beta1"));
        assert!(err(TrainParams::builder().optimizer(a(0.9, f64::NAN, 1e-8))).contains("beta2"));
        assert!(err(TrainParams::builder().optimizer(a(0.9, 0.999, 0.0))).contains("eps"));
    }
    #[test]
    fn rejects_bad_momentum() {
        assert!(
            err(TrainParams::builder().optimizer(Optimizer::sgd(0.1, 1.5))).contains("momentum")
        );
    }
    #[test]
    fn rejects_bad_weight_decay() {
        assert!(err(TrainParams::builder().weight_decay(-1.0)).contains("weight decay"));
        assert!(err(TrainParams::builder().weight_decay(f64::NAN)).contains("weight decay"));
    }

    /// Three well-separated clusters in 4-D, labels 0..3.
    fn blobs(n: usize) -> (Vec<f32>, Vec<u8>) {
        let mut x = Vec::with_capacity(n * 4);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 3;
            let jit = |k: usize| ((i * 31 + k * 17) % 23) as f32 / 23.0 - 0.5;
            for k in 0..4 {
                x.push(if k == c { 2.0 } else { 0.0 } + 0.6 * jit(k));
            }
            y.push(c as u8);
        }
        (x, y)
    }

    #[test]
    fn learns_blobs_with_adam_and_sgd_and_is_reproducible() {
        let (x, y) = blobs(300);
        let arch: Arch = "4-16-8-3".parse().unwrap();
        for opt in [Optimizer::adam(1e-2), Optimizer::sgd(0.05, 0.9)] {
            let p = TrainParams::builder()
                .optimizer(opt)
                .epochs(15)
                .batch_size(32)
                .seed(3)
                .build()
                .unwrap();
            let mut a = Network::random(&arch, InitRecipe::He, 1);
            let mut seen = 0;
            let r = train_classifier(&mut a, &x, &y, &p, |s| {
                seen += 1;
                assert_eq!(s.epoch, seen);
            })
            .unwrap();
            assert_eq!(seen, 15);
            assert!(
                r.epochs[14].loss < r.epochs[0].loss,
                "{opt:?}: {:?}",
                r.epochs
            );
            assert!(accuracy(&a, &x, &y).unwrap() > 0.97, "{opt:?}");
            let mut b = Network::random(&arch, InitRecipe::He, 1);
            train_classifier(&mut b, &x, &y, &p, |_| {}).unwrap();
            assert_eq!(a, b, "same seed must give the same weights");
            let mut c = Network::random(&arch, InitRecipe::He, 1);
            let p2 = TrainParams::builder()
                .optimizer(opt)
                .epochs(15)
                .batch_size(32)
                .seed(4)
                .build()
                .unwrap();
            train_classifier(&mut c, &x, &y, &p2, |_| {}).unwrap();
            assert_ne!(a, c, "another seed gives another order");
        }
    }

    /// Finite-difference check of the analytic gradient through one SGD step with lr tiny.
    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = blobs(5);
        let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let net = Network::random(&"4-5-3".parse().unwrap(), InitRecipe::He, 9);
        let loss = |n: &Network| evaluate(n, &x, &y).unwrap().0;
        let mut st = State::new(&net, 5);
        st.xb.copy_from_slice(&x);
        st.yb.copy_from_slice(&y);
        let lr = 1e-9;
        let p = TrainParams::builder()
            .optimizer(Optimizer::sgd(lr, 0.0))
            .build()
            .unwrap();
        let mut stepped = net.clone();
        st.step(&mut stepped, 5, &p, 1);
        for l in 0..2 {
            for (r, c) in [(0, 0), (1, 2), (2, 1)] {
                let analytic =
                    (net.layers()[l].weight[(r, c)] - stepped.layers()[l].weight[(r, c)]) / lr;
                let h = 1e-6;
                let mut plus = net.clone();
                plus.layers_mut()[l].weight[(r, c)] += h;
                let mut minus = net.clone();
                minus.layers_mut()[l].weight[(r, c)] -= h;
                let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
                assert!(
                    (analytic - numeric).abs() < 1e-5 * (1.0 + numeric.abs()),
                    "{l} {r} {c}: {analytic} vs {numeric}"
                );
            }
        }
    }

    #[test]
    fn validation_and_batch_events() {
        let (x, y) = blobs(90);
        let mut net = Network::random(&"4-8-3".parse().unwrap(), InitRecipe::He, 2);
        let p = TrainParams::builder()
            .epochs(2)
            .batch_size(40)
            .build()
            .unwrap();
        let mut events = Vec::new();
        train_classifier_with(&mut net, &x, &y, Some((&x[..30 * 4], &y[..30])), &p, |e| {
            events.push(e)
        })
        .unwrap();
        let batches = events
            .iter()
            .filter(|e| matches!(e, Progress::Batch { .. }))
            .count();
        assert_eq!(batches, 6);
        match events.last().unwrap() {
            Progress::Epoch(s) => assert!(s.val_accuracy.is_some() && s.val_loss.is_some()),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn bad_inputs_are_errors_and_leave_the_net_alone() {
        let (x, y) = blobs(30);
        let net0 = Network::random(&"4-8-3".parse().unwrap(), InitRecipe::He, 2);
        let p = TrainParams::builder().epochs(1).build().unwrap();
        let mut net = net0.clone();
        let e = train_classifier(&mut net, &x[..10], &y, &p, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 30 samples × 4 inputs"), "{e}");
        let mut bad_y = y.clone();
        bad_y[3] = 3;
        let e = train_classifier(&mut net, &x, &bad_y, &p, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 3 is 3"), "{e}");
        let mut bad_x = x.clone();
        bad_x[9] = f32::NAN;
        let e = train_classifier(&mut net, &bad_x, &y, &p, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample 2, feature 1"), "{e}");
        assert!(train_classifier(&mut net, &x[..0], &y[..0], &p, |_| {}).is_err());
        assert!(accuracy(&net, &x[..8], &y).is_err());
        let huge = TrainParams::builder()
            .optimizer(Optimizer::sgd(1e200, 0.0))
            .epochs(1)
            .build()
            .unwrap();
        let big_x: Vec<f64> = x.iter().map(|v| f64::from(*v) * 1e150).collect();
        let e = train_classifier(&mut net, &big_x, &y, &huge, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("diverged"), "{e}");
        assert_eq!(net, net0);
    }
}
