//! Model files: safetensors (canonical `layers.{i}.weight|bias`, or PyTorch `nn.Sequential` names
//! `0.weight`, `2.weight`, … with an optional common prefix such as `model.`; f64 or f32) and `.npz`
//! import of the row-vector layout `w0, b0, w1, …` (`w_i` of shape `(fan_in, fan_out)`, the layout of the
//! CRYPTO 2020 reference models).
//!
//! The format is detected from the content (zip magic → `.npz`, otherwise safetensors), never from the
//! extension. Every problem names the tensor it concerns, in the file's own naming. Writes are atomic
//! (temporary file in the same folder, fsync, rename).

use crate::{Arch, Layer, Network, ReluError};
use faer::Mat;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Element type of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// 64-bit floats (default; what the attack needs).
    F64,
    /// 32-bit floats (PyTorch-style exports).
    F32,
}

/// Value of the `format` metadata key written by [`save_network`].
pub const FORMAT_TAG: &str = "netxray-relu";

fn bad_file(origin: &str, reason: impl Into<String>) -> ReluError {
    ReluError::BadFile {
        path: origin.to_string(),
        reason: reason.into(),
    }
}

/// Loads a network from `.safetensors` or `.npz` (detected by content, not by extension).
pub fn load_network(path: &Path) -> Result<Network, ReluError> {
    let bytes = std::fs::read(path).map_err(|e| ReluError::Io {
        path: path.display().to_string(),
        cause: e,
    })?;
    load_network_bytes(&bytes, &path.display().to_string())
}

/// Loads a network from the bytes of a `.safetensors` or `.npz` file; `origin` (a path or a URL) only
/// appears in error messages.
pub fn load_network_bytes(bytes: &[u8], origin: &str) -> Result<Network, ReluError> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        load_npz(origin, bytes)
    } else {
        load_safetensors(origin, bytes)
    }
}

