//! Neuron wiggle (Canales-Martínez et al., EUROCRYPT 2024) for layers where no exact method applies
//! (expansive layers: more neurons than directions of control).
//!
//! For neuron k: points `x*` on its hyperplane are placed offline (the hyperplane is known up to sign,
//! and its zero set does not depend on the sign). The wiggle `δ` changes `ẑ_k` by one unit while
//! changing the other neurons of the layer as little as possible (ridge least squares). Moving to
//! `x* ± tδ`, the other neurons contribute `±tL` and neuron k contributes only on its active side, so
//! the side with the larger output change is voted active. Votes over many points give a confidence;
//! neurons below the threshold are re-run with more samples.

use super::SignOutcome;
use super::local::{
    LayerLocal, first_layer_gram, max_step, mul_vec, pre_activations, pre_activations_from,
};
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::layer::random_line;
use crate::linalg::norm;
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use faer::linalg::solvers::Solve;
use netxray_relu::Layer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

struct Probe {
    neuron: usize,
    x: Vec<f64>,
    delta: Vec<f64>,
}

/// Grid of the first look along a random line for a sign change of `ẑ_k`.
const HYPERPLANE_GRID: usize = 32;

/// Regula-falsi steps allowed once a sign change of `ẑ_k` is bracketed.
const HYPERPLANE_STEPS: usize = 64;

/// A point on neuron `k`'s hyperplane where a random line crosses it (offline), or `None`.
///
/// `ẑ_k` is continuous and piecewise affine along the line, so a sign change found on a coarse grid
/// is narrowed by regula falsi until both ends lie in one linear piece of the layer's known prefix,
/// where the interpolated zero is exact. This takes a few dozen forward passes; listing every kink of
/// the prefix on the line first (as this did before) took one forward pass per kink, ~1,800 on a
/// line through seven 256-wide layers.
fn point_on_hyperplane(
    with_layer: &KnownPrefix,
    k: usize,
    rng: &mut ChaCha20Rng,
    sigma: f64,
) -> Option<Vec<f64>> {
    let d0 = with_layer.input_dim;
    let depth = with_layer.layers.len();
    let half = 10.0 * sigma * (d0 as f64).sqrt();
    let line = random_line(rng, d0, sigma);
    // The first layer is affine along the line: its pre-activations at `t` are `a + t·c`, so each
    // evaluation below costs the deeper (256 × 256) layers only, not a pass over W₁ (256 × 3072,
    // 6 MB streamed per point, most of the wiggle's time when it was done per point).
    let w1 = &with_layer.layers[0];
    let a: Vec<f64> = mul_vec(w1.weight.as_ref(), &line.origin)
        .into_iter()
        .zip(&w1.bias)
        .map(|(v, b)| v + b)
        .collect();
    let c = mul_vec(w1.weight.as_ref(), &line.dir);
    // (ẑ_k, the prefix's ReLU pattern) at t.
    let eval = |t: f64| -> Option<(f64, Vec<bool>)> {
        let z1: Vec<f64> = a.iter().zip(&c).map(|(a, c)| a + t * c).collect();
        let pre = pre_activations_from(with_layer, z1);
        let z = *pre.last()?.get(k)?;
        let pattern = pre[..depth - 1]
            .iter()
            .flatten()
            .map(|&v| v > 0.0)
            .collect();
        Some((z, pattern))
    };
    let grid: Vec<f64> = (0..=HYPERPLANE_GRID)
        .map(|i| -half + 2.0 * half * i as f64 / HYPERPLANE_GRID as f64)
        .collect();
    let vals: Vec<(f64, Vec<bool>)> = grid.iter().map(|&t| eval(t)).collect::<Option<_>>()?;
    let j = (0..HYPERPLANE_GRID).find(|&j| (vals[j].0 > 0.0) != (vals[j + 1].0 > 0.0))?;
    let (mut a, mut b) = (
        (grid[j], vals[j].clone()),
        (grid[j + 1], vals[j + 1].clone()),
    );
    for _ in 0..HYPERPLANE_STEPS {
        let t = a.0 + (b.0 - a.0) * a.1.0 / (a.1.0 - b.1.0);
        if !(t > a.0 && t < b.0) {
            return None;
        }
        if a.1.1 == b.1.1 {
            // One linear piece: the interpolated zero is exact.
            return Some(line.at(t));
        }
        let m = (t, eval(t)?);
        if m.1.0 == 0.0 {
            return Some(line.at(t));
        }
        if (m.1.0 > 0.0) == (a.1.0 > 0.0) {
            a = m;
        } else {
            b = m;
        }
    }
    None
}

