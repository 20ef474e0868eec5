//! Offline placement of predicted crossings by projection (no queries).
//!
//! Validation, refinement and polishing all need points where an estimated hyperplane
//! `θ·[h(x), 1] = 0` of the layer being recovered meets a search line, with a short window around each
//! that holds no known kink. [`crate::layer::predicted_crossing`] draws a long random line and walks its
//! whole profile through the known prefix to the first sign change: behind three 256-wide layers a
//! line has ~900 breakpoints (4.3 ms a profile), behind seven ~3,200 (33 ms), and polishing one
//! 256-wide layer places ~260,000 crossings — 26 of the 37 minutes of layer 4 of the 3072-256×8-10
//! in `benches/deep_layers.rs` (true prefix), one profile after another on one core.
//!
//! Here a random start is instead moved onto the hyperplane by Newton steps through the known prefix
//! (`z` is piecewise linear in `x`, so a step that stays in one activation region lands exactly on
//! the plane), many starts at once as blocked matrix products, and the search line is the plane's
//! normal through the landing point. The window is the stretch of that line inside the point's
//! activation region (exact: every known pre-activation is affine there), capped as the line-based
//! placement caps it. The starts are drawn as the line-based placement draws its lines (random
//! inputs, or points near the estimate's own witnesses), so the evidence is as independent: a
//! deeper unit's local piece predicts no kink at a projected point in another region either.

use crate::critical::Line;
use crate::known::KnownPrefix;
use crate::linalg::{dot, norm};
use faer::Mat;

/// Newton steps before a start is given up (a step that crosses known boundaries lands off the
/// plane, and the next starts from there; a handful suffice from random starts on random nets).
const MAX_STEPS: usize = 12;

/// A step has landed when the distance left to the plane (`|z|/‖∇z‖`) is below this fraction of the
/// line's half length (far inside any search window: windows are ≥ 1e-6 of it).
const LANDED: f64 = 1e-9;

/// Rows projected together (one matrix product per layer and step for the whole block).
const BLOCK: usize = 256;

/// A crossing placed offline: the search line (through the landing point, along the plane's normal
/// in input space), the predicted `t` on it, and the window `[lo, hi]` to search.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The search line (unit direction).
    pub line: Line,
    /// Predicted crossing.
    pub t: f64,
    /// Window start.
    pub lo: f64,
    /// Window end.
    pub hi: f64,
}

/// Moves each start onto its hyperplane `θ` (one per start, `dim + 1` entries on the prefix's output)
/// and returns the crossing placed there, or `None` when the projection did not land, the plane's
/// normal vanishes (the neuron is constant around the point), or the point is too close to a known
/// kink for a window (`room ≤ 1e-6·half`). The window reaches at most `window·half` to the left of
/// the prediction and `right` times that to the right, and half the room to the region's edge.
///
/// The Newton steps never leave the first known layer's pre-activation space: a step moves the
/// input along `∇ₓz = W₁ᵀu` (`u = ∂z/∂z₁`), so it moves `z₁` by `W₁W₁ᵀu` and the step length needs
/// `‖∇ₓz‖² = uᵀW₁W₁ᵀu`. With the Gram matrix `W₁W₁ᵀ` taken once, a step costs products of the first
/// layer's width instead of the input's (3072 against 256 on the CIFAR-shaped nets, where the input
/// products were most of a deep layer's polishing), and the input point is formed once at the end.
pub fn project_crossings(
    known: &KnownPrefix,
    jobs: &[(&[f64], Vec<f64>)],
    half: f64,
    window: f64,
    right: f64,
) -> Vec<Option<Placed>> {
    use rayon::prelude::*;
    // G = W₁W₁ᵀ of the first known layer, once for all blocks.
    let gram = known.first_layer_gram();
    let blocks: Vec<&[(&[f64], Vec<f64>)]> = jobs.chunks(BLOCK).collect();
    blocks
        .into_par_iter()
        .flat_map_iter(|b| project_block(known, gram.as_ref(), b, half, window, right))
        .collect()
}