/// A tensor read from a file: row-major `f64` data and its shape.
struct Raw {
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn st_to_f64(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f64>, ReluError> {
    match dtype {
        Dtype::F64 => Ok(data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()),
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect()),
        other => Err(ReluError::tensor(
            name,
            format!("unsupported dtype {other:?} (expected F64 or F32)"),
        )),
    }
}

/// Splits `<prefix><int>.weight|bias` into `(prefix, int, is_weight)`.
fn split_param_name(name: &str) -> Option<(&str, usize, bool)> {
    let (stem, is_weight) = if let Some(s) = name.strip_suffix(".weight") {
        (s, true)
    } else if let Some(s) = name.strip_suffix(".bias") {
        (s, false)
    } else {
        return None;
    };
    let (prefix, idx) = match stem.rfind('.') {
        Some(p) => (&stem[..=p], &stem[p + 1..]),
        None => ("", stem),
    };
    if idx.is_empty() || !idx.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((prefix, idx.parse().ok()?, is_weight))
}

/// The (weight, bias) tensor names found for one layer index.
type LayerNames = (Option<String>, Option<String>);

fn load_safetensors(origin: &str, bytes: &[u8]) -> Result<Network, ReluError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        bad_file(
            origin,
            format!("neither a .npz archive nor a valid safetensors file ({e})"),
        )
    })?;
    let names = st.names();
    // prefix -> index -> (weight name, bias name)
    let mut groups: BTreeMap<String, BTreeMap<usize, LayerNames>> = BTreeMap::new();
    let mut strays: Vec<&str> = Vec::new();
    for name in &names {
        match split_param_name(name) {
            Some((prefix, i, w)) => {
                let e = groups
                    .entry(prefix.to_string())
                    .or_default()
                    .entry(i)
                    .or_default();
                if w {
                    e.0 = Some(name.to_string());
                } else {
                    e.1 = Some(name.to_string());
                }
            }
            None if name.ends_with(".weight") || name.ends_with(".bias") => strays.push(name),
            None => {}
        }
    }
    if groups.is_empty() {
        return Err(ReluError::MissingTensor(
            "layers.0.weight (or a PyTorch nn.Sequential '0.weight'); the file has no \
             '<prefix><int>.weight' tensor"
                .into(),
        ));
    }
    if groups.len() > 1 {
        let p: Vec<String> = groups.keys().map(|k| format!("'{k}'")).collect();
        return Err(bad_file(
            origin,
            format!(
                "layer tensors use several prefixes ({}); expected one dense ReLU stack",
                p.join(", ")
            ),
        ));
    }
    if let Some(s) = strays.first() {
        return Err(ReluError::tensor(
            *s,
            "does not fit the layout '<prefix><int>.weight|bias' of a dense ReLU stack",
        ));
    }
    let (prefix, layers_by_idx) = groups.into_iter().next().expect("one group");
    if prefix == "layers." {
        // Canonical names must be contiguous from 0.
        for (k, &i) in layers_by_idx.keys().enumerate() {
            if i != k {
                return Err(ReluError::MissingTensor(format!("layers.{k}.weight")));
            }
        }
    }
    let mut layers: Vec<Layer> = Vec::with_capacity(layers_by_idx.len());
    let mut prev: Option<(String, usize)> = None;
    for (i, (wn, bn)) in layers_by_idx {
        let wn = wn.ok_or_else(|| ReluError::MissingTensor(format!("{prefix}{i}.weight")))?;
        let bn = bn.ok_or_else(|| ReluError::MissingTensor(format!("{prefix}{i}.bias")))?;
        let wv = st
            .tensor(&wn)
            .map_err(|e| ReluError::tensor(&wn, e.to_string()))?;
        let bv = st
            .tensor(&bn)
            .map_err(|e| ReluError::tensor(&bn, e.to_string()))?;
        let w = Raw {
            shape: wv.shape().to_vec(),
            data: st_to_f64(&wn, wv.dtype(), wv.data())?,
        };
        let b = Raw {
            shape: bv.shape().to_vec(),
            data: st_to_f64(&bn, bv.dtype(), bv.data())?,
        };
        if w.shape.len() != 2 {
            return Err(ReluError::tensor(
                &wn,
                format!("must be 2-D [out, in], has shape {:?}", w.shape),
            ));
        }
        let (o, n_in) = (w.shape[0], w.shape[1]);
        if b.shape != [o] {
            return Err(ReluError::tensor(
                &bn,
                format!("must have shape [{o}] (rows of {wn}), has {:?}", b.shape),
            ));
        }
        let weight = Mat::from_fn(o, n_in, |r, c| w.data[r * n_in + c]);
        layers.push(checked_layer(&wn, &bn, weight, b.data, &mut prev)?);
    }
    let net = Network::new(layers)?;
    if let Some(meta) = st_metadata(bytes)
        && let Some(a) = meta.get("arch")
        && let Ok(arch) = a.parse::<Arch>()
        && arch != net.arch()
    {
        return Err(bad_file(
            origin,
            format!(
                "metadata says arch {arch} but the tensors describe {}",
                net.arch()
            ),
        ));
    }
    Ok(net)
}

fn st_metadata(bytes: &[u8]) -> Option<HashMap<String, String>> {
    SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
}

