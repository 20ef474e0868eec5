//! `netxray snn train|eval`: spiking networks (burn, flex CPU backend).

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use netxray_data::DatasetKind;
use netxray_snn::session::{self, train_run};
use netxray_snn::{
    ArchSpec, LifParams, OptimizerKind, Schedule, Surrogate, TrainEvent, TrainParams, checkpoint,
    device::training_device, train::evaluate,
};
use std::path::PathBuf;

/// `snn` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnnCommand {
    /// Train a spiking network (checkpoint after every epoch; `--resume` continues).
    Train(TrainArgs),
    /// Evaluate a checkpoint: accuracy, loss and per-layer input spike sparsity.
    Eval(EvalArgs),
}

/// Optimizer choice.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    /// SGD, momentum 0.9, weight decay 5e-4 (the papers' recipe).
    Sgd,
    /// Adam (β = 0.9, 0.999, ε = 1e-8), no weight decay.
    Adam,
}

/// Surrogate choice.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SurrogateArg {
    /// ATan (SpikingJelly default; α from --alpha).
    Atan,
    /// Fast sigmoid (slope from --alpha).
    FastSigmoid,
}

/// Arguments of `snn train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Architecture: vgg16, resnet19, vgg-small, resnet-small, mlp, convnet.
    #[arg(long)]
    pub arch: ArchSpec,
    /// Dataset: mnist, fashion-mnist, cifar10.
    #[arg(long)]
    pub dataset: DatasetKind,
    /// Directory holding the dataset files (IDX, plain or .gz; CIFAR-10 binary batches).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Output directory (checkpoint.safetensors, report.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Time steps T.
    #[arg(long, default_value_t = 4)]
    pub timesteps: usize,
    /// Epochs (with --resume: the total, including epochs already done).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Train on the first K training samples only.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first K test samples only.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    pub optimizer: OptimizerArg,
    /// Base learning rate (default: 0.1 for SGD, 1e-3 for Adam).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Constant learning rate instead of cosine annealing.
    #[arg(long)]
    pub constant_lr: bool,
    /// Membrane time constant τ (λ = 1 − 1/τ).
    #[arg(long, default_value_t = 4.0 / 3.0)]
    pub tau: f64,
    /// Surrogate gradient.
    #[arg(long, value_enum, default_value_t = SurrogateArg::Atan)]
    pub surrogate: SurrogateArg,
    /// Surrogate sharpness (ATan α; fast-sigmoid slope).
    #[arg(long, default_value_t = 2.0)]
    pub alpha: f64,
    /// Random crop + horizontal flip (default: on for CIFAR-10, off otherwise).
    #[arg(long)]
    pub augment: Option<bool>,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from OUT/checkpoint.safetensors if it exists.
    #[arg(long)]
    pub resume: bool,
    /// Compute device (`cpu`; `cuda`/`wgpu` need builds with those burn features).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Arguments of `snn eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint (checkpoint.safetensors of a run).
    #[arg(long)]
    pub model: PathBuf,
    /// Directory holding the dataset files.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Dataset (default: the one the checkpoint was trained on).
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Evaluate on the first K test samples only.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs an `snn` subcommand.
pub fn run(cmd: SnnCommand) -> Result<()> {
    match cmd {
        SnnCommand::Train(a) => train(a),
        SnnCommand::Eval(a) => eval(a),
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

fn train(a: TrainArgs) -> Result<()> {
    let device = training_device(&a.device)?;
    let optimizer = match a.optimizer {
        OptimizerArg::Sgd => OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
        },
        OptimizerArg::Adam => OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        },
    };
    let lr = a.lr.unwrap_or(match a.optimizer {
        OptimizerArg::Sgd => 0.1,
        OptimizerArg::Adam => 1e-3,
    });
    let surrogate = match a.surrogate {
        SurrogateArg::Atan => Surrogate::Atan { alpha: a.alpha },
        SurrogateArg::FastSigmoid => Surrogate::FastSigmoid { slope: a.alpha },
    };
    let params = TrainParams::builder()
        .epochs(a.epochs)
        .batch_size(a.batch_size)
        .lr(lr)
        .optimizer(optimizer)
        .schedule(if a.constant_lr {
            Schedule::Constant
        } else {
            Schedule::Cosine
        })
        .timesteps(a.timesteps)
        .lif(LifParams {
            tau: a.tau,
            threshold: 1.0,
            surrogate,
        })
        .seed(a.seed)
        .train_limit(a.train_limit)
        .test_limit(a.test_limit)
        .augment(a.augment.unwrap_or(a.dataset == DatasetKind::Cifar10))
        .build()?;
    let bar = progress_bar();
    let mut on_event = |ev: TrainEvent| match ev {
        TrainEvent::EpochStart { epoch, steps } => {
            bar.set_prefix(format!("epoch {}", epoch + 1));
            bar.set_length(steps as u64);
            bar.set_position(0);
            bar.reset_eta();
        }
        TrainEvent::Step {
            done,
            loss,
            accuracy,
            samples_per_second,
        } => {
            bar.set_position(done as u64);
            bar.set_message(format!(
                "loss {loss:.4} acc {:.2}% {samples_per_second:.0} samples/s",
                accuracy * 100.0
            ));
        }
        TrainEvent::Evaluating => bar.set_message("evaluating".to_string()),
        TrainEvent::EpochEnd(r) => {
            let line = format!(
                "epoch {:>3}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} s, {:.0} samples/s",
                r.epoch + 1,
                r.train_loss,
                r.train_accuracy * 100.0,
                r.test_loss,
                r.test_accuracy * 100.0,
                r.train_seconds,
                r.samples_per_second
            );
            // A hidden bar (stderr not a terminal) also hides println: log lines must survive.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let report = train_run(
        &a.arch,
        a.dataset,
        &a.data_dir,
        &params,
        &a.out,
        &device,
        a.resume,
        &mut on_event,
    )?;
    bar.finish_and_clear();
    println!(
        "{} on {}: {} parameters, test accuracy {:.2}% after {} epochs ({:.0} s); checkpoint {}",
        report.arch,
        report.dataset,
        report.params,
        report.final_eval.accuracy * 100.0,
        report.epochs.len(),
        report.wall_seconds,
        report.checkpoint.display()
    );
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let device = training_device(&a.device)?;
    let (trainer, loaded) = checkpoint::restore(&a.model, &device)
        .with_context(|| format!("cannot load {}", a.model.display()))?;
    let kind: DatasetKind = match a.dataset {
        Some(k) => k,
        None => loaded
            .meta
            .dataset
            .parse()
            .context("the checkpoint does not name a known dataset; pass --dataset")?,
    };
    let mut params = trainer.params.clone();
    params.train_limit = Some(1);
    params.test_limit = a.test_limit;
    let (data, input) = session::load_data(kind, &a.data_dir, &trainer.snn.spec, &params)?;
    anyhow::ensure!(
        input == trainer.snn.input,
        "the checkpoint expects {:?} inputs, {} gives {:?}",
        trainer.snn.input,
        kind.name(),
        input
    );
    // Evaluate with the normalisation the network was trained with.
    let test = netxray_snn::Prepared::new(
        &{
            let mut t = netxray_data::load(kind, &a.data_dir, netxray_data::Split::Test)?;
            if let Some(k) = a.test_limit {
                t = t.limit(k);
            }
            t
        },
        &trainer.norm_mean,
        &trainer.norm_std,
        input,
    )?;
    drop(data);
    let e = evaluate(&trainer.snn, &params, &test, true)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!(
            "{} on {}: accuracy {:.2}%, loss {:.4} ({} test images)",
            trainer.snn.spec,
            kind.name(),
            e.accuracy * 100.0,
            e.loss,
            test.len()
        );
        for (name, s) in &e.spike_sparsity {
            println!("  input spike sparsity {name:<28} {:.3}", s);
        }
    }
    Ok(())
}
