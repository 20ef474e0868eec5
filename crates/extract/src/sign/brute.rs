//! Brute-force cross-check of a layer's signs (width ≤ [`MAX_WIDTH`]): every one of the 2^w sign
//! patterns is scored against local gradients of the target, and the best must be the one the
//! polynomial methods chose.
//!
//! At a point `x` the target's Jacobian is `C(x)·diag(a(x))·R(x)` where `R = Ŵ·J_h(x)` are the
//! layer's rows pulled back to input space (known offline), `a(x)` its true activation pattern and
//! `C(x)` whatever the unknown later layers do. Under a sign pattern `s` the active set at `x` is
//! `A_s(x) = {k : s_k·ẑ_k(x) > 0}`, and every output's gradient must lie in the span of the rows
//! `R_k, k ∈ A_s(x)`. The score of `s` is the summed squared residual of that projection over all
//! probe points, relative to the gradients' norm; the true pattern scores ~0 (noise), and a wrong
//! one scores O(1) wherever the neurons it gets wrong matter downstream. Gradients are measured only
//! inside the span of all `R_k` (at most `w` directions, `2w` queries per point): components outside
//! it are zero under every pattern and would not discriminate.
//!
//! Cost: `2^w` patterns × probe points × one `|A|×|A|` Cholesky solve; `w = 16` takes seconds. Like the
//! CRYPTO 2020 method it is exponential in the width, so it is a cross-check of the polynomial methods,
//! capped at 16 neurons. Where it disagrees with them and is [decisive](BruteCheck::decisive) (the best
//! pattern explains the gradients to rounding, every competitor is 1000× worse), the pipeline adopts its
//! pattern and says so in the report; otherwise the disagreeing neurons are flagged low-confidence.

use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use netxray_relu::Layer;
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Widest layer the brute force is run on (2^16 patterns).
pub const MAX_WIDTH: usize = 16;

/// Result of the cross-check of one layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BruteCheck {
    /// Sign patterns scored (2^w).
    pub patterns: u64,
    /// Probe points whose gradients were measured (a point is dropped when its stencil met a kink).
    pub points: usize,
    /// Neurons whose sign in the best-scoring pattern differs from the chosen one (empty: agreement).
    pub disagree: Vec<usize>,
    /// Neurons whose sign is observable at the probes (flipping it alone makes the best pattern
    /// worse) and agrees with the chosen one.
    pub confirmed: Vec<usize>,
    /// Score of the chosen signs (relative squared residual, ~0 when right).
    pub chosen_score: f64,
    /// Best score over all patterns.
    pub best_score: f64,
    /// Best score among patterns that differ from the best one in at least one neuron whose sign is
    /// observable at the probe points: how clearly the best pattern wins.
    pub second_score: f64,
    /// Signs of the best pattern (+1 keeps a recovered row, −1 flips it).
    pub best_signs: Vec<f64>,
    /// Per neuron: the best score among patterns that give it the other sign than the best pattern
    /// does — how clearly this one neuron's sign is established (see [`BruteCheck::decisive_for`]).
    #[serde(default)]
    pub against: Vec<f64>,
    /// The best pattern was adopted in place of the chosen one, on every disagreeing neuron or on those
    /// it is decisive for (see [`BruteCheck::decisive`], [`BruteCheck::decisive_for`]).
    pub adopted: bool,
    /// Queries spent.
    pub queries: u64,
}

struct PointData {
    /// Gram matrix of the pulled-back rows in the measured directions (`w × w`, row-major).
    gram: Vec<f64>,
    /// Rows times gradients: `w × dout` (row-major).
    rg: Vec<f64>,
    /// ‖G‖² over all outputs.
    g2: f64,
    /// Pre-activations of the layer at the point.
    z: Vec<f64>,
}