/// Checks shapes chain with the previous layer and every value is finite, naming the file's tensors.
fn checked_layer(
    wn: &str,
    bn: &str,
    weight: Mat<f64>,
    bias: Vec<f64>,
    prev: &mut Option<(String, usize)>,
) -> Result<Layer, ReluError> {
    let (o, n_in) = (weight.nrows(), weight.ncols());
    if o == 0 || n_in == 0 {
        return Err(ReluError::tensor(
            wn,
            format!("has a zero dimension ([{o}, {n_in}] as [out, in])"),
        ));
    }
    if let Some((pn, pout)) = prev.as_ref()
        && *pout != n_in
    {
        return Err(ReluError::tensor(
            wn,
            format!("takes {n_in} inputs but {pn} gives {pout} outputs (dims do not chain)"),
        ));
    }
    for r in 0..o {
        for c in 0..n_in {
            let v = weight[(r, c)];
            if !v.is_finite() {
                return Err(ReluError::tensor(
                    wn,
                    format!("entry [out {r}, in {c}] is {v} (NaN/inf not allowed)"),
                ));
            }
        }
    }
    if let Some(j) = bias.iter().position(|b| !b.is_finite()) {
        return Err(ReluError::tensor(
            bn,
            format!("entry [{j}] is {} (NaN/inf not allowed)", bias[j]),
        ));
    }
    *prev = Some((wn.to_string(), o));
    Ok(Layer { weight, bias })
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

/// Serialises `net` as canonical safetensors (`layers.{i}.weight` `[out, in]`, `layers.{i}.bias`) with
/// metadata `{"format": "netxray-relu", "arch": "…"}`.
pub fn to_safetensors_bytes(net: &Network, dtype: SaveDtype) -> Result<Vec<u8>, ReluError> {
    let st_dtype = match dtype {
        SaveDtype::F64 => Dtype::F64,
        SaveDtype::F32 => Dtype::F32,
    };
    let mut buffers: Vec<(String, Buf)> = Vec::new();
    for (i, l) in net.layers().iter().enumerate() {
        let mut w = Vec::new();
        for r in 0..l.fan_out() {
            for c in 0..l.fan_in() {
                push(&mut w, l.weight[(r, c)], dtype);
            }
        }
        let mut b = Vec::new();
        for &v in &l.bias {
            push(&mut b, v, dtype);
        }
        buffers.push((
            format!("layers.{i}.weight"),
            Buf {
                dtype: st_dtype,
                shape: vec![l.fan_out(), l.fan_in()],
                data: w,
            },
        ));
        buffers.push((
            format!("layers.{i}.bias"),
            Buf {
                dtype: st_dtype,
                shape: vec![l.fan_out()],
                data: b,
            },
        ));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT_TAG.to_string());
    meta.insert("arch".to_string(), net.arch().to_string());
    safetensors::serialize(buffers.iter().map(|(n, b)| (n.as_str(), b)), Some(meta))
        .map_err(|e| ReluError::InvalidParam(format!("cannot serialise the network: {e}")))
}

/// Writes `net` atomically in the canonical safetensors layout (see [`to_safetensors_bytes`]).
pub fn save_network(path: &Path, net: &Network, dtype: SaveDtype) -> Result<(), ReluError> {
    let bytes = to_safetensors_bytes(net, dtype)?;
    write_atomic(path, &bytes)
}

fn push(out: &mut Vec<u8>, v: f64, dtype: SaveDtype) {
    match dtype {
        SaveDtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
        SaveDtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a temporary file next to `path`, syncs it, and renames it into place, so that a
/// crash never leaves a half-written file under the final name. The temporary file is removed on error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReluError> {
    let io = |e: std::io::Error| ReluError::Io {
        path: path.display().to_string(),
        cause: e,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
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
    result.map_err(io)
}

// ---------------------------------------------------------------------------------------------
// .npy / .npz
// ---------------------------------------------------------------------------------------------

/// A value of the Python-literal header dict of a `.npy` file.
#[derive(Debug, PartialEq)]
enum PyVal {
    Str(String),
    Bool(bool),
    Int(usize),
    Tuple(Vec<PyVal>),
    /// Lists (structured dtypes) and anything else we do not interpret.
    Other,
}

/// A tiny parser for the header dict numpy writes, e.g.
/// `{'descr': '<f8', 'fortran_order': False, 'shape': (40, 20), }`.
struct HeaderParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> HeaderParser<'a> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.pos))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let q = self.peek().ok_or("unexpected end of header")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a string at byte {}", self.pos));
        }
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos] != q {
            self.pos += 1;
        }
        if self.pos >= self.s.len() {
            return Err("unterminated string in header".into());
        }
        let out = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(out)
    }
    /// Skips a bracketed value (lists, nested tuples of non-ints) without interpreting it.
    fn skip_group(&mut self, open: u8, close: u8) -> Result<(), String> {
        self.eat(open)?;
        let mut depth = 1usize;
        while self.pos < self.s.len() {
            let c = self.s[self.pos];
            self.pos += 1;
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
        }
        Err("unbalanced brackets in header".into())
    }
    fn value(&mut self) -> Result<PyVal, String> {
        match self.peek().ok_or("unexpected end of header")? {
            b'\'' | b'"' => Ok(PyVal::Str(self.string()?)),
            b'(' => {
                self.eat(b'(')?;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(b')') {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value()?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b')') => {}
                        _ => return Err(format!("bad tuple at byte {}", self.pos)),
                    }
                }
                Ok(PyVal::Tuple(items))
            }
            b'[' => {
                self.skip_group(b'[', b']')?;
                Ok(PyVal::Other)
            }
            b'{' => {
                self.skip_group(b'{', b'}')?;
                Ok(PyVal::Other)
            }
            c if c.is_ascii_digit() => {
                let start = self.pos;
                while self.pos < self.s.len()
                    && (self.s[self.pos].is_ascii_digit() || self.s[self.pos] == b'L')
                {
                    self.pos += 1;
                }
                let txt = std::str::from_utf8(&self.s[start..self.pos])
                    .unwrap_or("")
                    .trim_end_matches('L');
                txt.parse::<usize>()
                    .map(PyVal::Int)
                    .map_err(|_| format!("integer '{txt}' out of range"))
            }
            c if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(PyVal::Bool(true)),
                    b"False" => Ok(PyVal::Bool(false)),
                    _ => Ok(PyVal::Other),
                }
            }
            c => Err(format!(
                "unexpected character '{}' at byte {}",
                c as char, self.pos
            )),
        }
    }
    fn dict(&mut self) -> Result<HashMap<String, PyVal>, String> {
        self.eat(b'{')?;
        let mut out = HashMap::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(out);
            }
            let k = self.string()?;
            self.eat(b':')?;
            let v = self.value()?;
            out.insert(k, v);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(format!("bad dict at byte {}", self.pos)),
            }
        }
    }
}

