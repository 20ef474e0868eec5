//! End-to-end `netxray extract` runs on small targets.

use std::process::Command;

fn netxray(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netxray"))
        .args(args)
        .output()
        .expect("run netxray")
}

/// Writes the small random target every test attacks.
fn new_target(path: &str) {
    let out = netxray(&[
        "model",
        "new",
        "--arch",
        "20-10-5-1",
        "--init",
        "balanced",
        "--seed",
        "1",
        "--out",
        path,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn extract_then_compare_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.safetensors");
    let s = dir.path().join("s.safetensors");
    let r = dir.path().join("r.json");
    let (t, s, r) = (
        t.to_str().unwrap(),
        s.to_str().unwrap(),
        r.to_str().unwrap(),
    );
    new_target(t);
    let out = netxray(&[
        "extract", "--target", t, "--out", s, "--report", r, "--seed", "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
    assert_eq!(report["schema"], 1);
    assert!(report["total_queries"].as_u64().unwrap() > 0);
    assert_eq!(report["layers"].as_array().unwrap().len(), 2);
    // The time spent waiting for the target is part of the wall time, layer by layer and in all.
    let (wall, target) = (
        report["wall_seconds"].as_f64().unwrap(),
        report["target_seconds"].as_f64().unwrap(),
    );
    assert!(
        target > 0.0 && target <= wall,
        "target {target} s of {wall} s"
    );
    for l in report["layers"].as_array().unwrap() {
        let s = &l["seconds"];
        let stages = s["signatures"].as_f64().unwrap() + s["sign"].as_f64().unwrap();
        let waited = s["target"].as_f64().unwrap();
        assert!(waited > 0.0 && waited <= stages, "{s}");
    }
    let cmp = netxray(&[
        "model",
        "compare",
        "--truth",
        t,
        "--candidate",
        s,
        "--json",
        "--samples",
        "5000",
    ]);
    assert!(cmp.status.success());
    let c: serde_json::Value = serde_json::from_slice(&cmp.stdout).unwrap();
    assert!(c["param_bits"].as_f64().unwrap() > 25.0, "{c}");
}

#[test]
fn budget_and_missing_target_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.safetensors");
    let s = dir.path().join("s.safetensors");
    let (t, s) = (t.to_str().unwrap(), s.to_str().unwrap());
    new_target(t);
    for args in [
        vec!["extract", "--target", t, "--out", s, "--max-queries", "50"],
        vec!["extract", "--target", "/nonexistent/model.npz", "--out", s],
        vec!["extract", "--target", t, "--out", s, "--arch", "21-10-5-1"],
        // A preset's knob with the preset left to `auto`, and a value the params reject.
        vec![
            "extract",
            "--target",
            t,
            "--out",
            s,
            "--precision",
            "auto",
            "--projected-polish-points-per-unknown",
            "3",
        ],
        vec![
            "extract",
            "--target",
            t,
            "--out",
            s,
            "--precision",
            "f64",
            "--projected-polish-points-per-unknown",
            "1.5",
        ],
    ] {
        let out = netxray(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error:"), "{err}");
    }
}

#[test]
fn precision_auto_measures_the_target_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.safetensors");
    let s = dir.path().join("s.safetensors");
    let r = dir.path().join("r.json");
    let (t, s, r) = (
        t.to_str().unwrap(),
        s.to_str().unwrap(),
        r.to_str().unwrap(),
    );
    new_target(t);
    // f64 target: auto keeps the f64 presets.
    let out = netxray(&[
        "extract",
        "--target",
        t,
        "--out",
        s,
        "--report",
        r,
        "--seed",
        "1",
        "--precision",
        "auto",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("precision: f64 tolerances (auto asked"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
    assert_eq!(report["precision"]["used"], "f64");
    assert_eq!(report["precision"]["probe"]["f32_answers"], false);
    // The same model deployed in f32: auto switches to the f32 preset; the run either verifies
    // within 1e-4 or stops with a clear verification error (never a silently wrong model).
    let out = netxray(&[
        "extract",
        "--target",
        t,
        "--out",
        s,
        "--report",
        r,
        "--seed",
        "1",
        "--precision",
        "auto",
        "--target-arith",
        "f32",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("precision: f32 tolerances"), "{text}");
    if !out.status.success() {
        assert!(
            text.contains("did not verify") || text.contains("incomplete"),
            "{text}"
        );
    }
    // An unknown precision is a clap error.
    let bad = netxray(&["extract", "--target", t, "--out", s, "--precision", "f16"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected auto, f64 or f32"));
}
