//! End-to-end attack against oracles that expose nothing but `query_batch`.

use faer::{Mat, MatRef};
use netxray_extract::{ExtractError, ExtractParams, Oracle, OracleError, extract};
use netxray_relu::{Arch, InitRecipe, Network};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// A target reachable only through a closure: the attack gets no type it could downcast to weights.
struct ClosureOracle<F: Fn(MatRef<'_, f64>) -> Mat<f64> + Sync> {
    d_in: usize,
    d_out: usize,
    f: F,
}

impl<F: Fn(MatRef<'_, f64>) -> Mat<f64> + Sync> Oracle for ClosureOracle<F> {
    fn input_dim(&self) -> usize {
        self.d_in
    }
    fn output_dim(&self) -> usize {
        self.d_out
    }
    fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        Ok((self.f)(xs))
    }
}

fn rel_error(a: &Network, b: &Network, n: usize, seed: u64) -> f64 {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let x = Mat::<f64>::from_fn(n, a.input_dim(), |_, _| {
        rng.sample::<f64, _>(StandardNormal)
    });
    let (fa, fb) = (
        a.forward(x.as_ref()).unwrap(),
        b.forward(x.as_ref()).unwrap(),
    );
    let (mut e, mut s) = (0.0_f64, 0.0_f64);
    for i in 0..n {
        for j in 0..fa.ncols() {
            e = e.max((fa[(i, j)] - fb[(i, j)]).abs());
            s = s.max(fa[(i, j)].abs());
        }
    }
    if s > 0.0 { e / s } else { e }
}

fn hidden(net: Network) -> ClosureOracle<impl Fn(MatRef<'_, f64>) -> Mat<f64> + Sync> {
    let (d_in, d_out) = (net.input_dim(), net.output_dim());
    ClosureOracle {
        d_in,
        d_out,
        f: move |xs| net.forward(xs).expect("shape checked by CountingOracle"),
    }
}

#[test]
fn extracts_through_an_oracle_that_only_answers_queries() {
    for (arch, init, seed) in [
        ("10-8-1", InitRecipe::Balanced, 1),
        ("20-10-5-1", InitRecipe::Balanced, 1),
    ] {
        let arch: Arch = arch.parse().unwrap();
        let truth = Network::random(&arch, init, seed);
        let oracle = hidden(truth.clone());
        let p = ExtractParams::builder().seed(seed).build().unwrap();
        let ex = extract(&oracle, &arch, &p, |_| {}).expect("extraction succeeds");
        let err = rel_error(&truth, &ex.network, 20_000, 99);
        assert!(err < 1e-9, "{arch}: relative functional error {err:e}");
        assert!(ex.report.total_queries > 0);
        assert!(ex.report.low_confidence_signs.is_empty());
    }
}

#[test]
fn same_seed_same_result() {
    let arch: Arch = "10-8-1".parse().unwrap();
    let truth = Network::random(&arch, InitRecipe::He, 4);
    let p = ExtractParams::builder().seed(11).build().unwrap();
    let a = extract(&hidden(truth.clone()), &arch, &p, |_| {}).unwrap();
    let b = extract(&hidden(truth), &arch, &p, |_| {}).unwrap();
    assert_eq!(a.network, b.network);
    assert_eq!(a.report.total_queries, b.report.total_queries);
}

#[test]
fn budget_exhaustion_is_a_clear_error() {
    let arch: Arch = "10-8-1".parse().unwrap();
    let truth = Network::random(&arch, InitRecipe::Balanced, 1);
    let p = ExtractParams::builder()
        .max_queries(Some(100))
        .build()
        .unwrap();
    let e = extract(&hidden(truth), &arch, &p, |_| {}).unwrap_err();
    assert!(e.to_string().contains("budget"), "{e}");
}