/// Element type of a `.npy` array.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NpyKind {
    /// IEEE float of 4 or 8 bytes, little or big endian.
    Float { size: usize, big: bool },
    /// Fixed-width unicode (UTF-32), `n` characters.
    Unicode { n: usize, big: bool },
    /// Fixed-width bytes, `n` bytes.
    Bytes { n: usize },
}

/// A parsed `.npy` array.
struct Npy<'a> {
    kind: NpyKind,
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
    body: &'a [u8],
}

fn parse_descr(descr: &str) -> Option<NpyKind> {
    let (order, rest) = match descr.as_bytes().first()? {
        b'<' | b'=' => (Some(false), &descr[1..]),
        b'>' => (Some(true), &descr[1..]),
        b'|' => (None, &descr[1..]),
        _ => (None, descr),
    };
    let big = order.unwrap_or(false);
    let (t, n) = rest.split_at(1.min(rest.len()));
    let n: usize = n.parse().ok()?;
    match t {
        "f" if n == 4 || n == 8 => Some(NpyKind::Float { size: n, big }),
        "U" => Some(NpyKind::Unicode { n, big }),
        "S" | "a" => Some(NpyKind::Bytes { n }),
        _ => None,
    }
}

/// Parses the header of one `.npy` array (versions 1–3). The element type is left to the caller.
fn parse_npy<'a>(name: &str, b: &'a [u8]) -> Result<Npy<'a>, ReluError> {
    let err = |r: String| ReluError::tensor(name, r);
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy array (bad magic)".into()));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10usize),
        2 | 3 => {
            if b.len() < 12 {
                return Err(err("truncated .npy header".into()));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(err(format!("unsupported .npy version {v}"))),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| err("truncated .npy header".into()))?;
    let mut p = HeaderParser {
        s: &b[start..end],
        pos: 0,
    };
    let dict = p.dict().map_err(|e| err(format!("bad .npy header: {e}")))?;
    let descr = match dict.get("descr") {
        Some(PyVal::Str(s)) => s.clone(),
        Some(_) => {
            return Err(err(
                "structured dtypes are not supported (expected <f8 or <f4)".into(),
            ));
        }
        None => return Err(err("bad .npy header: no 'descr'".into())),
    };
    let fortran = match dict.get("fortran_order") {
        Some(PyVal::Bool(f)) => *f,
        None => false,
        Some(_) => return Err(err("bad .npy header: 'fortran_order' is not a bool".into())),
    };
    let shape = match dict.get("shape") {
        Some(PyVal::Tuple(items)) => items
            .iter()
            .map(|v| match v {
                PyVal::Int(n) => Ok(*n),
                _ => Err(err("bad .npy header: 'shape' holds a non-integer".into())),
            })
            .collect::<Result<Vec<usize>, _>>()?,
        _ => return Err(err("bad .npy header: no 'shape' tuple".into())),
    };
    let kind = parse_descr(&descr)
        .ok_or_else(|| err(format!("unsupported dtype '{descr}' (expected <f8 or <f4)")))?;
    Ok(Npy {
        kind,
        descr,
        fortran,
        shape,
        body: &b[end..],
    })
}

