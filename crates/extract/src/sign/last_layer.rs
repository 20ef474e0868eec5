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
    rng: &mut ChaCha20Rng,
) -> Result<Option<SignOutcome>, ExtractError> {
    let w = layer.fan_out();
    let d0 = known.input_dim;
    let nfeat = 2 * w + 1;
    let n = (4 * nfeat).max(256);
    let q0 = oracle.queries();
    let xs: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..d0).map(|_| sigma * rng.sample::<f64, _>(StandardNormal)).collect())
        .collect();
    let ys = oracle.query_points(&xs)?;
    let hs = known.forward_rows(&xs);
    let mut f = Mat::<f64>::zeros(n, nfeat);
    for (i, (_, h)) in hs.iter().enumerate() {
        for k in 0..w {
            let z: f64 = (0..layer.fan_in()).map(|c| layer.weight[(k, c)] * h[c]).sum::<f64>() + layer.bias[k];
            f[(i, k)] = z.max(0.0);
            f[(i, w + k)] = z;
        }
        f[(i, 2 * w)] = 1.0;
    }
    // Identifiability: the feature matrix must have full column rank.
    let (_, smin_rel, _) = null_vector(&f).ok_or_else(|| ExtractError::LayerFailed {
        layer: known.layers.len() + 1,
        reason: "degenerate last-layer sign features".into(),
    })?;
    if smin_rel < 1e-9 {
        return Ok(None);
    }
    let dout = oracle.output_dim();
    let y = Mat::<f64>::from_fn(n, dout, |i, j| ys[i][j]);
    let c = lstsq(&f, &y);
    let mut signs = vec![1.0; w];
    let mut conf = vec![0.0; w];
    for k in 0..w {
        let alpha: Vec<f64> = (0..dout).map(|j| c[(k, j)]).collect();
        let beta: Vec<f64> = (0..dout).map(|j| c[(w + k, j)]).collect();
        let an = norm(&alpha);
        if an == 0.0 {
            continue;
        }
        let e_plus = norm(&beta) / an;
        let e_minus = norm(&beta.iter().zip(&alpha).map(|(b, a)| b + a).collect::<Vec<_>>()) / an;
        signs[k] = if e_plus <= e_minus { 1.0 } else { -1.0 };
        // 1 when one hypothesis fits exactly and the other is off by the full coefficient.
        let (lo, hi) = if e_plus <= e_minus { (e_plus, e_minus) } else { (e_minus, e_plus) };
        conf[k] = if hi > 0.0 { (1.0 - lo / hi).clamp(0.0, 1.0) } else { 0.0 };
    }
    Ok(Some(SignOutcome {
        method: "last-layer-lstsq",
        signs,
        confidence: conf,
        queries: oracle.queries() - q0,
    }))
}
