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
    rng: &mut ChaCha20Rng,
) -> Result<Option<SignOutcome>, ExtractError> {
    let w = layer.fan_out();
    let d0 = known.input_dim;
    let q0 = oracle.queries();
    let mut plus = vec![0usize; w];
    let mut minus = vec![0usize; w];
    let mut usable = 0;
    let with_layer = KnownPrefix {
        layers: known.layers.iter().cloned().chain(std::iter::once(layer.clone())).collect(),
        input_dim: d0,
    };
    let eye = Mat::<f64>::identity(d0, d0);
    for _ in 0..points.max(1) * 4 {
        if usable >= points && (0..w).all(|k| plus[k] + minus[k] >= min_votes) {
            break;
        }
        let x: Vec<f64> = (0..d0).map(|_| sigma * rng.sample::<f64, _>(StandardNormal)).collect();
        let st = with_layer.local(&x, &eye);
        let z = st.pre.last().expect("layer").clone();
        let zgrad = st.dpre.last().expect("layer"); // w × d0
        let Some((pinv, cond)) = right_pinv(zgrad) else { continue };
        if cond < 1e-8 {
            continue;
        }
        let mut dirs = Mat::<f64>::zeros(d0, w);
        let mut scale = vec![0.0; w];
        for k in 0..w {
            let nk = (0..d0).map(|i| pinv[(i, k)].powi(2)).sum::<f64>().sqrt();
            scale[k] = nk;
            for i in 0..d0 {
                dirs[(i, k)] = pinv[(i, k)] / nk;
            }
        }
        // Stay inside the region of every known neuron and of this layer's neurons.
        let eps = 0.5 * with_layer.margin(&x, &dirs);
        if !(eps.is_finite() && eps > 0.0) {
            continue;
        }
        let eps = eps.min(sigma);
        let mut pts = vec![x.clone()];
        for k in 0..w {
            let d: Vec<f64> = (0..d0).map(|i| dirs[(i, k)] * eps).collect();
            pts.push(x.iter().zip(&d).map(|(a, b)| a + b).collect());
            pts.push(x.iter().zip(&d).map(|(a, b)| a - b).collect());
        }
        let ys = oracle.query_points(&pts)?;
        let f0 = &ys[0];
        let mut resp = vec![0.0; w];
        let mut ok = true;
        for k in 0..w {
            let (yp, ym) = (&ys[1 + 2 * k], &ys[2 + 2 * k]);
            let sc = f0.iter().chain(yp).chain(ym).fold(0.0_f64, |m, v| m.max(v.abs()));
            let dev = (0..f0.len()).fold(0.0_f64, |m, i| m.max((yp[i] + ym[i] - 2.0 * f0[i]).abs()));
            if dev > rel_tol * sc.max(f64::MIN_POSITIVE) {
                ok = false;
                break;
            }
            // Response per unit of ẑ_k.
            let d: Vec<f64> = (0..f0.len()).map(|i| (yp[i] - ym[i]) / (2.0 * eps) * scale[k]).collect();
            resp[k] = norm(&d);
        }
        if !ok {
            continue;
        }
        usable += 1;
        let big = resp.iter().cloned().fold(0.0, f64::max);
        if big == 0.0 {
            continue;
        }
        let sc = f0.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(big * eps);
        for k in 0..w {
            // Non-zero beyond rounding: rounding of a difference quotient is ~1e-16·|f|/eps.
            if resp[k] * eps / scale[k] > 1e3 * f64::EPSILON * sc && resp[k] > 1e-9 * big {
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