impl Npy<'_> {
    fn count(&self, name: &str) -> Result<usize, ReluError> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| ReluError::tensor(name, format!("shape {:?} overflows", self.shape)))
    }

    /// The data as row-major `f64` (floats only).
    fn floats(&self, name: &str) -> Result<Vec<f64>, ReluError> {
        let NpyKind::Float { size, big } = self.kind else {
            return Err(ReluError::tensor(
                name,
                format!(
                    "dtype '{}' is not a float (expected <f8 or <f4)",
                    self.descr
                ),
            ));
        };
        let n = self.count(name)?;
        let need = n
            .checked_mul(size)
            .ok_or_else(|| ReluError::tensor(name, "size overflows"))?;
        if self.body.len() < need {
            return Err(ReluError::tensor(
                name,
                format!(
                    "truncated data: {} of {need} bytes (shape {:?})",
                    self.body.len(),
                    self.shape
                ),
            ));
        }
        let data: Vec<f64> = self.body[..need]
            .chunks_exact(size)
            .map(|c| match (size, big) {
                (8, false) => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
                (8, true) => f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
                (_, false) => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                (_, true) => f32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f64,
            })
            .collect();
        if self.fortran && self.shape.len() >= 2 {
            // Column-major → row-major (general rank: reverse the index order).
            let dims = &self.shape;
            let mut out = vec![0.0; n];
            let mut idx = vec![0usize; dims.len()];
            for (k, slot) in out.iter_mut().enumerate() {
                // Row-major multi-index of k.
                let mut rem = k;
                for d in (0..dims.len()).rev() {
                    idx[d] = rem % dims[d];
                    rem /= dims[d];
                }
                // Column-major offset of that multi-index.
                let mut off = 0;
                for d in (0..dims.len()).rev() {
                    off = off * dims[d] + idx[d];
                }
                *slot = data[off];
            }
            Ok(out)
        } else {
            Ok(data)
        }
    }

    /// The value of a string scalar (unicode or bytes), if it is one.
    fn string_scalar(&self) -> Option<String> {
        if !(self.shape.is_empty() || self.shape == [1]) {
            return None;
        }
        match self.kind {
            NpyKind::Unicode { n, big } => {
                let raw = self.body.get(..n.checked_mul(4)?)?;
                let s: String = raw
                    .chunks_exact(4)
                    .map(|c| {
                        let u = if big {
                            u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                        } else {
                            u32::from_le_bytes([c[0], c[1], c[2], c[3]])
                        };
                        char::from_u32(u).unwrap_or('\u{fffd}')
                    })
                    .collect();
                Some(s.trim_end_matches('\0').to_string())
            }
            NpyKind::Bytes { n } => {
                let raw = self.body.get(..n)?;
                Some(
                    String::from_utf8_lossy(raw)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            }
            NpyKind::Float { .. } => None,
        }
    }
}

/// Largest `.npy` entry read from an archive (guards against zip bombs).
const MAX_NPY_BYTES: u64 = 16 << 30;

