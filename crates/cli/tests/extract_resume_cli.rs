//! `kill -9` in the middle of `netxray extract --resume DIR`, then the same command again: it finishes
//! with the same network as an uninterrupted run and at most 5 % more queries in all.
//!
//! Issue 4's acceptance names a 784-64-64-10 net: that variant takes ~12 minutes here (two 6-minute
//! extractions), so CI runs the same procedure on a 100-32-32-10 net and the 784 one is `#[ignore]`d:
//! `cargo test --release -p netxray --test extract_resume_cli -- --ignored`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn netxray() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netxray"))
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn extract_cmd(target: &Path, out: &Path, report: &Path) -> Command {
    let mut c = netxray();
    c.args(["extract", "--seed", "1", "--target"])
        .arg(target)
        .arg("--out")
        .arg(out)
        .arg("--report")
        .arg(report);
    c
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Queries paid for so far by a run in `dir`: the committed ones plus the rows in the journal
/// (a record costs 24 bytes plus 8 per output value, 10 outputs here).
fn queries_so_far(dir: &Path) -> u64 {
    let committed = std::fs::read_to_string(dir.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["queries"].as_u64())
        .unwrap_or(0);
    let journal = std::fs::metadata(dir.join("journal.bin"))
        .map(|m| m.len().saturating_sub(32) / 80)
        .unwrap_or(0);
    committed + journal
}

#[test]
fn kill_9_in_the_middle_then_resume_gives_the_same_network() {
    kill_and_resume("100-32-32-10");
}

#[test]
#[ignore = "12 minutes on 2 cores; the acceptance-size run of the test above"]
fn kill_9_in_the_middle_of_a_784_64_64_10_extraction() {
    kill_and_resume("784-64-64-10");
}

fn kill_and_resume(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.safetensors");
    ok(netxray()
        .args(["model", "new", "--arch", arch, "--init", "balanced"])
        .args(["--seed", "7", "--out"])
        .arg(&target)
        .output()
        .unwrap());

    let straight = dir.path().join("straight.safetensors");
    let straight_report = dir.path().join("straight.json");
    ok(extract_cmd(&target, &straight, &straight_report)
        .output()
        .unwrap());
    let total = report(&straight_report)["total_queries"].as_u64().unwrap();

    let resume = dir.path().join("resume");
    let killed = dir.path().join("killed.safetensors");
    let killed_report = dir.path().join("killed.json");
    let mut child = extract_cmd(&target, &killed, &killed_report)
        .arg("--resume")
        .arg(&resume)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while queries_so_far(&resume) < total / 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was half done"
        );
        assert!(t0.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.exists(), "a killed run must not leave a result");
    let paid_before_kill = queries_so_far(&resume);

    let out = ok(extract_cmd(&target, &killed, &killed_report)
        .arg("--resume")
        .arg(&resume)
        .output()
        .unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("resumed (run 2)"), "{stdout}");
    let r = report(&killed_report);
    let resumed_total = r["total_queries"].as_u64().unwrap();
    assert!(
        resumed_total as f64 <= 1.05 * total as f64,
        "{resumed_total} queries after the kill vs {total} uninterrupted"
    );
    assert!(r["resume"]["replayed_queries"].as_u64().unwrap() > 0);
    assert!(paid_before_kill >= total / 2);
    // The same parameters, bit for bit.
    assert_eq!(tensors(&killed), tensors(&straight));
    eprintln!(
        "{arch}: uninterrupted {total} queries; killed at {paid_before_kill}, resumed total {resumed_total} ({:+.3} %)",
        (resumed_total as f64 / total as f64 - 1.0) * 100.0
    );
}

/// (name, raw bytes) of every tensor (the file's metadata map has no fixed order).
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}
