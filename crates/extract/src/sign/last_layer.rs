//! Last-hidden-layer signs by least squares (after Canales-Martínez et al., EUROCRYPT 2024, §"last
//! layer"): below the last hidden layer the network is affine, so with the right signs
//! `f = Σ_k α_k ReLU(ẑ_k) + c`; a flipped neuron contributes `ReLU(−ẑ) = ReLU(ẑ) − ẑ`, i.e. a non-zero
//! coefficient on `ẑ_k`. Fitting on `[ReLU(ẑ), ẑ, 1]` reads each sign off (`β ≈ 0` → +, `β ≈ −α` → −).
//! Identifiable when the `ẑ_k` are affinely independent functions (width ≤ inputs + 1).

use super::SignOutcome;
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::linalg::{lstsq, norm, null_vector};
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use netxray_relu::Layer;
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

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
    let xs: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let s = sigma * scales[i % scales.len()];
            (0..d0)
                .map(|_| s * rng.sample::<f64, _>(StandardNormal))
                .collect()
        })
        .collect();
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
