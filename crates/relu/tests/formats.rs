//! File formats: safetensors (canonical and PyTorch names, f64/f32), `.npz` import, and clear errors.

use faer::Mat;
use netxray_relu::format::{SaveDtype, load_network, load_network_bytes, save_network};
use netxray_relu::{Arch, InitRecipe, Layer, Network};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn net(arch: &str, seed: u64) -> Network {
    Network::random(&arch.parse::<Arch>().unwrap(), InitRecipe::Balanced, seed)
}

fn err_of(bytes: &[u8]) -> String {
    load_network_bytes(bytes, "test-file")
        .unwrap_err()
        .to_string()
}

/// Safetensors bytes from `(name, dtype, shape, little-endian bytes)`.
fn st_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()
}

fn row_major(m: &Mat<f64>) -> Vec<f64> {
    (0..m.nrows())
        .flat_map(|r| (0..m.ncols()).map(move |c| m[(r, c)]))
        .collect()
}

/// Tensors of `n` under `<prefix><index>.weight|bias`, layer i at index `step * i`.
fn named_tensors(
    n: &Network,
    prefix: &str,
    step: usize,
    f32: bool,
) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let enc = |v: &[f64]| if f32 { f32_bytes(v) } else { f64_bytes(v) };
    let dt = if f32 { Dtype::F32 } else { Dtype::F64 };
    let mut out = Vec::new();
    for (i, l) in n.layers().iter().enumerate() {
        out.push((
            format!("{prefix}{}.weight", step * i),
            dt,
            vec![l.fan_out(), l.fan_in()],
            enc(&row_major(&l.weight)),
        ));
        out.push((
            format!("{prefix}{}.bias", step * i),
            dt,
            vec![l.fan_out()],
            enc(&l.bias),
        ));
    }
    out
}

fn st_from(t: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let v: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = t
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    st_bytes(&v)
}

#[test]
fn safetensors_round_trip_f64_is_exact_and_f32_widens() {
    let n = net("7-5-4-3", 2);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.safetensors");
    save_network(&p, &n, SaveDtype::F64).unwrap();
    assert_eq!(load_network(&p).unwrap(), n);
    let bytes = std::fs::read(&p).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], "netxray-relu");
    assert_eq!(meta["arch"], "7-5-4-3");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("layers.1.weight").unwrap().shape(), &[4, 5]);

    save_network(&p, &n, SaveDtype::F32).unwrap();
    let back = load_network(&p).unwrap();
    assert_eq!(back.arch(), n.arch());
    for (a, b) in back.layers().iter().zip(n.layers()) {
        for r in 0..a.fan_out() {
            for c in 0..a.fan_in() {
                assert_eq!(a.weight[(r, c)], b.weight[(r, c)] as f32 as f64);
            }
        }
    }
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn pytorch_sequential_names_with_or_without_prefix() {
    let n = net("6-5-4-2", 3);
    for prefix in ["", "model.", "net."] {
        let bytes = st_from(&named_tensors(&n, prefix, 2, false));
        assert_eq!(load_network_bytes(&bytes, "x").unwrap(), n, "{prefix}");
    }
    // f32, indices above 9 sort numerically (0, 2, …, 10 would sort 0, 10, 2 as strings).
    let n = net("4-3-3-3-3-3-2", 4);
    let bytes = st_from(&named_tensors(&n, "", 2, true));
    let back = load_network_bytes(&bytes, "x").unwrap();
    assert_eq!(back.arch(), n.arch());
    assert!((back.layers()[5].bias[1] - n.layers()[5].bias[1]).abs() < 1e-6);
}

