//! End-to-end checks of `netxray hw [report] | balance | sweep` on checkpoints written here.

use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn netxray(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netxray"))
        .args(args)
        .output()
        .expect("run netxray")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_str(&stdout(o)).expect("valid JSON")
}

/// A failing command: exit code 1 and exactly one line on stderr.
fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "should fail with exit 1");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// A tensor to write: dtype, shape, little-endian bytes.
struct T {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &T {
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

fn f32_tensor(shape: &[usize], v: &[f32]) -> T {
    assert_eq!(shape.iter().product::<usize>(), v.len());
    T {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn u8_tensor(shape: &[usize], v: &[bool]) -> T {
    T {
        dtype: Dtype::U8,
        shape: shape.to_vec(),
        data: v.iter().map(|&b| u8::from(b)).collect(),
    }
}

fn write(path: &Path, tensors: Vec<(&str, T)>, meta: &[(&str, String)]) {
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let bytes = safetensors::serialize(
        tensors.iter().map(|(n, t)| (*n, t)),
        (!meta.is_empty()).then_some(meta),
    )
    .unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Mask of a conv `[k, 1, 1, len]` whose filter f keeps its first `nnz[f]` positions.
fn prefix_mask(nnz: &[usize], len: usize) -> Vec<bool> {
    nnz.iter()
        .flat_map(|&k| (0..len).map(move |i| i < k))
        .collect()
}

/// The small hand-computed model:
/// - `features.0` conv [2,1,1,1] (first conv, skipped by default), 4×4 map;
/// - `features.3` conv [4,1,1,4], f32 mask with filter nnz 4,2,2,0, 2×3 map, spike sparsity 0.5;
/// - `classifier` linear [2,4] without a mask (mask = weight ≠ 0: 3 kept).
fn small_model(dir: &Path) -> PathBuf {
    let path = dir.join("small.safetensors");
    let mask3: Vec<f32> = prefix_mask(&[4, 2, 2, 0], 4)
        .iter()
        .map(|&m| if m { 1.0 } else { 0.0 })
        .collect();
    let w3: Vec<f32> = (1..=16).map(|i| i as f32 * 0.1).collect();
    let layers = json!([
        {"name": "features.0", "kind": "conv", "out_h": 4, "out_w": 4},
        {"name": "features.3", "kind": "conv", "out_h": 2, "out_w": 3},
        {"name": "classifier", "kind": "linear", "out_h": 1, "out_w": 1},
    ]);
    write(
        &path,
        vec![
            ("features.0.weight", f32_tensor(&[2, 1, 1, 1], &[0.5, -0.5])),
            ("features.0.bias", f32_tensor(&[2], &[0.0, 0.0])),
            ("features.1.weight", f32_tensor(&[2], &[1.0, 1.0])),
            ("features.3.weight", f32_tensor(&[4, 1, 1, 4], &w3)),
            ("features.3.weight_mask", f32_tensor(&[4, 1, 1, 4], &mask3)),
            (
                "classifier.weight",
                f32_tensor(&[2, 4], &[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0]),
            ),
        ],
        &[
            ("netxray.layers", layers.to_string()),
            (
                "netxray.spike_sparsity",
                json!({"features.3": 0.5}).to_string(),
            ),
        ],
    );
    path
}

fn close(v: &Value, expected: f64) -> bool {
    (v.as_f64().unwrap() - expected).abs() < 1e-9
}

#[test]
fn report_json_matches_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let r = json_of(&netxray(&[
        "hw",
        "report",
        "--model",
        m.to_str().unwrap(),
        "--pes",
        "2",
        "--json",
    ]));
    assert_eq!(r["schema"], 1);
    assert_eq!(r["geometry_source"], "metadata");
    assert_eq!(r["layers"].as_array().unwrap().len(), 1);
    assert_eq!(r["skipped"][0]["name"], "features.0");
    assert_eq!(r["skipped"][0]["reason"], "first_conv");
    assert_eq!(r["skipped"][1]["reason"], "linear");
    let l = &r["layers"][0];
    assert_eq!(l["name"], "features.3");
    assert_eq!(l["nnz"], 8);
    // Groups (4,2) and (2,0); T_avg = ceil(mean) = 3 and 1:
    // μ = 1 − (4−3)/4·2 = 0.5 and 1 − (2−1)/2·2 = 0 → layer 0.25.
    assert_eq!(l["groups"][0]["workloads"], json!([4, 2]));
    assert!(close(&l["groups"][0]["utilization"], 0.5));
    assert!(close(&l["groups"][1]["utilization"], 0.0));
    assert!(close(&l["utilization"], 0.25));
    // T·H·W = 4·2·3 = 24: work 24·8, latency 24·(4+2), idle 2·144 − 192.
    assert_eq!(l["work_cycles"], 192);
    assert_eq!(l["latency_cycles"], 144);
    assert_eq!(l["idle_cycles"], 96);
    // E = 192·(1·(1 − 0.5) + 0.21) + 96·0.21.
    assert!(close(&l["energy"], 192.0 * 0.71 + 96.0 * 0.21));
    let t = &r["totals"];
    assert!(close(&t["utilization_weighted"], 0.25));
    assert!(close(&t["utilization_unweighted"], 0.25));
    assert!(close(&t["wall_time_s"], 144.0 / 400e6));

    // Counting every layer: the first conv (one group (1,1), μ 1, 16 pixels) and the linear layer
    // (group (2,1): ceil mean 2 → μ 1) join; weighted μ = (2·1 + 16·0.25 + 8·1)/26.
    let all = json_of(&netxray(&[
        "hw",
        "report",
        "--model",
        m.to_str().unwrap(),
        "--pes",
        "2",
        "--include-first",
        "--include-linear",
        "--spike-sparsity",
        "0.1",
        "--json",
    ]));
    assert_eq!(all["layers"].as_array().unwrap().len(), 3);
    assert!(close(
        &all["totals"]["utilization_weighted"],
        (2.0 + 4.0 + 8.0) / 26.0
    ));
    assert!(close(&all["totals"]["utilization_unweighted"], 0.75));
    assert!(close(&all["layers"][0]["spike_sparsity"], 0.1));
    assert!(close(&all["layers"][1]["spike_sparsity"], 0.5));
    assert_eq!(all["layers"][2]["work_cycles"], 4 * 3);
    let t = &all["totals"];
    let (w, i, lat) = (
        t["work_cycles"].as_u64().unwrap(),
        t["idle_cycles"].as_u64().unwrap(),
        t["latency_cycles"].as_u64().unwrap(),
    );
    assert_eq!(w + i, 2 * lat);

    // Human table.
    let out = stdout(&netxray(&[
        "hw",
        "report",
        "--model",
        m.to_str().unwrap(),
        "--pes",
        "2",
    ]));
    assert!(out.contains("features.3"), "{out}");
    assert!(out.contains("0.2500 (parameter-weighted)"), "{out}");
    assert!(out.contains("work cycles     192"), "{out}");
    assert!(out.contains("not counted: features.0 (first conv), classifier (linear)"));
}

#[test]
fn hw_without_subcommand_is_report() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let m = m.to_str().unwrap();
    let a = stdout(&netxray(&["hw", "--model", m, "--pes", "4", "--json"]));
    let b = stdout(&netxray(&[
        "hw", "report", "--model", m, "--pes", "4", "--json",
    ]));
    assert_eq!(a, b);
}

/// A deterministic pseudo-random generator for test masks (no dependency on rand's stream).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A VGG-like pruned model: conv [16,3,3,3] (first), conv [32,16,3,3] with a u8 mask, conv
/// [40,32,3,3] (partial last group at 16 PEs) without a mask (pruned weights stored as 0), linear.
fn pruned_model(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut rng = Lcg(42);
    let mut weights = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next() * 2.0 - 1.0) as f32)
            .collect::<Vec<f32>>()
    };
    let w0 = weights(16 * 27);
    let w1 = weights(32 * 144);
    let mut w2 = weights(40 * 288);
    let wl = weights(10 * 40);
    let mut rng = Lcg(7);
    // Filter-dependent density so the groups are unbalanced.
    let m1: Vec<bool> = (0..32 * 144)
        .map(|i| rng.next() < 0.02 + 0.01 * (i / 144 % 8) as f64)
        .collect();
    for (i, w) in w2.iter_mut().enumerate() {
        if rng.next() > 0.03 + 0.02 * (i / 288 % 5) as f64 {
            *w = 0.0;
        }
    }
    let layers = json!([
        {"name": "conv0", "kind": "conv", "out_h": 8, "out_w": 8},
        {"name": "conv1", "kind": "conv", "out_h": 8, "out_w": 8},
        {"name": "conv2", "kind": "conv", "out_h": 4, "out_w": 4},
        {"name": "fc", "kind": "linear", "out_h": 1, "out_w": 1},
    ]);
    write(
        &path,
        vec![
            ("conv0.weight", f32_tensor(&[16, 3, 3, 3], &w0)),
            ("conv1.weight", f32_tensor(&[32, 16, 3, 3], &w1)),
            ("conv1.weight_mask", u8_tensor(&[32, 16, 3, 3], &m1)),
            ("conv2.weight", f32_tensor(&[40, 32, 3, 3], &w2)),
            ("fc.weight", f32_tensor(&[10, 40], &wl)),
            ("fc.bias", f32_tensor(&[10], &[0.1; 10])),
        ],
        &[("netxray.layers", layers.to_string())],
    );
    path
}

