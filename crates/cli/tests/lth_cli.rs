//! End-to-end `netxray lth` runs: a small u-Ticket run on synthetic MNIST-shaped data that is
//! killed and resumed to the same records, and a smoke test of the paper recipe (VGG-16 on
//! CIFAR-10-shaped data, one tiny prune round on a few images).

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

fn lcg(state: &mut u32) -> u32 {
    *state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
    *state >> 8
}

/// MNIST-shaped images whose class is the bright row band.
fn write_mnist_like(dir: &Path, n_train: u32, n_test: u32) {
    for (prefix, n, mut state) in [("train", n_train, 1u32), ("t10k", n_test, 2)] {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let class = lcg(&mut state) % 10;
            for y in 0..28u32 {
                for _ in 0..28 {
                    let noise = (lcg(&mut state) % 50) as u8;
                    images.push(if y * 10 / 28 == class {
                        200 + noise
                    } else {
                        noise
                    });
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

fn lth_cmd(data: &Path, out: &Path) -> Command {
    let mut c = netxray();
    c.args([
        "lth",
        "--method",
        "uticket",
        "--arch",
        "vgg-small",
        "--dataset",
        "mnist",
    ])
    .arg("--data-dir")
    .arg(data)
    .arg("--out-dir")
    .arg(out)
    .args([
        "--rounds",
        "4",
        "--round0-epochs",
        "1",
        "--rewind-epoch",
        "1",
    ])
    .args([
        "--epochs-per-round",
        "1",
        "--batch-size",
        "32",
        "--seed",
        "3",
    ]);
    c
}

/// Records without their wall times, for comparison.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    let v: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("rounds.json")).unwrap()).unwrap();
    v.into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("wall_seconds");
            r
        })
        .collect()
}

#[test]
fn uticket_run_balances_every_round_and_resumes_after_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_mnist_like(&data, 256, 64);

    let straight = dir.path().join("straight");
    let out = lth_cmd(&data, &straight).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&straight);
    assert_eq!(recs.len(), 4);
    for r in &recs[1..] {
        let before = r["hw_before_balance"]["utilization_weighted"]
            .as_f64()
            .unwrap();
        let after = r["hw"]["utilization_weighted"].as_f64().unwrap();
        assert!(
            (after - 1.0).abs() < 1e-12,
            "balanced layers must be at μ = 1: {after}"
        );
        assert!(before <= after);
        assert_eq!(r["hw"]["idle_cycles"].as_u64().unwrap(), 0);
    }
    let s3 = recs[3]["sparsity"].as_f64().unwrap();
    assert!(
        s3 > 0.5 && s3 < 0.65,
        "three prunes of 25 % ≈ 57.8 %, got {s3}"
    );
    for f in [
        "utilization.svg",
        "accuracy-vs-sparsity.svg",
        "worst-layer-workloads.svg",
    ] {
        let svg = std::fs::read_to_string(straight.join(f)).unwrap();
        assert!(svg.starts_with("<svg"), "{f}");
    }

    // Kill after the second round's record appears, then rerun the same command.
    let killed = dir.path().join("killed");
    let mut child = lth_cmd(&data, &killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !killed.join("round-01.json").exists() && start.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = lth_cmd(&data, &killed).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(records(&straight), records(&killed), "resumed run differs");

    // A different configuration in the same directory is refused.
    let out = lth_cmd(&data, &killed)
        .args(["--prune-rate", "0.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("other parameters"));
}

#[test]
fn paper_recipe_smoke_test_vgg16_on_cifar10_shaped_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = 9u32;
    let record = |state: &mut u32, label: u8| {
        let mut r = vec![label];
        r.extend((0..3072).map(|_| (lcg(state) % 256) as u8));
        r
    };
    for i in 1..=5 {
        let bytes: Vec<u8> = (0..4).flat_map(|k| record(&mut state, k as u8)).collect();
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    let bytes: Vec<u8> = (0..4).flat_map(|k| record(&mut state, k as u8)).collect();
    std::fs::write(dir.path().join("test_batch.bin"), bytes).unwrap();
    let out = netxray()
        .args([
            "lth",
            "--method",
            "uticket",
            "--arch",
            "vgg16",
            "--dataset",
            "cifar10",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--out-dir")
        .arg(dir.path().join("run"))
        .args([
            "--rounds",
            "2",
            "--round0-epochs",
            "1",
            "--rewind-epoch",
            "0",
        ])
        .args([
            "--epochs-per-round",
            "1",
            "--train-limit",
            "4",
            "--test-limit",
            "4",
        ])
        .args(["--batch-size", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&dir.path().join("run"));
    assert_eq!(recs.len(), 2);
    assert!((recs[1]["hw"]["utilization_weighted"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    // VGG-16 has 13 convs; the first is not counted.
    let hw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/round-01-hw.json")).unwrap())
            .unwrap();
    assert_eq!(hw["layers"].as_array().unwrap().len(), 12);
}
