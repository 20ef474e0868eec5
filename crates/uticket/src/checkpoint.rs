//! Masked checkpoints on disk: the single definition of the safetensors layout the hardware model
//! reads and the SNN trainer writes (documented for users in `docs/hardware-model.md`).
//!
//! **Tensors.** For each prunable layer with module path `<p>`:
//! - `<p>.weight`: 4-D `[K, C, kh, kw]` (conv) or 2-D `[out, in]` (linear), F32/F64/F16/BF16. A
//!   PyTorch `torch.nn.utils.prune` state dict stores `<p>.weight_orig` instead; it is accepted when
//!   `<p>.weight` is absent.
//! - `<p>.weight_mask` (optional): same shape, any float dtype or U8/BOOL; non-zero = kept. Without it
//!   the mask is `weight != 0`.
//! - Every other tensor (biases, batch-norm parameters, ...) is ignored on reading and copied unchanged
//!   on writing.
//!
//! **Metadata** (the safetensors `__metadata__` string map):
//! - [`LAYERS_METADATA_KEY`] = a JSON array of [`LayerGeometry`] in network order:
//!   `[{"name": "features.3", "kind": "conv", "out_h": 32, "out_w": 32}, …]`. It fixes which layers
//!   exist, their order (the first conv is found by position) and their output maps.
//! - [`SPIKE_SPARSITY_METADATA_KEY`] (optional) = a JSON object `{"features.3": 0.84, …}` of measured
//!   input spike sparsities in [0, 1].
//!
//! Without the layers key (e.g. a converted PyTorch file) every 4-D/2-D `*.weight` tensor is a layer,
//! ordered by a numeric-aware sort of the names (`features.2` < `features.10`), with 1×1 output maps
//! unless a geometry file in the same JSON format is given; cycle counts are then per output pixel.

use crate::errors::UticketError;
use crate::layer::{LayerKind, LayerShape, MaskedLayer};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// Metadata key holding the layer list (JSON array of [`LayerGeometry`], network order).
pub const LAYERS_METADATA_KEY: &str = "netxray.layers";
/// Metadata key holding measured input spike sparsities (JSON object `{layer name: s}`).
pub const SPIKE_SPARSITY_METADATA_KEY: &str = "netxray.spike_sparsity";
/// Metadata key a balanced checkpoint records its balancing settings under (JSON object).
pub const BALANCE_METADATA_KEY: &str = "netxray.balance";
/// Suffix of a layer's weight tensor.
pub const WEIGHT_SUFFIX: &str = ".weight";
/// Suffix of a layer's mask tensor.
pub const MASK_SUFFIX: &str = ".weight_mask";
/// Suffix of the unmasked weight in a PyTorch `torch.nn.utils.prune` state dict (used when
/// `<p>.weight` is absent).
pub const WEIGHT_ORIG_SUFFIX: &str = ".weight_orig";

/// One entry of the [`LAYERS_METADATA_KEY`] list (and of a geometry file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerGeometry {
    /// Module path `<p>`: the weight is `<p>.weight`, the mask `<p>.weight_mask`.
    pub name: String,
    /// `"conv"` (4-D weight) or `"linear"` (2-D weight).
    pub kind: LayerKind,
    /// Height of the layer's output map (1 for linear layers).
    pub out_h: usize,
    /// Width of the layer's output map (1 for linear layers).
    pub out_w: usize,
}

/// Serialises a layer list as the JSON value of [`LAYERS_METADATA_KEY`].
pub fn geometry_to_json(layers: &[LayerGeometry]) -> String {
    serde_json::to_string(layers).expect("plain data serialises")
}

