//! Alignment of two networks up to the ReLU symmetries (permutation of hidden neurons, positive
//! rescaling of a neuron's incoming row with the inverse on its outgoing column) and the error report.
//!
//! Layer by layer, after the previous layer's permutation and scales have been applied to the candidate's
//! input columns, every neuron's incoming row `[w; b]` is normalised to unit norm on both sides and the
//! neurons are matched by a minimum-cost assignment (Hungarian algorithm) on `1 − cos`, i.e. half the
//! squared distance between the normalised rows. Each candidate neuron is then rescaled to the norm of
//! its truth neuron, the inverse scale going into the next layer's columns.
//!
//! Dead neurons do not disturb the matching: a truth neuron whose incoming row is zero, whose outgoing
//! column is zero, or that is never active on the sampled inputs, and a candidate neuron whose incoming
//! row is zero, are matched only after all live neurons, and the pairs they end up in are excluded from
//! the parameter error (their row, bias and outgoing column) and listed in the report.

use crate::{Layer, Network, ReluError};
use faer::{Accum, Mat, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

/// Version of the [`CompareReport`] JSON layout.
pub const REPORT_SCHEMA: u32 = 1;

/// Bits reported for an error of exactly zero: `−log2` of the smallest positive `f64`, so that reports stay
/// plain JSON numbers (JSON has no infinity).
pub const ZERO_ERROR_BITS: f64 = 1074.0;

/// Rows per forward batch when sampling the functional error.
const BATCH: usize = 4096;

/// Options of [`compare`].
#[derive(Debug, Clone, Copy)]
pub struct CompareOptions {
    /// Sampled inputs for the functional error (half standard normal, half on the sphere of radius 2√d).
    /// Must be at least 1.
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

/// Why a hidden neuron was excluded from the parameter error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The truth neuron's incoming weights and bias are all zero.
    TruthZeroIncoming,
    /// The truth neuron's outgoing weights are all zero (it cannot influence the output).
    TruthZeroOutgoing,
    /// The truth neuron was never active on the sampled inputs.
    TruthNeverActive,
    /// The matched candidate neuron's incoming weights and bias are all zero.
    CandidateZeroIncoming,
}

/// A hidden neuron excluded from the parameter error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadNeuron {
    /// Hidden layer (0 = first hidden layer, i.e. the rows of `layers.0.weight`).
    pub layer: usize,
    /// Index of the truth neuron.
    pub neuron: usize,
    /// Index of the candidate neuron it was matched with.
    pub candidate: usize,
    /// Why it was excluded.
    pub reason: DeadReason,
}

/// The largest aligned parameter error of one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorError {
    /// `layers.{i}.weight` or `layers.{i}.bias`.
    pub tensor: String,
    /// max |Δθ| over its compared entries (0 if none was compared).
    pub max_abs_error: f64,
    /// `−log2(max_abs_error)`.
    pub bits: f64,
    /// Index of the largest error (`[out, in]` for weights, `[out]` for biases); empty if none compared.
    pub index: Vec<usize>,
    /// Entries compared (entries of dead neurons are left out).
    pub compared: usize,
}

/// The result of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// Report schema version ([`REPORT_SCHEMA`]).
    pub schema: u32,
    /// Architecture.
    pub arch: String,
    /// max |Δθ| over aligned parameters (dead neurons excluded).
    pub max_param_error: f64,
    /// `−log2(max_param_error)` ([`ZERO_ERROR_BITS`] when it is 0).
    pub param_bits: f64,
    /// Tensor holding the largest error (`layers.{i}.weight|bias`).
    pub worst_tensor: String,
    /// Index of the largest error in that tensor.
    pub worst_index: Vec<usize>,
    /// Per-tensor maximum errors, in layer order (weight, then bias).
    pub tensors: Vec<TensorError>,
    /// max |f − f̂| over the samples and outputs.
    pub max_output_error: f64,
    /// `−log2(max_output_error)`.
    pub output_bits: f64,
    /// `max |f − f̂| / max |f|` (max over samples and outputs, both).
    pub max_output_error_rel: f64,
    /// `−log2(max_output_error_rel)`.
    pub output_rel_bits: f64,
    /// max |f| over the samples (the scale of the relative error).
    pub max_abs_output: f64,
    /// Fraction of samples with the same top-1 label (argmax; sign of the output for one output).
    pub label_agreement: f64,
    /// `"argmax"` or `"sign"`: how [`label_agreement`](Self::label_agreement) was measured.
    pub agreement_kind: String,
    /// Hidden neurons excluded from the parameter error.
    pub dead: Vec<DeadNeuron>,
    /// For each hidden layer, `permutation[l][i]` is the candidate neuron matched to truth neuron `i`.
    pub permutation: Vec<Vec<usize>>,
    /// Samples used for the output error.
    pub samples: usize,
    /// Seed of the samples.
    pub seed: u64,
}