fn load_npz(origin: &str, bytes: &[u8]) -> Result<Network, ReluError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad_file(origin, format!("not a valid .npz archive ({e})")))?;
    let mut arrays: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..zip.len() {
        let f = zip
            .by_index(i)
            .map_err(|e| bad_file(origin, format!("corrupt .npz entry #{i} ({e})")))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().trim_end_matches(".npy").to_string();
        let size = f.size();
        if size > MAX_NPY_BYTES {
            return Err(ReluError::tensor(
                &name,
                format!("entry of {size} bytes is too large"),
            ));
        }
        let mut buf = Vec::with_capacity(size.min(1 << 28) as usize);
        f.take(size + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad_file(origin, format!("cannot read entry '{name}' ({e})")))?;
        arrays.insert(name, buf);
    }
    let mut n_layers = 0;
    while arrays.contains_key(&format!("w{n_layers}")) {
        n_layers += 1;
    }
    if n_layers == 0 {
        return Err(ReluError::MissingTensor(
            "w0 (npz layout w0, b0, w1, b1, …)".into(),
        ));
    }
    // Any w_k / b_k beyond the contiguous run means a layer is missing.
    for k in arrays.keys() {
        if let Some(rest) = k.strip_prefix('w').or_else(|| k.strip_prefix('b'))
            && let Ok(idx) = rest.parse::<usize>()
            && idx >= n_layers
        {
            return Err(ReluError::MissingTensor(format!("w{n_layers}")));
        }
    }
    let mut layers = Vec::with_capacity(n_layers);
    let mut prev: Option<(String, usize)> = None;
    for i in 0..n_layers {
        let wn = format!("w{i}");
        let bn = format!("b{i}");
        let w = parse_npy(&wn, &arrays[&wn])?;
        let wd = w.floats(&wn)?;
        let b = parse_npy(
            &bn,
            arrays
                .get(&bn)
                .ok_or_else(|| ReluError::MissingTensor(bn.clone()))?,
        )?;
        let bd = b.floats(&bn)?;
        if w.shape.len() != 2 {
            return Err(ReluError::tensor(
                &wn,
                format!("must be 2-D (fan_in, fan_out), has shape {:?}", w.shape),
            ));
        }
        let (fi, fo) = (w.shape[0], w.shape[1]);
        if b.shape != [fo] {
            return Err(ReluError::tensor(
                &bn,
                format!(
                    "must have shape ({fo},) (columns of {wn}), has {:?}",
                    b.shape
                ),
            ));
        }
        let weight = Mat::from_fn(fo, fi, |r, c| wd[c * fo + r]);
        layers.push(checked_layer(&wn, &bn, weight, bd, &mut prev)?);
    }
    let net = Network::new(layers)?;
    if let Some(a) = arrays.get("arch") {
        let npy = parse_npy("arch", a)?;
        if let Some(s) = npy.string_scalar() {
            let arch: Arch = s.parse().map_err(|_| {
                ReluError::tensor("arch", format!("'{s}' is not an architecture string"))
            })?;
            if arch != net.arch() {
                return Err(ReluError::tensor(
                    "arch",
                    format!("says {arch} but the weights describe {}", net.arch()),
                ));
            }
        }
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_names_split() {
        assert_eq!(split_param_name("0.weight"), Some(("", 0, true)));
        assert_eq!(
            split_param_name("model.12.bias"),
            Some(("model.", 12, false))
        );
        assert_eq!(
            split_param_name("layers.3.weight"),
            Some(("layers.", 3, true))
        );
        assert_eq!(split_param_name("fc.weight"), None);
        assert_eq!(split_param_name("x.0.weight_mask"), None);
    }

    #[test]
    fn header_dict_parses() {
        let h = b"{'descr': '<f8', 'fortran_order': True, 'shape': (3, 4), }";
        let d = HeaderParser { s: h, pos: 0 }.dict().unwrap();
        assert_eq!(d["descr"], PyVal::Str("<f8".into()));
        assert_eq!(d["fortran_order"], PyVal::Bool(true));
        assert_eq!(d["shape"], PyVal::Tuple(vec![PyVal::Int(3), PyVal::Int(4)]));
        let h = b"{\"descr\": [('a', '<f8')], 'fortran_order': False, 'shape': (5,)}";
        let d = HeaderParser { s: h, pos: 0 }.dict().unwrap();
        assert_eq!(d["descr"], PyVal::Other);
        assert_eq!(d["shape"], PyVal::Tuple(vec![PyVal::Int(5)]));
        assert!(
            HeaderParser {
                s: b"{'a': ",
                pos: 0
            }
            .dict()
            .is_err()
        );
    }

    #[test]
    fn descr_kinds() {
        assert_eq!(
            parse_descr("<f8"),
            Some(NpyKind::Float {
                size: 8,
                big: false
            })
        );
        assert_eq!(
            parse_descr(">f4"),
            Some(NpyKind::Float { size: 4, big: true })
        );
        assert_eq!(
            parse_descr("<U13"),
            Some(NpyKind::Unicode { n: 13, big: false })
        );
        assert_eq!(parse_descr("|S7"), Some(NpyKind::Bytes { n: 7 }));
        assert_eq!(parse_descr("<i8"), None);
        assert_eq!(parse_descr("<f2"), None);
    }
}