/// Places one wiggle probe for neuron `k`, or `None` when the line does not give a clean point.
fn place(
    with_layer: &KnownPrefix,
    g: &Mat<f64>,
    k: usize,
    rng: &mut ChaCha20Rng,
    sigma: f64,
) -> Option<Probe> {
    let d0 = with_layer.input_dim;
    let x = point_on_hyperplane(with_layer, k, rng, sigma)?;
    let loc = LayerLocal::at(with_layer, g, &x);
    let s = &loc.gram; // Z Zᵀ, w × w
    let w = s.nrows();
    // δ = M⁻¹ z_k / (z_kᵀ M⁻¹ z_k), M = Z₋ₖᵀ Z₋ₖ + λI: move ẑ_k, disturb the others least.
    // By the push-through identity M⁻¹ z_k = (z_k − Z₋ₖᵀ (Z₋ₖ Z₋ₖᵀ + λI)⁻¹ Z₋ₖ z_k) / λ, so
    // δ ∝ Zᵀ c with c = e_k − (S₋ₖ₋ₖ + λI)⁻¹ S₋ₖₖ on the others: a solve of the layer's width, on
    // the layer-space Gram matrix (the scale 1/λ cancels in the normalisation).
    let others: Vec<usize> = (0..w).filter(|&r| r != k).collect();
    let n = others.len();
    let mut gram = Mat::<f64>::from_fn(n, n, |i, j| s[(others[i], others[j])]);
    let tr: f64 = (0..n).map(|i| gram[(i, i)]).sum();
    let lambda = 1e-3 * tr.max(s[(k, k)]) / d0 as f64;
    (0..n).for_each(|i| gram[(i, i)] += lambda);
    let rhs = Mat::<f64>::from_fn(n, 1, |i, _| s[(others[i], k)]);
    let u = if n > 0 {
        // Symmetric positive definite (λ > 0): Cholesky.
        gram.llt(faer::Side::Lower).ok()?.solve(&rhs)
    } else {
        Mat::<f64>::zeros(0, 1)
    };
    let mut c = vec![0.0; w];
    c[k] = 1.0;
    for (i, &r) in others.iter().enumerate() {
        c[r] = -u[(i, 0)];
    }
    // z_k·δ = (S c)_k.
    let sk: f64 = (0..w).map(|j| s[(k, j)] * c[j]).sum();
    if !(sk.is_finite() && sk.abs() > 0.0) {
        return None;
    }
    c.iter_mut().for_each(|v| *v /= sk);
    let delta = loc.direction(with_layer, &c);
    // Step: no earlier unit and no other unit of this layer may flip.
    let tmax = max_step(&loc.pre, &loc.derivatives(with_layer, g, &c), k);
    let t = (0.5 * tmax).min(sigma / norm(&delta).max(f64::MIN_POSITIVE));
    scaled_probe(k, x, delta, t)
}

/// Runs `place` for every neuron and concatenates the probes, in neuron order.
fn place_per_neuron<F>(neurons: &[usize], rng: &mut ChaCha20Rng, place: F) -> Vec<Probe>
where
    F: Fn(usize, &mut ChaCha20Rng) -> Vec<Probe> + Sync,
{
    // One stream per neuron, seeded in neuron order from `rng`: the same probes whatever the
    // thread count, and the neurons on all cores (one after the other, the wiggle of a 256-wide
    // layer behind 3072 inputs spent most of its time handing small products between threads).
    let seeds: Vec<u64> = neurons.iter().map(|_| rng.random::<u64>()).collect();
    neurons
        .par_iter()
        .zip(&seeds)
        .map(|(&k, &seed)| place(k, &mut ChaCha20Rng::seed_from_u64(seed)))
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .collect()
}

/// The probe of neuron `k` at `x` along `t·delta`, or `None` when no positive finite step exists.
fn scaled_probe(k: usize, x: Vec<f64>, mut delta: Vec<f64>, t: f64) -> Option<Probe> {
    if !(t.is_finite() && t > 0.0) {
        return None;
    }
    delta.iter_mut().for_each(|v| *v *= t);
    Some(Probe {
        neuron: k,
        x,
        delta,
    })
}

