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
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::layer::random_line;
use crate::linalg::{dot, lstsq, norm};
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use netxray_relu::Layer;
use rand_chacha::ChaCha20Rng;

struct Probe {
    neuron: usize,
    x: Vec<f64>,
    delta: Vec<f64>,
}

/// A point on neuron `k`'s hyperplane where a random line crosses it (offline), or `None`.
fn point_on_hyperplane(
    with_layer: &KnownPrefix,
    k: usize,
    rng: &mut ChaCha20Rng,
    sigma: f64,
) -> Option<Vec<f64>> {
    let d0 = with_layer.input_dim;
    let half = 10.0 * sigma * (d0 as f64).sqrt();
    let line = random_line(rng, d0, sigma);
    let prefix = KnownPrefix {
        layers: with_layer.layers[..with_layer.layers.len() - 1].to_vec(),
        input_dim: d0,
    };
    let mut bps = vec![-half];
    bps.extend(prefix.kinks_on_line(&line.origin, &line.dir, -half, half));
    bps.push(half);
    let depth = with_layer.layers.len();
    let zk: Vec<f64> = bps
        .iter()
        .map(|&t| {
            with_layer
                .pre_activations(&line.at(t), depth)
                .last()
                .and_then(|z| z.get(k).copied())
        })
        .collect::<Option<Vec<f64>>>()?;
    let j = (0..bps.len() - 1).find(|&j| (zk[j] > 0.0) != (zk[j + 1] > 0.0))?;
    let t = bps[j] + (bps[j + 1] - bps[j]) * zk[j] / (zk[j] - zk[j + 1]);
    Some(line.at(t))
}

/// Places one wiggle probe for neuron `k`, or `None` when the line does not give a clean point.
fn place(with_layer: &KnownPrefix, k: usize, rng: &mut ChaCha20Rng, sigma: f64) -> Option<Probe> {
    let d0 = with_layer.input_dim;
    let x = point_on_hyperplane(with_layer, k, rng, sigma)?;
    let st = with_layer.local_full(&x);
    let z = st.dpre.last()?; // width × d0
    let w = z.nrows();
    // δ = M⁻¹ z_k / (z_kᵀ M⁻¹ z_k), M = Z₋ₖᵀ Z₋ₖ + λI: move ẑ_k, disturb the others least.
    // By the push-through identity M⁻¹ z_k = (z_k − Z₋ₖᵀ (Z₋ₖ Z₋ₖᵀ + λI)⁻¹ Z₋ₖ z_k) / λ, a solve
    // of the layer's width instead of the input's (the scale 1/λ cancels in the normalisation):
    // O(w²·d₀) per probe rather than O(d₀³), which on a 784-input net is the difference between
    // seconds and hours of wiggling.
    let zk_row: Vec<f64> = (0..d0).map(|c| z[(k, c)]).collect();
    let others: Vec<usize> = (0..w).filter(|&r| r != k).collect();
    let n = others.len();
    // Dense GEMMs on the gathered rows: the naive strided sums here were most of the run time of a
    // 784-128-128-128-10 extraction.
    let zo = gather_rows(z, &others);
    let mut gram = &zo * zo.transpose();
    let tr: f64 = (0..n).map(|i| gram[(i, i)]).sum();
    let lambda = 1e-3 * tr.max(dot(&zk_row, &zk_row)) / d0 as f64;
    (0..n).for_each(|i| gram[(i, i)] += lambda);
    let rhs = &zo * column(&zk_row);
    let u = if n > 0 {
        lstsq(&gram, &rhs)
    } else {
        Mat::<f64>::zeros(0, 1)
    };
    let back = zo.transpose() * &u;
    let mut delta: Vec<f64> = (0..d0).map(|c| zk_row[c] - back[(c, 0)]).collect();
    let s = dot(&zk_row, &delta);
    if !(s.is_finite() && s.abs() > 0.0) {
        return None;
    }
    delta.iter_mut().for_each(|v| *v /= s);
    // Step: no earlier unit and no other unit of this layer may flip.
    let tmax = max_step(&st, k, &delta);
    let t = (0.5 * tmax).min(sigma / norm(&delta).max(f64::MIN_POSITIVE));
    scaled_probe(k, x, delta, t)
}