/// Parses and checks a layer list (from metadata or a geometry file; `origin` names it in errors):
/// non-empty, unique names, output maps without a zero side.
pub fn parse_geometry(json: &str, origin: &str) -> Result<Vec<LayerGeometry>, UticketError> {
    let bad = |reason: String| UticketError::Metadata {
        key: origin.to_string(),
        reason,
    };
    let layers: Vec<LayerGeometry> = serde_json::from_str(json).map_err(|e| {
        bad(format!(
            "expected a JSON array of {{\"name\", \"kind\": \"conv\"|\"linear\", \"out_h\", \"out_w\"}} ({e})"
        ))
    })?;
    if layers.is_empty() {
        return Err(bad("the layer list is empty".into()));
    }
    let mut seen = BTreeSet::new();
    for l in &layers {
        if !seen.insert(l.name.as_str()) {
            return Err(bad(format!("layer '{}' is listed twice", l.name)));
        }
        if l.out_h == 0 || l.out_w == 0 {
            return Err(bad(format!(
                "layer '{}' has output map {}x{} with a zero side",
                l.name, l.out_h, l.out_w
            )));
        }
    }
    Ok(layers)
}

/// Reads a geometry file (the JSON array format of [`LAYERS_METADATA_KEY`]).
pub fn read_geometry_file(path: &Path) -> Result<Vec<LayerGeometry>, UticketError> {
    let text = std::fs::read_to_string(path).map_err(|e| UticketError::Io {
        path: path.display().to_string(),
        cause: e,
    })?;
    parse_geometry(&text, &path.display().to_string())
}

/// Parses the value of [`SPIKE_SPARSITY_METADATA_KEY`]; every value must be in [0, 1].
pub fn parse_spike_sparsity(json: &str) -> Result<BTreeMap<String, f64>, UticketError> {
    let bad = |reason: String| UticketError::Metadata {
        key: SPIKE_SPARSITY_METADATA_KEY.to_string(),
        reason,
    };
    let map: BTreeMap<String, f64> = serde_json::from_str(json).map_err(|e| {
        bad(format!(
            "expected a JSON object {{layer name: number}} ({e})"
        ))
    })?;
    for (name, &s) in &map {
        if !(0.0..=1.0).contains(&s) {
            return Err(bad(format!("layer '{name}': {s} is not in [0, 1]")));
        }
    }
    Ok(map)
}

/// Where the layer list and output maps of a loaded checkpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeometrySource {
    /// The file's [`LAYERS_METADATA_KEY`].
    Metadata,
    /// A geometry file given by the user (overrides the metadata).
    File,
    /// Neither: natural name order and 1×1 output maps (cycle counts per output pixel).
    PerPixel,
}

/// One layer of a loaded checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointLayer {
    /// Shape, mask, output map and spike sparsity.
    pub layer: MaskedLayer,
    /// The weights as f32 (for the magnitude balancer).
    pub weights: Vec<f32>,
    /// Name of the weight tensor read (`<p>.weight` or `<p>.weight_orig`).
    pub weight_tensor: String,
    /// Name of the mask tensor read, if the file has one.
    pub mask_tensor: Option<String>,
}

/// A masked checkpoint, with the file's bytes kept so that it can be written back with new masks.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Path or other origin (for messages).
    pub origin: String,
    /// Layers in network order.
    pub layers: Vec<CheckpointLayer>,
    /// Where the geometry came from.
    pub geometry_source: GeometrySource,
    /// The file's metadata.
    pub metadata: HashMap<String, String>,
    /// Things the user should know (ignored tensors, per-pixel cycle counts, ...).
    pub warnings: Vec<String>,
    bytes: Vec<u8>,
}

/// Loads a checkpoint from a file; `geometry`, when given, replaces the file's layer list.
pub fn load_checkpoint(
    path: &Path,
    geometry: Option<Vec<LayerGeometry>>,
) -> Result<Checkpoint, UticketError> {
    let bytes = std::fs::read(path).map_err(|e| UticketError::Io {
        path: path.display().to_string(),
        cause: e,
    })?;
    load_checkpoint_bytes(bytes, &path.display().to_string(), geometry)
}