/// `a · b`, sequential (the blocks themselves run in parallel); `b` is often a weight's transpose.
fn mul(a: &Mat<f64>, b: faer::MatRef<'_, f64>) -> Mat<f64> {
    mul_t(a.as_ref(), b)
}

/// [`project_crossings`] for one block of starts: Newton steps in the first known layer's
/// pre-activation space (`gram` is `W₁W₁ᵀ`), then each landed start's window; without known layers,
/// one exact step onto each estimate's plane in input space.
fn project_block(
    known: &KnownPrefix,
    gram: Option<&Mat<f64>>,
    jobs: &[(&[f64], Vec<f64>)],
    half: f64,
    window: f64,
    right: f64,
) -> Vec<Option<Placed>> {
    let (Some(first), Some(gram)) = (known.layers.first(), gram) else {
        return project_onto_input_planes(jobs, half, window, right);
    };
    let d0 = known.input_dim;
    let dim = known.out_dim();
    let n = jobs.len();
    let w1 = first.fan_out();
    // The Newton steps run in the first layer's pre-activation space (see `project_crossings`): `z1`
    // is `W₁x + b₁` of the moving point, and the point itself is `x₀ − W₁ᵀa`.
    let x0 = Mat::<f64>::from_fn(n, d0, |i, j| jobs[i].1[j]);
    let mut z1 = mul(&x0, first.weight.transpose());
    for j in 0..w1 {
        let b = first.bias[j];
        z1.col_mut(j).iter_mut().for_each(|v| *v += b);
    }
    let mut a = Mat::<f64>::zeros(n, w1);
    // Per landed row: `∂z/∂z₁` (the input normal is `W₁ᵀ` of it), its input norm, and the remaining
    // offset along the normal.
    let mut landed: Vec<Option<(Vec<f64>, f64, f64)>> = vec![None; n];
    // Per landed row: its known pre-activations at the landing point (it does not move after).
    let mut landed_pres: Vec<Vec<Vec<f64>>> = vec![Vec::new(); n];
    let mut live: Vec<usize> = (0..n).collect();
    for _ in 0..=MAX_STEPS {
        if live.is_empty() {
            break;
        }
        let z1l = Mat::<f64>::from_fn(live.len(), w1, |i, j| z1[(live[i], j)]);
        let pres = forward_from_first(known, z1l);
        let last = pres.last().expect("a non-empty prefix");
        // ∂z/∂z₁: θ's weights masked by the last layer's pattern, pulled back to the first layer.
        let mut v = Mat::<f64>::from_fn(live.len(), dim, |i, j| {
            if last[(i, j)] > 0.0 {
                jobs[live[i]].0[j]
            } else {
                0.0
            }
        });
        for li in (1..known.layers.len()).rev() {
            v = mul(&v, known.layers[li].weight.as_ref());
            let z = &pres[li - 1];
            for j in 0..v.ncols() {
                for i in 0..v.nrows() {
                    if z[(i, j)] <= 0.0 {
                        v[(i, j)] = 0.0;
                    }
                }
            }
        }
        // ‖∇ₓz‖² = uᵀGu with G = W₁W₁ᵀ, and the step moves z₁ by G·u.
        let gu = mul(&v, gram.as_ref());
        let mut still = Vec::new();
        for (r, &i) in live.iter().enumerate() {
            let theta = jobs[i].0;
            let z = (0..dim)
                .map(|j| theta[j] * last[(r, j)].max(0.0))
                .sum::<f64>()
                + theta[dim];
            let gn2: f64 = (0..w1).map(|j| v[(r, j)] * gu[(r, j)]).sum();
            let gn = gn2.max(0.0).sqrt();
            if !(gn > 0.0 && gn.is_finite() && z.is_finite()) {
                continue;
            }
            let dist = z / gn;
            let u: Vec<f64> = (0..w1).map(|j| v[(r, j)]).collect();
            if dist.abs() <= LANDED * half {
                landed[i] = Some((u, gn, -dist));
                landed_pres[i] = pres
                    .iter()
                    .map(|z| (0..z.ncols()).map(|j| z[(r, j)]).collect())
                    .collect();
                continue;
            }
            let c = z / gn2;
            for j in 0..w1 {
                a[(i, j)] += c * u[j];
                z1[(i, j)] -= c * gu[(r, j)];
            }
            still.push(i);
        }
        live = still;
    }
    // Windows: the stretch of each normal line inside its landing point's activation region.
    let done: Vec<usize> = (0..n).filter(|&i| landed[i].is_some()).collect();
    let mut out: Vec<Option<Placed>> = vec![None; n];
    if done.is_empty() {
        return out;
    }
    let m = done.len();
    let ad = Mat::<f64>::from_fn(m, w1, |r, j| a[(done[r], j)]);
    let ud = Mat::<f64>::from_fn(m, w1, |r, j| {
        let (u, gn, _) = landed[done[r]].as_ref().expect("landed");
        u[j] / gn
    });
    // Landing points and unit normals, one input per column (contiguous to read out).
    let xt = {
        let mut xt = mul_t(first.weight.transpose(), ad.transpose());
        for (r, &i) in done.iter().enumerate() {
            for j in 0..d0 {
                xt[(j, r)] = jobs[i].1[j] - xt[(j, r)];
            }
        }
        xt
    };
    let dt = mul_t(first.weight.transpose(), ud.transpose());
    let pres: Vec<Mat<f64>> = (0..known.layers.len())
        .map(|li| {
            let width = known.layers[li].fan_out();
            Mat::<f64>::from_fn(m, width, |r, j| landed_pres[done[r]][li][j])
        })
        .collect();
    // Directional derivatives of every known pre-activation along the normal (pattern fixed); the
    // first layer's is `W₁·W₁ᵀu/‖g‖ = G·u/‖g‖`.
    let mut dz_all: Vec<Mat<f64>> = Vec::with_capacity(known.layers.len());
    let mut dz = mul(&ud, gram.as_ref());
    for li in 0..known.layers.len() {
        if li > 0 {
            dz = mul(&dz, known.layers[li].weight.transpose());
        }
        let z = &pres[li];
        let dh = Mat::from_fn(dz.nrows(), dz.ncols(), |i, j| {
            if z[(i, j)] > 0.0 { dz[(i, j)] } else { 0.0 }
        });
        dz_all.push(dz);
        dz = dh;
    }
    for (r, &i) in done.iter().enumerate() {
        let (_, _, t) = landed[i].take().expect("landed");
        let (left, right_room) = room(&pres, &dz_all, r);
        out[i] = window_at(
            xt.col(r).iter().copied().collect(),
            dt.col(r).iter().copied().collect(),
            t,
            left,
            right_room,
            half,
            window,
            right,
        );
    }
    out
}