/// Runs `place` for every neuron in order, all drawing from `rng`, and concatenates the probes.
/// Sequential on purpose: one shared stream keeps the probes, and so the signs, of every seed as they
/// were (per-neuron streams on both cores changed them).
fn place_per_neuron<F>(neurons: &[usize], rng: &mut ChaCha20Rng, mut place: F) -> Vec<Probe>
where
    F: FnMut(usize, &mut ChaCha20Rng) -> Vec<Probe>,
{
    neurons.iter().flat_map(|&k| place(k, rng)).collect()
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
    let probes = place_per_neuron(neurons, rng, |k, r| {
        let mut got = Vec::new();
        for _ in 0..samples * 4 {
            if got.len() == samples {
                break;
            }
            if let Some(p) = place(with_layer, k, r, sigma) {
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

/// Runs the wiggle for every neuron of `layer`, re-running low-confidence ones with more samples.
pub fn recover<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
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
    let all: Vec<usize> = (0..w).collect();
    vote(
        oracle,
        &with_layer,
        &all,
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
        let low: Vec<usize> = (0..w)
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

/// Largest step along `delta` (a multiple of 1) before any known unit, or any unit of the last
/// layer other than `k`, changes sign: first order, exact within the current linear region.
fn max_step(st: &crate::known::LocalState, k: usize, delta: &[f64]) -> f64 {
    let d = column(delta);
    let mut tmax = f64::INFINITY;
    for (l, (pre, dpre)) in st.pre.iter().zip(&st.dpre).enumerate() {
        let last = l + 1 == st.pre.len();
        let g = dpre * &d;
        for u in 0..pre.len() {
            if last && u == k {
                continue;
            }
            if g[(u, 0)] != 0.0 {
                tmax = tmax.min(pre[u].abs() / g[(u, 0)].abs());
            }
        }
    }
    tmax
}

/// The rows `rows` of `m`, gathered into a dense matrix (for GEMMs).
fn gather_rows(m: &Mat<f64>, rows: &[usize]) -> Mat<f64> {
    Mat::<f64>::from_fn(rows.len(), m.ncols(), |i, c| m[(rows[i], c)])
}

/// `v` as a one-column matrix.
fn column(v: &[f64]) -> Mat<f64> {
    Mat::<f64>::from_fn(v.len(), 1, |i, _| v[i])
}

/// An *isolated* wiggle for neuron `k`: at a point of its hyperplane, a direction that moves `ẑ_k`
/// by one unit and keeps every other unit of the layer that is active there (under the current
/// `signs`) exactly still — inactive ones may move, they contribute nothing. `None` unless the
/// control rank allows exact isolation at the point found.
fn place_isolated(
    with_layer: &KnownPrefix,
    k: usize,
    signs: &[f64],
    rng: &mut ChaCha20Rng,
    sigma: f64,
) -> Option<Probe> {
    let d0 = with_layer.input_dim;
    let x = point_on_hyperplane(with_layer, k, rng, sigma)?;
    let st = with_layer.local_full(&x);
    let z = st.dpre.last()?;
    let pre = st.pre.last()?;
    let mut rows = vec![k];
    rows.extend((0..z.nrows()).filter(|&j| j != k && signs[j] * pre[j] > 0.0));
    if rows.len() > d0 {
        return None;
    }
    // Minimum-norm δ with C δ = e₁, C = [z_k; Z_active]: δ = Cᵀ (C Cᵀ)⁻¹ e₁.
    let n = rows.len();
    let zr = gather_rows(z, &rows);
    let gram = &zr * zr.transpose();
    let e1 = Mat::<f64>::from_fn(n, 1, |i, _| f64::from(u8::from(i == 0)));
    let u = lstsq(&gram, &e1);
    let dcol = zr.transpose() * &u;
    let delta: Vec<f64> = (0..d0).map(|c| dcol[(c, 0)]).collect();
    // Exact isolation only: the active others must not move beyond rounding.
    let moved = &zr * &dcol;
    if (moved[(0, 0)] - 1.0).abs() > ISOLATION_TOL
        || (1..n).any(|i| moved[(i, 0)].abs() > ISOLATION_TOL)
    {
        return None;
    }
    let t =
        (0.25 * max_step(&st, k, &delta)).min(0.1 * sigma / norm(&delta).max(f64::MIN_POSITIVE));
    scaled_probe(k, x, delta, t)
}

/// How still the active others must stay (relative to the unit move of `ẑ_k`) for a wiggle to count
/// as isolated: rounding of a small Gram solve, far below any real interference.
const ISOLATION_TOL: f64 = 1e-9;

/// A vote is *clean* when the output moves on one side only: the other side's change is below this
/// fraction of the active side's. With exact isolation the inactive side's change is rounding
/// (~1e-13 relative); a wrongly assumed-inactive neighbour or a deeper unit flipping moves both sides.
const CLEAN_RATIO: f64 = 1e-6;

/// Isolated wiggles for every neuron of `layer`, starting from `outcome`'s signs: a clean vote (the
/// output moves on one side only) proves the active side. A neuron whose clean votes all agree (at
/// least two) gets that sign with confidence `1 − 2^−(votes+2)`; one whose clean votes disagree is set
/// to confidence 0 (reported low). Two passes, so that the second uses the signs the first fixed.
/// Returns the neurons whose sign changed.
#[allow(clippy::too_many_arguments)]
pub fn isolate<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
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
        let all: Vec<usize> = (0..w).collect();
        let signs = &outcome.signs;
        let probes = place_per_neuron(&all, rng, |k, r| {
            let mut got = Vec::new();
            for _ in 0..probes_per_neuron * 16 {
                if got.len() == probes_per_neuron {
                    break;
                }
                if let Some(p) = place_isolated(&with_layer, k, signs, r, sigma) {
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
