//! Float32 deployments end to end: the same MLP as an f32 safetensors file (answered in f32
//! arithmetic) and as an ONNX file (answered by the tract runtime) are both extracted with
//! `--precision auto` to 1e-4 relative output error with every label agreeing (issue 4).

use std::process::Command;

fn netxray(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netxray"))
        .args(args)
        .output()
        .expect("run netxray")
}

fn ok(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

const ARCH: &str = "24-12-12-4";

fn new_model(path: &str, extra: &[&str]) {
    let mut args = vec![
        "model", "new", "--arch", ARCH, "--init", "balanced", "--seed", "5", "--out", path,
    ];
    args.extend_from_slice(extra);
    ok(&netxray(&args));
}

/// Extracts `target` with `--precision auto` and checks the result against `truth`.
fn extract_and_check(target: &str, truth: &str, dir: &std::path::Path, extra: &[&str]) {
    let s = dir.join("stolen.safetensors");
    let r = dir.join("report.json");
    let (s, r) = (s.to_str().unwrap(), r.to_str().unwrap());
    let mut args = vec![
        "extract",
        "--target",
        target,
        "--out",
        s,
        "--report",
        r,
        "--seed",
        "1",
        "--precision",
        "auto",
    ];
    args.extend_from_slice(extra);
    let text = ok(&netxray(&args));
    assert!(text.contains("precision: f32 tolerances"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
    assert_eq!(report["precision"]["used"], "f32", "{report}");
    assert_eq!(report["precision"]["probe"]["f32_answers"], true);
    let cmp = netxray(&[
        "model",
        "compare",
        "--truth",
        truth,
        "--candidate",
        s,
        "--json",
        "--samples",
        "100000",
    ]);
    ok(&cmp);
    let c: serde_json::Value = serde_json::from_slice(&cmp.stdout).unwrap();
    let rel = c["max_output_error_rel"].as_f64().unwrap();
    assert!(rel <= 1e-4, "{target}: relative output error {rel:e}");
    assert_eq!(c["label_agreement"].as_f64().unwrap(), 1.0, "{c}");
}

#[test]
fn f32_safetensors_and_onnx_targets_are_extracted_functionally() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("m.safetensors");
    let onnx = dir.path().join("m.onnx");
    let (st, onnx) = (st.to_str().unwrap(), onnx.to_str().unwrap());
    new_model(st, &["--f32"]);
    new_model(onnx, &[]);
    // The ONNX file holds the same f32 weights.
    let cmp = netxray(&[
        "model",
        "compare",
        "--truth",
        st,
        "--candidate",
        onnx,
        "--json",
        "--samples",
        "1000",
    ]);
    ok(&cmp);
    let c: serde_json::Value = serde_json::from_slice(&cmp.stdout).unwrap();
    assert_eq!(c["max_param_error"].as_f64().unwrap(), 0.0, "{c}");
    // PyTorch-style f32 file: `--target-arith auto` deploys it in f32 arithmetic.
    extract_and_check(st, st, dir.path(), &["--target-arith", "auto"]);
    extract_and_check(onnx, onnx, dir.path(), &[]);
}

#[test]
fn unreadable_onnx_files_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07not an onnx model at all\xff\xff").unwrap();
    let junk = junk.to_str().unwrap();
    let s = dir.path().join("s.safetensors");
    let s = s.to_str().unwrap();
    for args in [
        vec!["extract", "--target", junk, "--out", s],
        vec!["model", "inspect", junk],
        vec!["serve", "--model", junk],
    ] {
        let out = netxray(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error:"), "{err}");
        assert!(lines[0].contains("junk.onnx"), "{err}");
    }
}
