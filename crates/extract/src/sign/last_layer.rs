//! Last-hidden-layer signs by least squares (after Canales-Martínez et al., EUROCRYPT 2024, §"last
//! layer"): below the last hidden layer the network is affine, so with the right signs
//! `f = Σ_k α_k ReLU(ẑ_k) + c`; a flipped neuron contributes `ReLU(−ẑ) = ReLU(ẑ) − ẑ`, i.e. a non-zero
//! coefficient on `ẑ_k`. Fitting on `[ReLU(ẑ), ẑ, 1]` reads each sign off (`β ≈ 0` → +, `β ≈ −α` → −).
//! Identifiable when the `ẑ_k` are affinely independent functions (width ≤ inputs + 1).

use super::SignOutcome;
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::layer::random_inputs;
use crate::linalg::{dot, lstsq, norm, null_vector};
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use netxray_relu::Layer;
use rand_chacha::ChaCha20Rng;

/// Runs the method; `None` when the features are not identifiable (too wide a layer).
pub fn recover<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    sigma: f64,
    noise_rel: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Option<SignOutcome>, ExtractError> {
    let w = layer.fan_out();
    let d0 = known.input_dim;
    let n = (4 * (2 * w + 1)).max(320);
    let q0 = oracle.queries();
    // Several input scales: a neuron whose hyperplane lies far out still changes state on some samples.
    let scales = [0.5, 1.0, 2.0, 4.0, 8.0];
    let xs = random_inputs(rng, n, d0, sigma, &scales);
    let ys = oracle.query_points(&xs)?;
    let hs = known.forward_rows(&xs);
    let z: Vec<Vec<f64>> = hs
        .iter()
        .map(|(_, h)| {
            (0..w)
                .map(|k| {
                    (0..layer.fan_in())
                        .map(|c| layer.weight[(k, c)] * h[c])
                        .sum::<f64>()
                        + layer.bias[k]
                })
                .collect()
        })
        .collect();
    // Neurons that never change state on the samples have a single usable feature (ẑ itself).
    let state: Vec<i8> = (0..w)
        .map(|k| {
            let pos = z.iter().filter(|zi| zi[k] > 0.0).count();
            if pos == n {
                1
            } else if pos == 0 {
                -1
            } else {
                0
            }
        })
        .collect();
    let mut cols: Vec<(usize, bool)> = Vec::new(); // (neuron, is_relu_feature)
    for k in 0..w {
        if state[k] == 0 {
            cols.push((k, true));
        }
        cols.push((k, false));
    }
    let nf = cols.len() + 1;
    let mut f = Mat::<f64>::zeros(n, nf);
    for i in 0..n {
        for (j, &(k, relu)) in cols.iter().enumerate() {
            f[(i, j)] = if relu { z[i][k].max(0.0) } else { z[i][k] };
        }
        f[(i, nf - 1)] = 1.0;
    }
    let (_, smin_rel, _) = null_vector(&f).ok_or_else(|| ExtractError::LayerFailed {
        layer: known.layers.len() + 1,
        reason: "degenerate last-layer sign features".into(),
    })?;
    tracing::debug!(smin_rel, ?state, "last-layer sign features");
    if smin_rel < 1e-9 {
        return Ok(None);
    }
    let dout = oracle.output_dim();
    let y = Mat::<f64>::from_fn(n, dout, |i, j| ys[i][j]);
    let c = lstsq(&f, &y);
    let coef = |j: usize| -> Vec<f64> { (0..dout).map(|o| c[(j, o)]).collect() };
    let scale_out = (0..n)
        .flat_map(|i| ys[i].iter())
        .fold(0.0_f64, |m, v| m.max(v.abs()));
    let mut signs = vec![1.0; w];
    let mut conf = vec![0.0; w];
    for k in 0..w {
        if state[k] != 0 {
            // Only the linear feature: non-zero means the neuron is active on the samples.
            let j = cols
                .iter()
                .position(|&(kk, r)| kk == k && !r)
                .expect("linear column");
            let g = norm(&coef(j));
            let zmax = z.iter().fold(0.0_f64, |m, zi| m.max(zi[k].abs()));
            // Influential beyond the answers' noise.
            let influential =
                g * zmax > 1e-9_f64.max(10.0 * noise_rel) * scale_out.max(f64::MIN_POSITIVE);
            signs[k] = match (state[k], influential) {
                (1, true) | (-1, false) => 1.0,
                _ => -1.0,
            };
            // Decided only on the sampled region: report as not confident.
            conf[k] = 0.5;
            continue;
        }
        let ja = cols
            .iter()
            .position(|&(kk, r)| kk == k && r)
            .expect("relu column");
        let jb = cols
            .iter()
            .position(|&(kk, r)| kk == k && !r)
            .expect("linear column");
        let alpha = coef(ja);
        let beta = coef(jb);
        let an = norm(&alpha);
        if an == 0.0 {
            continue;
        }
        let e_plus = norm(&beta) / an;
        let e_minus = norm(
            &beta
                .iter()
                .zip(&alpha)
                .map(|(b, a)| b + a)
                .collect::<Vec<_>>(),
        ) / an;
        signs[k] = if e_plus <= e_minus { 1.0 } else { -1.0 };
        // 1 when one hypothesis fits exactly and the other is off by the full coefficient.
        let (lo, hi) = if e_plus <= e_minus {
            (e_plus, e_minus)
        } else {
            (e_minus, e_plus)
        };
        conf[k] = if hi > 0.0 {
            (1.0 - lo / hi).clamp(0.0, 1.0)
        } else {
            0.0
        };
    }
    Ok(Some(SignOutcome {
        method: "last-layer-lstsq",
        signs,
        confidence: conf,
        queries: oracle.queries() - q0,
    }))
}

