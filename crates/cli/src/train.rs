//! `netxray model train`: train a ReLU MLP classifier on MNIST, Fashion-MNIST or CIFAR-10 and save it.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use netxray_data::{Dataset, DatasetKind, Split};
use netxray_relu::format::{SaveDtype, save_network};
use netxray_relu::train::{Optimizer, Progress, TrainParams, train_classifier_with};
use netxray_relu::{Arch, InitRecipe, Network};
use std::path::PathBuf;

/// Optimizers selectable on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// Adam (β1 0.9, β2 0.999, eps 1e-8).
    Adam,
    /// SGD with momentum (see --momentum).
    Sgd,
}

/// Arguments of `model train`.
///
/// Preprocessing: pixel bytes are scaled to [0, 1], then standardised per channel with the mean and standard
/// deviation of the training images used (after --train-limit); the test images get the same transform.
/// The saved model expects inputs preprocessed the same way; the statistics are printed and written to the
/// --report file.
#[derive(Debug, Args)]
#[command(after_help = "\
PREPROCESSING (the saved model expects it too):
  pixels / 255, then (x - mean[c]) / std[c] per channel c, with mean and std computed on the training
  images used for training. The values are printed and stored in the --report JSON.

DATA FILES:
  mnist, fashion-mnist: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
                        t10k-labels-idx1-ubyte (each optionally .gz) in --data-dir
  cifar10:              data_batch_1..5.bin and test_batch.bin in --data-dir or --data-dir/cifar-10-batches-bin

EXAMPLE:
  netxray model train --arch 784-64-32-10 --dataset fashion-mnist --data-dir datasets/fashion-mnist \\
                      --epochs 3 --seed 1 --out fmnist.safetensors")]
