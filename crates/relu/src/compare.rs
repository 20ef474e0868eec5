//! Alignment of two networks up to the ReLU symmetries (permutation of hidden neurons, positive
//! rescaling of a neuron's incoming row with the inverse on its outgoing column) and the error report.
//!
//! Layer by layer: the candidate's input columns are first permuted and rescaled as decided for the
//! previous layer; then every neuron's `[w; b]` is normalised on both sides and matched greedily by
//! cosine (best pairs first); the candidate neuron is rescaled to the truth's norm. Neurons that are dead
//! in the truth (zero row) are matched last and excluded from the parameter error.

use crate::{Layer, Network, ReluError};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

/// Options of [`compare`].
#[derive(Debug, Clone, Copy)]
pub struct CompareOptions {
    /// Sampled inputs for the functional error (half standard normal, half on the sphere of radius 2√d).
    pub samples: usize,
    /// Seed of the samples.
    pub seed: u64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            samples: 100_000,
            seed: 0,
        }
    }
}

/// The result of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Report schema version.
    pub schema: u32,
    /// Architecture.
    pub arch: String,
    /// max |Δθ| over aligned parameters.
    pub max_param_error: f64,
    /// −log2 of it.
    pub param_bits: f64,
    /// Tensor holding the largest error.
    pub worst_tensor: String,
    /// max |f − f̂| on the samples.
    pub max_output_error: f64,
    /// −log2 of it.
    pub output_bits: f64,
    /// max |f − f̂| / max |f|.
    pub max_output_error_rel: f64,
    /// Fraction of samples with the same argmax (sign for one output).
    pub label_agreement: f64,
    /// (layer, neuron) of truth neurons excluded as dead.
    pub dead: Vec<(usize, usize)>,
    /// Samples used.
    pub samples: usize,
}

fn bits(e: f64) -> f64 {
    if e > 0.0 { -e.log2() } else { f64::INFINITY }
}