/// Loads a checkpoint from the bytes of a safetensors file (`origin` only appears in messages).
pub fn load_checkpoint_bytes(
    bytes: Vec<u8>,
    origin: &str,
    geometry: Option<Vec<LayerGeometry>>,
) -> Result<Checkpoint, UticketError> {
    let st = SafeTensors::deserialize(&bytes).map_err(|e| UticketError::BadFile {
        path: origin.to_string(),
        reason: format!("not a valid safetensors file ({e})"),
    })?;
    let metadata: HashMap<String, String> = SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default();
    let mut warnings = Vec::new();
    let names: BTreeSet<&str> = st.names().into_iter().collect();
    let weight_name = |path: &str| -> Option<String> {
        [WEIGHT_SUFFIX, WEIGHT_ORIG_SUFFIX]
            .iter()
            .map(|s| format!("{path}{s}"))
            .find(|n| names.contains(n.as_str()))
    };
    // Every path with a 4-D or 2-D weight: the candidate layers.
    let mut candidates: Vec<String> = Vec::new();
    for name in &names {
        let path = if let Some(p) = name.strip_suffix(WEIGHT_SUFFIX) {
            p
        } else if let Some(p) = name.strip_suffix(WEIGHT_ORIG_SUFFIX) {
            if names.contains(format!("{p}{WEIGHT_SUFFIX}").as_str()) {
                continue;
            }
            p
        } else {
            continue;
        };
        let rank = st.tensor(name).map(|t| t.shape().len()).unwrap_or(0);
        if rank == 4 || rank == 2 {
            candidates.push(path.to_string());
        }
    }

    let (list, source) = match (geometry, metadata.get(LAYERS_METADATA_KEY)) {
        (Some(g), meta) => {
            if meta.is_some() {
                warnings.push(format!(
                    "the geometry file replaces the checkpoint's '{LAYERS_METADATA_KEY}' metadata"
                ));
            }
            (g, GeometrySource::File)
        }
        (None, Some(json)) => (
            parse_geometry(json, LAYERS_METADATA_KEY)?,
            GeometrySource::Metadata,
        ),
        (None, None) => {
            if candidates.is_empty() {
                return Err(UticketError::BadFile {
                    path: origin.to_string(),
                    reason: format!(
                        "no conv or linear layer: no 4-D or 2-D '<path>{WEIGHT_SUFFIX}' tensor"
                    ),
                });
            }
            candidates.sort_by(|a, b| natural_cmp(a, b));
            warnings.push(format!(
                "no '{LAYERS_METADATA_KEY}' metadata and no geometry file: layers are taken in \
                 name order with 1x1 output maps, so cycle counts are per output pixel"
            ));
            let list = candidates
                .iter()
                .map(|n| {
                    let rank = st
                        .tensor(&weight_name(n).expect("candidate has a weight"))
                        .map(|t| t.shape().len())
                        .unwrap_or(0);
                    LayerGeometry {
                        name: n.clone(),
                        kind: if rank == 4 {
                            LayerKind::Conv
                        } else {
                            LayerKind::Linear
                        },
                        out_h: 1,
                        out_w: 1,
                    }
                })
                .collect();
            (list, GeometrySource::PerPixel)
        }
    };
    if source != GeometrySource::PerPixel {
        let listed: BTreeSet<&str> = list.iter().map(|g| g.name.as_str()).collect();
        for c in &candidates {
            if !listed.contains(c.as_str()) {
                warnings.push(format!(
                    "'{c}' has a conv/linear weight but is not in the layer list; it is ignored"
                ));
            }
        }
    }
    let sparsity = match metadata.get(SPIKE_SPARSITY_METADATA_KEY) {
        Some(json) => parse_spike_sparsity(json)?,
        None => BTreeMap::new(),
    };
    for name in sparsity.keys() {
        if !list.iter().any(|g| &g.name == name) {
            warnings.push(format!(
                "'{SPIKE_SPARSITY_METADATA_KEY}' names '{name}', which is not a layer; ignored"
            ));
        }
    }

    let mut layers = Vec::with_capacity(list.len());
    for g in &list {
        let key = match source {
            GeometrySource::File => "geometry file",
            _ => LAYERS_METADATA_KEY,
        };
        let wname = weight_name(&g.name).ok_or_else(|| UticketError::Metadata {
            key: key.to_string(),
            reason: format!(
                "layer '{}' has no tensor '{}{WEIGHT_SUFFIX}' in {origin}",
                g.name, g.name
            ),
        })?;
        let wview = st
            .tensor(&wname)
            .map_err(|e| UticketError::tensor(&wname, e.to_string()))?;
        let shape = LayerShape::from_dims(wview.shape(), Some(g.kind))
            .map_err(|e| UticketError::tensor(&wname, strip_param_prefix(e)))?;
        let weights = decode_weights(&wname, wview.dtype(), wview.data())?;
        let flen = shape.filter_len();
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(UticketError::tensor(
                &wname,
                format!(
                    "entry {i} (filter {}) is {} (NaN/inf, or beyond the f32 range, is not allowed)",
                    i / flen,
                    weights[i]
                ),
            ));
        }
        let mname = format!("{}{MASK_SUFFIX}", g.name);
        let (mask, mask_tensor) = if names.contains(mname.as_str()) {
            let mview = st
                .tensor(&mname)
                .map_err(|e| UticketError::tensor(&mname, e.to_string()))?;
            if mview.shape() != wview.shape() {
                return Err(UticketError::MaskShape {
                    mask: mname,
                    mask_shape: mview.shape().to_vec(),
                    weight: wname,
                    weight_shape: wview.shape().to_vec(),
                });
            }
            (
                decode_mask(&mname, mview.dtype(), mview.data())?,
                Some(mname),
            )
        } else {
            (weights.iter().map(|&w| w != 0.0).collect(), None)
        };
        let mut layer = MaskedLayer::new(g.name.clone(), shape, mask, g.out_h, g.out_w)?;
        if let Some(&s) = sparsity.get(&g.name) {
            layer = layer.with_spike_sparsity(s)?;
        }
        layers.push(CheckpointLayer {
            layer,
            weights,
            weight_tensor: wname,
            mask_tensor,
        });
    }
    Ok(Checkpoint {
        origin: origin.to_string(),
        layers,
        geometry_source: source,
        metadata,
        warnings,
        bytes,
    })
}