/// Squared norm of the part of G that the rows in `active` explain: `b_Aᵀ M_AA⁻¹ b_A` summed over
/// outputs (Cholesky with a tiny ridge; dependent rows are simply not counted twice).
fn explained(pd: &PointData, active: &[usize], w: usize, dout: usize) -> f64 {
    let n = active.len();
    if n == 0 {
        return 0.0;
    }
    let tr = active.iter().map(|&k| pd.gram[k * w + k]).sum::<f64>();
    let ridge = 1e-12 * tr.max(f64::MIN_POSITIVE);
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = pd.gram[active[i] * w + active[j]];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                l[i * n + i] = (s + ridge).max(ridge).sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut total = 0.0;
    let mut y = vec![0.0; n];
    for o in 0..dout {
        // Forward solve L y = b_A; explained = ‖y‖².
        for i in 0..n {
            let mut s = pd.rg[active[i] * dout + o];
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        total += y.iter().map(|v| v * v).sum::<f64>();
    }
    total
}

/// Scores every sign pattern of `layer` (rows as recovered, `chosen` the signs the pipeline picked:
/// +1 keeps a row, −1 flips it) and reports whether the best pattern is the chosen one. `None` when the
/// layer is wider than [`MAX_WIDTH`] or empty.
#[allow(clippy::too_many_arguments)]
pub fn cross_check<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    chosen: &[f64],
    points: usize,
    sigma: f64,
    rel_tol: f64,
    abs_floor: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Option<BruteCheck>, ExtractError> {
    let w = layer.fan_out();
    if w == 0 || w > MAX_WIDTH {
        return Ok(None);
    }
    let q0 = oracle.queries();
    let d0 = known.input_dim;
    let dout = oracle.output_dim();
    let with_layer = known.extended(layer);
    // Offline: probe points, their measured directions (orthonormal basis of span R) and steps.
    struct Probe {
        x: Vec<f64>,
        dirs: Mat<f64>, // d0 × m
        r: Mat<f64>,    // w × m: rows in the basis
        z: Vec<f64>,
        step: f64,
    }
    let mut probes = Vec::with_capacity(points);
    for _ in 0..points * 4 {
        if probes.len() == points {
            break;
        }
        let x: Vec<f64> = (0..d0)
            .map(|_| sigma * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let st = with_layer.local_full(&x);
        let rows = st.dpre.last().expect("layer").clone(); // w × d0
        let z = st.pre.last().expect("layer").clone();
        let Ok(svd) = rows.transpose().to_owned().thin_svd() else {
            continue;
        };
        let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
        let smax = s.iter().cloned().fold(0.0, f64::max);
        let m = s.iter().filter(|&&v| v > 1e-9 * smax).count();
        if m == 0 {
            continue;
        }
        let dirs = Mat::<f64>::from_fn(d0, m, |i, k| svd.U()[(i, k)]);
        let r = &rows * &dirs;
        let margin = with_layer.margin(&x, &dirs);
        let step = (0.25 * margin).min(1e-2 * sigma);
        if !(step.is_finite() && step > 0.0) {
            continue;
        }
        probes.push(Probe {
            x,
            dirs,
            r,
            z,
            step,
        });
    }
    let mut pts = Vec::new();
    for p in &probes {
        pts.push(p.x.clone());
        for k in 0..p.dirs.ncols() {
            for sgn in [1.0, -1.0] {
                pts.push(
                    (0..d0)
                        .map(|i| p.x[i] + sgn * p.step * p.dirs[(i, k)])
                        .collect(),
                );
            }
        }
    }
    let ys = oracle.query_points(&pts)?;
    let mut data = Vec::with_capacity(probes.len());
    let mut at = 0;
    for p in &probes {
        let m = p.dirs.ncols();
        let f0 = &ys[at];
        let mut g = vec![vec![0.0; m]; dout]; // dout × m
        let mut linear = true;
        for k in 0..m {
            let (fp, fm) = (&ys[at + 1 + 2 * k], &ys[at + 2 + 2 * k]);
            let sc = f0
                .iter()
                .chain(fp)
                .chain(fm)
                .fold(0.0_f64, |a, v| a.max(v.abs()));
            let dev = (0..dout).fold(0.0_f64, |a, o| a.max((fp[o] + fm[o] - 2.0 * f0[o]).abs()));
            if dev > (rel_tol * sc).max(abs_floor) {
                linear = false;
            }
            for o in 0..dout {
                g[o][k] = (fp[o] - fm[o]) / (2.0 * p.step);
            }
        }
        at += 1 + 2 * m;
        if !linear {
            continue;
        }
        let g2: f64 = g
            .iter()
            .map(|row| row.iter().map(|v| v * v).sum::<f64>())
            .sum();
        if g2 == 0.0 {
            continue;
        }
        let gram: Vec<f64> = (0..w * w)
            .map(|ij| {
                let (i, j) = (ij / w, ij % w);
                (0..m).map(|c| p.r[(i, c)] * p.r[(j, c)]).sum()
            })
            .collect();
        let rg: Vec<f64> = (0..w * dout)
            .map(|ko| {
                let (k, o) = (ko / dout, ko % dout);
                (0..m).map(|c| p.r[(k, c)] * g[o][c]).sum()
            })
            .collect();
        data.push(PointData {
            gram,
            rg,
            g2,
            z: p.z.clone(),
        });
    }
    let total_g2: f64 = data.iter().map(|d| d.g2).sum();
    let score = |pattern: u32| -> f64 {
        let mut res = 0.0;
        let mut active = Vec::with_capacity(w);
        for d in &data {
            active.clear();
            active.extend((0..w).filter(|&k| {
                let s = if pattern >> k & 1 == 1 { -1.0 } else { 1.0 };
                s * d.z[k] > 0.0
            }));
            res += (d.g2 - explained(d, &active, w, dout)).max(0.0);
        }
        res / total_g2.max(f64::MIN_POSITIVE)
    };
    let chosen_bits: u32 = (0..w)
        .filter(|&k| chosen[k] < 0.0)
        .fold(0, |b, k| b | (1 << k));
    let scores: Vec<f64> = {
        use rayon::prelude::*;
        (0..1u32 << w).into_par_iter().map(score).collect()
    };
    let best = (0..scores.len())
        .min_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .expect("at least one pattern") as u32;
    // A neuron whose two signs score the same (never decisive at the probes) cannot disagree.
    let observable: Vec<bool> = (0..w)
        .map(|k| {
            let flipped = scores[(best ^ (1 << k)) as usize];
            flipped > scores[best as usize] + 1e-9
        })
        .collect();
    let disagree: Vec<usize> = (0..w)
        .filter(|&k| observable[k] && (best >> k & 1) != (chosen_bits >> k & 1))
        .collect();
    let confirmed: Vec<usize> = (0..w)
        .filter(|&k| observable[k] && (best >> k & 1) == (chosen_bits >> k & 1))
        .collect();
    let second = (0..scores.len() as u32)
        .filter(|&p| {
            let diff = p ^ best;
            (0..w).any(|k| diff >> k & 1 == 1 && observable[k])
        })
        .map(|p| scores[p as usize])
        .fold(f64::INFINITY, f64::min);
    let mut against = vec![f64::INFINITY; w];
    for (p, &sc) in scores.iter().enumerate() {
        let diff = p as u32 ^ best;
        for (k, a) in against.iter_mut().enumerate() {
            if diff >> k & 1 == 1 && sc < *a {
                *a = sc;
            }
        }
    }
    Ok(Some(BruteCheck {
        patterns: 1u64 << w,
        points: data.len(),
        disagree,
        confirmed,
        chosen_score: scores[chosen_bits as usize],
        best_score: scores[best as usize],
        second_score: second,
        best_signs: (0..w)
            .map(|k| if best >> k & 1 == 1 { -1.0 } else { 1.0 })
            .collect(),
        against,
        adopted: false,
        queries: oracle.queries() - q0,
    }))
}

impl BruteCheck {
    /// The best pattern explains the gradients to within `DECISIVE_SCORE` while every pattern that
    /// differs from it on an observable neuron is at least `DECISIVE_RATIO` times worse: then it is
    /// the true sign pattern (up to neurons whose sign does not matter at the probes).
    pub fn decisive(&self) -> bool {
        self.best_score <= DECISIVE_SCORE
            && self.second_score >= DECISIVE_RATIO * self.best_score.max(1e-12)
    }

    /// The chosen signs are refuted: the best pattern explains the gradients to within
    /// `DECISIVE_SCORE` and the chosen one scores at least `DECISIVE_RATIO` times worse. Says the
    /// chosen pattern is wrong, not which neurons are (for that see [`Self::decisive_for`]).
    pub fn refutes_chosen(&self) -> bool {
        self.best_score <= DECISIVE_SCORE
            && self.chosen_score >= DECISIVE_RATIO * self.best_score.max(1e-12)
    }

    /// Neuron `k`'s sign alone is established: the best pattern explains the gradients to within
    /// `DECISIVE_SCORE` and every pattern giving `k` the other sign, whatever it does elsewhere, is
    /// at least `DECISIVE_RATIO` times worse. Weaker than [`Self::decisive`], which needs this for
    /// every observable neuron: a layer where one weakly observable neuron stays open can still have
    /// its other signs settled.
    pub fn decisive_for(&self, k: usize) -> bool {
        self.best_score <= DECISIVE_SCORE
            && self
                .against
                .get(k)
                .is_some_and(|&a| a >= DECISIVE_RATIO * self.best_score.max(1e-12))
    }
}

/// Largest score of a decisive best pattern. A right pattern scores ~1e-11 on f64 targets (rounding of
/// the finite differences); a wrong one scores 1e-3–1e-1 (measured on the reference targets).
pub const DECISIVE_SCORE: f64 = 1e-6;

/// How much worse than the best every competing pattern must score for the best to be decisive.
pub const DECISIVE_RATIO: f64 = 1e3;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(best: f64, second: f64, against: Vec<f64>) -> BruteCheck {
        let w = against.len();
        BruteCheck {
            patterns: 1 << w,
            points: 10,
            disagree: vec![0, 1],
            confirmed: vec![],
            chosen_score: 1e-8,
            best_score: best,
            second_score: second,
            best_signs: vec![1.0; w],
            against,
            adopted: false,
            queries: 0,
        }
    }

    #[test]
    fn one_neuron_can_be_settled_while_the_layer_is_not() {
        // Neuron 2 is barely observable (its flip costs little), so the layer is not decisive; neuron 0's
        // sign is, neuron 1's is not.
        let c = check(7e-12, 9e-12, vec![2e-8, 3e-11, 9e-12]);
        assert!(!c.decisive());
        assert!(c.decisive_for(0));
        assert!(!c.decisive_for(1));
        assert!(!c.decisive_for(2));
        assert!(!c.decisive_for(3), "out of range is never decisive");
        // A best pattern that does not explain the gradients settles nothing.
        assert!(!check(1e-4, 1.0, vec![1.0, 1.0]).decisive_for(0));
        // Reports written before `against` existed settle nothing either.
        assert!(!check(7e-12, 1.0, vec![]).decisive_for(0));
        // The chosen pattern (1e-8) is refuted by a best at 7e-12, not by one at 1e-10.
        assert!(check(7e-12, 9e-12, vec![1.0]).refutes_chosen());
        assert!(!check(1e-10, 9e-12, vec![1.0]).refutes_chosen());
    }
}