/// `a · b` into a fresh matrix, sequential (for products whose operands are views).
fn mul_t(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    faer::linalg::matmul::matmul(
        out.as_mut(),
        faer::Accum::Replace,
        a,
        b,
        1.0,
        faer::Par::Seq,
    );
    out
}

/// Pre-activations of every known layer given the first layer's (`z1`, one row per point).
fn forward_from_first(known: &KnownPrefix, z1: Mat<f64>) -> Vec<Mat<f64>> {
    let mut pres = Vec::with_capacity(known.layers.len());
    pres.push(z1);
    for l in &known.layers[1..] {
        let prev = pres.last().expect("the first layer");
        let h = Mat::<f64>::from_fn(prev.nrows(), prev.ncols(), |i, j| prev[(i, j)].max(0.0));
        let mut z = mul(&h, l.weight.transpose());
        for j in 0..z.ncols() {
            let b = l.bias[j];
            z.col_mut(j).iter_mut().for_each(|v| *v += b);
        }
        pres.push(z);
    }
    pres
}

/// Room on each side of `t = 0` along row `r`'s normal before a known pre-activation changes sign.
fn room(pres: &[Mat<f64>], dz_all: &[Mat<f64>], r: usize) -> (f64, f64) {
    let (mut left, mut right_room) = (f64::INFINITY, f64::INFINITY);
    for (z, dz) in pres.iter().zip(dz_all) {
        for j in 0..z.ncols() {
            let (zv, g) = (z[(r, j)], dz[(r, j)]);
            if g == 0.0 {
                continue;
            }
            let s = -zv / g;
            if s > 0.0 {
                right_room = right_room.min(s);
            } else {
                left = left.min(-s);
            }
        }
    }
    (left, right_room)
}

