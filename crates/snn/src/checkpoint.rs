//! Safetensors checkpoints of a [`Trainer`]: weights, masks, optimizer state, progress, and the
//! metadata the hardware model reads.
//!
//! Layout (all tensors f32):
//! - every module tensor by path in PyTorch layout (`layers.0.conv.weight` `[out, in, k, k]`,
//!   `layers.7.weight` (a linear layer) `[out, in]`, `…bn.gamma`, `…bn.running_mean`, …);
//! - `<weight path>_mask` (e.g. `layers.0.conv.weight_mask`, 0/1) for every masked weight;
//! - `optim.<path>.momentum` / `optim.<path>.adam_m` / `optim.<path>.adam_v`, flattened;
//! - metadata `format = netxray-snn`, `netxray.snn` (JSON [`CheckpointMeta`]: architecture,
//!   input shape, training parameters, completed epochs, optimizer steps, normalisation, history),
//!   `netxray.layers` (JSON list of [`crate::WeightLayer`]: conv/linear layers in network order
//!   with their output map sizes) and, when measured, `netxray.spike_sparsity` (JSON object
//!   layer name → fraction of zero inputs).
//!
//! Files are written to a temporary name and renamed, so a crash never leaves a half-written
//! checkpoint under the final name. Training is a pure function of (seed, epoch, step) —
//! shuffling and augmentation are re-derived from the epoch index — so resuming from a
//! checkpoint needs no RNG state beyond the seed stored in the training parameters.

use crate::arch::ArchSpec;
use crate::error::SnnError;
use crate::hyperparams::TrainParams;
use crate::model::InputShape;
use crate::optim::MaskedOptimizer;
use crate::state::HostTensor;
use crate::train::{EpochRecord, Snn, Trainer};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Schema version of [`CheckpointMeta`].
pub const SCHEMA: u32 = 1;

/// Everything about a checkpoint that is not a tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Schema version.
    pub schema: u32,
    /// Architecture.
    pub arch: ArchSpec,
    /// Input geometry.
    pub input: InputShape,
    /// Classes.
    pub classes: usize,
    /// Dataset name the network was trained on (informational).
    pub dataset: String,
    /// Training parameters.
    pub params: TrainParams,
    /// Completed epochs.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub optimizer_steps: u64,
    /// Per-channel normalisation mean.
    pub norm_mean: Vec<f32>,
    /// Per-channel normalisation std.
    pub norm_std: Vec<f32>,
    /// Per-epoch records.
    pub history: Vec<EpochRecord>,
}

