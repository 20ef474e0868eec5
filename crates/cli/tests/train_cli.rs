//! End-to-end checks of `netxray model train`.

use std::path::Path;
use std::process::Command;

fn netxray() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netxray"))
}

#[test]
fn trains_on_mnist_10k_and_saves_a_loadable_model() {
    let data = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/datasets/mnist-10k"
    ));
    if !data.is_dir() {
        eprintln!("note: {} absent, skipping", data.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let report = dir.path().join("r.json");
    let o = netxray()
        .args([
            "model",
            "train",
            "--arch",
            "784-32-10",
            "--dataset",
            "mnist",
            "--epochs",
            "1",
        ])
        .args([
            "--train-limit",
            "2000",
            "--batch-size",
            "32",
            "--lr",
            "3e-3",
            "--seed",
            "3",
            "--data-dir",
        ])
        .arg(data)
        .arg("--out")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let last = stdout.lines().last().unwrap();
    let acc: f64 = last
        .strip_prefix("test accuracy: ")
        .expect(last)
        .parse()
        .unwrap();
    assert!(acc > 0.75, "{stdout}");
    assert!(stdout.contains("epoch 1/1: loss"), "{stdout}");
    let net = netxray_relu::format::load_network(&out).unwrap();
    assert_eq!(net.arch().to_string(), "784-32-10");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["train_samples"], 2000);
    assert!(
        (r["test_accuracy"].as_f64().unwrap() - acc).abs() < 1e-4,
        "{r}"
    );
}

#[test]
fn bad_data_dir_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = netxray()
        .args([
            "model",
            "train",
            "--arch",
            "784-10",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("missing"))
        .arg("--out")
        .arg(dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("train-images-idx3-ubyte"),
        "{err}"
    );
    assert!(!dir.path().join("x.safetensors").exists());
}

#[test]
fn arch_must_fit_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, needle) in [("100-10", "784 features"), ("784-32-5", "at least 10")] {
        let o = netxray()
            .args([
                "model",
                "train",
                "--arch",
                arch,
                "--dataset",
                "mnist",
                "--epochs",
                "1",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--out")
            .arg(dir.path().join("x.safetensors"))
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{err}"
        );
    }
}
