//! Contractive-layer signs (the system-of-equations idea of Canales-Martínez et al., made exact).
//!
//! At a random point `x`, with `Z = Ŵ J` the input-space gradients of the recovered pre-activations,
//! the directions `v_k = Z⁺ e_k` move `ẑ_k` alone. The target's response along `v_k` is non-zero only if
//! neuron k is active at `x`, and then its sign is `sign(ẑ_k(x))`. A zero response can also mean a
//! blocked path downstream, so only non-zero responses vote. Needs `Z` of full row rank.

use super::SignOutcome;
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::linalg::{norm, right_pinv};
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use netxray_relu::Layer;
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// Runs the method; `None` when the layer is wider than the control space at every probe. Neurons
/// whose confidence stays below `confidence_min` are left to the wiggle.
pub fn recover<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    points: usize,
    min_votes: usize,
    confidence_min: f64,
    sigma: f64,
    rel_tol: f64,
    abs_floor: f64,
    noise_rel: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Option<SignOutcome>, ExtractError> {
    let w = layer.fan_out();
    let d0 = known.input_dim;
    let q0 = oracle.queries();
    let mut sides = vec![Sides::default(); w];
    let mut usable = 0;
    let with_layer = known.extended(layer);
    let points = points.max(1);
    let mut decided = vec![(1.0, 0.0); w];
    let mut climbed_failures = 0;
    let first = FirstLayer::of(&with_layer);
    // A random point has about half of each earlier layer active, so a layer wider than half the
    // narrowest earlier one is in full control at random points almost never (a 256-wide layer
    // behind 256-wide ones: never); its points are climbed from the start.
    let narrowest = known.layers.iter().map(|l| l.fan_out()).min().unwrap_or(d0);
    let climb_first = 2 * w > narrowest;
    for attempt in 0..points * MAX_ATTEMPTS_FACTOR {
        if usable >= points {
            decided = decide_all(&sides, min_votes, confidence_min);
            // Adaptive: stop once every neuron is clear, sample on (up to a cap) while some are not.
            if decided.iter().all(|&(_, c)| c >= confidence_min)
                || usable >= points * MAX_POINTS_FACTOR
            {
                break;
            }
        }
        // Random points first; when they lack control rank, points where more earlier units fire.
        let x0: Vec<f64> = (0..d0)
            .map(|_| sigma * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let climb = climb_first || attempt >= points;
        let Some((x, dirs, scale, z)) = full_rank_probe(&with_layer, first.as_ref(), x0, climb)
        else {
            tracing::trace!(attempt, "soe: no full-rank probe");
            climbed_failures += usize::from(climb);
            // Behind three or more 256-wide layers no point has the layer in full control (every
            // earlier unit would have to be active at once, which a linear program shows infeasible
            // on the balanced 3072-256×8-10); each climb there costs seconds, so stop early.
            if usable == 0 && climbed_failures >= CLIMB_FAILURES_MAX {
                break;
            }
            continue;
        };
        let m = with_layer.margin(&x, &dirs);
        let eps = (0.5 * m).min(sigma);
        if !(eps.is_finite() && eps > 0.0) {
            continue;
        }
        let mut pts = vec![x.clone()];
        for k in 0..w {
            let d: Vec<f64> = (0..d0).map(|i| dirs[(i, k)] * eps).collect();
            pts.push(x.iter().zip(&d).map(|(a, b)| a + b).collect());
            pts.push(x.iter().zip(&d).map(|(a, b)| a - b).collect());
        }
        let ys = oracle.query_points(&pts)?;
        let f0 = &ys[0];
        let mut resp = vec![None; w];
        for k in 0..w {
            let (yp, ym) = (&ys[1 + 2 * k], &ys[2 + 2 * k]);
            let sc = f0
                .iter()
                .chain(yp)
                .chain(ym)
                .fold(0.0_f64, |m, v| m.max(v.abs()));
            let dev =
                (0..f0.len()).fold(0.0_f64, |m, i| m.max((yp[i] + ym[i] - 2.0 * f0[i]).abs()));
            // A deeper unit flipped inside the stencil: no vote from this direction.
            if dev > (rel_tol * sc).max(abs_floor).max(f64::MIN_POSITIVE) {
                continue;
            }
            // Response per unit of ẑ_k.
            let d: Vec<f64> = (0..f0.len())
                .map(|i| (yp[i] - ym[i]) / (2.0 * eps) * scale[k])
                .collect();
            resp[k] = Some(norm(&d));
        }
        usable += 1;
        let big = resp.iter().flatten().cloned().fold(0.0, f64::max);
        if big == 0.0 {
            continue;
        }
        let sc = f0
            .iter()
            .fold(0.0_f64, |m, v| m.max(v.abs()))
            .max(big * eps);
        for k in 0..w {
            let Some(r) = resp[k] else { continue };
            if z[k] == 0.0 {
                continue;
            }
            // Below the answers' noise (`noise_rel·|f|` per answer, so ~noise_rel·|f|/eps on a
            // difference quotient) a response is indistinguishable from none.
            let rel = if r * eps / scale[k] > noise_rel * sc {
                r / big
            } else {
                0.0
            };
            if z[k] > 0.0 {
                sides[k].pos.push(rel);
            } else {
                sides[k].neg.push(rel);
            }
        }
    }
    if usable == 0 {
        return Ok(None);
    }
    if usable < points {
        decided = decide_all(&sides, min_votes, confidence_min);
    }
    for (k, s) in sides.iter().enumerate() {
        tracing::trace!(
            neuron = k,
            sign = decided[k].0,
            confidence = decided[k].1,
            pos = ?s.pos,
            neg = ?s.neg,
            "soe: responses"
        );
    }
    tracing::debug!(
        usable,
        unsure = decided.iter().filter(|&&(_, c)| c < confidence_min).count(),
        "soe: probe points used"
    );
    Ok(Some(SignOutcome {
        method: "soe-exact",
        signs: decided.iter().map(|&(s, _)| s).collect(),
        confidence: decided.iter().map(|&(_, c)| c).collect(),
        queries: oracle.queries() - q0,
    }))
}

/// Usable probe points are drawn up to this multiple of `sign_points` while some neuron is unclear.
const MAX_POINTS_FACTOR: usize = 4;

/// Climbed attempts that may fail before the first usable point before the method gives up.
const CLIMB_FAILURES_MAX: usize = 4;

/// Attempts (random or climbed points, usable or not) allowed per requested point.
const MAX_ATTEMPTS_FACTOR: usize = 8;

/// An active neuron's response must exceed an inactive one's by this factor for the pair to count as
/// cleanly separated. Inactive responses are not exactly zero once the rows carry recovery error `ε`:
/// `v_k` then moves every other unit by ~`ε·cond(Z)`, which on a 3072-256×8-10 with rows good to 1e-9
/// is ~1e-6 of the largest response, above the fixed 1e-9 cut this method used before, so votes of
/// inactive neurons came in and split the count. Active responses sit at 1e-3..1 of the largest.
const SEPARATION: f64 = 100.0;

/// With evidence from one side only, a response must exceed this fraction of the point's largest,
/// and [`SEPARATION`] × the leak seen on the quiet side of the neurons decided from both sides, to
/// count as proof of activity. The fixed floor alone was not enough: on layer 3 of a balanced
/// 3072-256×8-10 with rows good to 1e-9 a neuron seen only at `ẑ > 0` (24 of 24 points) showed
/// responses of 3e-5..1e-4 there — all leak, its true sign was the other one.
const ONE_SIDED_NONZERO: f64 = 1e-6;

/// Every neuron's `(sign, confidence)`: a first pass with the fixed floor, then the one-sided
/// neurons again with the leak measured on the confident two-sided ones.
fn decide_all(sides: &[Sides], min_votes: usize, confidence_min: f64) -> Vec<(f64, f64)> {
    let first: Vec<(f64, f64)> = sides.iter().map(|s| s.decide(min_votes, 0.0)).collect();
    let leak = sides
        .iter()
        .zip(&first)
        .filter(|(s, d)| !s.pos.is_empty() && !s.neg.is_empty() && d.1 >= confidence_min)
        .flat_map(|(s, d)| if d.0 > 0.0 { &s.neg } else { &s.pos })
        .fold(0.0_f64, |m, &v| m.max(v));
    sides.iter().map(|s| s.decide(min_votes, leak)).collect()
}

/// One neuron's responses (relative to the largest at the same point), split by the sign of its
/// recovered pre-activation there: on the active side they are the neuron's influence on the output,
/// on the inactive side only recovery-error leakage and rounding.
#[derive(Debug, Clone, Default)]
struct Sides {
    pos: Vec<f64>,
    neg: Vec<f64>,
}

impl Sides {
    /// `(sign, confidence)`. With both sides seen, the side with the larger median response is the
    /// active one, and the confidence is the fraction of (active, inactive) pairs separated by
    /// [`SEPARATION`], capped by the sample count (`1 − 2^−n`: a few points are weaker evidence than
    /// many). With one side only, responses clearly above `leak` (the largest quiet-side response of the
    /// confident two-sided neurons) there prove that side active.
    fn decide(&self, min_votes: usize, leak: f64) -> (f64, f64) {
        let cap = |n: usize| {
            if n < min_votes {
                0.0
            } else {
                1.0 - 0.5_f64.powi(n as i32)
            }
        };
        if !self.pos.is_empty() && !self.neg.is_empty() {
            let (mp, mn) = (median(&self.pos), median(&self.neg));
            let (sign, active, quiet) = if mp >= mn {
                (1.0, &self.pos, &self.neg)
            } else {
                (-1.0, &self.neg, &self.pos)
            };
            let separated = active
                .iter()
                .map(|&a| quiet.iter().filter(|&&b| a > SEPARATION * b).count())
                .sum::<usize>();
            let frac = separated as f64 / (active.len() * quiet.len()) as f64;
            return (sign, frac * cap(self.pos.len() + self.neg.len()));
        }
        let (sign, seen) = if self.pos.is_empty() {
            (-1.0, &self.neg)
        } else {
            (1.0, &self.pos)
        };
        if seen.is_empty() {
            return (1.0, 0.0);
        }
        let floor = ONE_SIDED_NONZERO.max(SEPARATION * leak);
        let nonzero = seen.iter().filter(|&&r| r > floor).count();
        if nonzero == 0 {
            // Never active where it was seen: most likely the other side, but a blocked path looks the
            // same, so only as a guess.
            return (-sign, 0.5 * cap(seen.len()));
        }
        (sign, nonzero as f64 / seen.len() as f64 * cap(nonzero))
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// A probe: point, unit directions, their scales, pre-activations.
type Probe = (Vec<f64>, Mat<f64>, Vec<f64>, Vec<f64>);

/// Probe point where the recovered layer has full control rank: `Z = Ŵ J` (input-space gradients of the
/// layer's pre-activations) of full row rank. Returns the point, unit directions `v_k ∝ Z⁺ e_k`, their
/// norms `|Z⁺ e_k|`, and the pre-activations. With `climb`, first moves the point (offline) so that
/// every earlier unit is active (see [`climb_all_active`]), since the control rank is at most the
/// active count of every earlier layer.
fn full_rank_probe(
    with_layer: &KnownPrefix,
    first: Option<&FirstLayer>,
    x: Vec<f64>,
    climb: bool,
) -> Option<Probe> {
    let d0 = with_layer.input_dim;
    let x = match first {
        Some(f) if climb => climb_all_active(with_layer, f, x)?,
        _ => x,
    };
    let st = with_layer.local_full(&x);
    let zgrad = st.dpre.last().expect("layer");
    let (pinv, cond) = right_pinv(zgrad)?;
    if cond <= 1e-8 {
        return None;
    }
    let w = zgrad.nrows();
    let mut dirs = Mat::<f64>::zeros(d0, w);
    let mut scale = vec![0.0; w];
    for k in 0..w {
        let nk = (0..d0).map(|i| pinv[(i, k)].powi(2)).sum::<f64>().sqrt();
        scale[k] = nk;
        for i in 0..d0 {
            dirs[(i, k)] = pinv[(i, k)] / nk;
        }
    }
    Some((x, dirs, scale, st.pre.last().expect("layer").clone()))
}

/// The first known layer, for climbing in its pre-activation space: `W₁`, `b₁` and the Cholesky
/// factor of `W₁W₁ᵀ` (which maps a change of `z₁` back to the least input change).
struct FirstLayer {
    llt: faer::linalg::solvers::Llt<f64>,
}

impl FirstLayer {
    /// `None` when there is no earlier layer (the first layer is always in full control) or `W₁`
    /// does not have full row rank (more first-layer units than inputs).
    fn of(with_layer: &KnownPrefix) -> Option<Self> {
        if with_layer.layers.len() < 2 {
            return None;
        }
        let w1 = &with_layer.layers[0].weight;
        let g = w1 * w1.transpose();
        let llt = g.llt(faer::Side::Lower).ok()?;
        Some(Self { llt })
    }
}

/// Gauss-Newton steps that turn every unit of the layers before the recovered one on (pushing each
/// inactive one to a tenth of its gradient's length), taken in the first layer's pre-activation
/// space: everything after the first layer depends on the input only through `z₁ = W₁x + b₁`, so
/// each step is a least-squares problem in `n₁` unknowns over products of `n × n` matrices, and the
/// input follows at the end by the least change `Δx = W₁ᵀ (W₁W₁ᵀ)⁻¹ Δz₁`. Done in input space this
/// was a `256 × 3072` Jacobian per known layer and an SVD of the inactive units' gradients per step
/// (seconds per attempt on layer 3 of the 3072-256×8-10). `None` when the units are not all on
/// after [`CLIMB_STEPS`].
fn climb_all_active(
    with_layer: &KnownPrefix,
    first: &FirstLayer,
    x0: Vec<f64>,
) -> Option<Vec<f64>> {
    use faer::linalg::solvers::Solve;
    let prefix = &with_layer.layers[..with_layer.layers.len() - 1];
    let l1 = &prefix[0];
    let n1 = l1.fan_out();
    let x0c = faer::Col::<f64>::from_fn(x0.len(), |i| x0[i]);
    let wx = &l1.weight * &x0c;
    let z1_start: Vec<f64> = (0..n1).map(|u| wx[u] + l1.bias[u]).collect();
    let mut z1 = z1_start.clone();
    let mut done = false;
    for _ in 0..CLIMB_STEPS {
        let mut rows: Vec<Vec<f64>> = Vec::new();
        let mut rhs: Vec<f64> = Vec::new();
        for u in 0..n1 {
            if z1[u] <= 0.0 {
                let mut r = vec![0.0; n1];
                r[u] = 1.0;
                rows.push(r);
                rhs.push(0.1 - z1[u]);
            }
        }
        // `m`: derivative of the current layer's pre-activations with respect to `z₁`.
        let mut m = Mat::<f64>::identity(n1, n1);
        let mut z = z1.clone();
        for l in &prefix[1..] {
            let mut dm = m.clone();
            for (r, &v) in z.iter().enumerate() {
                if v <= 0.0 {
                    dm.row_mut(r).fill(0.0);
                }
            }
            let h: Vec<f64> = z.iter().map(|&v| v.max(0.0)).collect();
            let hc = faer::Col::<f64>::from_fn(h.len(), |i| h[i]);
            let wh = &l.weight * &hc;
            z = (0..l.fan_out()).map(|r| wh[r] + l.bias[r]).collect();
            m = &l.weight * &dm;
            for (u, &zu) in z.iter().enumerate() {
                if zu <= 0.0 {
                    let r: Vec<f64> = (0..n1).map(|c| m[(u, c)]).collect();
                    let gn = norm(&r);
                    if gn > 0.0 {
                        rows.push(r);
                        rhs.push(0.1 * gn - zu);
                    }
                }
            }
        }
        if rows.is_empty() {
            done = true;
            break;
        }
        let a = Mat::<f64>::from_fn(rows.len(), n1, |i, j| rows[i][j]);
        let b = Mat::<f64>::from_fn(rows.len(), 1, |i, _| rhs[i]);
        let dz = crate::linalg::lstsq(&a, &b);
        if (0..n1).any(|u| !dz[(u, 0)].is_finite()) {
            return None;
        }
        (0..n1).for_each(|u| z1[u] += dz[(u, 0)]);
    }
    if !done {
        return None;
    }
    let dz = Mat::<f64>::from_fn(n1, 1, |u, _| z1[u] - z1_start[u]);
    let dx = l1.weight.transpose() * first.llt.solve(&dz);
    Some(x0.iter().enumerate().map(|(i, v)| v + dx[(i, 0)]).collect())
}

/// Gauss-Newton steps of [`climb_all_active`] before a start point is given up.
const CLIMB_STEPS: usize = 24;
