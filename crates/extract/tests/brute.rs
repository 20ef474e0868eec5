//! The brute-force sign cross-check agrees with the pipeline on random nets, and catches a flipped sign.

use netxray_extract::known::KnownPrefix;
use netxray_extract::sign::brute::cross_check;
use netxray_extract::{CountingOracle, ExtractParams, NetworkOracle, extract};
use netxray_relu::{Arch, InitRecipe, Layer, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[test]
fn agrees_with_the_pipeline_on_every_layer() {
    for (arch, seed) in [("12-8-6-2", 4u64), ("10-6-6-6-1", 2)] {
        let arch: Arch = arch.parse().unwrap();
        let net = Network::random(&arch, InitRecipe::Balanced, seed);
        let oracle = NetworkOracle::new(net);
        let p = ExtractParams::builder()
            .seed(1)
            .brute_check(true)
            .build()
            .unwrap();
        let ex = extract(&oracle, &arch, &p, |_| {}).expect("extracts");
        for l in &ex.report.layers {
            let c = l.brute_check.as_ref().expect("every layer is narrow");
            assert!(c.disagree.is_empty(), "{arch} layer {}: {c:?}", l.layer);
            assert_eq!(c.patterns, 1 << l.neurons_found);
            assert!(c.chosen_score < 1e-8, "{arch} layer {}: {c:?}", l.layer);
            assert!(c.queries > 0 && c.points > 0);
        }
        assert!(ex.report.low_confidence_signs.is_empty());
    }
}

#[test]
fn a_flipped_sign_is_caught() {
    let arch: Arch = "10-8-6-3".parse().unwrap();
    let net = Network::random(&arch, InitRecipe::Balanced, 7);
    let oracle = NetworkOracle::new(net.clone());
    let co = CountingOracle::new(&oracle, None);
    let mut known = KnownPrefix::new(10);
    known.layers.push(net.layers()[0].clone());
    // Layer 2 with neuron 3's row negated: keeping it (+1) is the wrong sign.
    let truth = &net.layers()[1];
    let mut flipped: Layer = truth.clone();
    for c in 0..flipped.fan_in() {
        flipped.weight[(3, c)] = -flipped.weight[(3, c)];
    }
    flipped.bias[3] = -flipped.bias[3];
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let right = vec![1.0; 6];
    let c = cross_check(&co, &known, truth, &right, 20, 1.0, 1e-10, 0.0, &mut rng)
        .unwrap()
        .unwrap();
    assert!(c.disagree.is_empty(), "{c:?}");
    let c = cross_check(&co, &known, &flipped, &right, 20, 1.0, 1e-10, 0.0, &mut rng)
        .unwrap()
        .unwrap();
    assert_eq!(c.disagree, vec![3], "{c:?}");
    assert!(c.chosen_score > 1e-3 && c.best_score < 1e-8, "{c:?}");
    assert!(c.decisive(), "{c:?}");
    assert_eq!(c.best_signs[3], -1.0);
    // With the flip undone by the chosen signs, the check agrees again.
    let mut undo = right.clone();
    undo[3] = -1.0;
    let c = cross_check(&co, &known, &flipped, &undo, 20, 1.0, 1e-10, 0.0, &mut rng)
        .unwrap()
        .unwrap();
    assert!(c.disagree.is_empty(), "{c:?}");
}

/// The reference 10-15-15-1 (CRYPTO 2020 recipe): the plain wiggle alone gets layer-1 signs wrong
/// and verification fails; either the isolated wiggle or the brute-force check corrects them.
/// Attack seed 2: the isolated wiggle alone is not right on every seed (on 2 of 6 seeds it leaves
/// two wrong, low-confidence layer-1 signs, which the default brute-force check then corrects).
#[test]
fn corrects_the_wiggle_on_the_reference_expansive_net() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/extraction/cjm_10-15-15-1_seed42.npz");
    if !path.exists() {
        eprintln!("skipped: {} not present", path.display());
        return;
    }
    let net = netxray_relu::format::load_network(&path).unwrap();
    let arch = net.arch();
    let oracle = NetworkOracle::new(net);
    let params = |isolated: usize, brute: bool| {
        ExtractParams::builder()
            .seed(2)
            .isolated_wiggles(isolated)
            .brute_check(brute)
            .build()
            .unwrap()
    };
    // Brute force alone corrects the plain wiggle.
    let ex = extract(&oracle, &arch, &params(0, true), |_| {}).expect("verifies with brute force");
    let l1 = &ex.report.layers[0];
    let c = l1.brute_check.as_ref().unwrap();
    assert!(c.adopted && !c.disagree.is_empty(), "{c:?}");
    assert!(l1.sign_method.contains("corrected by brute force"));
    assert!(ex.report.verify_rel_error < 1e-9);
    // The isolated wiggle alone gets them right too (clean votes, no 2^w search).
    let ex = extract(&oracle, &arch, &params(4, false), |_| {}).expect("verifies with isolation");
    assert!(ex.report.layers[0].sign_method.contains("isolated wiggle"));
    assert!(ex.report.verify_rel_error < 1e-9);
    // Default (both): the brute-force check agrees with the isolated wiggle.
    let ex = extract(&oracle, &arch, &params(4, true), |_| {}).expect("verifies by default");
    assert!(
        ex.report.layers[0]
            .brute_check
            .as_ref()
            .unwrap()
            .disagree
            .is_empty()
    );
    // Without either the same run is refused, never silently wrong.
    assert!(matches!(
        extract(&oracle, &arch, &params(0, false), |_| {}),
        Err(netxray_extract::ExtractError::VerificationFailed { .. })
    ));
}
