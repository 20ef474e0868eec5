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
pub fn project_crossings(
    known: &KnownPrefix,
    jobs: &[(&[f64], Vec<f64>)],
    half: f64,
    window: f64,
    right: f64,
) -> Vec<Option<Placed>> {
    use rayon::prelude::*;
    let blocks: Vec<&[(&[f64], Vec<f64>)]> = jobs.chunks(BLOCK).collect();
    blocks
        .into_par_iter()
        .flat_map_iter(|b| project_block(known, b, half, window, right))
        .collect()
}

/// Rows of `m` as vectors.
fn rows(m: &Mat<f64>) -> Vec<Vec<f64>> {
    (0..m.nrows())
        .map(|i| (0..m.ncols()).map(|j| m[(i, j)]).collect())
        .collect()
}

/// `a · b`, sequential (the blocks themselves run in parallel); `b` is often a weight's transpose.
fn mul(a: &Mat<f64>, b: faer::MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    faer::linalg::matmul::matmul(
        out.as_mut(),
        faer::Accum::Replace,
        a.as_ref(),
        b,
        1.0,
        faer::Par::Seq,
    );
    out
}

/// Pre-activations of every known layer for the rows of `x`.
fn forward(known: &KnownPrefix, x: &Mat<f64>) -> Vec<Mat<f64>> {
    let mut pres = Vec::with_capacity(known.layers.len());
    let mut h = x.clone();
    for l in &known.layers {
        let mut z = mul(&h, l.weight.transpose());
        for i in 0..z.nrows() {
            for j in 0..z.ncols() {
                z[(i, j)] += l.bias[j];
            }
        }
        h = Mat::from_fn(z.nrows(), z.ncols(), |i, j| z[(i, j)].max(0.0));
        pres.push(z);
    }
    pres
}

/// The prefix's output from its last pre-activations (the input itself without known layers).
fn output(x: &Mat<f64>, pres: &[Mat<f64>]) -> Mat<f64> {
    match pres.last() {
        Some(z) => Mat::from_fn(z.nrows(), z.ncols(), |i, j| z[(i, j)].max(0.0)),
        None => x.clone(),
    }
}