#[test]
fn bad_safetensors_files_name_the_problem() {
    let n = net("5-4-3", 1);
    let good = st_from(&named_tensors(&n, "layers.", 1, false));
    // Truncated.
    let e = err_of(&good[..good.len() - 10]);
    assert!(e.contains("test-file") && e.contains("safetensors"), "{e}");
    // Not a model file at all.
    let e = err_of(b"hello world, this is not a model");
    assert!(e.contains("test-file"), "{e}");
    assert!(err_of(b"").contains("test-file"));
    // Missing bias.
    let mut t = named_tensors(&n, "layers.", 1, false);
    t.retain(|x| x.0 != "layers.1.bias");
    assert!(err_of(&st_from(&t)).contains("layers.1.bias"));
    // Wrong rank.
    let mut t = named_tensors(&n, "layers.", 1, false);
    t[0].2 = vec![4, 5, 1];
    let e = err_of(&st_from(&t));
    assert!(e.contains("layers.0.weight") && e.contains("2-D"), "{e}");
    // Bias of the wrong length.
    let mut t = named_tensors(&n, "layers.", 1, false);
    t[1] = (
        "layers.0.bias".into(),
        Dtype::F64,
        vec![3],
        f64_bytes(&[0.0; 3]),
    );
    assert!(err_of(&st_from(&t)).contains("layers.0.bias"));
    // NaN and infinity.
    let mut t = named_tensors(&n, "", 2, false);
    t[2].3[8..16].copy_from_slice(&f64::NAN.to_le_bytes());
    let e = err_of(&st_from(&t));
    assert!(e.contains("2.weight") && e.contains("NaN"), "{e}");
    let mut t = named_tensors(&n, "", 2, false);
    t[1].3[0..8].copy_from_slice(&f64::INFINITY.to_le_bytes());
    assert!(err_of(&st_from(&t)).contains("0.bias"));
    // Dims that do not chain.
    let mut t = named_tensors(&n, "layers.", 1, false);
    t[2] = (
        "layers.1.weight".into(),
        Dtype::F64,
        vec![3, 5],
        f64_bytes(&[0.5; 15]),
    );
    let e = err_of(&st_from(&t));
    assert!(e.contains("layers.1.weight") && e.contains("chain"), "{e}");
    // Unsupported dtype.
    let mut t = named_tensors(&n, "layers.", 1, false);
    t[0] = (
        "layers.0.weight".into(),
        Dtype::I32,
        vec![4, 5],
        vec![0u8; 80],
    );
    let e = err_of(&st_from(&t));
    assert!(e.contains("layers.0.weight") && e.contains("dtype"), "{e}");
    // Gap in canonical names.
    let mut t = named_tensors(&net("5-4-4-3", 1), "layers.", 1, false);
    t.retain(|x| !x.0.starts_with("layers.1."));
    assert!(err_of(&st_from(&t)).contains("layers.1.weight"));
    // Two different prefixes.
    let mut t = named_tensors(&n, "a.", 1, false);
    t.extend(named_tensors(&n, "b.", 1, false));
    assert!(err_of(&st_from(&t)).contains("prefixes"));
    // No layer tensors.
    let e = err_of(&st_bytes(&[("x", Dtype::F64, vec![1], f64_bytes(&[1.0]))]));
    assert!(e.contains("layers.0.weight"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// .npz
// ------------------------------------------------------------------------------------------------

/// A `.npy` file (version `ver`) with the given descr, order, shape and raw body.
fn npy(ver: u8, descr: &str, fortran: bool, shape: &[usize], body: &[u8]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let fo = if fortran { "True" } else { "False" };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': {fo}, 'shape': {shape_txt}, }}");
    let pre = if ver == 1 { 10 } else { 12 };
    while (pre + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([ver, 0]);
    if ver == 1 {
        out.extend((h.len() as u16).to_le_bytes());
    } else {
        out.extend((h.len() as u32).to_le_bytes());
    }
    out.extend(h.as_bytes());
    out.extend(body);
    out
}

/// A `.npz` of the row-vector layout of `n`: `w_i` as `(fan_in, fan_out)`.
fn npz_entries(n: &Network, f32: bool, fortran: bool, ver: u8) -> Vec<(String, Vec<u8>)> {
    let enc = |v: &[f64]| if f32 { f32_bytes(v) } else { f64_bytes(v) };
    let descr = if f32 { "<f4" } else { "<f8" };
    let mut out = Vec::new();
    for (i, l) in n.layers().iter().enumerate() {
        let (fi, fo) = (l.fan_in(), l.fan_out());
        // Element (a, b) of the (fan_in, fan_out) array is weight[(b, a)].
        let vals: Vec<f64> = if fortran {
            (0..fo)
                .flat_map(|b| (0..fi).map(move |a| l.weight[(b, a)]))
                .collect()
        } else {
            (0..fi)
                .flat_map(|a| (0..fo).map(move |b| l.weight[(b, a)]))
                .collect()
        };
        out.push((
            format!("w{i}.npy"),
            npy(ver, descr, fortran, &[fi, fo], &enc(&vals)),
        ));
        out.push((
            format!("b{i}.npy"),
            npy(ver, descr, false, &[fo], &enc(&l.bias)),
        ));
    }
    out
}

fn unicode_scalar(s: &str) -> Vec<u8> {
    let body: Vec<u8> = s.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
    npy(1, &format!("<U{}", s.chars().count()), false, &[], &body)
}

fn zip_bytes(entries: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn npz_stored_deflated_f4_fortran_and_v2_headers() {
    let n = net("6-5-4-3", 9);
    for (f32, fortran, ver, deflate) in [
        (false, false, 1, false),
        (false, false, 1, true),
        (false, true, 2, false),
        (false, false, 3, true),
        (true, true, 1, true),
    ] {
        let mut e = npz_entries(&n, f32, fortran, ver);
        e.push(("arch.npy".into(), unicode_scalar("6-5-4-3")));
        e.push(("meta.npy".into(), unicode_scalar("{\"x\": 1}")));
        let back = load_network_bytes(&zip_bytes(&e, deflate), "x.npz").unwrap();
        if f32 {
            assert_eq!(back.arch(), n.arch());
            let d = (back.layers()[0].weight[(3, 2)] - n.layers()[0].weight[(3, 2)]).abs();
            assert!(d < 1e-6, "{d}");
        } else {
            assert_eq!(back, n, "fortran {fortran} v{ver} deflate {deflate}");
        }
    }
    // Bytes-string arch scalar is checked too.
    let mut e = npz_entries(&n, false, false, 1);
    e.push(("arch.npy".into(), npy(1, "|S7", false, &[], b"6-5-4-3")));
    assert_eq!(load_network_bytes(&zip_bytes(&e, false), "x").unwrap(), n);
}

#[test]
fn bad_npz_files_name_the_problem() {
    let n = net("6-5-3", 9);
    // Arch mismatch.
    let mut e = npz_entries(&n, false, false, 1);
    e.push(("arch.npy".into(), unicode_scalar("6-4-3")));
    let m = err_of(&zip_bytes(&e, false));
    assert!(m.contains("arch") && m.contains("6-5-3"), "{m}");
    // Missing bias.
    let mut e = npz_entries(&n, false, false, 1);
    e.retain(|x| x.0 != "b1.npy");
    assert!(err_of(&zip_bytes(&e, false)).contains("b1"));
    // Truncated array data.
    let mut e = npz_entries(&n, false, false, 1);
    let l = e[0].1.len();
    e[0].1.truncate(l - 8);
    let m = err_of(&zip_bytes(&e, true));
    assert!(m.contains("w0") && m.contains("truncated"), "{m}");
    // Unsupported dtype.
    let mut e = npz_entries(&n, false, false, 1);
    e[2].1 = npy(1, "<i8", false, &[5, 3], &[0u8; 120]);
    let m = err_of(&zip_bytes(&e, false));
    assert!(m.contains("w1") && m.contains("<i8"), "{m}");
    // Wrong rank.
    let mut e = npz_entries(&n, false, false, 1);
    e[0].1 = npy(1, "<f8", false, &[30], &f64_bytes(&[0.1; 30]));
    assert!(err_of(&zip_bytes(&e, false)).contains("w0"));
    // NaN.
    let mut e = npz_entries(&n, false, false, 1);
    let h = e[3].1.len() - 24;
    e[3].1[h..h + 8].copy_from_slice(&f64::NAN.to_le_bytes());
    let m = err_of(&zip_bytes(&e, false));
    assert!(m.contains("b1") && m.contains("NaN"), "{m}");
    // Gap: w2 present without w1.
    let mut e = npz_entries(&net("6-5-4-3", 1), false, false, 1);
    e.retain(|x| !x.0.starts_with("w1") && !x.0.starts_with("b1"));
    assert!(err_of(&zip_bytes(&e, false)).contains("w1"));
    // Not .npy inside.
    let e = vec![("w0.npy".to_string(), b"garbage".to_vec())];
    assert!(err_of(&zip_bytes(&e, false)).contains("w0"));
    // Corrupt archive.
    let z = zip_bytes(&npz_entries(&n, false, false, 1), true);
    let m = err_of(&z[..z.len() / 2]);
    assert!(m.contains("test-file"), "{m}");
}

// ------------------------------------------------------------------------------------------------
// Reference models
// ------------------------------------------------------------------------------------------------

fn reference(name: &str) -> Option<PathBuf> {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/models/extraction"
    ))
    .join(name);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("note: {} absent, skipping", p.display());
        None
    }
}

/// Independent reader: the raw `<f8`, C-order arrays of an npz, by plain string handling.
fn raw_arrays(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = HashMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let name = f.name().trim_end_matches(".npy").to_string();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        assert_eq!(b[6], 1, "reference files use .npy version 1");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        if !header.contains("'<f8'") {
            continue;
        }
        assert!(header.contains("'fortran_order': False"));
        let inside = header
            .split("'shape': (")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap();
        let shape: Vec<usize> = inside
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let data: Vec<f64> = b[10 + hl..]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(name, (shape, data));
    }
    out
}

#[test]
fn reference_forward_matches_row_vector_loops() {
    let Some(p) = reference("cjm_40-20-10-10-1_seed42.npz") else {
        return;
    };
    let net = load_network(&p).unwrap();
    assert_eq!(net.arch().to_string(), "40-20-10-10-1");
    assert_eq!(net.num_params(), 1151);
    let raw = raw_arrays(&p);
    // Fixed inputs: a few deterministic patterns.
    let inputs: Vec<Vec<f64>> = (0..16)
        .map(|s| {
            (0..40)
                .map(|j| (((s * 37 + j * 11) % 23) as f64 - 11.0) / 7.0 + 0.01 * s as f64)
                .collect()
        })
        .collect();
    let x = Mat::from_fn(inputs.len(), 40, |i, j| inputs[i][j]);
    let y = net.forward(x.as_ref()).unwrap();
    let b_last = raw["b3"].1[0];
    let distinct = (0..inputs.len())
        .filter(|&s| (y[(s, 0)] - b_last).abs() > 1e-6)
        .count();
    assert!(distinct >= 8, "inputs should exercise the hidden layers");
    for (s, input) in inputs.iter().enumerate() {
        let mut h = input.clone();
        for i in 0..4 {
            let (ws, w) = &raw[&format!("w{i}")];
            let (_, b) = &raw[&format!("b{i}")];
            let (fi, fo) = (ws[0], ws[1]);
            assert_eq!(h.len(), fi);
            let mut out = b.clone();
            for o in 0..fo {
                for k in 0..fi {
                    out[o] += h[k] * w[k * fo + o];
                }
                if i < 3 && out[o] < 0.0 {
                    out[o] = 0.0;
                }
            }
            h = out;
        }
        let d = (h[0] - y[(s, 0)]).abs();
        assert!(
            d <= 1e-12 * (1.0 + h[0].abs()),
            "sample {s}: {} vs {}",
            h[0],
            y[(s, 0)]
        );
    }
}

#[test]
fn all_reference_models_load() {
    for (name, arch, params) in [
        ("cjm_10-15-15-1_seed42.npz", "10-15-15-1", 421),
        ("cjm_40-20-10-10-1_seed42.npz", "40-20-10-10-1", 1151),
        ("cjm_784-32-1_seed42.npz", "784-32-1", 25153),
    ] {
        let Some(p) = reference(name) else { continue };
        let n = load_network(&p).unwrap();
        assert_eq!(n.arch().to_string(), arch);
        assert_eq!(n.num_params(), params);
        // Same network through safetensors.
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("x.safetensors");
        save_network(&q, &n, SaveDtype::F64).unwrap();
        assert_eq!(load_network(&q).unwrap(), n);
    }
}

#[test]
fn layer_helper_is_usable() {
    // A hand-built net saved and reloaded keeps exact values (including negative zero bias).
    let n = Network::new(vec![
        Layer {
            weight: Mat::from_fn(2, 3, |r, c| (r * 3 + c) as f64 - 2.5),
            bias: vec![-0.0, 1e-300],
        },
        Layer {
            weight: Mat::from_fn(1, 2, |_, c| c as f64 + 0.5),
            bias: vec![f64::MAX],
        },
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub.safetensors");
    save_network(&p, &n, SaveDtype::F64).unwrap();
    let back = load_network(&p).unwrap();
    assert_eq!(back, n);
    assert!(back.layers()[0].bias[0].is_sign_negative());
}