/// `−log2(e)`, [`ZERO_ERROR_BITS`] for an exact zero.
pub fn bits(e: f64) -> f64 {
    if e > 0.0 {
        -e.log2()
    } else if e == 0.0 {
        ZERO_ERROR_BITS
    } else {
        f64::NAN
    }
}

/// A candidate network aligned to a truth network.
#[derive(Debug, Clone)]
pub struct Alignment {
    /// The candidate with its hidden neurons permuted and rescaled to match the truth; computes the same
    /// function as the candidate (up to rounding).
    pub network: Network,
    /// For each hidden layer, `permutation[l][i]` is the candidate neuron matched to truth neuron `i`.
    pub permutation: Vec<Vec<usize>>,
    /// For each hidden layer, the positive factor applied to the matched candidate neuron's incoming row.
    pub scale: Vec<Vec<f64>>,
    /// Neurons excluded from the parameter error.
    pub dead: Vec<DeadNeuron>,
}

/// Minimum-cost assignment of the rows of `cost` (`n × m`, `n ≤ m`) to distinct columns (Hungarian
/// algorithm with potentials, O(n²m)). Returns the column of each row.
pub fn hungarian(cost: &[Vec<f64>], m: usize) -> Vec<usize> {
    let n = cost.len();
    debug_assert!(n <= m);
    if n == 0 {
        return Vec::new();
    }
    // Fast path: if every row's cheapest column is distinct, that is optimal (the sum of row minima is a
    // lower bound on every assignment).
    let mut best: Vec<usize> = Vec::with_capacity(n);
    let mut taken = vec![false; m];
    let mut distinct = true;
    for row in cost {
        let j = (0..m)
            .min_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        if taken[j] {
            distinct = false;
            break;
        }
        taken[j] = true;
        best.push(j);
    }
    if distinct {
        return best;
    }
    // 1-based e-maxx formulation.
    let inf = f64::INFINITY;
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    let mut p = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![inf; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0usize;
            for j in 1..=m {
                if !used[j] {
                    let cur = cost[i0 - 1][j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            if j1 == 0 {
                // Only possible with NaN costs; fall back to the first free column.
                j1 = (1..=m).find(|&j| !used[j]).unwrap_or(1);
                delta = 0.0;
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![0usize; n];
    for j in 1..=m {
        if p[j] != 0 {
            out[p[j] - 1] = j - 1;
        }
    }
    out
}

/// Matches `rows_t` (truth neurons) to `rows_c` (candidate neurons) by minimum total `cost(t, c)`;
/// returns `(truth, candidate)` pairs, one per element of the smaller side.
fn assign(rows_t: &[usize], rows_c: &[usize], cost: &Mat<f64>) -> Vec<(usize, usize)> {
    if rows_t.is_empty() || rows_c.is_empty() {
        return Vec::new();
    }
    if rows_t.len() <= rows_c.len() {
        let c: Vec<Vec<f64>> = rows_t
            .iter()
            .map(|&t| rows_c.iter().map(|&k| cost[(t, k)]).collect())
            .collect();
        let a = hungarian(&c, rows_c.len());
        rows_t.iter().zip(a).map(|(&t, j)| (t, rows_c[j])).collect()
    } else {
        let c: Vec<Vec<f64>> = rows_c
            .iter()
            .map(|&k| rows_t.iter().map(|&t| cost[(t, k)]).collect())
            .collect();
        let a = hungarian(&c, rows_t.len());
        rows_c.iter().zip(a).map(|(&k, i)| (rows_t[i], k)).collect()
    }
}

/// Rows `[w; b]` of a layer, each normalised to unit norm (zero rows stay zero), and their norms. Input
/// columns flagged in `skip` (dead neurons of the previous layer, whose weights are unidentifiable) are
/// left out of both.
fn normalised_rows(l: &Layer, skip: &[bool]) -> (Mat<f64>, Vec<f64>) {
    let (o, n) = (l.fan_out(), l.fan_in());
    let keep = |c: usize| !skip.get(c).copied().unwrap_or(false);
    let norms: Vec<f64> = (0..o)
        .map(|r| {
            ((0..n)
                .filter(|&c| keep(c))
                .map(|c| l.weight[(r, c)].powi(2))
                .sum::<f64>()
                + l.bias[r].powi(2))
            .sqrt()
        })
        .collect();
    let m = Mat::from_fn(o, n + 1, |r, c| {
        if norms[r] == 0.0 {
            0.0
        } else if c < n {
            if keep(c) {
                l.weight[(r, c)] / norms[r]
            } else {
                0.0
            }
        } else {
            l.bias[r] / norms[r]
        }
    });
    (m, norms)
}

/// Aligns `candidate` to `truth` (same architecture) up to permutation and positive scaling of hidden
/// neurons. `active[l][i]`, when given, counts the sampled inputs on which truth neuron `i` of hidden layer
/// `l` is active; neurons with a zero count are treated as dead.
pub fn align(
    truth: &Network,
    candidate: &Network,
    active: Option<&[Vec<usize>]>,
) -> Result<Alignment, ReluError> {
    check_same_arch(truth, candidate)?;
    let n_layers = truth.layers().len();
    let mut cand: Vec<Layer> = candidate.layers().to_vec();
    let mut dead = Vec::new();
    let mut permutation = Vec::new();
    let mut scales = Vec::new();
    // Input columns of the current layer that belong to dead neurons of the previous one.
    let mut skip: Vec<bool> = Vec::new();
    for li in 0..n_layers - 1 {
        let t = &truth.layers()[li];
        let t_next = &truth.layers()[li + 1];
        let rows = t.fan_out();
        let (tn, t_norm) = normalised_rows(t, &skip);
        let (cn, c_norm) = normalised_rows(&cand[li], &skip);
        // cost[(i, j)] = 1 − cos(t_i, c_j); zero rows get the neutral cost 1.
        let mut cost = Mat::<f64>::zeros(rows, rows);
        faer::linalg::matmul::matmul(
            cost.as_mut(),
            Accum::Replace,
            tn.as_ref(),
            cn.transpose(),
            -1.0,
            if rows * rows * tn.ncols() >= 1 << 22 {
                Par::rayon(0)
            } else {
                Par::Seq
            },
        );
        for j in 0..rows {
            for v in cost.col_mut(j).iter_mut() {
                *v += 1.0;
            }
        }
        let truth_reason = |i: usize| -> Option<DeadReason> {
            if t_norm[i] == 0.0 {
                Some(DeadReason::TruthZeroIncoming)
            } else if (0..t_next.fan_out()).all(|o| t_next.weight[(o, i)] == 0.0) {
                Some(DeadReason::TruthZeroOutgoing)
            } else if active
                .and_then(|a| a.get(li))
                .and_then(|a| a.get(i))
                .is_some_and(|&n| n == 0)
            {
                Some(DeadReason::TruthNeverActive)
            } else {
                None
            }
        };
        let reasons: Vec<Option<DeadReason>> = (0..rows).map(truth_reason).collect();
        let live_t: Vec<usize> = (0..rows).filter(|&i| reasons[i].is_none()).collect();
        let live_c: Vec<usize> = (0..rows).filter(|&j| c_norm[j] > 0.0).collect();
        let mut perm = vec![usize::MAX; rows];
        let mut used = vec![false; rows];
        for (i, j) in assign(&live_t, &live_c, &cost) {
            perm[i] = j;
            used[j] = true;
        }
        // Then everything left over (dead truth neurons, unmatched live ones, zero candidate rows).
        let rest_t: Vec<usize> = (0..rows).filter(|&i| perm[i] == usize::MAX).collect();
        let rest_c: Vec<usize> = (0..rows).filter(|&j| !used[j]).collect();
        for (i, j) in assign(&rest_t, &rest_c, &cost) {
            perm[i] = j;
        }
        let mut scale = vec![1.0; rows];
        skip = vec![false; rows];
        for i in 0..rows {
            let j = perm[i];
            if t_norm[i] > 0.0 && c_norm[j] > 0.0 {
                scale[i] = t_norm[i] / c_norm[j];
            }
            let reason = reasons[i].or(if c_norm[j] == 0.0 {
                Some(DeadReason::CandidateZeroIncoming)
            } else {
                None
            });
            if let Some(reason) = reason {
                skip[i] = true;
                dead.push(DeadNeuron {
                    layer: li,
                    neuron: i,
                    candidate: j,
                    reason,
                });
            }
        }
        let c = &cand[li];
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
        permutation.push(perm);
        scales.push(scale);
    }
    Ok(Alignment {
        network: Network::new(cand)?,
        permutation,
        scale: scales,
        dead,
    })
}

fn check_same_arch(truth: &Network, candidate: &Network) -> Result<(), ReluError> {
    let (a, b) = (truth.arch(), candidate.arch());
    if a != b {
        let detail = if a.dims().len() != b.dims().len() {
            format!(
                "{} vs {} layers",
                truth.layers().len(),
                candidate.layers().len()
            )
        } else {
            let k = a
                .dims()
                .iter()
                .zip(b.dims())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            format!("width {k} is {} vs {}", a.dims()[k], b.dims()[k])
        };
        return Err(ReluError::Dimension(format!(
            "architectures differ: truth {a} vs candidate {b} ({detail})"
        )));
    }
    Ok(())
}

/// Per-tensor parameter errors of an aligned candidate, leaving out dead neurons.
fn param_errors(truth: &Network, aligned: &Network, dead: &[DeadNeuron]) -> Vec<TensorError> {
    let n_layers = truth.layers().len();
    let mut is_dead: Vec<Vec<bool>> = truth
        .layers()
        .iter()
        .map(|l| vec![false; l.fan_out()])
        .collect();
    for d in dead {
        is_dead[d.layer][d.neuron] = true;
    }
    let mut out = Vec::with_capacity(2 * n_layers);
    for (li, (t, c)) in truth.layers().iter().zip(aligned.layers()).enumerate() {
        let row_dead = |r: usize| li + 1 < n_layers && is_dead[li][r];
        let col_dead = |k: usize| li > 0 && is_dead[li - 1][k];
        let mut w = TensorError {
            tensor: format!("layers.{li}.weight"),
            max_abs_error: 0.0,
            bits: 0.0,
            index: Vec::new(),
            compared: 0,
        };
        let mut b = TensorError {
            tensor: format!("layers.{li}.bias"),
            max_abs_error: 0.0,
            bits: 0.0,
            index: Vec::new(),
            compared: 0,
        };
        for r in 0..t.fan_out() {
            if row_dead(r) {
                continue;
            }
            for k in 0..t.fan_in() {
                if col_dead(k) {
                    continue;
                }
                let e = (t.weight[(r, k)] - c.weight[(r, k)]).abs();
                if w.index.is_empty() || e > w.max_abs_error {
                    w.max_abs_error = e;
                    w.index = vec![r, k];
                }
                w.compared += 1;
            }
            let e = (t.bias[r] - c.bias[r]).abs();
            if b.index.is_empty() || e > b.max_abs_error {
                b.max_abs_error = e;
                b.index = vec![r];
            }
            b.compared += 1;
        }
        w.bits = bits(w.max_abs_error);
        b.bits = bits(b.max_abs_error);
        out.push(w);
        out.push(b);
    }
    out
}

/// Fills `x` (rows `offset..offset+n` of the sample stream) with inputs: even global rows standard normal,
/// odd ones on the sphere of radius `2√d`.
fn sample_batch(rng: &mut ChaCha20Rng, offset: usize, n: usize, d: usize) -> Mat<f64> {
    let mut x = Mat::<f64>::from_fn(n, d, |_, _| rng.sample::<f64, _>(StandardNormal));
    let radius = 2.0 * (d as f64).sqrt();
    for i in 0..n {
        if (offset + i) % 2 == 1 {
            let norm = (0..d).map(|k| x[(i, k)].powi(2)).sum::<f64>().sqrt();
            if norm > 0.0 {
                for k in 0..d {
                    x[(i, k)] *= radius / norm;
                }
            }
        }
    }
    x
}

fn top1(m: &Mat<f64>, i: usize) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for j in 0..m.ncols() {
        if m[(i, j)] > best.1 {
            best = (j, m[(i, j)]);
        }
    }
    best.0
}

/// Aligns `candidate` to `truth` and reports parameter and output errors.
pub fn compare(
    truth: &Network,
    candidate: &Network,
    opts: &CompareOptions,
) -> Result<CompareReport, ReluError> {
    check_same_arch(truth, candidate)?;
    if opts.samples == 0 {
        return Err(ReluError::InvalidParam(
            "compare needs at least one sample".into(),
        ));
    }
    let n_layers = truth.layers().len();
    let d = truth.input_dim();
    let k_out = truth.output_dim();
    let mut active: Vec<Vec<usize>> = truth.layers()[..n_layers - 1]
        .iter()
        .map(|l| vec![0; l.fan_out()])
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    let (mut err, mut scale, mut agree) = (0.0_f64, 0.0_f64, 0usize);
    let mut done = 0;
    while done < opts.samples {
        let n = (opts.samples - done).min(BATCH);
        let x = sample_batch(&mut rng, done, n, d);
        let pre = truth.preactivations(x.as_ref())?;
        for (li, z) in pre[..n_layers - 1].iter().enumerate() {
            for j in 0..z.ncols() {
                active[li][j] += z.col(j).iter().filter(|v| **v > 0.0).count();
            }
        }
        let ft = &pre[n_layers - 1];
        let fc = candidate.forward(x.as_ref())?;
        for i in 0..n {
            for j in 0..k_out {
                err = err.max((ft[(i, j)] - fc[(i, j)]).abs());
                scale = scale.max(ft[(i, j)].abs());
            }
            let same = if k_out == 1 {
                (ft[(i, 0)] > 0.0) == (fc[(i, 0)] > 0.0)
            } else {
                top1(ft, i) == top1(&fc, i)
            };
            agree += usize::from(same);
        }
        done += n;
    }
    let al = align(truth, candidate, Some(&active))?;
    let tensors = param_errors(truth, &al.network, &al.dead);
    let worst =
        tensors
            .iter()
            .filter(|t| t.compared > 0)
            .fold(None::<&TensorError>, |w, t| match w {
                Some(w) if w.max_abs_error >= t.max_abs_error => Some(w),
                _ => Some(t),
            });
    let (max_param_error, worst_tensor, worst_index) = match worst {
        Some(w) => (w.max_abs_error, w.tensor.clone(), w.index.clone()),
        None => (0.0, "none".to_string(), Vec::new()),
    };
    let rel = if scale > 0.0 { err / scale } else { err };
    Ok(CompareReport {
        schema: REPORT_SCHEMA,
        arch: truth.arch().to_string(),
        max_param_error,
        param_bits: bits(max_param_error),
        worst_tensor,
        worst_index,
        tensors,
        max_output_error: err,
        output_bits: bits(err),
        max_output_error_rel: rel,
        output_rel_bits: bits(rel),
        max_abs_output: scale,
        label_agreement: agree as f64 / opts.samples as f64,
        agreement_kind: if k_out == 1 { "sign" } else { "argmax" }.to_string(),
        dead: al.dead,
        permutation: al.permutation,
        samples: opts.samples,
        seed: opts.seed,
    })
}

/// Functional agreement of two networks on given inputs (e.g. a dataset's test images).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputsReport {
    /// Inputs evaluated.
    pub samples: usize,
    /// max |f − f̂| over inputs and outputs.
    pub max_output_error: f64,
    /// max |f| over inputs and outputs.
    pub max_abs_output: f64,
    /// `max_output_error / max_abs_output`.
    pub max_output_error_rel: f64,
    /// Fraction of inputs where the predicted label agrees (argmax; sign for one output).
    pub label_agreement: f64,
    /// Inputs where the labels differ.
    pub label_disagreements: usize,
}

/// Evaluates both networks on the rows of `xs` (`n × d0`, n ≥ 1) and compares outputs and labels.
pub fn compare_on_inputs(
    truth: &Network,
    candidate: &Network,
    xs: faer::MatRef<'_, f64>,
) -> Result<InputsReport, ReluError> {
    check_same_arch(truth, candidate)?;
    if xs.nrows() == 0 {
        return Err(ReluError::InvalidParam(
            "compare needs at least one input".into(),
        ));
    }
    let (mut err, mut scale, mut disagree) = (0.0_f64, 0.0_f64, 0usize);
    let label = |row: &[f64]| -> usize {
        if row.len() == 1 {
            usize::from(row[0] > 0.0)
        } else {
            (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0)
        }
    };
    for start in (0..xs.nrows()).step_by(BATCH) {
        let n = (xs.nrows() - start).min(BATCH);
        let x = xs.subrows(start, n);
        let (yt, yc) = (truth.forward(x)?, candidate.forward(x)?);
        for i in 0..n {
            let rt: Vec<f64> = (0..yt.ncols()).map(|j| yt[(i, j)]).collect();
            let rc: Vec<f64> = (0..yc.ncols()).map(|j| yc[(i, j)]).collect();
            for (a, b) in rt.iter().zip(&rc) {
                err = err.max((a - b).abs());
                scale = scale.max(a.abs());
            }
            if label(&rt) != label(&rc) {
                disagree += 1;
            }
        }
    }
    let n = xs.nrows();
    Ok(InputsReport {
        samples: n,
        max_output_error: err,
        max_abs_output: scale,
        max_output_error_rel: if scale > 0.0 { err / scale } else { err },
        label_agreement: (n - disagree) as f64 / n as f64,
        label_disagreements: disagree,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_on_inputs_counts_label_flips() {
        let arch: crate::Arch = "4-5-3".parse().unwrap();
        let a = Network::random(&arch, crate::InitRecipe::Balanced, 1);
        let xs = Mat::<f64>::from_fn(50, 4, |i, j| ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0);
        let same = compare_on_inputs(&a, &a, xs.as_ref()).unwrap();
        assert_eq!(same.label_agreement, 1.0);
        assert_eq!(same.max_output_error, 0.0);
        // Negating the output layer flips every label where the argmax is unique.
        let mut layers = a.layers().to_vec();
        let last = layers.last_mut().unwrap();
        for r in 0..last.fan_out() {
            for c in 0..last.fan_in() {
                last.weight[(r, c)] = -last.weight[(r, c)];
            }
            last.bias[r] = -last.bias[r];
        }
        let b = Network::new(layers).unwrap();
        let r = compare_on_inputs(&a, &b, xs.as_ref()).unwrap();
        assert!(
            r.label_disagreements > 0 && r.label_agreement < 1.0,
            "{r:?}"
        );
        assert!(compare_on_inputs(&a, &b, xs.subrows(0, 0)).is_err());
    }

    fn brute(cost: &[Vec<f64>], m: usize) -> f64 {
        fn rec(cost: &[Vec<f64>], i: usize, used: &mut Vec<bool>, m: usize) -> f64 {
            if i == cost.len() {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..m {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[i][j] + rec(cost, i + 1, used, m));
                    used[j] = false;
                }
            }
            best
        }
        rec(cost, 0, &mut vec![false; m], m)
    }

    #[test]
    fn hungarian_is_optimal_on_small_random_problems() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for trial in 0..200 {
            let n = 1 + trial % 6;
            let m = n + trial % 3;
            // Few distinct values so that the fast path is usually not taken.
            let cost: Vec<Vec<f64>> = (0..n)
                .map(|_| (0..m).map(|_| rng.random_range(0..4) as f64).collect())
                .collect();
            let a = hungarian(&cost, m);
            let mut seen = vec![false; m];
            for &j in &a {
                assert!(!seen[j], "column used twice");
                seen[j] = true;
            }
            let total: f64 = a.iter().enumerate().map(|(i, &j)| cost[i][j]).sum();
            assert!((total - brute(&cost, m)).abs() < 1e-12, "trial {trial}");
        }
    }

    #[test]
    fn bits_of_zero_is_finite() {
        assert_eq!(bits(0.0), ZERO_ERROR_BITS);
        assert!((bits(0.25) - 2.0).abs() < 1e-12);
    }
}