/// The crossing at `t` on the line through `origin` along `dir`, with its window inside the room
/// `[t − left, t + right_room]`, or `None` when the prediction sits too close to the region's edge.
#[allow(clippy::too_many_arguments)]
fn window_at(
    origin: Vec<f64>,
    dir: Vec<f64>,
    t: f64,
    left: f64,
    right_room: f64,
    half: f64,
    window: f64,
    right: f64,
) -> Option<Placed> {
    // The prediction must sit inside the region, away from its edges (a NaN room fails too).
    let room = (t + left).min(right_room - t);
    if room.is_nan() || room <= 1e-6 * half {
        return None;
    }
    let w = (0.5 * room).min(window * half);
    Some(Placed {
        line: Line { origin, dir },
        t,
        lo: t - w,
        hi: t + right * w,
    })
}

/// Without known layers the planes are the estimates' own, in input space: one exact step each.
fn project_onto_input_planes(
    jobs: &[(&[f64], Vec<f64>)],
    half: f64,
    window: f64,
    right: f64,
) -> Vec<Option<Placed>> {
    jobs.iter()
        .map(|(theta, x)| {
            let dim = theta.len() - 1;
            let gn = norm(&theta[..dim]);
            let z = dot(&theta[..dim], x) + theta[dim];
            if !(gn > 0.0 && gn.is_finite() && z.is_finite()) {
                return None;
            }
            let dir: Vec<f64> = theta[..dim].iter().map(|v| v / gn).collect();
            let dist = z / gn;
            let origin: Vec<f64> = x.iter().zip(&dir).map(|(x, d)| x - dist * d).collect();
            window_at(
                origin,
                dir,
                0.0,
                f64::INFINITY,
                f64::INFINITY,
                half,
                window,
                right,
            )
        })
        .collect()
}

/// Attempts per wanted crossing: starts that do not land, or land too close to a known kink, are
/// replaced by fresh ones up to this many times (as the line-based placement tries up to 4 lines).
const ATTEMPTS: usize = 4;

