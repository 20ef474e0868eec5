//! End-to-end `netxray snn` runs on a tiny synthetic IDX dataset: train, evaluate, kill -9 in
//! the middle and resume to the same weights, and clear errors on bad input.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn netxray() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_netxray"));
    c.env("RUST_BACKTRACE", "0");
    c
}

fn idx(path: &Path, magic: u32, dims: &[u32], bytes: &[u8]) {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(bytes);
    std::fs::write(path, out).unwrap();
}

/// MNIST-shaped data whose class is the row band that is bright.
fn write_dataset(dir: &Path, n_train: u32, n_test: u32) {
    for (prefix, n, seed) in [("train", n_train, 1u32), ("t10k", n_test, 2)] {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        let mut state = seed.wrapping_mul(2_654_435_761);
        for _ in 0..n {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let class = (state >> 24) % 10;
            for y in 0..28u32 {
                for _x in 0..28u32 {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let noise = (state >> 26) as u8;
                    let band = (y * 10 / 28) == class;
                    images.push(if band { 200 + noise } else { noise });
                }
            }
            labels.push(class as u8);
        }
        idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            0x0803,
            &[n, 28, 28],
            &images,
        );
        idx(
            &dir.join(format!("{prefix}-labels-idx1-ubyte")),
            0x0801,
            &[n],
            &labels,
        );
    }
}

fn train_cmd(data: &Path, out: &Path, epochs: usize) -> Command {
    let mut c = netxray();
    c.args([
        "snn",
        "train",
        "--arch",
        "mlp",
        "--dataset",
        "mnist",
        "--data-dir",
    ])
    .arg(data)
    .arg("--out")
    .arg(out)
    .args(["--epochs", &epochs.to_string(), "--batch-size", "32"])
    .args(["--optimizer", "adam", "--seed", "7"]);
    c
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

fn epochs_done(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let md = meta.metadata().clone()?;
    let v: serde_json::Value = serde_json::from_str(md.get("netxray.snn")?).ok()?;
    v["epochs_done"].as_u64()
}

#[test]
fn train_eval_and_kill_resume_give_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_dataset(&data, 3000, 300);

    // Uninterrupted run.
    let straight = dir.path().join("straight");
    let out = train_cmd(&data, &straight, 3).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("test accuracy"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("report.json")).unwrap()).unwrap();
    let acc = report["final_eval"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "the band task must be learnt, got {acc}");
    assert_eq!(report["epochs"].as_array().unwrap().len(), 3);

    // Killed after the first checkpoint, then resumed.
    let killed = dir.path().join("killed");
    let mut child = train_cmd(&data, &killed, 3)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = killed.join("checkpoint.safetensors");
    let start = Instant::now();
    while epochs_done(&ckpt).is_none() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = epochs_done(&ckpt).expect("a checkpoint was written before the kill");
    assert!(done >= 1);
    let out = train_cmd(&data, &killed, 3)
        .arg("--resume")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tensors(&straight.join("checkpoint.safetensors")),
        tensors(&ckpt),
        "resumed run differs from the uninterrupted one"
    );
    // No temporary files are left behind.
    for e in std::fs::read_dir(&killed).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".tmp"), "left over: {name}");
    }

    // Evaluation of the checkpoint.
    let out = netxray()
        .args(["snn", "eval", "--model"])
        .arg(&ckpt)
        .arg("--data-dir")
        .arg(&data)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(eval["accuracy"].as_f64().unwrap() > 0.9);
    assert_eq!(eval["spike_sparsity"].as_object().unwrap().len(), 2);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "snn",
                "train",
                "--arch",
                "vgg17",
                "--dataset",
                "mnist",
                "--data-dir",
                ".",
                "--out",
                "x",
            ],
            "unknown architecture",
        ),
        (
            vec![
                "snn",
                "train",
                "--arch",
                "vgg16",
                "--dataset",
                "mnist",
                "--data-dir",
                "/nonexistent",
                "--out",
                "x",
            ],
            "missing",
        ),
        (
            vec![
                "snn",
                "train",
                "--arch",
                "mlp",
                "--dataset",
                "mnist",
                "--data-dir",
                ".",
                "--out",
                "x",
                "--timesteps",
                "0",
            ],
            "timesteps",
        ),
        (
            vec![
                "snn",
                "train",
                "--arch",
                "mlp",
                "--dataset",
                "mnist",
                "--data-dir",
                ".",
                "--out",
                "x",
                "--device",
                "tpu",
            ],
            "device",
        ),
        (
            vec![
                "snn",
                "eval",
                "--model",
                "/nonexistent.safetensors",
                "--data-dir",
                ".",
            ],
            "nonexistent",
        ),
    ];
    for (args, needle) in cases {
        let out = netxray()
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}
