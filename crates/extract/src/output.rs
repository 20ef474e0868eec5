//! The final affine layer by least squares on the recovered hidden representation.

use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::layer::random_inputs;
use crate::linalg::lstsq;
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use netxray_relu::Layer;
use rand_chacha::ChaCha20Rng;

/// Fits `f(x) = V h(x) + c` on fresh random queries. Returns the layer and the max abs residual
/// relative to max |f| on the fitting set.
pub fn fit_output<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    sigma: f64,
    rng: &mut ChaCha20Rng,
) -> Result<(Layer, f64), ExtractError> {
    let d0 = known.input_dim;
    let dh = known.out_dim();
    let n = (4 * (dh + 1)).max(512);
    let xs = random_inputs(rng, n, d0, sigma, &[1.0]);
    let ys = oracle.query_points(&xs)?;
    let hs = known.forward_rows(&xs);
    // Units that never fire on the fitting set (dead ones) get zero outgoing weights: their column is
    // zero and would make the system singular.
    let live: Vec<usize> = (0..dh)
        .filter(|&j| hs.iter().any(|(_, h)| h[j] != 0.0))
        .collect();
    let a = Mat::<f64>::from_fn(n, live.len() + 1, |i, j| {
        if j < live.len() {
            hs[i].1[live[j]]
        } else {
            1.0
        }
    });
    let dout = oracle.output_dim();
    let y = Mat::<f64>::from_fn(n, dout, |i, j| ys[i][j]);
    let cl = lstsq(&a, &y);
    let fitted = &a * &cl;
    let mut c = Mat::<f64>::zeros(dh + 1, dout);
    for (j, &k) in live.iter().enumerate() {
        for o in 0..dout {
            c[(k, o)] = cl[(j, o)];
        }
    }
    for o in 0..dout {
        c[(dh, o)] = cl[(live.len(), o)];
    }
    let mut resid: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for i in 0..n {
        for j in 0..dout {
            resid = resid.max((fitted[(i, j)] - y[(i, j)]).abs());
            scale = scale.max(y[(i, j)].abs());
        }
    }
    let weight = Mat::<f64>::from_fn(dout, dh, |o, k| c[(k, o)]);
    let bias = (0..dout).map(|o| c[(dh, o)]).collect();
    Ok((Layer { weight, bias }, resid / scale.max(f64::MIN_POSITIVE)))
}
