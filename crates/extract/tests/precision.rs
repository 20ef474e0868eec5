//! `--precision`: the probe tells f64 from f32 targets, refuses noised answers, and an f32 target is
//! either extracted within the f32 tolerance or refused with a specific error — never a silently
//! wrong model.

use netxray_extract::{ExtractError, ExtractParams, NetworkOracle, Precision, extract};
use netxray_relu::{Arch, InitRecipe, Network};

#[test]
fn auto_on_an_f64_target_keeps_the_f64_presets_and_their_precision() {
    let arch: Arch = "12-8-6-2".parse().unwrap();
    let net = Network::random(&arch, InitRecipe::Balanced, 4);
    let oracle = NetworkOracle::new(net);
    let p = ExtractParams::builder()
        .seed(3)
        .precision(Precision::Auto)
        .build()
        .unwrap();
    let ex = extract(&oracle, &arch, &p, |_| {}).expect("f64 target extracts");
    let pr = &ex.report.precision;
    assert_eq!(pr.requested, Precision::Auto);
    assert_eq!(pr.used, Precision::F64);
    let probe = pr.probe.as_ref().expect("auto measures");
    assert!(!probe.f32_answers && probe.noise_rel < 1e-12, "{probe:?}");
    assert!(ex.report.verify_rel_error < 1e-9);
    assert!(pr.reached_bits > 30.0, "{}", pr.reached_bits);
    // The same run with f64 asked directly spends exactly the probe's queries less.
    let p64 = ExtractParams::builder().seed(3).build().unwrap();
    let ex64 = extract(&oracle, &arch, &p64, |_| {}).unwrap();
    assert_eq!(
        ex.report.total_queries,
        ex64.report.total_queries + probe.queries
    );
    assert!(ex64.report.precision.probe.is_none());
}

#[test]
fn an_f32_target_is_detected_and_never_silently_wrong() {
    let arch: Arch = "20-10-10-1".parse().unwrap();
    let net = Network::random(&arch, InitRecipe::Balanced, 1);
    let oracle = NetworkOracle::new_f32(&net);
    let p = ExtractParams::builder()
        .seed(1)
        .precision(Precision::Auto)
        .build()
        .unwrap();
    match extract(&oracle, &arch, &p, |_| {}) {
        Ok(ex) => {
            assert_eq!(ex.report.precision.used, Precision::F32);
            assert!(ex.report.verify_rel_error <= ex.report.params.verify_rel_tol);
            assert!(ex.report.params.noise_floor > 0.0);
        }
        Err(ExtractError::VerificationFailed { extraction, .. })
        | Err(ExtractError::Incomplete { extraction, .. }) => {
            // Refused, with the f32 preset and the measured floor on record.
            assert_eq!(extraction.report.precision.used, Precision::F32);
            let probe = extraction.report.precision.probe.as_ref().unwrap();
            assert!(probe.f32_answers && probe.noise_rel > 1e-9, "{probe:?}");
            assert!(extraction.report.params.noise_floor > 0.0);
        }
        Err(e @ ExtractError::LayerFailed { .. }) => eprintln!("refused: {e}"),
        Err(other) => panic!("unexpected error {other}"),
    }
}
