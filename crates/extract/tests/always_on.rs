//! A last-hidden-layer neuron that never switches off (zero bias, non-negative weights on the
//! previous ReLU outputs) has no boundary for any line to meet; it is recovered from the output's
//! linear part, and the other neurons' signs with it.

use faer::Mat;
use netxray_extract::{ExtractParams, NetworkOracle, extract};
use netxray_relu::{Arch, InitRecipe, Network};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// Max |f − f̂| / max |f| over `n` inputs at scale `s`.
fn rel_error(a: &Network, b: &Network, n: usize, s: f64) -> f64 {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(99);
    let x = Mat::<f64>::from_fn(n, a.input_dim(), |_, _| {
        s * rng.sample::<f64, _>(StandardNormal)
    });
    let (fa, fb) = (
        a.forward(x.as_ref()).unwrap(),
        b.forward(x.as_ref()).unwrap(),
    );
    let (mut e, mut m) = (0.0_f64, 0.0_f64);
    for i in 0..n {
        e = e.max((fa[(i, 0)] - fb[(i, 0)]).abs());
        m = m.max(fa[(i, 0)].abs());
    }
    e / m
}

#[test]
fn an_always_on_last_layer_neuron_is_recovered_from_the_linear_part() {
    let arch: Arch = "12-10-8-1".parse().unwrap();
    let mut truth = Network::random(&arch, InitRecipe::He, 5);
    let layer = &mut truth.layers_mut()[1];
    for c in 0..layer.fan_in() {
        layer.weight[(3, c)] = layer.weight[(3, c)].abs();
    }
    layer.bias[3] = 0.0;
    let oracle = NetworkOracle::new(truth.clone());
    let p = ExtractParams::builder().seed(1).build().unwrap();
    let ex = match extract(&oracle, &arch, &p, |_| {}) {
        Ok(ex) => ex,
        Err(netxray_extract::ExtractError::VerificationFailed {
            extraction,
            rel_error,
        }) => {
            for l in &extraction.report.layers {
                eprintln!(
                    "layer {} dead {:?} always-on {:?} method {} low {:?} conf {:?}",
                    l.layer,
                    l.dead,
                    l.always_on,
                    l.sign_method,
                    l.low_confidence,
                    l.sign_confidence
                );
            }
            panic!("verification failed: {rel_error:e}");
        }
        Err(e) => panic!("{e}"),
    };
    let last = &ex.report.layers[1];
    assert_eq!(last.always_on.len(), 1, "{last:?}");
    assert!(last.dead.is_empty(), "{last:?}");
    for s in [1.0, 30.0] {
        let err = rel_error(&truth, &ex.network, 20_000, s);
        assert!(err < 1e-9, "scale {s}: relative error {err:e}");
    }
}
