//! Checkpoint/resume: an extraction that dies in the middle of a layer continues from its resume
//! directory, asks no answered query again, and ends with the same network as an uninterrupted run.

use faer::{Mat, MatRef};
use netxray_extract::{ExtractParams, NetworkOracle, Oracle, OracleError, extract_resumable};
use netxray_relu::{Arch, InitRecipe, Network};
use std::sync::atomic::{AtomicU64, Ordering};

/// The target, dying (like a killed process or a lost connection) once `fail_after` rows were answered.
struct Dying {
    inner: NetworkOracle,
    answered: AtomicU64,
    fail_after: u64,
}

impl Oracle for Dying {
    fn input_dim(&self) -> usize {
        self.inner.input_dim()
    }
    fn output_dim(&self) -> usize {
        self.inner.output_dim()
    }
    fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        let n = xs.nrows() as u64;
        if self.answered.load(Ordering::SeqCst) + n > self.fail_after {
            return Err(OracleError::Unavailable("connection lost".into()));
        }
        self.answered.fetch_add(n, Ordering::SeqCst);
        self.inner.query_batch(xs)
    }
}

fn dying(net: &Network, fail_after: u64) -> Dying {
    Dying {
        inner: NetworkOracle::new(net.clone()),
        answered: AtomicU64::new(0),
        fail_after,
    }
}

fn bits(n: &Network) -> Vec<u64> {
    n.layers()
        .iter()
        .flat_map(|l| {
            let w = &l.weight;
            (0..w.nrows())
                .flat_map(move |i| (0..w.ncols()).map(move |j| w[(i, j)].to_bits()))
                .chain(l.bias.iter().map(|b| b.to_bits()))
        })
        .collect()
}

#[test]
fn interrupted_extraction_resumes_to_the_same_network_without_asking_twice() {
    let arch: Arch = "12-10-8-2".parse().unwrap();
    let net = Network::random(&arch, InitRecipe::Balanced, 3);
    let p = ExtractParams::builder().seed(5).build().unwrap();
    let straight = extract_resumable(&dying(&net, u64::MAX), &arch, &p, None, |_| {}).unwrap();
    let total = straight.report.total_queries;

    // Interrupt in layer 1, then in layer 2 (after a commit), then finish.
    let dir = tempfile::tempdir().unwrap();
    let mut paid = 0;
    let mut stops = Vec::new();
    for cut in [total / 5, (total * 3) / 4] {
        let o = dying(&net, cut - paid);
        let err = extract_resumable(&o, &arch, &p, Some(dir.path()), |_| {}).unwrap_err();
        assert!(err.to_string().contains("connection lost"), "{err}");
        paid += o.answered.load(Ordering::SeqCst);
        stops.push(paid);
        assert!(dir.path().join("journal.bin").exists());
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
            .unwrap();
    assert!(
        !state["layers"].as_array().unwrap().is_empty(),
        "the second cut comes after layer 1 was committed: {stops:?} of {total}"
    );
    let o = dying(&net, u64::MAX);
    let resumed = extract_resumable(&o, &arch, &p, Some(dir.path()), |_| {}).unwrap();
    paid += o.answered.load(Ordering::SeqCst);

    assert_eq!(bits(&resumed.network), bits(&straight.network));
    // Every query the target answered was used: the runs together paid exactly the uninterrupted cost.
    assert_eq!(paid, total);
    assert_eq!(resumed.report.total_queries, total);
    let info = resumed.report.resume.as_ref().unwrap();
    assert_eq!(info.runs, 3);
    assert!(info.replayed_queries > 0);
    assert!(!info.journal_diverged);

    // Rerunning the finished extraction costs nothing but the (journaled) output stage: no new query.
    let o = dying(&net, u64::MAX);
    let again = extract_resumable(&o, &arch, &p, Some(dir.path()), |_| {}).unwrap();
    assert_eq!(o.answered.load(Ordering::SeqCst), 0);
    assert_eq!(bits(&again.network), bits(&straight.network));
}

#[test]
fn a_resume_directory_of_another_attack_is_refused() {
    let arch: Arch = "12-10-8-2".parse().unwrap();
    let net = Network::random(&arch, InitRecipe::Balanced, 3);
    let dir = tempfile::tempdir().unwrap();
    let p = ExtractParams::builder().seed(5).build().unwrap();
    extract_resumable(&dying(&net, u64::MAX), &arch, &p, Some(dir.path()), |_| {}).unwrap();
    let other = ExtractParams::builder().seed(6).build().unwrap();
    let err = extract_resumable(
        &dying(&net, u64::MAX),
        &arch,
        &other,
        Some(dir.path()),
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("other attack parameters"), "{err}");
}