/// `InvalidParam { name: "shape", reason }` → `reason` (the tensor error names the tensor instead).
fn strip_param_prefix(e: UticketError) -> String {
    match e {
        UticketError::InvalidParam { reason, .. } => reason,
        other => other.to_string(),
    }
}

impl Checkpoint {
    /// The layers (shape, mask, geometry, spike sparsity) in network order.
    pub fn masked_layers(&self) -> Vec<MaskedLayer> {
        self.layers.iter().map(|l| l.layer.clone()).collect()
    }

    /// The layer list in the format of [`LAYERS_METADATA_KEY`].
    pub fn geometry(&self) -> Vec<LayerGeometry> {
        self.layers
            .iter()
            .map(|l| {
                let (out_h, out_w) = l.layer.out_hw();
                LayerGeometry {
                    name: l.layer.name().to_string(),
                    kind: l.layer.shape().kind(),
                    out_h,
                    out_w,
                }
            })
            .collect()
    }

    /// The file with new masks (one per layer, in order): every tensor is kept, each layer's weight is
    /// multiplied by its new mask (pruned entries set to 0; kept entries bit-identical), each mask
    /// tensor is replaced (in its own dtype) or added as `<p>.weight_mask` in the weight's dtype, and
    /// the metadata is kept with `extra_metadata` added (replacing equal keys). A regrown position
    /// whose stored weight is 0 stays 0 but is marked kept by the mask.
    pub fn with_masks_bytes(
        &self,
        masks: &[Vec<bool>],
        extra_metadata: &[(String, String)],
    ) -> Result<Vec<u8>, UticketError> {
        if masks.len() != self.layers.len() {
            return Err(UticketError::param(
                "masks",
                format!("{} masks for {} layers", masks.len(), self.layers.len()),
            ));
        }
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| UticketError::BadFile {
            path: self.origin.clone(),
            reason: format!("not a valid safetensors file ({e})"),
        })?;
        let mut by_weight: HashMap<&str, (&CheckpointLayer, &[bool])> = HashMap::new();
        let mut by_mask: HashMap<&str, (&CheckpointLayer, &[bool])> = HashMap::new();
        for (l, m) in self.layers.iter().zip(masks) {
            if m.len() != l.layer.shape().numel() {
                return Err(UticketError::layer(
                    l.layer.name(),
                    format!(
                        "new mask has {} entries, the weight has {}",
                        m.len(),
                        l.layer.shape().numel()
                    ),
                ));
            }
            by_weight.insert(l.weight_tensor.as_str(), (l, m));
            if let Some(mt) = &l.mask_tensor {
                by_mask.insert(mt.as_str(), (l, m));
            }
        }
        let mut out: Vec<(String, Buf)> = Vec::new();
        for (name, view) in st.iter() {
            let data = if let Some((_, m)) = by_weight.get(name) {
                masked_weight_bytes(view.dtype(), view.data(), m)
            } else if let Some((_, m)) = by_mask.get(name) {
                encode_mask(name, view.dtype(), m)?
            } else {
                view.data().to_vec()
            };
            out.push((
                name.to_string(),
                Buf {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data,
                },
            ));
        }
        for (l, m) in self.layers.iter().zip(masks) {
            if l.mask_tensor.is_none() {
                let w = st
                    .tensor(&l.weight_tensor)
                    .map_err(|e| UticketError::tensor(&l.weight_tensor, e.to_string()))?;
                let name = format!("{}{MASK_SUFFIX}", l.layer.name());
                out.push((
                    name.clone(),
                    Buf {
                        dtype: w.dtype(),
                        shape: w.shape().to_vec(),
                        data: encode_mask(&name, w.dtype(), m)?,
                    },
                ));
            }
        }
        let mut meta = self.metadata.clone();
        for (k, v) in extra_metadata {
            meta.insert(k.clone(), v.clone());
        }
        safetensors::serialize(out.iter().map(|(n, b)| (n.as_str(), b)), Some(meta)).map_err(|e| {
            UticketError::BadFile {
                path: self.origin.clone(),
                reason: format!("cannot serialise the checkpoint ({e})"),
            }
        })
    }

    /// [`Self::with_masks_bytes`] written atomically to `path`.
    pub fn save_with_masks(
        &self,
        path: &Path,
        masks: &[Vec<bool>],
        extra_metadata: &[(String, String)],
    ) -> Result<(), UticketError> {
        let bytes = self.with_masks_bytes(masks, extra_metadata)?;
        write_atomic(path, &bytes)
    }
}

