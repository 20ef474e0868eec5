//! The isolated wiggle proves signs by clean votes: starting from deliberately wrong signs on an
//! expansive layer (more neurons than directions of control), it restores the true ones.

use netxray_extract::known::KnownPrefix;
use netxray_extract::sign::SignOutcome;
use netxray_extract::sign::wiggle::isolate;
use netxray_extract::{CountingOracle, NetworkOracle};
use netxray_relu::{Arch, InitRecipe, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[test]
fn restores_flipped_signs_on_an_expansive_layer() {
    // Layer 2 (20 wide) sees at most the ~10 active units of layer 1: expansive.
    let arch: Arch = "10-20-20-1".parse().unwrap();
    let net = Network::random(&arch, InitRecipe::Balanced, 3);
    let oracle = NetworkOracle::new(net.clone());
    let co = CountingOracle::new(&oracle, None);
    let mut known = KnownPrefix::new(10);
    known.layers.push(net.layers()[0].clone());
    let layer = &net.layers()[1];
    // The true signs are all +1 (the true rows); start from three wrong ones.
    let wrong = [2usize, 7, 11];
    let mut outcome = SignOutcome {
        method: "test",
        signs: (0..20)
            .map(|k| if wrong.contains(&k) { -1.0 } else { 1.0 })
            .collect(),
        confidence: vec![0.5; 20],
        queries: 0,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let all: Vec<usize> = (0..20).collect();
    let changed = isolate(&co, &known, layer, &all, &mut outcome, 4, 1.0, &mut rng).unwrap();
    assert!(outcome.queries > 0 && outcome.queries == co.queries());
    // Every neuron that got clean votes has the true sign; nothing right was broken, and wrong signs
    // were corrected (where the control rank allows isolation at all: here the layer is so expansive
    // that not every neuron gets a clean vote; those keep their confidence and stay reported).
    for k in 0..20 {
        if outcome.confidence[k] > 0.9 {
            assert_eq!(outcome.signs[k], 1.0, "neuron {k}: {outcome:?}");
        }
    }
    assert!(changed.iter().all(|k| wrong.contains(k)), "{changed:?}");
    assert!(!changed.is_empty(), "{outcome:?}");
    for k in wrong {
        assert!(
            changed.contains(&k) || outcome.confidence[k] < 0.9,
            "neuron {k} confidently wrong: {outcome:?}"
        );
    }
}
