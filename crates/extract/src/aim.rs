//! Inputs where the output is not yet explained by the last hidden layer's neurons found so far.
//!
//! Random lines meet a neuron's boundary about as often as the neuron switches on the data; a neuron
//! of the last hidden layer that is active (or inactive) on under ~1 % of inputs can go unmet for
//! hundreds of lines (on a trained 784-128-128-128-10, three of 128 were never completed and the output
//! layer then failed verification). The output itself says where it is: once the found neurons are
//! known up to sign, `f(x)` is fitted on `{relu(θ·h + b)}` of every found neuron, the known prefix's
//! output `h` and a constant. That span contains `relu(±(θ·h + b))` for either sign (`relu(−n) =
//! relu(n) − n`, and `n` is affine in `h`), so the fit is exact once every neuron is found, and where it
//! fails some missing neuron is switched differently from its linear extension. Lines through those
//! inputs cross that neuron's boundary near the input.

use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::layer::random_inputs;
use crate::linalg::lstsq;
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use rand_chacha::ChaCha20Rng;

/// Relative residual (of max |f| on the pool) below which an input counts as explained. Exact
/// targets fit to ~1e-9 once every neuron is found (the estimates' own error); a missing neuron leaves
/// residuals of order 1e-3–1e-1. 1e-6 sits between with margin on both sides.
pub const AIM_RESIDUAL_MIN: f64 = 1e-6;

/// Lines aimed through one input at most. A missing neuron may show on only a handful of the pool's
/// inputs, and one line through such an input meets its boundary about once: enough lines must pass
/// for two independent, complete witnesses.
pub const MAX_LINES_PER_POINT: u8 = 8;

/// Random inputs queried once, with the known prefix's output at each; see the module doc.
#[derive(Debug)]
pub struct ResidualPool {
    xs: Vec<Vec<f64>>,
    /// Known prefix output per input (`n × dim`).
    hs: Mat<f64>,
    /// Oracle outputs (`n × outputs`).
    ys: Mat<f64>,
    /// Lines already aimed through each input.
    used: Vec<u8>,
    /// Max |f| over the pool (scale of the residuals).
    scale: f64,
}

impl ResidualPool {
    /// Draws `n` inputs `~ N(0, σ²)` from `rng` and queries them.
    pub fn new<O: Oracle + ?Sized>(
        oracle: &CountingOracle<'_, O>,
        known: &KnownPrefix,
        n: usize,
        sigma: f64,
        rng: &mut ChaCha20Rng,
    ) -> Result<Self, ExtractError> {
        let d0 = known.input_dim;
        let xs = random_inputs(rng, n, d0, sigma, &[1.0]);
        let answers = oracle.query_points(&xs)?;
        let dim = known.out_dim();
        let h = known.forward_rows(&xs);
        let hs = Mat::<f64>::from_fn(n, dim, |i, k| h[i].1[k]);
        let outs = oracle.output_dim();
        let ys = Mat::<f64>::from_fn(n, outs, |i, o| answers[i][o]);
        let scale = answers
            .iter()
            .flatten()
            .fold(0.0_f64, |m, v| m.max(v.abs()));
        Ok(Self {
            xs,
            hs,
            ys,
            used: vec![0; n],
            scale,
        })
    }

    /// Up to `k` unused inputs that the `found` neurons (each `θ` with its bias last, any sign)
    /// explain worst, worst first, each with its relative residual; only inputs above
    /// [`AIM_RESIDUAL_MIN`] with fewer than [`MAX_LINES_PER_POINT`] lines through them so far.
    /// Counts them used. Offline.
    pub fn worst(&mut self, found: &[&[f64]], k: usize) -> Vec<(Vec<f64>, f64)> {
        let (n, dim) = (self.hs.nrows(), self.hs.ncols());
        if k == 0 || self.scale <= 0.0 {
            return Vec::new();
        }
        // Dead units of the known prefix give zero columns; lstsq truncates them.
        let cols = found.len() + dim + 1;
        let a = Mat::<f64>::from_fn(n, cols, |i, j| {
            if j < found.len() {
                let th = found[j];
                let z: f64 = (0..dim).map(|c| th[c] * self.hs[(i, c)]).sum::<f64>() + th[dim];
                z.max(0.0)
            } else if j < found.len() + dim {
                self.hs[(i, j - found.len())]
            } else {
                1.0
            }
        });
        let coef = lstsq(&a, &self.ys);
        let fitted = &a * &coef;
        let residuals: Vec<f64> = (0..n)
            .map(|i| {
                let r = (0..self.ys.ncols())
                    .map(|o| (fitted[(i, o)] - self.ys[(i, o)]).abs())
                    .fold(0.0, f64::max);
                r / self.scale
            })
            .collect();
        let mut ranked: Vec<(usize, f64)> = residuals
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, r)| r > AIM_RESIDUAL_MIN)
            .collect();
        tracing::debug!(
            found = found.len(),
            unexplained = ranked.len(),
            worst = residuals.iter().copied().fold(0.0, f64::max),
            "residual pool"
        );
        ranked.retain(|&(i, _)| self.used[i] < MAX_LINES_PER_POINT);
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        ranked
            .into_iter()
            .map(|(i, r)| {
                self.used[i] += 1;
                (self.xs[i].clone(), r)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::NetworkOracle;
    use netxray_relu::{Layer, Network};
    use rand::SeedableRng;

    /// One hidden layer of two neurons on 2 inputs; the second neuron is active only far out on one
    /// side (`x0 > 2.5`), i.e. on under 1 % of standard normal inputs.
    fn net() -> Network {
        let hidden = Layer {
            weight: Mat::from_fn(2, 2, |r, c| [[1.0, 0.5], [1.0, 0.0]][r][c]),
            bias: vec![0.2, -2.5],
        };
        let out = Layer {
            weight: Mat::from_fn(1, 2, |_, c| [1.0, -3.0][c]),
            bias: vec![0.1],
        };
        Network::new(vec![hidden, out]).expect("valid net")
    }

    #[test]
    fn points_left_unexplained_are_where_the_missing_neuron_is_active() {
        let target = NetworkOracle::new(net());
        let oracle = CountingOracle::new(&target, None);
        let known = KnownPrefix::new(2);
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut pool = ResidualPool::new(&oracle, &known, 2000, 1.0, &mut rng).expect("pool");
        assert_eq!(oracle.queries(), 2000);
        // Found so far: the first neuron only, known up to sign (stored negated here).
        let first = [-1.0, -0.5, -0.2];
        let worst = pool.worst(&[&first], 5);
        assert!(!worst.is_empty());
        for (x, r) in &worst {
            assert!(*r > 1e-3, "residual {r}");
            assert!(x[0] > 2.5, "missing neuron inactive at {x:?}");
        }
        // A point is offered at most MAX_LINES_PER_POINT times.
        let x0 = worst[0].0.clone();
        let offered = (0..2 * MAX_LINES_PER_POINT)
            .filter(|_| pool.worst(&[&first], 1).iter().any(|(x, _)| *x == x0))
            .count();
        assert_eq!(offered, MAX_LINES_PER_POINT as usize - 1);
        // With both neurons found nothing is left to explain.
        let second = [1.0, 0.0, -2.5];
        assert!(pool.worst(&[&first, &second], 5).is_empty());
    }
}