fn project_block(
    known: &KnownPrefix,
    jobs: &[(&[f64], Vec<f64>)],
    half: f64,
    window: f64,
    right: f64,
) -> Vec<Option<Placed>> {
    let d0 = known.input_dim;
    let dim = known.out_dim();
    let n = jobs.len();
    let mut x = Mat::<f64>::from_fn(n, d0, |i, j| jobs[i].1[j]);
    // Rows still moving, and the normal and remaining offset of those that landed.
    let mut landed: Vec<Option<(Vec<f64>, f64)>> = vec![None; n];
    let mut live: Vec<usize> = (0..n).collect();
    for _ in 0..=MAX_STEPS {
        if live.is_empty() {
            break;
        }
        let xl = Mat::<f64>::from_fn(live.len(), d0, |i, j| x[(live[i], j)]);
        let pres = forward(known, &xl);
        let h = output(&xl, &pres);
        // ∇ₓz = Jᵀw: w masked by the last layer's pattern, pulled back layer by layer.
        let mut v = Mat::<f64>::from_fn(live.len(), dim, |i, j| {
            let on = pres.last().is_none_or(|z| z[(i, j)] > 0.0);
            if on { jobs[live[i]].0[j] } else { 0.0 }
        });
        for (li, l) in known.layers.iter().enumerate().rev() {
            v = mul(&v, l.weight.as_ref());
            if li > 0 {
                let z = &pres[li - 1];
                for i in 0..v.nrows() {
                    for j in 0..v.ncols() {
                        if z[(i, j)] <= 0.0 {
                            v[(i, j)] = 0.0;
                        }
                    }
                }
            }
        }
        let mut still = Vec::new();
        for (r, &i) in live.iter().enumerate() {
            let theta = jobs[i].0;
            let hr: Vec<f64> = (0..dim).map(|j| h[(r, j)]).collect();
            let z = dot(&theta[..dim], &hr) + theta[dim];
            let g: Vec<f64> = (0..d0).map(|j| v[(r, j)]).collect();
            let gn = norm(&g);
            if !(gn > 0.0 && gn.is_finite() && z.is_finite()) {
                continue;
            }
            let dist = z / gn;
            if dist.abs() <= LANDED * half {
                landed[i] = Some((g.iter().map(|v| v / gn).collect(), -dist));
                continue;
            }
            for j in 0..d0 {
                x[(i, j)] -= dist * g[j] / gn;
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
    let xd = Mat::<f64>::from_fn(done.len(), d0, |i, j| x[(done[i], j)]);
    let dd = Mat::<f64>::from_fn(done.len(), d0, |i, j| {
        landed[done[i]].as_ref().expect("landed").0[j]
    });
    let pres = forward(known, &xd);
    // Directional derivatives of every known pre-activation along the normal (pattern fixed).
    let mut dz_all: Vec<Mat<f64>> = Vec::with_capacity(known.layers.len());
    let mut dh = dd;
    for (li, l) in known.layers.iter().enumerate() {
        let dz = mul(&dh, l.weight.transpose());
        let z = &pres[li];
        dh = Mat::from_fn(dz.nrows(), dz.ncols(), |i, j| {
            if z[(i, j)] > 0.0 { dz[(i, j)] } else { 0.0 }
        });
        dz_all.push(dz);
    }
    let xs = rows(&xd);
    for (r, &i) in done.iter().enumerate() {
        let (dir, t) = landed[i].take().expect("landed");
        // Room on each side of t = 0 before a known pre-activation changes sign.
        let (mut left, mut right_room) = (f64::INFINITY, f64::INFINITY);
        for (z, dz) in pres.iter().zip(&dz_all) {
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
        // The prediction must sit inside the region, away from its edges (a NaN room fails too).
        let room = (t + left).min(right_room - t);
        if room.is_nan() || room <= 1e-6 * half {
            continue;
        }
        let w = (0.5 * room).min(window * half);
        out[i] = Some(Placed {
            line: Line {
                origin: xs[r].clone(),
                dir,
            },
            t,
            lo: t - w,
            hi: t + right * w,
        });
    }
    out
}

/// Attempts per wanted crossing: starts that do not land, or land too close to a known kink, are
/// replaced by fresh ones up to this many times (as the line-based placement tries up to 4 lines).
const ATTEMPTS: usize = 4;

/// Up to `per` crossings for each hyperplane of `thetas`, placed by projection from random starts:
/// inputs `~ N(0, σ²)` in the first two attempts, then points `LOCAL_OFFSET·σ` around one of the
/// estimate's `anchors` (its own witnesses), where a rarely active neuron's plane is reachable. The
/// starts are drawn from `rng` in a fixed order, and the projection is deterministic, so the result
/// is reproducible. Returns per hyperplane its placed crossings (possibly fewer than `per`).
#[allow(clippy::too_many_arguments)]
pub fn place_crossings(
    known: &KnownPrefix,
    thetas: &[&[f64]],
    anchors: &[&[Vec<f64>]],
    per: usize,
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
            for _ in placed.len()..per {
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

    /// Every placed crossing lies on its plane (to rounding), and its window holds no known kink.
    #[test]
    fn projected_crossings_are_on_the_plane_in_one_region() {
        let net = Network::random(
            &"16-12-10-9-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            5,
        );
        let known = KnownPrefix {
            layers: net.layers()[..2].to_vec(),
            input_dim: 16,
        };
        let l = &net.layers()[2];
        let thetas: Vec<Vec<f64>> = (0..l.fan_out())
            .map(|r| {
                let mut t: Vec<f64> = (0..l.fan_in()).map(|c| l.weight[(r, c)]).collect();
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
        assert!(ok >= 150, "placed {ok} of 200");
        for ((theta, _), p) in jobs.iter().zip(&placed) {
            let Some(p) = p else { continue };
            let (_, h) = known.forward_rows(&[p.line.at(p.t)]).pop().unwrap();
            let z = dot(&theta[..10], &h) + theta[10];
            assert!(z.abs() < 1e-9, "off the plane by {z:e}");
            assert!(p.lo < p.t && p.t < p.hi);
            assert!((norm(&p.line.dir) - 1.0).abs() < 1e-12);
            let kinks = known.kinks_on_line(&p.line.origin, &p.line.dir, p.lo, p.hi);
            assert!(kinks.is_empty(), "known kinks in the window: {kinks:?}");
        }
    }
}
