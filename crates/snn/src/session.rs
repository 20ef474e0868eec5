//! A whole training run as the CLI (and the LTH loop) drive it: load the dataset, build or
//! resume the network, train epoch by epoch with an atomic checkpoint after each, evaluate with
//! spike statistics, and write a JSON report.

use crate::arch::ArchSpec;
use crate::checkpoint;
use crate::error::SnnError;
use crate::hyperparams::TrainParams;
use crate::model::InputShape;
use crate::train::{EpochRecord, Evaluation, Prepared, Snn, TrainEvent, Trainer};
use burn::tensor::Device;
use netxray_data::{Dataset, DatasetKind, Split};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File name of the checkpoint inside a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// File name of the report inside a run directory.
pub const REPORT: &str = "report.json";

/// Picks the network input for a dataset: its own size if the architecture fits, else the
/// image zero-padded to 32×32 (Fashion-MNIST into VGG-16, whose five pools need 32×32).
pub fn input_for(
    spec: &ArchSpec,
    channels: usize,
    height: usize,
    width: usize,
    classes: usize,
) -> Result<InputShape, SnnError> {
    match spec.num_params(channels, height, width, classes) {
        Ok(_) => Ok(InputShape {
            channels,
            height,
            width,
        }),
        Err(first) if height < 32 && width < 32 => spec
            .num_params(channels, 32, 32, classes)
            .map(|_| InputShape {
                channels,
                height: 32,
                width: 32,
            })
            .map_err(|_| first),
        Err(e) => Err(e),
    }
}

/// Training and test sets, normalised with the training set's per-channel statistics.
#[derive(Debug, Clone)]
pub struct Data {
    /// Training set as the network sees it.
    pub train: Prepared,
    /// Test set as the network sees it.
    pub test: Prepared,
    /// Per-channel mean used.
    pub mean: Vec<f32>,
    /// Per-channel std used.
    pub std: Vec<f32>,
    /// Number of classes.
    pub classes: usize,
}

/// Loads `kind` from `dir` and prepares it for `spec` (limits applied here, so a small
/// `--train-limit` does not normalise over data it never uses).
pub fn load_data(
    kind: DatasetKind,
    dir: &Path,
    spec: &ArchSpec,
    params: &TrainParams,
) -> Result<(Data, InputShape), SnnError> {
    let mut train: Dataset = netxray_data::load(kind, dir, Split::Train)?;
    let mut test: Dataset = netxray_data::load(kind, dir, Split::Test)?;
    if let Some(k) = params.train_limit {
        train = train.limit(k);
    }
    if let Some(k) = params.test_limit {
        test = test.limit(k);
    }
    let input = input_for(
        spec,
        train.channels,
        train.height,
        train.width,
        train.num_classes,
    )?;
    let (mean, std) = train.channel_stats();
    let data = Data {
        train: Prepared::new(&train, &mean, &std, input)?,
        test: Prepared::new(&test, &mean, &std, input)?,
        mean,
        std,
        classes: train.num_classes,
    };
    Ok((data, input))
}

/// The JSON report of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    /// Schema version.
    pub schema: u32,
    /// Architecture name.
    pub arch: String,
    /// Dataset name.
    pub dataset: String,
    /// Parameter count.
    pub params: usize,
    /// Training parameters.
    pub train: TrainParams,
    /// Per-epoch records (including epochs of earlier, resumed runs).
    pub epochs: Vec<EpochRecord>,
    /// Final evaluation with spike sparsity.
    pub final_eval: Evaluation,
    /// Wall time of this invocation, seconds.
    pub wall_seconds: f64,
    /// Epoch the run resumed from (0 for a fresh run).
    pub resumed_from_epoch: usize,
    /// Checkpoint written.
    pub checkpoint: PathBuf,
}

/// Trains `spec` on `kind` for `params.epochs` epochs into `out_dir`, resuming from the
/// checkpoint there when `resume` is set (and one exists).
pub fn train_run(
    spec: &ArchSpec,
    kind: DatasetKind,
    data_dir: &Path,
    params: &TrainParams,
    out_dir: &Path,
    device: &Device,
    resume: bool,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainReport, SnnError> {
    let start = Instant::now();
    std::fs::create_dir_all(out_dir).map_err(|cause| SnnError::Io {
        path: out_dir.to_path_buf(),
        cause,
    })?;
    let ckpt = out_dir.join(CHECKPOINT);
    let (data, input) = load_data(kind, data_dir, spec, params)?;
    let mut trainer = if resume && ckpt.exists() {
        let (mut t, _) = checkpoint::restore(&ckpt, device)?;
        if t.snn.spec != *spec || t.snn.input != input {
            return Err(SnnError::Checkpoint {
                path: ckpt,
                reason: format!(
                    "was trained as {} on {:?}, not {} on {:?}",
                    t.snn.spec, t.snn.input, spec, input
                ),
            });
        }
        // The schedule length may be extended; everything else comes from the checkpoint.
        t.params.epochs = params.epochs;
        t
    } else {
        let snn = Snn::new(spec, input, data.classes, device, params.seed)?;
        Trainer::new(snn, params.clone(), data.mean.clone(), data.std.clone())
    };
    let resumed_from_epoch = trainer.epochs_done;
    while trainer.epochs_done < trainer.params.epochs {
        trainer.train_epoch(&data.train, &data.test, on_event)?;
        checkpoint::save(&ckpt, &trainer, kind.name(), None)?;
    }
    let final_eval = trainer.evaluate(&data.test, true)?;
    checkpoint::save(
        &ckpt,
        &trainer,
        kind.name(),
        Some(&final_eval.spike_sparsity),
    )?;
    let report = TrainReport {
        schema: 1,
        arch: spec.name.clone(),
        dataset: kind.name().to_string(),
        params: trainer.snn.num_params(),
        train: trainer.params.clone(),
        epochs: trainer.history.clone(),
        final_eval,
        wall_seconds: start.elapsed().as_secs_f64(),
        resumed_from_epoch,
        checkpoint: ckpt,
    };
    let json = serde_json::to_vec_pretty(&report).expect("report serialises");
    netxray_relu::format::write_atomic(&out_dir.join(REPORT), &json).map_err(|e| {
        SnnError::Checkpoint {
            path: out_dir.join(REPORT),
            reason: e.to_string(),
        }
    })?;
    Ok(report)
}