/// A tensor buffer handed to `safetensors::serialize`.
struct Buf {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Buf {
    fn dtype(&self) -> Dtype {
        self.dtype
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

/// Element size in bytes of the dtypes this module reads (all whole bytes).
fn elem_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// Copy of a weight tensor's bytes with every pruned element zeroed (0 is all-zero bytes in every
/// IEEE float format, so kept elements stay bit-identical and no precision is lost).
fn masked_weight_bytes(dtype: Dtype, data: &[u8], mask: &[bool]) -> Vec<u8> {
    let size = elem_size(dtype);
    let mut out = data.to_vec();
    for (chunk, &keep) in out.chunks_exact_mut(size).zip(mask) {
        if !keep {
            chunk.fill(0);
        }
    }
    out
}

/// A mask encoded as 1/0 in `dtype`.
fn encode_mask(name: &str, dtype: Dtype, mask: &[bool]) -> Result<Vec<u8>, UticketError> {
    let one: &[u8] = match dtype {
        Dtype::F32 => &[0x00, 0x00, 0x80, 0x3f],
        Dtype::F64 => &[0, 0, 0, 0, 0, 0, 0xf0, 0x3f],
        Dtype::F16 => &[0x00, 0x3c],
        Dtype::BF16 => &[0x80, 0x3f],
        Dtype::U8 | Dtype::BOOL => &[1],
        other => {
            return Err(UticketError::tensor(
                name,
                format!("cannot write a mask as {other:?}"),
            ));
        }
    };
    let zero = vec![0u8; one.len()];
    let mut out = Vec::with_capacity(mask.len() * one.len());
    for &m in mask {
        out.extend_from_slice(if m { one } else { &zero });
    }
    Ok(out)
}

/// IEEE half precision to f32 (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let frac = (h & 0x3ff) as u32;
    match exp {
        // Subnormal (and zero): frac · 2^-24, exact in f32.
        0 => sign * frac as f32 * (1.0 / 16_777_216.0),
        0x1f if frac == 0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        _ => f32::from_bits(
            (u32::from(h & 0x8000) << 16) | ((u32::from(exp) + 112) << 23) | (frac << 13),
        ),
    }
}

/// bfloat16 to f32 (exact: bf16 is the top half of an f32).
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

fn decode_weights(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, UticketError> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        other => {
            return Err(UticketError::tensor(
                name,
                format!("unsupported weight dtype {other:?} (expected F32, F64, F16 or BF16)"),
            ));
        }
    })
}

