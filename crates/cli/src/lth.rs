//! `netxray lth`: iterative magnitude pruning (LTH) or u-Ticket on a spiking network, with the
//! hardware model measured every round.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use netxray_data::DatasetKind;
use netxray_snn::{ArchSpec, OptimizerKind, TrainEvent, TrainParams, device::training_device};
use netxray_uticket::Balancer;
use netxray_uticket::lth::{self, LthEvent, LthParams, LthRun, MaskCarry, Method, RoundRecord};
use std::path::PathBuf;

/// Arguments of `lth`.
#[derive(Debug, Args)]
pub struct LthArgs {
    /// lth (iterative magnitude pruning, late rewinding) or uticket (plus balancing).
    #[arg(long, default_value = "uticket")]
    pub method: Method,
    /// u-Ticket balancer: random (the paper) or magnitude.
    #[arg(long, default_value = "random")]
    pub balancer: Balancer,
    /// Mask carried into the next prune: pre-balance (reference code) or balanced (paper text).
    #[arg(long, default_value = "pre-balance")]
    pub carry: MaskCarry,
    /// Architecture (vgg16, resnet19, vgg-small, resnet-small, ...).
    #[arg(long)]
    pub arch: ArchSpec,
    /// Dataset: mnist, fashion-mnist, cifar10.
    #[arg(long)]
    pub dataset: DatasetKind,
    /// Directory holding the dataset files.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Rounds including the dense round 0 (15 → 14 prunes → 98.2 % sparsity at 25 %).
    #[arg(long, default_value_t = 15)]
    pub rounds: usize,
    /// Fraction of the remaining weights pruned per round.
    #[arg(long, default_value_t = 0.25)]
    pub prune_rate: f64,
    /// Epochs of the dense round 0.
    #[arg(long, default_value_t = 200)]
    pub round0_epochs: usize,
    /// Late rewinding: weights after this many epochs of round 0 (0 = initial weights).
    #[arg(long, default_value_t = 20)]
    pub rewind_epoch: usize,
    /// Epochs of every later round.
    #[arg(long, default_value_t = 180)]
    pub epochs_per_round: usize,
    /// PEs per group (hardware model and balancer).
    #[arg(long, default_value_t = 16)]
    pub pes: usize,
    /// Run directory: per-round JSON, state for resuming, plots. Rerun the same command to resume.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Another run directory to overlay in the utilization and accuracy plots (e.g. the LTH run).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Time steps T.
    #[arg(long, default_value_t = 4)]
    pub timesteps: usize,
    /// Train on the first K training samples only.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first K test samples only.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Learning rate (SGD, momentum 0.9, weight decay 5e-4, cosine per round).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Seed of initialisation, shuffling and balancing.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `lth`.
pub fn run(a: LthArgs) -> Result<()> {
    let device = training_device(&a.device)?;
    let params = LthParams::builder()
        .method(a.method)
        .balancer(a.balancer)
        .carry(a.carry)
        .rounds(a.rounds)
        .prune_rate(a.prune_rate)
        .round0_epochs(a.round0_epochs)
        .rewind_epoch(a.rewind_epoch)
        .epochs_per_round(a.epochs_per_round)
        .pes(a.pes)
        .seed(a.seed)
        .build()?;
    let train = TrainParams::builder()
        .batch_size(a.batch_size)
        .lr(a.lr)
        .optimizer(OptimizerKind::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
        })
        .timesteps(a.timesteps)
        .seed(a.seed)
        .train_limit(a.train_limit)
        .test_limit(a.test_limit)
        .augment(a.dataset == DatasetKind::Cifar10)
        .build()?;
    let (data, _) = netxray_snn::session::load_data(a.dataset, &a.data_dir, &a.arch, &train)?;
    let bar = ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} steps {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let say = |bar: &ProgressBar, line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut on_event = |ev: LthEvent| match ev {
        LthEvent::RoundStart { round, rounds } => {
            bar.set_prefix(format!("round {round}/{}", rounds - 1))
        }
        LthEvent::Train(TrainEvent::EpochStart { steps, .. }) => {
            bar.set_length(steps as u64);
            bar.set_position(0);
        }
        LthEvent::Train(TrainEvent::Step {
            done,
            loss,
            accuracy,
            ..
        }) => {
            bar.set_position(done as u64);
            bar.set_message(format!("loss {loss:.4} acc {:.1}%", accuracy * 100.0));
        }
        LthEvent::Train(_) => {}
        LthEvent::RoundEnd(r) => say(&bar, summary_line(&r)),
    };
    let cfg = LthRun {
        params,
        train,
        arch: a.arch.clone(),
        data: &data,
        device,
        out_dir: &a.out_dir,
    };
    let records = lth::run(&cfg, &mut on_event)?;
    bar.finish_and_clear();
    let label = |m: Method| match m {
        Method::Lth => "LTH".to_string(),
        Method::Uticket => format!("u-Ticket ({})", a.balancer),
    };
    let mut runs = vec![(label(a.method), records.clone())];
    if let Some(other) = &a.compare {
        let path = other.join("rounds.json");
        let recs: Vec<RoundRecord> = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{} is not a rounds.json of `netxray lth`", path.display()))?;
        let m = recs.first().map(|r| r.method).unwrap_or(Method::Lth);
        runs.push((label(m), recs));
    }
    netxray_uticket::plots::utilization_per_round(&a.out_dir.join("utilization.svg"), &runs)?;
    netxray_uticket::plots::accuracy_vs_sparsity(
        &a.out_dir.join("accuracy-vs-sparsity.svg"),
        &runs,
    )?;
    let last = records.last().expect("at least one round");
    println!(
        "{} done: {} rounds, sparsity {:.2}%, accuracy {:.2}%, utilization {:.3}; records and plots in {}",
        label(a.method),
        records.len(),
        last.sparsity * 100.0,
        last.test_accuracy * 100.0,
        last.hw.utilization_weighted,
        a.out_dir.display()
    );
    Ok(())
}

fn summary_line(r: &RoundRecord) -> String {
    format!(
        "round {:>2}: sparsity {:6.2}% acc {:6.2}% | utilization {:.3}{} | latency {:.3e} work {:.3e} idle {:.3e} energy {:.3e} | spikes {:.3} | {:.0} s",
        r.round,
        r.sparsity * 100.0,
        r.test_accuracy * 100.0,
        r.hw.utilization_weighted,
        r.hw_before_balance
            .as_ref()
            .map(|b| format!(" (before balancing {:.3})", b.utilization_weighted))
            .unwrap_or_default(),
        r.hw.latency_cycles as f64,
        r.hw.work_cycles as f64,
        r.hw.idle_cycles as f64,
        r.hw.energy,
        r.spike_sparsity,
        r.wall_seconds
    )
}