fn group_nnz(report: &Value, layer: usize) -> Vec<u64> {
    report["layers"][layer]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            g["workloads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum()
        })
        .collect()
}

#[test]
fn balance_makes_every_balanced_group_fully_utilized() {
    let dir = tempfile::tempdir().unwrap();
    let input = pruned_model(dir.path(), "in.safetensors");
    let out = dir.path().join("out.safetensors");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let before = json_of(&netxray(&["hw", "--model", i, "--json"]));
    assert!(before["totals"]["utilization_weighted"].as_f64().unwrap() < 0.9);

    let summary = json_of(&netxray(&[
        "hw", "balance", "--model", i, "--out", o, "--seed", "3", "--json",
    ]));
    assert_eq!(summary["summary"]["params"]["balancer"], "random");
    assert_eq!(summary["summary"]["layers"][0]["skipped"], "first_conv");
    assert!(summary["summary"]["regrown"].as_u64().unwrap() > 0);
    assert!(close(&summary["after"]["layers"][0]["utilization"], 1.0));

    let after = json_of(&netxray(&["hw", "report", "--model", o, "--json"]));
    for l in after["layers"].as_array().unwrap() {
        // Every group's real PEs hold the same workload. Full groups reach μ = 1; the padded last
        // group of conv2 (40 = 2·16 + 8 filters) keeps 8 idle PEs, so its μ stays below 1.
        for g in l["groups"].as_array().unwrap() {
            let real = g["real_pes"].as_u64().unwrap() as usize;
            let w: Vec<u64> = g["workloads"].as_array().unwrap()[..real]
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert!(w.iter().all(|&x| x == w[0]), "{}: {w:?}", l["name"]);
            if real == 16 {
                assert!(close(&g["utilization"], 1.0), "{}", l["name"]);
            } else {
                assert!(g["utilization"].as_f64().unwrap() < 1.0);
            }
        }
    }
    assert!(close(&after["layers"][0]["utilization"], 1.0));
    assert_eq!(after["layers"][0]["idle_cycles"], 0);
    assert!(
        after["totals"]["utilization_weighted"].as_f64().unwrap()
            > before["totals"]["utilization_weighted"].as_f64().unwrap()
    );
    // Each group's total changed by less than n = 16.
    for layer in 0..2 {
        for (b, a) in group_nnz(&before, layer)
            .iter()
            .zip(group_nnz(&after, layer))
        {
            assert!(a >= *b && a - b < 16, "layer {layer}: {b} -> {a}");
        }
    }
    assert!(
        after["totals"]["latency_cycles"].as_u64().unwrap()
            < before["totals"]["latency_cycles"].as_u64().unwrap()
    );

    // The file: first conv and linear untouched, masks stored for every layer, weights ⊙ mask,
    // bias and metadata kept, balancing recorded.
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert!(meta.contains_key("netxray.layers"));
    let bal: Value = serde_json::from_str(&meta["netxray.balance"]).unwrap();
    assert_eq!(bal["seed"], 3);
    assert_eq!(st.tensor("conv1.weight_mask").unwrap().dtype(), Dtype::U8);
    assert_eq!(st.tensor("conv2.weight_mask").unwrap().dtype(), Dtype::F32);
    assert_eq!(st.tensor("fc.bias").unwrap().shape(), [10]);
    let floats = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let m1: Vec<u8> = st.tensor("conv1.weight_mask").unwrap().data().to_vec();
    let w1 = floats("conv1.weight");
    assert!(w1.iter().zip(&m1).all(|(w, &m)| m != 0 || *w == 0.0));
    let orig = std::fs::read(&input).unwrap();
    let orig = SafeTensors::deserialize(&orig).unwrap();
    assert_eq!(
        st.tensor("conv0.weight").unwrap().data(),
        orig.tensor("conv0.weight").unwrap().data()
    );
    assert!(floats("conv0.weight_mask").iter().all(|&m| m == 1.0));

    // The same seed gives the same file; the human output names the before/after utilization.
    let out2 = dir.path().join("out2.safetensors");
    let text = stdout(&netxray(&[
        "hw",
        "balance",
        "--model",
        i,
        "--out",
        out2.to_str().unwrap(),
        "--seed",
        "3",
    ]));
    assert!(text.contains("network utilization"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("conv1") && l.contains(" 1.0000 ")),
        "{text}"
    );
    // Same tensors and metadata (the byte layout of the metadata map is not fixed by safetensors).
    let (a, b) = (std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    let (sa, sb) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names = sa.names();
    names.sort();
    let mut names_b = sb.names();
    names_b.sort();
    assert_eq!(names, names_b);
    for n in names {
        assert_eq!(
            sa.tensor(n).unwrap().data(),
            sb.tensor(n).unwrap().data(),
            "{n}"
        );
    }
    assert_eq!(
        SafeTensors::read_metadata(&a).unwrap().1.metadata(),
        SafeTensors::read_metadata(&b).unwrap().1.metadata()
    );
}

#[test]
fn magnitude_balance_with_reference_and_input_channel_split() {
    let dir = tempfile::tempdir().unwrap();
    let input = pruned_model(dir.path(), "in.safetensors");
    let reference = pruned_model(dir.path(), "ref.safetensors");
    let out = dir.path().join("mag.safetensors");
    let s = json_of(&netxray(&[
        "hw",
        "balance",
        "--model",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--balancer",
        "magnitude",
        "--reference",
        reference.to_str().unwrap(),
        "--pes",
        "2",
        "--include-linear",
        "--json",
    ]));
    assert_eq!(s["summary"]["params"]["balancer"], "magnitude");
    assert_eq!(s["summary"]["params"]["pes"], 2);
    assert!(close(&s["after"]["totals"]["utilization_weighted"], 1.0));
    let after = json_of(&netxray(&[
        "hw",
        "--model",
        out.to_str().unwrap(),
        "--pes",
        "2",
        "--include-linear",
        "--json",
    ]));
    assert_eq!(after["layers"].as_array().unwrap().len(), 3);
    assert_eq!(after["totals"]["idle_cycles"], 0);

    // Input-channel split: every output channel is a group of 16 slices of one input channel each.
    let ic = dir.path().join("ic.safetensors");
    let s = json_of(&netxray(&[
        "hw",
        "balance",
        "--model",
        input.to_str().unwrap(),
        "--out",
        ic.to_str().unwrap(),
        "--mapping",
        "input-channel-split",
        "--json",
    ]));
    assert_eq!(s["summary"]["params"]["mapping"], "input-channel-split");
    assert_eq!(
        s["after"]["layers"][0]["groups"].as_array().unwrap().len(),
        32
    );
    assert!(close(&s["after"]["totals"]["utilization_weighted"], 1.0));
}

#[test]
fn sweep_normalises_to_the_first_pe_count() {
    let dir = tempfile::tempdir().unwrap();
    let m = small_model(dir.path());
    let r = json_of(&netxray(&[
        "hw",
        "sweep",
        "--model",
        m.to_str().unwrap(),
        "--pes",
        "2,4",
        "--json",
    ]));
    assert_eq!(r["schema"], 1);
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // n = 2: latency 24·6 = 144; n = 4: one group (4,2,2,0) → 24·4 = 96.
    assert_eq!(rows[0]["latency_cycles"], 144);
    assert_eq!(rows[1]["latency_cycles"], 96);
    assert!(close(&rows[0]["latency_normalized"], 1.0));
    assert!(close(&rows[1]["latency_normalized"], 96.0 / 144.0));
    // Energy: work 192 in both; leakage on n·latency = 288 vs 384 slots.
    let e = |slots: f64| 192.0 * 0.5 + slots * 0.21;
    assert!(close(&rows[1]["energy_normalized"], e(384.0) / e(288.0)));

    let balanced = json_of(&netxray(&[
        "hw",
        "sweep",
        "--model",
        m.to_str().unwrap(),
        "--pes",
        "2,4",
        "--balance",
        "random",
        "--json",
    ]));
    assert_eq!(balanced["balanced_with"], "random");
    for row in balanced["rows"].as_array().unwrap() {
        assert!(close(&row["utilization_weighted"], 1.0));
    }
    let text = stdout(&netxray(&["hw", "sweep", "--model", m.to_str().unwrap()]));
    assert_eq!(text.lines().count(), 2 + 6, "{text}");
}

#[test]
fn converted_checkpoint_without_metadata_warns_and_accepts_a_geometry_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torch.safetensors");
    // PyTorch-style names; features.10 must come after features.2.
    write(
        &path,
        vec![
            ("features.0.weight", f32_tensor(&[2, 1, 1, 1], &[1.0, 1.0])),
            (
                "features.10.weight",
                f32_tensor(&[2, 1, 1, 2], &[1.0, 1.0, 1.0, 0.0]),
            ),
            (
                "features.2.weight",
                f32_tensor(&[2, 1, 1, 2], &[1.0, 0.0, 1.0, 1.0]),
            ),
        ],
        &[],
    );
    let p = path.to_str().unwrap();
    let o = netxray(&["hw", "--model", p, "--pes", "2", "--json"]);
    let r = json_of(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning:") && err.contains("per output pixel"),
        "{err}"
    );
    assert_eq!(r["geometry_source"], "per-pixel");
    assert_eq!(r["layers"][0]["name"], "features.2");
    assert_eq!(r["layers"][1]["name"], "features.10");
    assert_eq!(r["layers"][0]["work_cycles"], 4 * 3);

    let g = dir.path().join("geometry.json");
    std::fs::write(
        &g,
        json!([
            {"name": "features.0", "kind": "conv", "out_h": 8, "out_w": 8},
            {"name": "features.2", "kind": "conv", "out_h": 8, "out_w": 8},
            {"name": "features.10", "kind": "conv", "out_h": 4, "out_w": 4},
        ])
        .to_string(),
    )
    .unwrap();
    let o = netxray(&[
        "hw",
        "--model",
        p,
        "--pes",
        "2",
        "--geometry",
        g.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = json_of(&o);
    assert_eq!(r["geometry_source"], "file");
    assert_eq!(r["layers"][0]["work_cycles"], 4 * 64 * 3);
    assert_eq!(r["layers"][1]["work_cycles"], 4 * 16 * 3);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = small_model(d);
    let g = good.to_str().unwrap();

    let e = one_line_error(&netxray(&["hw", "--model", "/no/such/file.safetensors"]));
    assert!(e.contains("/no/such/file.safetensors"), "{e}");

    let garbage = d.join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not safetensors").unwrap();
    let e = one_line_error(&netxray(&["hw", "--model", garbage.to_str().unwrap()]));
    assert!(e.contains("not a valid safetensors file"), "{e}");

    let nan = d.join("nan.safetensors");
    write(
        &nan,
        vec![
            ("a.weight", f32_tensor(&[1, 1, 1, 1], &[1.0])),
            ("b.weight", f32_tensor(&[2, 1, 1, 1], &[1.0, f32::NAN])),
        ],
        &[],
    );
    let e = one_line_error(&netxray(&["hw", "--model", nan.to_str().unwrap()]));
    assert!(e.contains("'b.weight'") && e.contains("NaN"), "{e}");

    let shape = d.join("shape.safetensors");
    write(
        &shape,
        vec![
            ("a.weight", f32_tensor(&[2, 1, 1, 1], &[1.0, 1.0])),
            ("a.weight_mask", f32_tensor(&[1, 2, 1, 1], &[1.0, 1.0])),
        ],
        &[],
    );
    let e = one_line_error(&netxray(&["hw", "--model", shape.to_str().unwrap()]));
    assert!(
        e.contains("mask 'a.weight_mask' has shape [1, 2, 1, 1]"),
        "{e}"
    );

    let missing = d.join("missing.safetensors");
    write(
        &missing,
        vec![("a.weight", f32_tensor(&[1, 1, 1, 1], &[1.0]))],
        &[(
            "netxray.layers",
            json!([{"name": "b", "kind": "conv", "out_h": 1, "out_w": 1}]).to_string(),
        )],
    );
    let e = one_line_error(&netxray(&["hw", "--model", missing.to_str().unwrap()]));
    assert!(e.contains("no tensor 'b.weight'"), "{e}");

    let e = one_line_error(&netxray(&["hw", "--model", g, "--pes", "1"]));
    assert!(e.contains("'pes'"), "{e}");
    let e = one_line_error(&netxray(&["hw", "--model", g, "--spike-sparsity", "2"]));
    assert!(e.contains("'spike_sparsity'"), "{e}");
    let e = one_line_error(&netxray(&["hw", "sweep", "--model", g, "--pes", "4,1"]));
    assert!(e.contains("'pes'"), "{e}");

    // Only the skipped first conv: nothing to measure.
    let lone = d.join("lone.safetensors");
    write(
        &lone,
        vec![("a.weight", f32_tensor(&[1, 1, 1, 1], &[1.0]))],
        &[],
    );
    let e = one_line_error(&netxray(&["hw", "--model", lone.to_str().unwrap()]));
    assert!(e.contains("no layer is counted"), "{e}");

    let e = one_line_error(&netxray(&[
        "hw",
        "--model",
        g,
        "--geometry",
        d.join("nope.json").to_str().unwrap(),
    ]));
    assert!(e.contains("nope.json"), "{e}");

    // Magnitude balancing against a reference without the layer.
    let out = d.join("o.safetensors");
    let e = one_line_error(&netxray(&[
        "hw",
        "balance",
        "--model",
        g,
        "--out",
        out.to_str().unwrap(),
        "--balancer",
        "magnitude",
        "--reference",
        lone.to_str().unwrap(),
    ]));
    assert!(e.contains("no layer 'features.0'"), "{e}");
    assert!(!out.exists());
}