fn decode_mask(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<bool>, UticketError> {
    let floats = match dtype {
        Dtype::U8 | Dtype::BOOL => return Ok(data.iter().map(|&b| b != 0).collect()),
        Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 => decode_weights(name, dtype, data)?,
        other => {
            return Err(UticketError::tensor(
                name,
                format!("unsupported mask dtype {other:?} (expected a float type, U8 or BOOL)"),
            ));
        }
    };
    if let Some(i) = floats.iter().position(|v| v.is_nan()) {
        return Err(UticketError::tensor(
            name,
            format!("entry {i} is NaN (a mask must be 0 or non-zero)"),
        ));
    }
    Ok(floats.iter().map(|&v| v != 0.0).collect())
}

/// Numeric-aware string order: runs of digits compare as numbers, so `features.2` < `features.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let lx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ly = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let trim = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
                let nx = &x[trim(&x[..lx])..lx];
                let ny = &y[trim(&y[..ly])..ly];
                let o = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if o != Ordering::Equal {
                    return o;
                }
                x = &x[lx..];
                y = &y[ly..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it into place, so that a
/// crash never leaves a half-written file under the final name. The temporary file is removed on error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), UticketError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, AtomicOrdering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable where the platform allows syncing a directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| UticketError::Io {
        path: path.display().to_string(),
        cause: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a safetensors file from `(name, dtype, shape, bytes)` and metadata.
    fn file(tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>, meta: &[(&str, String)]) -> Vec<u8> {
        let bufs: Vec<(String, Buf)> = tensors
            .into_iter()
            .map(|(n, dtype, shape, data)| (n.to_string(), Buf { dtype, shape, data }))
            .collect();
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        safetensors::serialize(
            bufs.iter().map(|(n, b)| (n.as_str(), b)),
            (!meta.is_empty()).then_some(meta),
        )
        .unwrap()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn natural_order_compares_numbers() {
        let mut v = vec![
            "features.10",
            "features.2",
            "classifier.0",
            "features.02x",
            "a",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "a",
                "classifier.0",
                "features.2",
                "features.02x",
                "features.10"
            ]
        );
        assert_eq!(natural_cmp("x1", "x01"), "x1".cmp("x01"));
    }

    #[test]
    fn half_precision_decodes_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn metadata_layers_masks_and_round_trip() {
        // conv a [2,1,1,2], conv b [2,2,1,1] with an f16 mask, linear fc [1,2] without mask.
        let geometry = vec![
            LayerGeometry {
                name: "a".into(),
                kind: LayerKind::Conv,
                out_h: 4,
                out_w: 4,
            },
            LayerGeometry {
                name: "b".into(),
                kind: LayerKind::Conv,
                out_h: 2,
                out_w: 2,
            },
            LayerGeometry {
                name: "fc".into(),
                kind: LayerKind::Linear,
                out_h: 1,
                out_w: 1,
            },
        ];
        let f16_mask: Vec<u8> = [0x3c00u16, 0, 0x3c00, 0x3c00]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = file(
            vec![
                (
                    "a.weight",
                    Dtype::F32,
                    vec![2, 1, 1, 2],
                    f32s(&[1., 0., 2., 3.]),
                ),
                ("a.bias", Dtype::F32, vec![2], f32s(&[0.5, 0.5])),
                (
                    "b.weight",
                    Dtype::F32,
                    vec![2, 2, 1, 1],
                    f32s(&[4., 5., 6., 7.]),
                ),
                ("b.weight_mask", Dtype::F16, vec![2, 2, 1, 1], f16_mask),
                ("bn.weight", Dtype::F32, vec![2], f32s(&[1., 1.])),
                ("fc.weight", Dtype::F32, vec![1, 2], f32s(&[0., 8.])),
            ],
            &[
                (LAYERS_METADATA_KEY, geometry_to_json(&geometry)),
                (SPIKE_SPARSITY_METADATA_KEY, r#"{"b": 0.8}"#.to_string()),
                ("format", "x".to_string()),
            ],
        );
        let ck = load_checkpoint_bytes(bytes, "mem", None).unwrap();
        assert_eq!(ck.geometry_source, GeometrySource::Metadata);
        assert!(ck.warnings.is_empty(), "{:?}", ck.warnings);
        assert_eq!(ck.geometry(), geometry);
        let layers = ck.masked_layers();
        assert_eq!(layers[0].mask(), [true, false, true, true]);
        assert_eq!(layers[1].mask(), [true, false, true, true]);
        assert_eq!(layers[1].spike_sparsity(), Some(0.8));
        assert_eq!(layers[1].out_hw(), (2, 2));
        assert_eq!(layers[2].mask(), [false, true]);
        assert_eq!(ck.layers[1].mask_tensor.as_deref(), Some("b.weight_mask"));

        // Write new masks: b drops entry 0 and regrows entry 1; a regrows its zero weight.
        let masks = vec![
            vec![true; 4],
            vec![false, true, true, true],
            vec![true, true],
        ];
        let out = ck
            .with_masks_bytes(&masks, &[("netxray.balance".into(), "{}".into())])
            .unwrap();
        let back = load_checkpoint_bytes(out.clone(), "out", None).unwrap();
        let bl = back.masked_layers();
        for (l, m) in bl.iter().zip(&masks) {
            assert_eq!(l.mask(), m.as_slice(), "{}", l.name());
        }
        // Weights ⊙ mask; the f16 mask stays f16; other tensors and metadata survive.
        assert_eq!(back.layers[1].weights, vec![0., 5., 6., 7.]);
        assert_eq!(back.layers[0].weights, vec![1., 0., 2., 3.]);
        assert_eq!(back.metadata["format"], "x");
        assert_eq!(back.metadata["netxray.balance"], "{}");
        let st = SafeTensors::deserialize(&out).unwrap();
        assert_eq!(st.tensor("b.weight_mask").unwrap().dtype(), Dtype::F16);
        assert_eq!(st.tensor("a.weight_mask").unwrap().dtype(), Dtype::F32);
        assert_eq!(st.tensor("a.bias").unwrap().data(), f32s(&[0.5, 0.5]));
        assert!(ck.with_masks_bytes(&masks[..2], &[]).is_err());
    }

    #[test]
    fn without_metadata_layers_are_sorted_naturally_with_a_warning() {
        let bytes = file(
            vec![
                (
                    "features.10.weight",
                    Dtype::F64,
                    vec![1, 1, 1, 1],
                    1f64.to_le_bytes().to_vec(),
                ),
                (
                    "features.2.weight",
                    Dtype::BF16,
                    vec![1, 1, 1, 1],
                    vec![0x80, 0x3f],
                ),
                ("features.2.bias", Dtype::F32, vec![1], f32s(&[1.0])),
                (
                    "classifier.weight_orig",
                    Dtype::F32,
                    vec![1, 2],
                    f32s(&[1., 2.]),
                ),
                ("classifier.weight_mask", Dtype::U8, vec![1, 2], vec![0, 1]),
            ],
            &[],
        );
        let ck = load_checkpoint_bytes(bytes, "mem", None).unwrap();
        assert_eq!(ck.geometry_source, GeometrySource::PerPixel);
        let names: Vec<&str> = ck.layers.iter().map(|l| l.layer.name()).collect();
        assert_eq!(names, ["classifier", "features.2", "features.10"]);
        assert_eq!(ck.layers[0].weight_tensor, "classifier.weight_orig");
        assert_eq!(ck.layers[0].layer.mask(), [false, true]);
        assert_eq!(ck.layers[1].weights, vec![1.0]);
        assert!(ck.warnings[0].contains("per output pixel"));
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let err = |bytes: Vec<u8>| {
            load_checkpoint_bytes(bytes, "f", None)
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"garbage".to_vec()).contains("not a valid safetensors"));
        let e = err(file(
            vec![("x.bias", Dtype::F32, vec![1], f32s(&[1.]))],
            &[],
        ));
        assert!(e.contains("no conv or linear layer"), "{e}");
        let e = err(file(
            vec![("c.weight", Dtype::F32, vec![1, 2], f32s(&[f32::NAN, 1.]))],
            &[],
        ));
        assert!(e.contains("'c.weight'") && e.contains("NaN"), "{e}");
        let e = err(file(
            vec![
                ("c.weight", Dtype::F32, vec![1, 2], f32s(&[1., 1.])),
                ("c.weight_mask", Dtype::F32, vec![2, 1], f32s(&[1., 1.])),
            ],
            &[],
        ));
        assert!(e.contains("mask 'c.weight_mask' has shape [2, 1]"), "{e}");
        let e = err(file(
            vec![
                ("c.weight", Dtype::F32, vec![1, 2], f32s(&[1., 1.])),
                (
                    "c.weight_mask",
                    Dtype::F32,
                    vec![1, 2],
                    f32s(&[f32::NAN, 1.]),
                ),
            ],
            &[],
        ));
        assert!(e.contains("NaN"), "{e}");
        let e = err(file(
            vec![("c.weight", Dtype::I32, vec![1, 2], vec![0; 8])],
            &[],
        ));
        assert!(e.contains("unsupported weight dtype"), "{e}");
        let meta = |v: &str| vec![(LAYERS_METADATA_KEY, v.to_string())];
        let w = || vec![("c.weight", Dtype::F32, vec![1, 2], f32s(&[1., 1.]))];
        let e = err(file(w(), &meta("{}")));
        assert!(
            e.contains("netxray.layers") && e.contains("JSON array"),
            "{e}"
        );
        let e = err(file(
            w(),
            &meta(r#"[{"name":"d","kind":"conv","out_h":1,"out_w":1}]"#),
        ));
        assert!(e.contains("no tensor 'd.weight'"), "{e}");
        let e = err(file(
            w(),
            &meta(r#"[{"name":"c","kind":"conv","out_h":1,"out_w":1}]"#),
        ));
        assert!(e.contains("declared conv"), "{e}");
        let e = err(file(
            w(),
            &meta(r#"[{"name":"c","kind":"linear","out_h":0,"out_w":1}]"#),
        ));
        assert!(e.contains("zero side"), "{e}");
        let e = err(file(
            w(),
            &[(SPIKE_SPARSITY_METADATA_KEY, r#"{"c": 2}"#.to_string())],
        ));
        assert!(e.contains("not in [0, 1]"), "{e}");
    }

    #[test]
    fn geometry_file_overrides_metadata_and_flags_unlisted_layers() {
        let bytes = file(
            vec![
                ("a.weight", Dtype::F32, vec![1, 1, 1, 1], f32s(&[1.])),
                ("b.weight", Dtype::F32, vec![1, 1, 1, 1], f32s(&[1.])),
            ],
            &[(
                LAYERS_METADATA_KEY,
                r#"[{"name":"a","kind":"conv","out_h":1,"out_w":1}]"#.to_string(),
            )],
        );
        let g = parse_geometry(r#"[{"name":"b","kind":"conv","out_h":3,"out_w":5}]"#, "g").unwrap();
        let ck = load_checkpoint_bytes(bytes, "mem", Some(g)).unwrap();
        assert_eq!(ck.geometry_source, GeometrySource::File);
        assert_eq!(ck.layers.len(), 1);
        assert_eq!(ck.layers[0].layer.out_hw(), (3, 5));
        assert_eq!(ck.warnings.len(), 2, "{:?}", ck.warnings);
        assert!(parse_geometry("[]", "g").is_err());
        let dup = r#"[{"name":"a","kind":"conv","out_h":1,"out_w":1},
                      {"name":"a","kind":"conv","out_h":1,"out_w":1}]"#;
        assert!(
            parse_geometry(dup, "g")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/x");
        assert!(matches!(
            write_atomic(&missing, b"x"),
            Err(UticketError::Io { .. })
        ));
    }
}
