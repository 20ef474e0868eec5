//! Model files: safetensors (canonical `layers.{i}.weight|bias`, or PyTorch `nn.Sequential` names
//! `0.weight`, `2.weight`, …; f64 or f32) and `.npz` import of the row-vector layout `w0, b0, w1, …`
//! (`w_i` of shape `(fan_in, fan_out)`, the layout of the CRYPTO 2020 reference models).
//!
//! Every problem names the tensor it concerns. Writes are atomic (temporary file, then rename).

use crate::{Layer, Network, ReluError};
use faer::Mat;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

/// Element type of a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// 64-bit floats (default; what the attack needs).
    F64,
    /// 32-bit floats (PyTorch-style exports).
    F32,
}

fn bad_file(path: &Path, reason: impl Into<String>) -> ReluError {
    ReluError::BadFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Loads a network from `.safetensors` or `.npz` (detected by content, not by extension).
pub fn load_network(path: &Path) -> Result<Network, ReluError> {
    let bytes = std::fs::read(path).map_err(|e| ReluError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        load_npz(path, &bytes)
    } else {
        load_safetensors(path, &bytes)
    }
}

struct Raw {
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn to_f64(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f64>, ReluError> {
    match dtype {
        Dtype::F64 => Ok(data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        Dtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect()),
        other => Err(ReluError::tensor(
            name,
            format!("unsupported dtype {other:?} (expected F64 or F32)"),
        )),
    }
}

fn load_safetensors(path: &Path, bytes: &[u8]) -> Result<Network, ReluError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad_file(path, format!("not a valid safetensors file ({e})")))?;
    let mut raw: HashMap<String, Raw> = HashMap::new();
    for (name, view) in st.tensors() {
        let data = to_f64(&name, view.dtype(), view.data())?;
        raw.insert(
            name.clone(),
            Raw {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    // Canonical names first, then `<prefix><int>.weight` (nn.Sequential).
    let mut names: Vec<(String, String)> = Vec::new();
    if raw.contains_key("layers.0.weight") {
        let mut i = 0;
        while raw.contains_key(&format!("layers.{i}.weight")) {
            names.push((format!("layers.{i}.weight"), format!("layers.{i}.bias")));
            i += 1;
        }
    } else {
        let mut idx: Vec<(usize, String)> = raw
            .keys()
            .filter_map(|k| {
                let stem = k.strip_suffix(".weight")?;
                let last = stem.rsplit('.').next()?;
                last.parse::<usize>().ok().map(|n| (n, stem.to_string()))
            })
            .collect();
        idx.sort();
        for (_, stem) in idx {
            names.push((format!("{stem}.weight"), format!("{stem}.bias")));
        }
    }
    if names.is_empty() {
        return Err(ReluError::MissingTensor(
            "layers.0.weight (or a PyTorch nn.Sequential '0.weight')".into(),
        ));
    }
    let mut layers = Vec::new();
    for (wn, bn) in names {
        let w = raw
            .get(&wn)
            .ok_or_else(|| ReluError::MissingTensor(wn.clone()))?;
        let b = raw
            .get(&bn)
            .ok_or_else(|| ReluError::MissingTensor(bn.clone()))?;
        if w.shape.len() != 2 {
            return Err(ReluError::tensor(
                &wn,
                format!("must be 2-D [out, in], has shape {:?}", w.shape),
            ));
        }
        if b.shape.len() != 1 || b.shape[0] != w.shape[0] {
            return Err(ReluError::tensor(
                &bn,
                format!("must have shape [{}], has {:?}", w.shape[0], b.shape),
            ));
        }
        let (o, i) = (w.shape[0], w.shape[1]);
        layers.push(Layer {
            weight: Mat::from_fn(o, i, |r, c| w.data[r * i + c]),
            bias: b.data.clone(),
        });
    }
    Network::new(layers)
}

/// Writes `net` atomically in the canonical layout with metadata `format` and `arch`.
pub fn save_network(path: &Path, net: &Network, dtype: SaveDtype) -> Result<(), ReluError> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
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
            vec![l.fan_out(), l.fan_in()],
            w,
        ));
        buffers.push((format!("layers.{i}.bias"), vec![l.fan_out()], b));
    }
    let st_dtype = match dtype {
        SaveDtype::F64 => Dtype::F64,
        SaveDtype::F32 => Dtype::F32,
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(st_dtype, s.clone(), d)
                    .expect("consistent buffer"),
            )
        })
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "netxray-relu".to_string());
    meta.insert("arch".to_string(), net.arch().to_string());
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| bad_file(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

fn push(out: &mut Vec<u8>, v: f64, dtype: SaveDtype) {
    match dtype {
        SaveDtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
        SaveDtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, and renames it into place, so that a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReluError> {
    let io = |e: std::io::Error| ReluError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Parses one `.npy` array (versions 1–3, `<f8` or `<f4`, C or Fortran order) into row-major f64.
fn parse_npy(name: &str, b: &[u8]) -> Result<Raw, ReluError> {
    let err = |r: &str| ReluError::tensor(name, r.to_string());
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy array (bad magic)"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                return Err(err("truncated header"));
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => return Err(err(&format!("unsupported .npy version {v}"))),
    };
    if b.len() < start + hlen {
        return Err(err("truncated header"));
    }
    let header =
        std::str::from_utf8(&b[start..start + hlen]).map_err(|_| err("header is not UTF-8"))?;
    let descr = header
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.split('\'').nth(1))
        .ok_or_else(|| err("header has no 'descr'"))?;
    let fortran = header.contains("'fortran_order': True");
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err("header has no 'shape'"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| err("bad shape")))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &b[start + hlen..];
    let data: Vec<f64> = match descr {
        "<f8" => {
            if body.len() < n * 8 {
                return Err(err(&format!(
                    "truncated data: {} of {} bytes",
                    body.len(),
                    n * 8
                )));
            }
            body[..n * 8]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
                .collect()
        }
        "<f4" => {
            if body.len() < n * 4 {
                return Err(err(&format!(
                    "truncated data: {} of {} bytes",
                    body.len(),
                    n * 4
                )));
            }
            body[..n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")) as f64)
                .collect()
        }
        other => {
            return Err(err(&format!(
                "unsupported dtype '{other}' (expected <f8 or <f4)"
            )));
        }
    };
    let data = if fortran && shape.len() == 2 {
        let (r, c) = (shape[0], shape[1]);
        (0..r * c).map(|k| data[(k % c) * r + k / c]).collect()
    } else {
        data
    };
    Ok(Raw { shape, data })
}

fn load_npz(path: &Path, bytes: &[u8]) -> Result<Network, ReluError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad_file(path, format!("not a valid .npz archive ({e})")))?;
    let mut arrays: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .map_err(|e| bad_file(path, format!("corrupt .npz entry ({e})")))?;
        let name = f.name().trim_end_matches(".npy").to_string();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| bad_file(path, format!("cannot read entry '{name}' ({e})")))?;
        arrays.insert(name, buf);
    }
    let mut layers = Vec::new();
    let mut i = 0;
    while let Some(wb) = arrays.get(&format!("w{i}")) {
        let wn = format!("w{i}");
        let bn = format!("b{i}");
        let w = parse_npy(&wn, wb)?;
        let b = parse_npy(
            &bn,
            arrays
                .get(&bn)
                .ok_or_else(|| ReluError::MissingTensor(bn.clone()))?,
        )?;
        if w.shape.len() != 2 {
            return Err(ReluError::tensor(
                &wn,
                format!("must be 2-D (fan_in, fan_out), has {:?}", w.shape),
            ));
        }
        let (fi, fo) = (w.shape[0], w.shape[1]);
        if b.shape != [fo] {
            return Err(ReluError::tensor(
                &bn,
                format!("must have shape ({fo},), has {:?}", b.shape),
            ));
        }
        layers.push(Layer {
            weight: Mat::from_fn(fo, fi, |r, c| w.data[c * fo + r]),
            bias: b.data,
        });
        i += 1;
    }
    if layers.is_empty() {
        return Err(ReluError::MissingTensor(
            "w0 (npz layout w0, b0, w1, b1, …)".into(),
        ));
    }
    Network::new(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, InitRecipe};

    #[test]
    fn safetensors_round_trip_f64_and_f32() {
        let net = Network::random(&"5-4-3".parse::<Arch>().unwrap(), InitRecipe::He, 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        save_network(&p, &net, SaveDtype::F64).unwrap();
        assert_eq!(load_network(&p).unwrap(), net);
        save_network(&p, &net, SaveDtype::F32).unwrap();
        let back = load_network(&p).unwrap();
        assert!((back.layers()[0].weight[(0, 0)] - net.layers()[0].weight[(0, 0)]).abs() < 1e-6);
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let net = Network::random(&"5-4-3".parse::<Arch>().unwrap(), InitRecipe::He, 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        save_network(&p, &net, SaveDtype::F64).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_network(&p).unwrap_err().to_string();
        assert!(e.contains("a.safetensors"), "{e}");
    }
}