/// Queries every probe at `x`, `x + δ` and `x − δ` in one batch and returns, per probe, the sizes of
/// the two output changes `(‖f(x+δ) − f(x)‖, ‖f(x−δ) − f(x)‖)`: the wiggle's raw evidence.
fn side_changes<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    probes: &[Probe],
) -> Result<Vec<(f64, f64)>, ExtractError> {
    let ys = oracle.query_generated(probes.len() * 3, |i, row| {
        let p = &probes[i / 3];
        // x + 0·δ and x + (−1)·δ are exactly x and x − δ.
        let s = [0.0, 1.0, -1.0][i % 3];
        for ((r, x), d) in row.iter_mut().zip(&p.x).zip(&p.delta) {
            *r = x + s * d;
        }
    })?;
    Ok(ys
        .chunks_exact(3)
        .map(|f| {
            let change =
                |g: &[f64]| norm(&g.iter().zip(&f[0]).map(|(a, b)| a - b).collect::<Vec<_>>());
            (change(&f[1]), change(&f[2]))
        })
        .collect())
}

/// Votes with `samples` probes for each neuron in `neurons`; returns (plus, minus) counts per neuron.
fn vote<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    with_layer: &KnownPrefix,
    neurons: &[usize],
    samples: usize,
    sigma: f64,
    noise_rel: f64,
    rng: &mut ChaCha20Rng,
    counts: &mut [(usize, usize)],
) -> Result<(), ExtractError> {
    let g = &first_layer_gram(with_layer);
    let probes = place_per_neuron(neurons, rng, |k, r| {
        let mut got = Vec::new();
        for _ in 0..samples * 4 {
            if got.len() == samples {
                break;
            }
            if let Some(p) = place(with_layer, g, k, r, sigma) {
                got.push(p);
            }
        }
        got
    });
    for (p, (np, nm)) in probes.iter().zip(side_changes(oracle, &probes)?) {
        // A tie carries no information (both sides blocked downstream); within the answers' noise
        // counts as a tie.
        if (np - nm).abs() <= 1e-12_f64.max(noise_rel) * np.max(nm) {
            continue;
        }
        if np > nm {
            counts[p.neuron].0 += 1;
        } else {
            counts[p.neuron].1 += 1;
        }
    }
    Ok(())
}

/// Runs the wiggle for the neurons `neurons` of `layer`, re-running low-confidence ones with more
/// samples. Neurons not listed get sign +1 and confidence 0 (another method decided them).
pub fn recover<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    neurons: &[usize],
    samples: usize,
    confidence_min: f64,
    sigma: f64,
    noise_rel: f64,
    rng: &mut ChaCha20Rng,
) -> Result<SignOutcome, ExtractError> {
    let w = layer.fan_out();
    let q0 = oracle.queries();
    let with_layer = known.extended(layer);
    let mut counts = vec![(0usize, 0usize); w];
    vote(
        oracle,
        &with_layer,
        neurons,
        samples,
        sigma,
        noise_rel,
        rng,
        &mut counts,
    )?;
    let conf_of = |c: (usize, usize)| -> f64 {
        let tot = c.0 + c.1;
        if tot == 0 {
            0.0
        } else {
            c.0.max(c.1) as f64 / tot as f64
        }
    };
    for round in 1..=2 {
        let low: Vec<usize> = neurons
            .iter()
            .copied()
            .filter(|&k| conf_of(counts[k]) < confidence_min)
            .collect();
        if low.is_empty() {
            break;
        }
        vote(
            oracle,
            &with_layer,
            &low,
            samples * 4 * round,
            sigma,
            noise_rel,
            rng,
            &mut counts,
        )?;
    }
    Ok(SignOutcome {
        method: "neuron-wiggle",
        signs: counts
            .iter()
            .map(|c| if c.0 >= c.1 { 1.0 } else { -1.0 })
            .collect(),
        confidence: counts.iter().map(|&c| conf_of(c)).collect(),
        queries: oracle.queries() - q0,
    })
}

