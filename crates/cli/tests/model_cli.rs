//! End-to-end checks of `netxray model new | inspect | compare`.

use std::path::Path;
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

/// A failing command: non-zero exit and exactly one line on stderr.
fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success(), "should fail");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn new_inspect_compare_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let a_s = a.to_str().unwrap();
    let out = stdout(&netxray(&[
        "model",
        "new",
        "--arch",
        "784-128-128-10",
        "--seed",
        "1",
        "--out",
        a_s,
    ]));
    assert!(out.contains("118282"), "{out}");

    let out = stdout(&netxray(&["model", "inspect", a_s]));
    assert!(out.contains("architecture: 784-128-128-10"), "{out}");
    assert!(out.contains("parameters: 118282"), "{out}");
    assert!(out.contains("[128, 784]"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&netxray(&["model", "inspect", a_s, "--json"]))).unwrap();
    assert_eq!(json["parameters"], 118282);
    assert_eq!(json["layers"][2]["shape"], serde_json::json!([10, 128]));

    let out = stdout(&netxray(&[
        "model",
        "compare",
        "--truth",
        a_s,
        "--candidate",
        a_s,
        "--samples",
        "2000",
    ]));
    assert!(out.contains("max |dtheta|"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&netxray(&[
        "model",
        "compare",
        "--truth",
        a_s,
        "--candidate",
        a_s,
        "--samples",
        "2000",
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["schema"], 1);
    assert!(json["param_bits"].as_f64().unwrap() >= 50.0, "{json}");
    assert!(json["output_bits"].as_f64().unwrap() >= 50.0, "{json}");
    assert_eq!(json["label_agreement"], 1.0);

    // Same seed, f32 and another init: loads, compares, differs.
    let b = dir.path().join("b.safetensors");
    let b_s = b.to_str().unwrap();
    stdout(&netxray(&[
        "model",
        "new",
        "--arch",
        "784-128-128-10",
        "--seed",
        "2",
        "--init",
        "balanced",
        "--f32",
        "--out",
        b_s,
    ]));
    let json: serde_json::Value = serde_json::from_str(&stdout(&netxray(&[
        "model",
        "compare",
        "--truth",
        a_s,
        "--candidate",
        b_s,
        "--samples",
        "500",
        "--json",
    ])))
    .unwrap();
    assert!(json["param_bits"].as_f64().unwrap() < 10.0, "{json}");
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"this is not a model file\n").unwrap();
    let e = one_line_error(&netxray(&["model", "inspect", bad.to_str().unwrap()]));
    assert!(e.contains("bad.safetensors"), "{e}");

    let missing = dir.path().join("missing.safetensors");
    let e = one_line_error(&netxray(&["model", "inspect", missing.to_str().unwrap()]));
    assert!(e.contains("missing.safetensors"), "{e}");

    // Truncated file.
    let a = dir.path().join("a.safetensors");
    stdout(&netxray(&[
        "model",
        "new",
        "--arch",
        "10-5-2",
        "--out",
        a.to_str().unwrap(),
    ]));
    let bytes = std::fs::read(&a).unwrap();
    let t = dir.path().join("t.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() - 7]).unwrap();
    one_line_error(&netxray(&["model", "inspect", t.to_str().unwrap()]));

    // Architectures that differ.
    let b = dir.path().join("b.safetensors");
    stdout(&netxray(&[
        "model",
        "new",
        "--arch",
        "10-6-2",
        "--out",
        b.to_str().unwrap(),
    ]));
    let e = one_line_error(&netxray(&[
        "model",
        "compare",
        "--truth",
        a.to_str().unwrap(),
        "--candidate",
        b.to_str().unwrap(),
    ]));
    assert!(e.contains("10-5-2") && e.contains("10-6-2"), "{e}");

    // Bad architecture string (clap reports it; still non-zero).
    let o = netxray(&["model", "new", "--arch", "10-x", "--out", "/dev/null"]);
    assert!(!o.status.success());
}

#[test]
fn inspects_the_reference_npz() {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/models/extraction/cjm_40-20-10-10-1_seed42.npz"
    ));
    if !p.is_file() {
        eprintln!("note: {} absent, skipping", p.display());
        return;
    }
    let out = stdout(&netxray(&["model", "inspect", p.to_str().unwrap()]));
    assert!(out.contains("architecture: 40-20-10-10-1"), "{out}");
    assert!(out.contains("parameters: 1151"), "{out}");
}

#[test]
fn compares_on_the_test_images_of_a_dataset() {
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/datasets/fashion-mnist"
    );
    if !Path::new(data).exists() {
        eprintln!("skipped: {data} not present");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    for (p, seed) in [(a, "1"), (b, "2")] {
        stdout(&netxray(&[
            "model", "new", "--arch", "784-8-10", "--seed", seed, "--out", p,
        ]));
    }
    let same = netxray(&[
        "model",
        "compare",
        "--truth",
        a,
        "--candidate",
        a,
        "--samples",
        "100",
        "--json",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data,
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&same)).unwrap();
    assert_eq!(v["dataset"]["name"], "fashion-mnist");
    assert_eq!(v["dataset"]["test"]["samples"], 10000);
    assert_eq!(v["dataset"]["test"]["label_agreement"], 1.0);
    let other = netxray(&[
        "model",
        "compare",
        "--truth",
        a,
        "--candidate",
        b,
        "--samples",
        "100",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data,
    ]);
    let text = stdout(&other);
    assert!(
        text.contains("fashion-mnist test images: 10000 inputs"),
        "{text}"
    );
    // --dataset needs --data-dir.
    let bad = netxray(&[
        "model",
        "compare",
        "--truth",
        a,
        "--candidate",
        a,
        "--dataset",
        "fashion-mnist",
    ]);
    assert!(!bad.status.success());
}