pub struct TrainArgs {
    /// Architecture, input width first: e.g. 784-64-32-10. The input width must equal the dataset's
    /// feature count (784 for MNIST/Fashion-MNIST, 3072 for CIFAR-10); the output width must be at least
    /// the number of classes (10).
    #[arg(long)]
    pub arch: Arch,
    /// Dataset: mnist, fashion-mnist (or fmnist), cifar10 (or cifar-10).
    #[arg(long, value_parser = parse_kind)]
    pub dataset: DatasetKind,
    /// Directory holding the dataset files (see DATA FILES below).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Passes over the training set.
    #[arg(long)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// Momentum of --optimizer sgd (ignored by adam).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// L2 weight decay on the weights (not the biases).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Seed of the initial weights and of the sample order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Init recipe of the starting weights: he, cjm or balanced.
    #[arg(long, default_value = "he")]
    pub init: InitRecipe,
    /// Train on the first K training samples only.
    #[arg(long, value_name = "K")]
    pub train_limit: Option<usize>,
    /// Where to save the trained network (canonical safetensors, f64).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a JSON report (per-epoch stats, preprocessing statistics) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

fn parse_kind(s: &str) -> Result<DatasetKind, String> {
    s.parse()
        .map_err(|e: netxray_data::DataError| e.to_string())
}

/// Runs `model train`.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let optimizer = match a.optimizer {
        OptimizerArg::Adam => Optimizer::adam(a.lr),
        OptimizerArg::Sgd => Optimizer::sgd(a.lr, a.momentum),
    };
    let params = TrainParams::builder()
        .optimizer(optimizer)
        .batch_size(a.batch_size)
        .epochs(a.epochs)
        .seed(a.seed)
        .weight_decay(a.weight_decay)
        .build()?;
    let (c, h, w) = a.dataset.image_shape();
    let features = c * h * w;
    if a.arch.input_dim() != features {
        bail!(
            "--arch {} takes {} inputs but {} images have {features} features ({c}×{h}×{w}); use {features}-…",
            a.arch,
            a.arch.input_dim(),
            a.dataset
        );
    }
    let classes = a.dataset.num_classes();
    if a.arch.output_dim() < classes {
        bail!(
            "--arch {} has {} outputs but {} has {classes} classes; the last width must be at least {classes}",
            a.arch,
            a.arch.output_dim(),
            a.dataset
        );
    }
    if a.train_limit == Some(0) {
        bail!("--train-limit must be at least 1");
    }

    let mut train = netxray_data::load(a.dataset, &a.data_dir, Split::Train)
        .with_context(|| format!("loading the {} training split", a.dataset))?;
    let mut test = netxray_data::load(a.dataset, &a.data_dir, Split::Test)
        .with_context(|| format!("loading the {} test split", a.dataset))?;
    if let Some(k) = a.train_limit {
        train = train.limit(k);
    }
    check_loaded(&train, features)?;
    let (mean, std) = train.standardise();
    test.normalise(&mean, &std)?;
    println!(
        "{}: {} train / {} test samples; inputs x/255 standardised with train mean {} std {}",
        a.dataset,
        train.len(),
        test.len(),
        fmt_vec(&mean),
        fmt_vec(&std)
    );

    let mut net = Network::random(&a.arch, a.init, a.seed);
    println!(
        "training {} ({} parameters, init {:?}) for {} epochs, batch {}, {:?}",
        a.arch,
        net.num_params(),
        a.init,
        a.epochs,
        a.batch_size,
        params.optimizer()
    );
    let batches = train.len().div_ceil(a.batch_size);
    let pb = ProgressBar::new((batches * a.epochs) as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} epoch {msg} [{bar:30}] {pos}/{len} batches, {elapsed} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(format!("1/{}", a.epochs));
    let report = train_classifier_with(
        &mut net,
        &train.images,
        &train.labels,
        Some((&test.images, &test.labels)),
        &params,
        |p| match p {
            Progress::Batch { .. } => pb.inc(1),
            Progress::Epoch(s) => {
                pb.suspend(|| {
                    println!(
                        "epoch {}/{}: loss {:.4}  train-acc {:.4}  test-acc {:.4}  ({:.1}s)",
                        s.epoch,
                        s.epochs,
                        s.loss,
                        s.train_accuracy,
                        s.val_accuracy.unwrap_or(f64::NAN),
                        s.seconds
                    )
                });
                pb.set_message(format!("{}/{}", (s.epoch + 1).min(s.epochs), s.epochs));
            }
        },
    )?;
    pb.finish_and_clear();
    let last = report.epochs.last().expect("at least one epoch");
    let test_acc = last.val_accuracy.expect("validation set given");

    save_network(&a.out, &net, SaveDtype::F64)
        .with_context(|| format!("saving {}", a.out.display()))?;
    if let Some(path) = &a.report {
        let json = serde_json::json!({
            "schema": 1,
            "command": "model train",
            "arch": a.arch.to_string(),
            "dataset": a.dataset.name(),
            "train_samples": train.len(),
            "test_samples": test.len(),
            "preprocessing": { "scale": 1.0 / 255.0, "mean": mean, "std": std },
            "params": {
                "optimizer": format!("{:?}", params.optimizer()),
                "batch_size": a.batch_size, "epochs": a.epochs, "seed": a.seed,
                "weight_decay": a.weight_decay, "init": a.init,
            },
            "epochs": report.epochs.iter().map(|s| serde_json::json!({
                "epoch": s.epoch, "loss": s.loss, "train_accuracy": s.train_accuracy,
                "test_loss": s.val_loss, "test_accuracy": s.val_accuracy, "seconds": s.seconds,
            })).collect::<Vec<_>>(),
            "test_accuracy": test_acc,
            "seconds": report.seconds,
            "model": a.out.display().to_string(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "saved {} ({:.1}s of training)",
        a.out.display(),
        report.seconds
    );
    println!("test accuracy: {test_acc:.4}");
    Ok(())
}

fn check_loaded(train: &Dataset, features: usize) -> anyhow::Result<()> {
    if train.is_empty() {
        bail!("the training split is empty");
    }
    if train.feature_dim() != features {
        bail!(
            "loaded images have {} features, expected {features}",
            train.feature_dim()
        );
    }
    Ok(())
}

fn fmt_vec(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}
