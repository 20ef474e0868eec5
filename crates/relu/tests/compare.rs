//! `compare`: alignment up to permutation and positive scaling, dead neurons, errors.

use faer::Mat;
use netxray_relu::compare::{CompareOptions, DeadReason, align, compare};
use netxray_relu::{Arch, InitRecipe, Layer, Network};

fn opts(samples: usize) -> CompareOptions {
    CompareOptions { samples, seed: 1 }
}

/// A functionally identical copy: hidden neurons permuted and positively rescaled, layer by layer.
fn permuted_rescaled(net: &Network, seed: usize) -> Network {
    let mut layers = net.layers().to_vec();
    for li in 0..layers.len() - 1 {
        let rows = layers[li].fan_out();
        // A permutation from a multiplier coprime with `rows`.
        let mut mult = 7 + 2 * seed;
        while gcd(mult, rows) != 1 {
            mult += 1;
        }
        let perm: Vec<usize> = (0..rows).map(|i| (i * mult + 3 + seed) % rows).collect();
        let s: Vec<f64> = (0..rows)
            .map(|i| 0.3 + ((i * 13 + seed) % 17) as f64 * 0.41)
            .collect();
        let l = &layers[li];
        let nl = Layer {
            weight: Mat::from_fn(rows, l.fan_in(), |i, k| l.weight[(perm[i], k)] * s[i]),
            bias: (0..rows).map(|i| l.bias[perm[i]] * s[i]).collect(),
        };
        let nx = &layers[li + 1];
        let nn = Layer {
            weight: Mat::from_fn(nx.fan_out(), rows, |o, i| nx.weight[(o, perm[i])] / s[i]),
            bias: nx.bias.clone(),
        };
        layers[li] = nl;
        layers[li + 1] = nn;
    }
    Network::new(layers).unwrap()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn random(arch: &str, recipe: InitRecipe, seed: u64) -> Network {
    Network::random(&arch.parse::<Arch>().unwrap(), recipe, seed)
}

#[test]
fn permuted_rescaled_copy_is_equal() {
    for (arch, recipe) in [
        ("12-10-9-3", InitRecipe::He),
        ("20-64-64-64-10", InitRecipe::Balanced),
        ("30-16-8-1", InitRecipe::Cjm),
    ] {
        let net = random(arch, recipe, 5);
        let cand = permuted_rescaled(&net, 1);
        assert_ne!(net, cand);
        let r = compare(&net, &cand, &opts(4000)).unwrap();
        assert!(r.param_bits >= 50.0, "{arch}: {r:?}");
        assert!(r.output_bits >= 40.0, "{arch}: {}", r.output_bits);
        assert_eq!(r.label_agreement, 1.0);
        assert_eq!(r.schema, 1);
        assert_eq!(r.tensors.len(), 2 * net.layers().len());
        assert_eq!(
            r.agreement_kind,
            if net.output_dim() == 1 {
                "sign"
            } else {
                "argmax"
            }
        );
        // The reported permutation undoes the one applied.
        let al = align(&net, &cand, None).unwrap();
        for (a, b) in al.network.layers().iter().zip(net.layers()) {
            for r in 0..a.fan_out() {
                for c in 0..a.fan_in() {
                    assert!((a.weight[(r, c)] - b.weight[(r, c)]).abs() < 1e-12);
                }
            }
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["schema"], 1);
        assert!(json["param_bits"].is_number());
    }
}

#[test]
fn a_nudged_weight_is_found_and_named() {
    let net = random("12-10-9-3", InitRecipe::He, 5);
    let mut layers = permuted_rescaled(&net, 2).into_layers();
    // Nudge the weight that corresponds to truth layers.1.weight[2, 3] after alignment: find it through
    // the alignment of the unperturbed copy.
    let cand = Network::new(layers.clone()).unwrap();
    let al = align(&net, &cand, None).unwrap();
    let (ci, ck) = (al.permutation[1][2], al.permutation[0][3]);
    let s = al.scale[1][2] / al.scale[0][3];
    layers[1].weight[(ci, ck)] += 1e-6 / s;
    let r = compare(&net, &Network::new(layers).unwrap(), &opts(2000)).unwrap();
    // Rescaling to the truth row norm absorbs a sliver of the nudge: "about 1e-6" (≈ 20 bits).
    assert!((5e-7..2e-6).contains(&r.max_param_error), "{r:?}");
    assert!((19.0..21.0).contains(&r.param_bits), "{}", r.param_bits);
    assert_eq!(r.worst_tensor, "layers.1.weight");
    assert_eq!(r.worst_index, vec![2, 3]);
    let t = r
        .tensors
        .iter()
        .find(|t| t.tensor == "layers.1.weight")
        .unwrap();
    assert_eq!(t.max_abs_error, r.max_param_error);
    // Untouched tensors stay precise.
    let t0 = r
        .tensors
        .iter()
        .find(|t| t.tensor == "layers.0.weight")
        .unwrap();
    assert!(t0.bits > 40.0, "{t0:?}");
}

#[test]
fn dimension_mismatch_is_a_clear_error() {
    let a = random("12-10-9-3", InitRecipe::He, 5);
    let b = random("12-10-8-3", InitRecipe::He, 5);
    let e = compare(&a, &b, &opts(10)).unwrap_err().to_string();
    assert!(e.contains("12-10-9-3") && e.contains("12-10-8-3"), "{e}");
    assert!(e.contains("width 2"), "{e}");
    let c = random("12-10-3", InitRecipe::He, 5);
    assert!(compare(&a, &c, &opts(10)).is_err());
    assert!(compare(&a, &a, &opts(0)).is_err());
}

#[test]
fn dead_neurons_are_excluded_and_listed() {
    let net = random("10-12-8-2", InitRecipe::Balanced, 3);
    let mut t = net.into_layers();
    // Layer 0 neuron 1: zero incoming row. Neuron 4: never active. Neuron 6: zero outgoing column.
    for k in 0..10 {
        t[0].weight[(1, k)] = 0.0;
    }
    t[0].bias[1] = 0.0;
    t[0].bias[4] = -1e4;
    for o in 0..8 {
        t[1].weight[(o, 6)] = 0.0;
    }
    let truth = Network::new(t).unwrap();
    // Candidate: symmetric copy whose dead neurons carry garbage (they are unidentifiable).
    let mut c = truth.clone().into_layers();
    for k in 0..10 {
        c[0].weight[(1, k)] = 0.3 * k as f64 - 1.0;
        c[0].weight[(4, k)] += 0.5;
        c[0].weight[(6, k)] -= 0.25;
    }
    c[0].bias[4] = -7e3;
    for o in 0..8 {
        c[1].weight[(o, 4)] = 3.0;
    }
    let cand = permuted_rescaled(&Network::new(c).unwrap(), 3);
    let r = compare(&truth, &cand, &opts(3000)).unwrap();
    assert!(r.param_bits >= 50.0, "{r:#?}");
    let find = |n: usize| r.dead.iter().find(|d| d.layer == 0 && d.neuron == n);
    assert_eq!(find(1).unwrap().reason, DeadReason::TruthZeroIncoming);
    assert_eq!(find(4).unwrap().reason, DeadReason::TruthNeverActive);
    assert_eq!(find(6).unwrap().reason, DeadReason::TruthZeroOutgoing);
    assert!(
        r.dead
            .iter()
            .all(|d| [1, 4, 6].contains(&d.neuron) || d.layer == 1)
    );
    let w0 = r
        .tensors
        .iter()
        .find(|t| t.tensor == "layers.0.weight")
        .unwrap();
    assert_eq!(w0.compared, (12 - 3) * 10);
}

#[test]
fn candidate_zero_row_is_listed_not_fatal() {
    let truth = random("8-6-1", InitRecipe::Balanced, 11);
    let mut c = truth.clone().into_layers();
    for k in 0..8 {
        c[0].weight[(2, k)] = 0.0;
    }
    c[0].bias[2] = 0.0;
    let r = compare(&truth, &Network::new(c).unwrap(), &opts(2000)).unwrap();
    assert_eq!(r.dead.len(), 1);
    assert_eq!(r.dead[0].reason, DeadReason::CandidateZeroIncoming);
    assert_eq!((r.dead[0].neuron, r.dead[0].candidate), (2, 2));
    assert!(r.param_bits >= 50.0);
    // …but the function differs, and the report says so.
    assert!(r.max_output_error > 1e-3, "{}", r.max_output_error);
}

#[test]
fn wide_layers_align_quickly() {
    let net = random("32-512-512-10", InitRecipe::He, 8);
    let cand = permuted_rescaled(&net, 4);
    let t = std::time::Instant::now();
    let r = compare(&net, &cand, &opts(1000)).unwrap();
    assert!(r.param_bits >= 50.0);
    assert!(t.elapsed().as_secs_f64() < 5.0, "{:?}", t.elapsed());
}

#[test]
fn sampling_is_seeded() {
    let a = random("6-5-3", InitRecipe::He, 1);
    let b = random("6-5-3", InitRecipe::He, 2);
    let r1 = compare(&a, &b, &opts(500)).unwrap();
    let r2 = compare(&a, &b, &opts(500)).unwrap();
    assert_eq!(r1.max_output_error, r2.max_output_error);
    assert_eq!(r1.label_agreement, r2.label_agreement);
    assert!(r1.label_agreement < 1.0);
    assert!(r1.param_bits < 10.0);
}

#[test]
fn noisy_candidate_still_aligns_correctly() {
    use rand::{Rng, SeedableRng};
    let net = random("16-96-96-4", InitRecipe::He, 21);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let mut layers = net.clone().into_layers();
    for l in &mut layers {
        for r in 0..l.fan_out() {
            for c in 0..l.fan_in() {
                l.weight[(r, c)] += 1e-3 * (rng.random::<f64>() - 0.5);
            }
        }
    }
    let noisy = Network::new(layers).unwrap();
    let cand = permuted_rescaled(&noisy, 6);
    let exact = align(&noisy, &cand, None).unwrap();
    let al = align(&net, &cand, None).unwrap();
    // Same matching as against the noise-free copy, and errors at the noise level.
    assert_eq!(al.permutation, exact.permutation);
    let r = compare(&net, &cand, &opts(2000)).unwrap();
    assert!(
        (1e-4..5e-3).contains(&r.max_param_error),
        "{}",
        r.max_param_error
    );
    assert!(r.dead.is_empty());
}