/// An *isolated* wiggle for neuron `k`: at a point of its hyperplane, a direction that moves `ẑ_k`
/// by one unit and keeps every other unit of the layer that is active there (under the current
/// `signs`) exactly still — inactive ones may move, they contribute nothing. `None` unless the
/// control rank allows exact isolation at the point found.
fn place_isolated(
    with_layer: &KnownPrefix,
    g: &Mat<f64>,
    k: usize,
    signs: &[f64],
    rng: &mut ChaCha20Rng,
    sigma: f64,
) -> Option<Probe> {
    let d0 = with_layer.input_dim;
    let x = point_on_hyperplane(with_layer, k, rng, sigma)?;
    let pre = pre_activations(with_layer, &x);
    let z = pre.last()?;
    let mut rows = vec![k];
    rows.extend((0..z.len()).filter(|&j| j != k && signs[j] * z[j] > 0.0));
    // The control rank is at most the active count of every earlier layer (and d₀): with more rows
    // than that, exact isolation is impossible, so no algebra is spent on the point.
    let rank_bound = pre[..pre.len() - 1]
        .iter()
        .map(|p| p.iter().filter(|&&v| v > 0.0).count())
        .fold(d0, usize::min);
    if rows.len() > rank_bound {
        return None;
    }
    let loc = LayerLocal::at(with_layer, g, &x);
    // Minimum-norm δ with C δ = e₁, C = [z_k; Z_active]: δ = Cᵀ (C Cᵀ)⁻¹ e₁, with C Cᵀ the rows'
    // block of the layer-space Gram matrix.
    let n = rows.len();
    let gram = Mat::<f64>::from_fn(n, n, |i, j| loc.gram[(rows[i], rows[j])]);
    let e1 = Mat::<f64>::from_fn(n, 1, |i, _| f64::from(u8::from(i == 0)));
    // Positive definite exactly when the rows are independent; otherwise no isolation here.
    let u = gram.llt(faer::Side::Lower).ok()?.solve(&e1);
    let w = z.len();
    let mut c = vec![0.0; w];
    for (i, &r) in rows.iter().enumerate() {
        c[r] = u[(i, 0)];
    }
    // Exact isolation only: the active others must not move beyond rounding.
    let deriv = loc.derivatives(with_layer, g, &c);
    let moved = deriv.last()?;
    if (moved[k] - 1.0).abs() > ISOLATION_TOL
        || rows[1..].iter().any(|&r| moved[r].abs() > ISOLATION_TOL)
    {
        return None;
    }
    let delta = loc.direction(with_layer, &c);
    let t = (0.25 * max_step(&loc.pre, &deriv, k))
        .min(0.1 * sigma / norm(&delta).max(f64::MIN_POSITIVE));
    scaled_probe(k, x, delta, t)
}

/// How still the active others must stay (relative to the unit move of `ẑ_k`) for a wiggle to count
/// as isolated: rounding of a small Gram solve, far below any real interference.
const ISOLATION_TOL: f64 = 1e-9;

/// A vote is *clean* when the output moves on one side only: the other side's change is below this
/// fraction of the active side's. With exact isolation the inactive side's change is rounding
/// (~1e-13 relative); a wrongly assumed-inactive neighbour or a deeper unit flipping moves both sides.
const CLEAN_RATIO: f64 = 1e-6;

/// Isolated wiggles for the neurons `neurons` of `layer`, starting from `outcome`'s signs (those of
/// the other neurons are taken as settled and only tell which neighbours are active): a clean vote (the
/// output moves on one side only) proves the active side. A neuron whose clean votes all agree (at
/// least two) gets that sign with confidence `1 − 2^−(votes+2)`; one whose clean votes disagree is set
/// to confidence 0 (reported low). Two passes, so that the second uses the signs the first fixed.
/// Returns the neurons whose sign changed.
#[allow(clippy::too_many_arguments)]
pub fn isolate<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    neurons: &[usize],
    outcome: &mut SignOutcome,
    probes_per_neuron: usize,
    sigma: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<usize>, ExtractError> {
    let w = layer.fan_out();
    let q0 = oracle.queries();
    let with_layer = known.extended(layer);
    let before = outcome.signs.clone();
    for _pass in 0..2 {
        let signs = &outcome.signs;
        let g = &first_layer_gram(&with_layer);
        let probes = place_per_neuron(neurons, rng, |k, r| {
            let mut got = Vec::new();
            for _ in 0..probes_per_neuron * 16 {
                if got.len() == probes_per_neuron {
                    break;
                }
                if let Some(p) = place_isolated(&with_layer, g, k, signs, r, sigma) {
                    got.push(p);
                }
            }
            got
        });
        let mut clean = vec![(0usize, 0usize); w];
        for (p, (np, nm)) in probes.iter().zip(side_changes(oracle, &probes)?) {
            let (big, small) = (np.max(nm), np.min(nm));
            if big > 0.0 && small <= CLEAN_RATIO * big {
                if np > nm {
                    clean[p.neuron].0 += 1;
                } else {
                    clean[p.neuron].1 += 1;
                }
            }
        }
        for (k, &(plus, minus)) in clean.iter().enumerate() {
            if plus > 0 && minus > 0 {
                outcome.confidence[k] = 0.0;
            } else if plus + minus >= 2 {
                outcome.signs[k] = if plus > 0 { 1.0 } else { -1.0 };
                outcome.confidence[k] = 1.0 - 0.5f64.powi((plus + minus) as i32 + 2);
            }
        }
    }
    outcome.queries += oracle.queries() - q0;
    Ok((0..w).filter(|&k| outcome.signs[k] != before[k]).collect())
}
