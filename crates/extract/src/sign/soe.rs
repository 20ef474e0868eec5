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

/// Runs the method; `None` when the layer is wider than the control space at every probe.
pub fn recover<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    points: usize,
    min_votes: usize,
    sigma: f64,
    rel_tol: f64,
    abs_floor: f64,
    noise_rel: f64,
    rng: &mut ChaCha20Rng,
) -> Result<Option<SignOutcome>, ExtractError> {
    let w = layer.fan_out();
    let d0 = known.input_dim;
    let q0 = oracle.queries();
    let mut plus = vec![0usize; w];
    let mut minus = vec![0usize; w];
    let mut usable = 0;
    let with_layer = known.extended(layer);
    for attempt in 0..points.max(1) * 4 {
        if usable >= points && (0..w).all(|k| plus[k] + minus[k] >= min_votes) {
            break;
        }
        // Random points first; when they lack control rank, points where more earlier units fire.
        let x0: Vec<f64> = (0..d0)
            .map(|_| sigma * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let Some((x, dirs, scale, z)) = full_rank_probe(&with_layer, x0, attempt >= points) else {
            tracing::trace!(attempt, "soe: no full-rank probe");
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
            // Non-zero beyond the answers' noise (`noise_rel·|f|` per answer, so ~noise_rel·|f|/eps on
            // a difference quotient).
            if r * eps / scale[k] > noise_rel * sc && r > 1e-9_f64.max(10.0 * noise_rel) * big {
                if z[k] > 0.0 {
                    plus[k] += 1;
                } else {
                    minus[k] += 1;
                }
            }
        }
    }
    if usable == 0 {
        return Ok(None);
    }
    let mut signs = vec![1.0; w];
    let mut conf = vec![0.0; w];
    for k in 0..w {
        let tot = plus[k] + minus[k];
        if tot == 0 {
            continue;
        }
        signs[k] = if plus[k] >= minus[k] { 1.0 } else { -1.0 };
        let agree = plus[k].max(minus[k]) as f64 / tot as f64;
        // Few votes cap confidence: one vote is weaker evidence than five.
        conf[k] = agree * (1.0 - 0.5_f64.powi(tot as i32));
    }
    Ok(Some(SignOutcome {
        method: "soe-exact",
        signs,
        confidence: conf,
        queries: oracle.queries() - q0,
    }))
}

/// A probe: point, unit directions, their scales, pre-activations.
type Probe = (Vec<f64>, Mat<f64>, Vec<f64>, Vec<f64>);

/// Probe point where the recovered layer has full control rank: `Z = Ŵ J` (input-space gradients of the
/// layer's pre-activations) of full row rank. Returns the point, unit directions `v_k ∝ Z⁺ e_k`, their
/// norms `|Z⁺ e_k|`, and the pre-activations. With `climb`, first moves the point (offline) so that
/// inactive earlier units turn on, since control rank is the number of active units.
fn full_rank_probe(with_layer: &KnownPrefix, mut x: Vec<f64>, climb: bool) -> Option<Probe> {
    let d0 = with_layer.input_dim;
    let nl = with_layer.layers.len();
    for _ in 0..if climb { 24 } else { 1 } {
        let st = with_layer.local_full(&x);
        let zgrad = st.dpre.last().expect("layer");
        if let Some((pinv, cond)) = right_pinv(zgrad)
            && cond > 1e-8
        {
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
            return Some((x, dirs, scale, st.pre.last().expect("layer").clone()));
        }
        if !climb {
            return None;
        }
        // Gauss-Newton step pushing every inactive unit of the earlier layers to a small positive value.
        let mut rows: Vec<Vec<f64>> = Vec::new();
        let mut rhs: Vec<f64> = Vec::new();
        for l in 0..nl - 1 {
            for u in 0..st.pre[l].len() {
                let g: Vec<f64> = (0..d0).map(|c| st.dpre[l][(u, c)]).collect();
                let gn = norm(&g);
                if st.pre[l][u] <= 0.0 && gn > 0.0 {
                    rows.push(g);
                    rhs.push(0.1 * gn - st.pre[l][u]);
                }
            }
        }
        if rows.is_empty() {
            return None;
        }
        let a = Mat::<f64>::from_fn(rows.len(), d0, |i, j| rows[i][j]);
        let dx = if rows.len() <= d0 {
            let (p, _) = right_pinv(&a)?;
            (0..d0)
                .map(|i| (0..rows.len()).map(|j| p[(i, j)] * rhs[j]).sum::<f64>())
                .collect::<Vec<f64>>()
        } else {
            let b = Mat::<f64>::from_fn(rows.len(), 1, |i, _| rhs[i]);
            let sol = crate::linalg::lstsq(&a, &b);
            (0..d0).map(|i| sol[(i, 0)]).collect()
        };
        x.iter_mut().zip(&dx).for_each(|(xi, d)| *xi += d);
    }
    None
}