struct Buf {
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Buf {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn buf(shape: Vec<usize>, values: &[f32]) -> Buf {
    Buf {
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Writes `trainer` to `path` atomically. `dataset` is recorded for information;
/// `spike_sparsity` (layer → zero fraction) goes into the hardware-model metadata.
pub fn save(
    path: &Path,
    trainer: &Trainer,
    dataset: &str,
    spike_sparsity: Option<&BTreeMap<String, f64>>,
) -> Result<(), SnnError> {
    let mut bufs: BTreeMap<String, Buf> = BTreeMap::new();
    for (name, t) in trainer.snn.tensors() {
        bufs.insert(name, buf(t.shape, &t.data));
    }
    for (name, m) in &trainer.masks {
        bufs.insert(format!("{name}_mask"), buf(m.shape.clone(), &m.data));
    }
    for (name, t) in &trainer.optimizer.state {
        let values = t
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32");
        bufs.insert(format!("optim.{name}"), buf(vec![values.len()], &values));
    }
    let meta = CheckpointMeta {
        schema: SCHEMA,
        arch: trainer.snn.spec.clone(),
        input: trainer.snn.input,
        classes: trainer.snn.classes,
        dataset: dataset.to_string(),
        params: trainer.params.clone(),
        epochs_done: trainer.epochs_done,
        optimizer_steps: trainer.optimizer.steps,
        norm_mean: trainer.norm_mean.clone(),
        norm_std: trainer.norm_std.clone(),
        history: trainer.history.clone(),
    };
    let json = |v: &dyn erased::Json| v.to_json();
    let mut md = HashMap::new();
    md.insert("format".to_string(), "netxray-snn".to_string());
    md.insert("netxray.snn".to_string(), json(&meta));
    md.insert(
        "netxray.layers".to_string(),
        json(&trainer.snn.weight_layers()),
    );
    if let Some(s) = spike_sparsity {
        md.insert("netxray.spike_sparsity".to_string(), json(s));
    }
    let bytes = safetensors::serialize(bufs.iter().map(|(n, b)| (n.as_str(), b)), Some(md))
        .map_err(|e| SnnError::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    netxray_relu::format::write_atomic(path, &bytes).map_err(|e| SnnError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

mod erased {
    /// Object-safe JSON serialisation for the metadata helper.
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).expect("metadata serialises")
        }
    }
}

/// A checkpoint read back: metadata, module tensors, masks and optimizer buffers.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Metadata.
    pub meta: CheckpointMeta,
    /// Module tensors by path.
    pub tensors: BTreeMap<String, HostTensor>,
    /// Masks by weight path.
    pub masks: BTreeMap<String, HostTensor>,
    /// Optimizer buffers by `<path>.<buffer>`.
    pub optimizer: BTreeMap<String, Vec<f32>>,
    /// Spike sparsity, if recorded.
    pub spike_sparsity: Option<BTreeMap<String, f64>>,
}

/// Reads a checkpoint (strictly: wrong format, truncation, non-f32 or non-finite values are
/// errors).
pub fn load(path: &Path) -> Result<Loaded, SnnError> {
    let err = |reason: String| SnnError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|cause| SnnError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not safetensors: {e}")))?;
    let md = header.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some("netxray-snn") {
        return Err(err(
            "not a netxray SNN checkpoint (metadata `format` is not `netxray-snn`)".into(),
        ));
    }
    let meta: CheckpointMeta = serde_json::from_str(
        md.get("netxray.snn")
            .ok_or_else(|| err("missing `netxray.snn` metadata".into()))?,
    )
    .map_err(|e| err(format!("bad `netxray.snn` metadata: {e}")))?;
    if meta.schema != SCHEMA {
        return Err(err(format!(
            "checkpoint schema {} (this build reads {SCHEMA})",
            meta.schema
        )));
    }
    let spike_sparsity = md
        .get("netxray.spike_sparsity")
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| err(format!("bad `netxray.spike_sparsity` metadata: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("corrupt: {e}")))?;
    let (mut tensors, mut masks, mut optimizer) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(err(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if data.iter().any(|v| !v.is_finite()) {
            return Err(err(format!("tensor `{name}` holds NaN or infinite values")));
        }
        let t = HostTensor {
            shape: view.shape().to_vec(),
            data,
        };
        if let Some(rest) = name.strip_prefix("optim.") {
            optimizer.insert(rest.to_string(), t.data);
        } else if let Some(w) = name.strip_suffix("_mask") {
            masks.insert(w.to_string(), t);
        } else {
            tensors.insert(name, t);
        }
    }
    Ok(Loaded {
        meta,
        tensors,
        masks,
        optimizer,
        spike_sparsity,
    })
}

/// Rebuilds a [`Trainer`] from a checkpoint on `device`, ready to continue training.
pub fn restore(path: &Path, device: &Device) -> Result<(Trainer, Loaded), SnnError> {
    let loaded = load(path)?;
    let m = &loaded.meta;
    let mut snn = Snn::new(&m.arch, m.input, m.classes, device, m.params.seed)?;
    let expected = crate::state::shapes(&snn.net);
    for (name, shape) in &expected {
        match loaded.tensors.get(name) {
            None => {
                return Err(SnnError::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("missing tensor `{name}`"),
                });
            }
            Some(t) if &t.shape != shape => {
                return Err(SnnError::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.shape
                    ),
                });
            }
            Some(_) => {}
        }
    }
    snn.set_tensors(&loaded.tensors)?;
    let mut trainer = Trainer::new(
        snn,
        m.params.clone(),
        m.norm_mean.clone(),
        m.norm_std.clone(),
    );
    trainer.set_masks(loaded.masks.clone())?;
    trainer.epochs_done = m.epochs_done;
    trainer.history = m.history.clone();
    trainer.optimizer = MaskedOptimizer::new(m.params.optimizer);
    trainer.optimizer.steps = m.optimizer_steps;
    let inner = device.clone().inner();
    for (name, values) in &loaded.optimizer {
        trainer.optimizer.state.insert(
            name.clone(),
            Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), &inner),
        );
    }
    Ok((trainer, loaded))
}
