//! End-to-end `netxray serve` + `netxray extract --target http://…` as separate processes on loopback.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

fn netxray(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netxray"))
        .args(args)
        .env_remove("NETXRAY_TOKEN")
        .output()
        .expect("run netxray")
}

fn new_target(path: &str, arch: &str) {
    let out = netxray(&[
        "model", "new", "--arch", arch, "--init", "balanced", "--seed", "1", "--out", path,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `netxray serve`; killed on drop if the test did not stop it.
struct Served {
    child: Child,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl Served {
    fn start(model: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_netxray"))
            .args(["serve", "--model", model, "--addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("NETXRAY_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start netxray serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(url) = line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
        else {
            let mut err = String::new();
            let _ = child.kill();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve did not start: {line:?} {err}");
        };
        let url = url.to_string();
        Served { child, stdout, url }
    }

    /// SIGTERM, then wait (bounded) for a graceful exit; returns the rest of stdout.
    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "serve exited with {status}");
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        rest
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn rounding_server_makes_extract_stop_early_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.safetensors");
    let s = dir.path().join("s.safetensors");
    let (t, s) = (t.to_str().unwrap(), s.to_str().unwrap());
    new_target(t, "20-10-5-1");
    let served = Served::start(t, &["--round-digits", "4"]);
    let out = netxray(&[
        "extract",
        "--target",
        &served.url,
        "--arch",
        "20-10-5-1",
        "--out",
        s,
        "--seed",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the target rounds its outputs to 4 decimal digits")
            && err.contains("exact extraction is impossible"),
        "{err}"
    );
    assert!(!std::path::Path::new(s).exists(), "no model written");
    let rest = served.terminate();
    let answered: u64 = rest
        .trim()
        .strip_prefix("stopped after answering ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{rest:?}"));
    // Stopped early: a handful of search queries, not an extraction's tens of thousands.
    assert!(answered < 2000, "{answered} queries before stopping");
}

#[test]
fn extract_over_http_with_token_and_exposed_arch_counts_like_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.safetensors");
    let s = dir.path().join("s.safetensors");
    let r = dir.path().join("r.json");
    let (t, s, r) = (
        t.to_str().unwrap(),
        s.to_str().unwrap(),
        r.to_str().unwrap(),
    );
    new_target(t, "20-10-5-1");
    let served = Served::start(t, &["--token", "abc123", "--expose-arch"]);
    let out = netxray(&[
        "extract",
        "--target",
        &served.url,
        "--token",
        "abc123",
        "--out",
        s,
        "--report",
        r,
        "--seed",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
    assert_eq!(
        report["arch"], "20-10-5-1",
        "architecture taken from /v1/info"
    );
    let total = report["total_queries"].as_u64().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{total} rows answered, 0 retries")),
        "{stdout}"
    );
    let rest = served.terminate();
    assert_eq!(
        rest.trim(),
        format!("stopped after answering {total} queries")
    );
    let cmp = netxray(&["model", "compare", "--truth", t, "--candidate", s, "--json"]);
    assert!(cmp.status.success());
    let cmp: serde_json::Value = serde_json::from_slice(&cmp.stdout).unwrap();
    assert!(cmp["param_bits"].as_f64().unwrap() > 30.0, "{cmp}");
}

#[test]
fn clear_errors_for_hidden_arch_wrong_token_and_unreachable_targets() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.safetensors");
    let s = dir.path().join("s.safetensors");
    let (t, s) = (t.to_str().unwrap(), s.to_str().unwrap());
    new_target(t, "20-10-5-1");
    let served = Served::start(t, &["--token", "abc123", "--max-queries", "100"]);
    let run = |extra: &[&str]| {
        let mut args = vec!["extract", "--target", &served.url, "--out", s];
        args.extend_from_slice(extra);
        let out = netxray(&args);
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--token", "abc123"]);
    assert!(
        e.contains("does not expose its architecture") && e.contains("--arch"),
        "{e}"
    );
    let e = run(&["--token", "nope", "--arch", "20-10-5-1"]);
    assert!(
        e.contains("HTTP 401") && e.contains("wrong bearer token"),
        "{e}"
    );
    let e = run(&["--arch", "20-10-5-1"]);
    assert!(
        e.contains("HTTP 401") && e.contains("missing bearer token"),
        "{e}"
    );
    let e = run(&["--token", "abc123", "--arch", "20-10-5"]);
    assert!(e.contains("does not match"), "{e}");
    let e = run(&["--token", "abc123", "--arch", "20-10-5-1"]);
    assert!(e.contains("server query budget spent"), "{e}");
    drop(served);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = netxray(&[
        "extract",
        "--target",
        &url,
        "--arch",
        "20-10-5-1",
        "--out",
        s,
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        e.contains(&format!("cannot reach {url}: connection refused")),
        "{e}"
    );
}

#[test]
fn an_onnx_file_is_served_through_its_runtime_and_extracted_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.onnx");
    let s = dir.path().join("s.safetensors");
    let r = dir.path().join("r.json");
    let (m, s, r) = (
        m.to_str().unwrap(),
        s.to_str().unwrap(),
        r.to_str().unwrap(),
    );
    let out = netxray(&[
        "model",
        "new",
        "--arch",
        "24-12-12-4",
        "--init",
        "balanced",
        "--seed",
        "5",
        "--out",
        m,
    ]);
    assert!(out.status.success());
    let served = Served::start(m, &["--expose-arch"]);
    let out = netxray(&[
        "extract",
        "--target",
        &served.url,
        "--out",
        s,
        "--report",
        r,
        "--seed",
        "1",
        "--precision",
        "auto",
    ]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("precision: f32 tolerances"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
    let rest = served.terminate();
    assert!(
        rest.contains(&format!(
            "stopped after answering {} queries",
            report["total_queries"]
        )),
        "{rest} vs {}",
        report["total_queries"]
    );
    let cmp = netxray(&[
        "model",
        "compare",
        "--truth",
        m,
        "--candidate",
        s,
        "--json",
        "--samples",
        "20000",
    ]);
    assert!(cmp.status.success());
    let c: serde_json::Value = serde_json::from_slice(&cmp.stdout).unwrap();
    assert!(c["max_output_error_rel"].as_f64().unwrap() <= 1e-4, "{c}");
}
