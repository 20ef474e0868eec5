//! The loop's resumable state: one safetensors file rewritten atomically after every round.
//!
//! Tensors: `weights.<path>` (trained weights after the last finished round), `rewind.<path>`
//! (the late-rewinding point), `deployed.<path>` and `carry.<path>` (0/1 masks of the prunable
//! weights). Metadata `netxray.lth`: JSON of the parameters, rounds done and every record.

use super::{LthError, LthParams, RoundRecord};
use netxray_snn::{ArchSpec, HostTensor, TrainParams};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// State file name inside the run directory.
pub const STATE_FILE: &str = "lth-state.safetensors";

/// Everything needed to continue a run.
#[derive(Debug, Clone)]
pub struct LthState {
    /// Loop parameters.
    pub params: LthParams,
    /// Training parameters.
    pub train: TrainParams,
    /// Architecture.
    pub arch: ArchSpec,
    /// Rounds finished.
    pub rounds_done: usize,
    /// Their records.
    pub records: Vec<RoundRecord>,
    /// Trained weights (all tensors) after the last finished round.
    pub weights: BTreeMap<String, HostTensor>,
    /// Rewind point (all tensors).
    pub rewind: BTreeMap<String, HostTensor>,
    /// Masks in use (prunable weights).
    pub deployed: BTreeMap<String, Vec<bool>>,
    /// Masks the next prune starts from.
    pub carry: BTreeMap<String, Vec<bool>>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    schema: u32,
    params: LthParams,
    train: TrainParams,
    arch: ArchSpec,
    rounds_done: usize,
    records: Vec<RoundRecord>,
    mask_shapes: BTreeMap<String, Vec<usize>>,
}

struct Buf(Vec<usize>, Vec<u8>);
impl safetensors::View for &Buf {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.1)
    }
    fn data_len(&self) -> usize {
        self.1.len()
    }
}

fn bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(f32::to_le_bytes).collect()
}

fn state_err(path: &Path, reason: impl Into<String>) -> LthError {
    LthError::State {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes `value` as pretty JSON, atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), LthError> {
    let json = serde_json::to_vec_pretty(value).expect("records serialise");
    netxray_relu::format::write_atomic(path, &json).map_err(|e| state_err(path, e.to_string()))
}

/// Saves the state atomically.
pub(crate) fn save_state(path: &Path, st: &LthState) -> Result<(), LthError> {
    let mut bufs: BTreeMap<String, Buf> = BTreeMap::new();
    for (prefix, map) in [("weights", &st.weights), ("rewind", &st.rewind)] {
        for (n, t) in map {
            bufs.insert(
                format!("{prefix}.{n}"),
                Buf(t.shape.clone(), bytes(t.data.iter().copied())),
            );
        }
    }
    for (prefix, map) in [("deployed", &st.deployed), ("carry", &st.carry)] {
        for (n, m) in map {
            bufs.insert(
                format!("{prefix}.{n}"),
                Buf(
                    vec![m.len()],
                    bytes(m.iter().map(|&b| if b { 1.0 } else { 0.0 })),
                ),
            );
        }
    }
    let meta = Meta {
        schema: 1,
        params: st.params.clone(),
        train: st.train.clone(),
        arch: st.arch.clone(),
        rounds_done: st.rounds_done,
        records: st.records.clone(),
        mask_shapes: st
            .deployed
            .iter()
            .map(|(n, m)| (n.clone(), vec![m.len()]))
            .collect(),
    };
    let mut md = HashMap::new();
    md.insert("format".to_string(), "netxray-lth".to_string());
    md.insert(
        "netxray.lth".to_string(),
        serde_json::to_string(&meta).expect("meta serialises"),
    );
    let out = safetensors::serialize(bufs.iter().map(|(n, b)| (n.as_str(), b)), Some(md))
        .map_err(|e| state_err(path, e.to_string()))?;
    netxray_relu::format::write_atomic(path, &out).map_err(|e| state_err(path, e.to_string()))
}

/// Loads the state of a run directory (`None` if there is none yet).
pub fn load_state(path: &Path) -> Result<Option<LthState>, LthError> {
    if !path.exists() {
        return Ok(None);
    }
    let raw = std::fs::read(path).map_err(|e| state_err(path, e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&raw)
        .map_err(|e| state_err(path, format!("not a state file: {e}")))?;
    let md = header.metadata().clone().unwrap_or_default();
    if md.get("format").map(String::as_str) != Some("netxray-lth") {
        return Err(state_err(path, "not a netxray LTH state file"));
    }
    let meta: Meta = serde_json::from_str(
        md.get("netxray.lth")
            .ok_or_else(|| state_err(path, "missing netxray.lth metadata"))?,
    )
    .map_err(|e| state_err(path, format!("bad metadata: {e}")))?;
    let st =
        SafeTensors::deserialize(&raw).map_err(|e| state_err(path, format!("corrupt: {e}")))?;
    let mut s = LthState {
        params: meta.params,
        train: meta.train,
        arch: meta.arch,
        rounds_done: meta.rounds_done,
        records: meta.records,
        weights: BTreeMap::new(),
        rewind: BTreeMap::new(),
        deployed: BTreeMap::new(),
        carry: BTreeMap::new(),
    };
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(state_err(path, format!("{name} is not F32")));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let t = HostTensor {
            shape: view.shape().to_vec(),
            data,
        };
        let (prefix, rest) = name
            .split_once('.')
            .ok_or_else(|| state_err(path, format!("unexpected tensor {name}")))?;
        match prefix {
            "weights" => {
                s.weights.insert(rest.to_string(), t);
            }
            "rewind" => {
                s.rewind.insert(rest.to_string(), t);
            }
            "deployed" => {
                s.deployed
                    .insert(rest.to_string(), t.data.iter().map(|&v| v != 0.0).collect());
            }
            "carry" => {
                s.carry
                    .insert(rest.to_string(), t.data.iter().map(|&v| v != 0.0).collect());
            }
            _ => return Err(state_err(path, format!("unexpected tensor {name}"))),
        }
    }
    Ok(Some(s))
}