#[test]
fn wrong_architecture_is_rejected() {
    let truth = Network::random(&"10-8-1".parse().unwrap(), InitRecipe::Balanced, 1);
    let e = extract(
        &hidden(truth),
        &"12-8-1".parse().unwrap(),
        &ExtractParams::default(),
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, ExtractError::Arch(_)), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, rng_seed: proptest::test_runner::RngSeed::Fixed(20261128), ..ProptestConfig::default() })]
    /// Whatever the shape and seed: either the result is right, or the attack says it failed.
    #[test]
    fn never_silently_wrong(
        d0 in 4usize..16, h1 in 2usize..12, h2 in 0usize..8, dout in 1usize..4,
        init in 0usize..3, seed in 0u64..1000,
    ) {
        let mut dims = vec![d0, h1];
        if h2 > 0 { dims.push(h2); }
        dims.push(dout);
        let arch = Arch::new(dims).unwrap();
        let init = [InitRecipe::He, InitRecipe::Cjm, InitRecipe::Balanced][init];
        let truth = Network::random(&arch, init, seed);
        let p = ExtractParams::builder().seed(seed).build().unwrap();
        match extract(&hidden(truth.clone()), &arch, &p, |_| {}) {
            Ok(ex) => {
                let err = rel_error(&truth, &ex.network, 5_000, seed + 1);
                prop_assert!(err < 1e-6, "{} seed {}: accepted but wrong by {:e}", arch, seed, err);
            }
            Err(ExtractError::VerificationFailed { .. })
            | Err(ExtractError::Incomplete { .. })
            | Err(ExtractError::LayerFailed { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {}", other),
        }
    }
}

/// First-layer screening (`probe_coords`): each critical point of the first layer's search is probed
/// on a few input coordinates and only matched pairs are measured in full — one of each pair, the
/// partner joining by the plane test. On a deep net most kinks on a line are deeper ones, so the first
/// layer's signatures cost fewer queries, and the extraction stays exact.
#[test]
fn first_layer_screening_measures_fewer_points_and_stays_exact() {
    let arch: Arch = "96-12-12-12-1".parse().unwrap();
    let truth = Network::random(&arch, InitRecipe::Balanced, 3);
    let run = |probe: usize| {
        let p = ExtractParams::builder()
            .seed(5)
            .probe_coords(probe)
            .build()
            .unwrap();
        extract(&hidden(truth.clone()), &arch, &p, |_| {}).expect("extraction succeeds")
    };
    let (plain, screened) = (run(0), run(8));
    for ex in [&plain, &screened] {
        let err = rel_error(&truth, &ex.network, 20_000, 7);
        assert!(err < 1e-9, "relative functional error {err:e}");
    }
    let (a, b) = (&plain.report.layers[0], &screened.report.layers[0]);
    assert!(
        b.measured_witnesses < a.measured_witnesses,
        "screened layer 1 measured {} points in full, unscreened {}",
        b.measured_witnesses,
        a.measured_witnesses
    );
    assert!(
        b.queries.signature < a.queries.signature,
        "layer-1 signature queries: screened {}, unscreened {}",
        b.queries.signature,
        a.queries.signature
    );
}

/// Deeper-layer screening (`probe_units`): on layers after the first each unattached critical point
/// is probed on the active ones among a few previous-layer units, and measured in full only when the
/// probe agrees with an estimate of the layer or with another probe. Kinks of the layers below then
/// cost a probe each, so layer 2 measures fewer points in full, and the extraction stays exact.
#[test]
fn deeper_layer_screening_measures_fewer_points_and_stays_exact() {
    let arch: Arch = "96-40-40-40-1".parse().unwrap();
    let truth = Network::random(&arch, InitRecipe::Balanced, 3);
    let run = |probe: usize| {
        let p = ExtractParams::builder()
            .seed(5)
            .probe_units(probe)
            .build()
            .unwrap();
        extract(&hidden(truth.clone()), &arch, &p, |_| {}).expect("extraction succeeds")
    };
    let (plain, screened) = (run(0), run(10));
    for ex in [&plain, &screened] {
        let err = rel_error(&truth, &ex.network, 20_000, 7);
        assert!(err < 1e-9, "relative functional error {err:e}");
    }
    // Layer 1 is not screened: the same run up to there.
    assert_eq!(
        plain.report.layers[0].queries.signature,
        screened.report.layers[0].queries.signature
    );
    let (a, b) = (&plain.report.layers[1], &screened.report.layers[1]);
    assert!(
        b.measured_witnesses < a.measured_witnesses,
        "screened layer 2 measured {} points in full, unscreened {}",
        b.measured_witnesses,
        a.measured_witnesses
    );
}