/// Up to `per[k]` crossings for hyperplane `k` of `thetas`, placed by projection from random starts:
/// inputs `~ N(0, σ²)` in the first two attempts, then points `LOCAL_OFFSET·σ` around one of the
/// estimate's `anchors` (its own witnesses), where a rarely active neuron's plane is reachable. The
/// starts are drawn from `rng` in a fixed order, and the projection is deterministic, so the result
/// is reproducible. Returns per hyperplane its placed crossings (possibly fewer than asked).
#[allow(clippy::too_many_arguments)]
pub fn place_crossings(
    known: &KnownPrefix,
    thetas: &[&[f64]],
    anchors: &[&[Vec<f64>]],
    per: &[usize],
    rng: &mut rand_chacha::ChaCha20Rng,
    sigma: f64,
    half: f64,
    window: f64,
    right: f64,
) -> Vec<Vec<Placed>> {
    use rand::Rng;
    let d0 = known.input_dim;
    let mut out: Vec<Vec<Placed>> = vec![Vec::new(); thetas.len()];
    for attempt in 0..ATTEMPTS {
        let mut owner: Vec<usize> = Vec::new();
        let mut starts: Vec<Vec<f64>> = Vec::new();
        for (k, placed) in out.iter().enumerate() {
            let near = attempt >= 2 && !anchors[k].is_empty();
            let scale = if near {
                crate::layer::LOCAL_OFFSET * sigma
            } else {
                sigma
            };
            for _ in placed.len()..per[k] {
                let mut x: Vec<f64> = (0..d0)
                    .map(|_| scale * rng.sample::<f64, _>(rand_distr::StandardNormal))
                    .collect();
                if near {
                    let a = &anchors[k][rng.random_range(0..anchors[k].len())];
                    x.iter_mut().zip(a).for_each(|(v, a)| *v += a);
                }
                owner.push(k);
                starts.push(x);
            }
        }
        if starts.is_empty() {
            break;
        }
        let jobs: Vec<(&[f64], Vec<f64>)> = owner.iter().map(|&k| thetas[k]).zip(starts).collect();
        for (k, p) in owner
            .iter()
            .zip(project_crossings(known, &jobs, half, window, right))
        {
            if let Some(p) = p {
                out[*k].push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netxray_relu::{Arch, InitRecipe, Network};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::StandardNormal;

    /// Every placed crossing lies on its plane (to rounding), and its window holds no known kink, behind
    /// prefixes of every depth (none: the estimate's own plane in input space).
    #[test]
    fn projected_crossings_are_on_the_plane_in_one_region() {
        let net = Network::random(
            &"16-12-10-9-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            5,
        );
        for depth in 0..=2 {
            let known = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 16,
            };
            let l = &net.layers()[depth];
            let dim = l.fan_in();
            let thetas: Vec<Vec<f64>> = (0..l.fan_out())
                .map(|r| {
                    let mut t: Vec<f64> = (0..dim).map(|c| l.weight[(r, c)]).collect();
                    t.push(l.bias[r]);
                    t
                })
                .collect();
            let mut rng = ChaCha20Rng::seed_from_u64(3);
            let jobs: Vec<(&[f64], Vec<f64>)> = (0..200)
                .map(|k| {
                    let x = (0..16)
                        .map(|_| rng.sample::<f64, _>(StandardNormal))
                        .collect();
                    (thetas[k % thetas.len()].as_slice(), x)
                })
                .collect();
            let half = 40.0;
            let placed = project_crossings(&known, &jobs, half, 1e-3, 0.618);
            let ok = placed.iter().filter(|p| p.is_some()).count();
            assert!(ok >= 150, "depth {depth}: placed {ok} of 200");
            for ((theta, _), p) in jobs.iter().zip(&placed) {
                let Some(p) = p else { continue };
                let (_, h) = known.forward_rows(&[p.line.at(p.t)]).pop().unwrap();
                let z = dot(&theta[..dim], &h) + theta[dim];
                assert!(z.abs() < 1e-9, "depth {depth}: off the plane by {z:e}");
                assert!(p.lo < p.t && p.t < p.hi);
                assert!((norm(&p.line.dir) - 1.0).abs() < 1e-12);
                // The search line is the plane's normal: a step across it changes z, a step of the
                // same length orthogonal to it (almost) does not.
                let x = p.line.at(p.t);
                let z_at = |y: &[f64]| {
                    let (_, h) = known.forward_rows(&[y.to_vec()]).pop().unwrap();
                    dot(&theta[..dim], &h) + theta[dim]
                };
                let step = 1e-3 * (p.hi - p.t);
                let along = z_at(&p.line.at(p.t + step)) - z;
                let mut perp: Vec<f64> = (0..16)
                    .map(|_| rng.sample::<f64, _>(StandardNormal))
                    .collect();
                let c = dot(&perp, &p.line.dir);
                perp.iter_mut()
                    .zip(&p.line.dir)
                    .for_each(|(v, d)| *v -= c * d);
                let pn = norm(&perp);
                let across: Vec<f64> = x
                    .iter()
                    .zip(&perp)
                    .map(|(x, v)| x + step * v / pn)
                    .collect();
                let sideways = z_at(&across) - z;
                assert!(
                    sideways.abs() <= 1e-6 * along.abs(),
                    "depth {depth}: not the normal ({sideways:e} sideways, {along:e} along)"
                );
                let kinks = known.kinks_on_line(&p.line.origin, &p.line.dir, p.lo, p.hi);
                assert!(
                    kinks.is_empty(),
                    "depth {depth}: known kinks in the window: {kinks:?}"
                );
            }
        }
    }
}