/// Aligns `candidate` to `truth` and reports parameter and output errors.
pub fn compare(
    truth: &Network,
    candidate: &Network,
    opts: &CompareOptions,
) -> Result<CompareReport, ReluError> {
    if truth.arch() != candidate.arch() {
        return Err(ReluError::Dimension(format!(
            "architectures differ: truth {} vs candidate {}",
            truth.arch(),
            candidate.arch()
        )));
    }
    let n_layers = truth.layers().len();
    let mut cand: Vec<Layer> = candidate.layers().to_vec();
    let mut dead = Vec::new();
    for li in 0..n_layers - 1 {
        let (t, c) = (&truth.layers()[li], &cand[li]);
        let rows = t.fan_out();
        let row = |l: &Layer, r: usize| -> Vec<f64> {
            (0..l.fan_in())
                .map(|k| l.weight[(r, k)])
                .chain([l.bias[r]])
                .collect::<Vec<f64>>()
        };
        let nrm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let tr: Vec<Vec<f64>> = (0..rows).map(|r| row(t, r)).collect();
        let cr: Vec<Vec<f64>> = (0..rows).map(|r| row(c, r)).collect();
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (i, a) in tr.iter().enumerate() {
            for (j, b) in cr.iter().enumerate() {
                let (na, nb) = (nrm(a), nrm(b));
                let cos = if na > 0.0 && nb > 0.0 {
                    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (na * nb)
                } else {
                    -2.0
                };
                pairs.push((cos, i, j));
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
        let mut perm = vec![usize::MAX; rows]; // truth i <- candidate perm[i]
        let mut used = vec![false; rows];
        for (_, i, j) in pairs {
            if perm[i] == usize::MAX && !used[j] {
                perm[i] = j;
                used[j] = true;
            }
        }
        let mut scale = vec![1.0; rows];
        for i in 0..rows {
            let (na, nb) = (nrm(&tr[i]), nrm(&cr[perm[i]]));
            if na == 0.0 {
                dead.push((li, i));
            }
            if na > 0.0 && nb > 0.0 {
                scale[i] = na / nb;
            }
        }
        let new_l = Layer {
            weight: Mat::from_fn(rows, c.fan_in(), |i, k| c.weight[(perm[i], k)] * scale[i]),
            bias: (0..rows).map(|i| c.bias[perm[i]] * scale[i]).collect(),
        };
        let next = &cand[li + 1];
        let new_next = Layer {
            weight: Mat::from_fn(next.fan_out(), rows, |o, i| {
                next.weight[(o, perm[i])] / scale[i]
            }),
            bias: next.bias.clone(),
        };
        cand[li] = new_l;
        cand[li + 1] = new_next;
    }
    // Parameter error (dead truth neurons excluded: their incoming row and outgoing column).
    let mut worst = (0.0_f64, String::from("none"));
    for (li, (t, c)) in truth.layers().iter().zip(&cand).enumerate() {
        let is_dead = |l: usize, r: usize| dead.contains(&(l, r));
        for r in 0..t.fan_out() {
            if li + 1 < n_layers && is_dead(li, r) {
                continue;
            }
            for k in 0..t.fan_in() {
                if li > 0 && is_dead(li - 1, k) {
                    continue;
                }
                let e = (t.weight[(r, k)] - c.weight[(r, k)]).abs();
                if e > worst.0 || e.is_nan() {
                    worst = (e, format!("layers.{li}.weight[{r}, {k}]"));
                }
            }
            let e = (t.bias[r] - c.bias[r]).abs();
            if e > worst.0 || e.is_nan() {
                worst = (e, format!("layers.{li}.bias[{r}]"));
            }
        }
    }
    let aligned = Network::new(cand)?;
    let d = truth.input_dim();
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    let (mut err, mut scale, mut agree) = (0.0_f64, 0.0_f64, 0usize);
    let mut done = 0;
    while done < opts.samples {
        let n = (opts.samples - done).min(4096);
        let mut x = Mat::<f64>::from_fn(n, d, |_, _| rng.sample::<f64, _>(StandardNormal));
        for i in 0..n {
            if (done + i) % 2 == 1 {
                let norm = (0..d).map(|k| x[(i, k)].powi(2)).sum::<f64>().sqrt();
                let r = 2.0 * (d as f64).sqrt();
                for k in 0..d {
                    x[(i, k)] *= r / norm;
                }
            }
        }
        let (ft, fc) = (truth.forward(x.as_ref())?, aligned.forward(x.as_ref())?);
        for i in 0..n {
            let mut at = (0, f64::NEG_INFINITY);
            let mut ac = (0, f64::NEG_INFINITY);
            for j in 0..ft.ncols() {
                err = err.max((ft[(i, j)] - fc[(i, j)]).abs());
                scale = scale.max(ft[(i, j)].abs());
                if ft[(i, j)] > at.1 {
                    at = (j, ft[(i, j)]);
                }
                if fc[(i, j)] > ac.1 {
                    ac = (j, fc[(i, j)]);
                }
            }
            let same = if ft.ncols() == 1 {
                (ft[(i, 0)] > 0.0) == (fc[(i, 0)] > 0.0)
            } else {
                at.0 == ac.0
            };
            agree += same as usize;
        }
        done += n;
    }
    Ok(CompareReport {
        schema: 1,
        arch: truth.arch().to_string(),
        max_param_error: worst.0,
        param_bits: bits(worst.0),
        worst_tensor: worst.1,
        max_output_error: err,
        output_bits: bits(err),
        max_output_error_rel: if scale > 0.0 { err / scale } else { err },
        label_agreement: agree as f64 / opts.samples.max(1) as f64,
        dead,
        samples: opts.samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, InitRecipe};

    fn permuted_rescaled(net: &Network) -> Network {
        let mut layers = net.layers().to_vec();
        for li in 0..layers.len() - 1 {
            let rows = layers[li].fan_out();
            let perm: Vec<usize> = (0..rows).map(|i| (i * 7 + 3) % rows).collect();
            let s: Vec<f64> = (0..rows).map(|i| 0.5 + i as f64 * 0.37).collect();
            let l = &layers[li];
            let nl = Layer {
                weight: Mat::from_fn(rows, l.fan_in(), |i, k| l.weight[(perm[i], k)] * s[i]),
                bias: (0..rows).map(|i| l.bias[perm[i]] * s[i]).collect(),
            };
            let nx = &layers[li + 1];
            let nn = Layer {
                weight: Mat::from_fn(nx.fan_out(), rows, |o, i| nx.weight[(o, perm[i])] / s[i]),
                bias: nx.bias.clone(),
            };
            layers[li] = nl;
            layers[li + 1] = nn;
        }
        Network::new(layers).unwrap()
    }

    #[test]
    fn symmetric_copy_is_equal_and_a_nudge_is_named() {
        let net = Network::random(&"12-10-9-3".parse::<Arch>().unwrap(), InitRecipe::He, 5);
        let opts = CompareOptions {
            samples: 2000,
            seed: 1,
        };
        let r = compare(&net, &permuted_rescaled(&net), &opts).unwrap();
        assert!(r.param_bits >= 50.0, "{r:?}");
        let mut layers = net.layers().to_vec();
        layers[1].weight[(2, 3)] += 1e-6;
        let r = compare(&net, &Network::new(layers).unwrap(), &opts).unwrap();
        // Rescaling to the truth row norm absorbs part of the nudge: "about 1e-6" (≈ 20 bits).
        assert!((5e-7..2e-6).contains(&r.max_param_error), "{r:?}");
        assert!(
            r.worst_tensor.starts_with("layers.1.weight"),
            "{}",
            r.worst_tensor
        );
        let other = Network::random(&"12-10-8-3".parse::<Arch>().unwrap(), InitRecipe::He, 5);
        assert!(compare(&net, &other, &opts).is_err());
    }
}