/// Largest relative residual (of max |f|) at which the output counts as exactly explained by the
/// found neurons plus a term linear in the previous layer's output. Exact f64 targets fit to ~1e-12;
/// a missing neuron that switches on the samples leaves ~1e-3 or more.
const LINEAR_PART_FIT_MAX: f64 = 1e-8;

/// Samples (queries) for [`always_on`].
const ALWAYS_ON_SAMPLES: usize = 8192;

/// An always-on neuron of the last hidden layer, recovered from the output's linear part.
#[derive(Debug, Clone)]
pub struct AlwaysOn {
    /// Its weight row (unit norm) and bias, oriented so that it is active on every sample.
    pub row: (Vec<f64>, f64),
    /// Signs of the found neurons, then `+1` for the always-on one.
    pub signs: SignOutcome,
}

/// Recovers the signs of the found neurons of the last hidden layer together with the one neuron no
/// line ever met because it never switches off.
///
/// Such a neuron (e.g. zero bias and non-negative weights on the previous layer's ReLU outputs: on
/// `he:40-20-10-10-1` one of ten) has no boundary, so it adds `a·(θ·h + b)` — a term linear in the
/// previous layer's output `h` — everywhere. That term also hides the other neurons' signs from the
/// plain last-layer fit, since `ReLU(−ẑ) = ReLU(ẑ) − ẑ` moves a flip into the linear part. One fit on
/// `[ReLU(ẑ_j), h, 1]` is exact for every sign pattern; under a pattern `s` the linear part is
/// `V_s = V_+ + Σ_{s_j = −} α_j θ_jᵀ`, and only the true pattern leaves a linear part that one ReLU
/// neuron can produce while staying on: rank one, `θ·h` of one sign on every sample. Half the samples
/// lie at 16σ and 64σ, where a bias is negligible beside `θ·h`, so a large bias cannot fake that. The `2^found`
/// patterns are scored by that violation (found ≤ 16); a sign is confident when flipping it costs
/// a clearly larger violation.
///
/// Only `θ` (up to scale) and `a·b + c` are identifiable: the bias is set to twice the smallest value
/// that keeps the neuron on at every sample (0 for a neuron on a cone, as with zero biases).
///
/// `None` when the case does not apply: no or more than one missing neuron, too many found ones, or
/// an output that the found neurons plus a linear part do not explain exactly.
pub fn always_on<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    missing: usize,
    sigma: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Option<AlwaysOn>, ExtractError> {
    let found = layer.fan_out();
    if missing != 1 || found == 0 || found > super::brute::MAX_WIDTH {
        return Ok(None);
    }
    let d0 = known.input_dim;
    let dim = known.out_dim();
    // Many samples: a wrong pattern's linear part can dip below zero on a small set of directions
    // only (512 samples missed one on he:40-20-10-10-1 that 10^5 inputs then met).
    let n = (8 * (found + dim + 1)).max(ALWAYS_ON_SAMPLES);
    let q0 = oracle.queries();
    let scales = [1.0, 4.0, 16.0, 64.0];
    let xs = random_inputs(rng, n, d0, sigma, &scales);
    let ys = oracle.query_points(&xs)?;
    let hs: Vec<Vec<f64>> = known
        .forward_rows(&xs)
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    let alive: Vec<usize> = (0..dim)
        .filter(|&k| hs.iter().any(|h| h[k] != 0.0))
        .collect();
    let z = |i: usize, j: usize| -> f64 {
        (0..dim)
            .map(|c| layer.weight[(j, c)] * hs[i][c])
            .sum::<f64>()
            + layer.bias[j]
    };
    let nf = found + alive.len() + 1;
    let f = Mat::<f64>::from_fn(n, nf, |i, j| {
        if j < found {
            z(i, j).max(0.0)
        } else if j < nf - 1 {
            hs[i][alive[j - found]]
        } else {
            1.0
        }
    });
    let dout = oracle.output_dim();
    let y = Mat::<f64>::from_fn(n, dout, |i, o| ys[i][o]);
    let c = lstsq(&f, &y);
    let fitted = &f * &c;
    let scale_out = ys.iter().flatten().fold(0.0_f64, |m, v| m.max(v.abs()));
    let resid = (0..n)
        .flat_map(|i| (0..dout).map(move |o| (i, o)))
        .map(|(i, o)| (fitted[(i, o)] - y[(i, o)]).abs())
        .fold(0.0, f64::max)
        / scale_out.max(f64::MIN_POSITIVE);
    tracing::debug!(resid, found, "always-on fit");
    if resid.is_nan() || resid > LINEAR_PART_FIT_MAX {
        return Ok(None);
    }
    // Linear part per output on the alive units, and each found neuron's flip term.
    let na = alive.len();
    let mut v = Mat::<f64>::from_fn(dout, na, |o, k| c[(found + k, o)]);
    let flip: Vec<Mat<f64>> = (0..found)
        .map(|j| Mat::<f64>::from_fn(dout, na, |o, k| c[(j, o)] * layer.weight[(j, alive[k])]))
        .collect();
    // The far samples (16σ and 64σ) judge the sign of θ·h; unit rows so every sample counts alike.
    let far: Vec<Vec<f64>> = (0..n)
        .filter(|i| i % scales.len() >= 2)
        .filter_map(|i| {
            let hv: Vec<f64> = alive.iter().map(|&k| hs[i][k]).collect();
            let nh = norm(&hv);
            (nh > 0.0).then(|| hv.iter().map(|x| x / nh).collect())
        })
        .collect();
    let score = |v: &Mat<f64>| -> (f64, Vec<f64>) {
        // θ: the largest row; the others must be multiples of it (one neuron feeds every output).
        let rows: Vec<Vec<f64>> = (0..dout)
            .map(|o| (0..na).map(|k| v[(o, k)]).collect())
            .collect();
        let Some(top) = rows.iter().max_by(|a, b| norm(a).total_cmp(&norm(b))) else {
            return (f64::INFINITY, Vec::new());
        };
        let tn = norm(top);
        if tn == 0.0 {
            return (f64::INFINITY, Vec::new());
        }
        let theta: Vec<f64> = top.iter().map(|x| x / tn).collect();
        let rank_dev = rows
            .iter()
            .map(|r| {
                let a = dot(r, &theta);
                norm(
                    &r.iter()
                        .zip(&theta)
                        .map(|(x, t)| x - a * t)
                        .collect::<Vec<_>>(),
                )
            })
            .fold(0.0, f64::max)
            / tn;
        let u: Vec<f64> = far.iter().map(|h| dot(h, &theta)).collect();
        let (lo, hi) = u
            .iter()
            .fold((0.0_f64, 0.0_f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        // Violation: how far the minority side reaches, relative to the majority side.
        let (viol, oriented) = if hi >= -lo {
            (-lo / hi.max(f64::MIN_POSITIVE), theta)
        } else {
            (hi / (-lo), theta.iter().map(|x| -x).collect())
        };
        (viol + rank_dev, oriented)
    };
    let patterns = 1usize << found;
    let mut scores = vec![0.0; patterns];
    // Gray-code walk: one flip term added or removed per step.
    let mut mask = 0usize;
    scores[0] = score(&v).0;
    for step in 1..patterns {
        let j = step.trailing_zeros() as usize;
        if mask & (1 << j) == 0 {
            v += &flip[j];
        } else {
            v -= &flip[j];
        }
        mask ^= 1 << j;
        scores[mask] = score(&v).0;
    }
    let best = (0..patterns)
        .min_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .expect("at least one pattern");
    let mut vb = Mat::<f64>::from_fn(dout, na, |o, k| c[(found + k, o)]);
    for (j, fl) in flip.iter().enumerate() {
        if best & (1 << j) != 0 {
            vb += fl;
        }
    }
    let (best_score, theta) = score(&vb);
    tracing::debug!(best_score, best, "always-on sign patterns");
    if !best_score.is_finite() {
        return Ok(None);
    }
    let mut signs: Vec<f64> = (0..found)
        .map(|j| if best & (1 << j) != 0 { -1.0 } else { 1.0 })
        .collect();
    let mut confidence: Vec<f64> = (0..found)
        .map(|j| {
            let alt = (0..patterns)
                .filter(|&m| (m ^ best) & (1 << j) != 0)
                .map(|m| scores[m])
                .fold(f64::INFINITY, f64::min);
            // Clear when the best pattern is (near) exact and every pattern with this sign flipped
            // violates by orders of magnitude more.
            if alt > 0.0 && alt.is_finite() {
                (1.0 - best_score / alt).clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    let mut w = vec![0.0; dim];
    for (k, &a) in alive.iter().enumerate() {
        w[a] = theta[k];
    }
    let lowest = hs.iter().map(|h| dot(&w, h)).fold(f64::INFINITY, f64::min);
    // Twice the deepest dip seen, so that inputs a little beyond the samples keep it on too.
    let b = if lowest < 0.0 { -2.0 * lowest } else { 0.0 };
    signs.push(1.0);
    confidence.push(1.0);
    Ok(Some(AlwaysOn {
        row: (w, b),
        signs: SignOutcome {
            method: "last-layer linear part (always-on neuron)",
            signs,
            confidence,
            queries: oracle.queries() - q0,
        },
    }))
}
