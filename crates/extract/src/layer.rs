//! Recovery of one hidden layer's weight rows and biases (up to sign and positive scale).

use crate::cluster::{BankTol, NeuronBank, NeuronEstimate};
use crate::critical::{CriticalPoint, Line, SearchTol, find_critical_points};
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::linalg::{dot, norm};
use crate::oracle::{CountingOracle, Oracle};
use crate::params::ExtractParams;
use crate::signature::{StencilParams, measure};
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

/// Relative distance below which a critical point is taken to lie on an estimate's hyperplane.
/// Single-witness estimates are accurate to ~1e-9; points of other neurons sit O(1) away.
pub const PLANE_TOL: f64 = 1e-6;

/// One recovered (unsigned) neuron.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveredNeuron {
    /// Weight row (unit norm, sign not yet fixed).
    pub w: Vec<f64>,
    /// Bias.
    pub b: f64,
    /// Witnesses used.
    pub witnesses: usize,
    /// Distinct lines among them.
    pub lines: usize,
    /// s_min/s_max of the stacked constraints.
    pub residual: f64,
    /// Inputs this neuron's row could not be constrained on (set to 0).
    pub unconstrained: Vec<usize>,
}

/// Result of [`recover_layer`].
#[derive(Debug, Clone, Serialize)]
pub struct LayerSignatures {
    /// Recovered neurons (at most the layer width).
    pub neurons: Vec<RecoveredNeuron>,
    /// Number of neurons not found (declared dead: zero row and bias).
    pub dead: usize,
    /// Critical points found.
    pub critical_points: usize,
    /// Witnesses whose signature was measured.
    pub measured_witnesses: usize,
    /// Critical points attached by the free hyperplane test.
    pub attached_points: usize,
    /// Search lines drawn.
    pub lines: usize,
    /// Queries spent in the critical-point search.
    pub search_queries: u64,
    /// Queries spent measuring signatures.
    pub signature_queries: u64,
    /// Queries spent on precision refinement.
    pub refine_queries: u64,
}

/// A random line through the data region.
pub fn random_line(rng: &mut ChaCha20Rng, d0: usize, sigma: f64) -> Line {
    let origin: Vec<f64> = (0..d0).map(|_| sigma * rng.sample::<f64, _>(StandardNormal)).collect();
    let mut dir: Vec<f64> = (0..d0).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
    let n = norm(&dir);
    dir.iter_mut().for_each(|v| *v /= n);
    Line { origin, dir }
}

/// Splits `[-L, L]` at the known kinks of the line, leaving a small margin around each.
pub fn free_segments(known: &KnownPrefix, line: &Line, line_id: usize, half: f64) -> Vec<(usize, f64, f64)> {
    let ks = known.kinks_on_line(&line.origin, &line.dir, -half, half);
    let mut pts = vec![-half];
    pts.extend(ks);
    pts.push(half);
    let margin = 1e-9 * half;
    pts.windows(2)
        .filter(|w| w[1] - w[0] > 4.0 * margin)
        .map(|w| (line_id, w[0] + margin, w[1] - margin))
        .collect()
}

fn alive_units(known: &KnownPrefix) -> Vec<bool> {
    match known.layers.last() {
        None => vec![true; known.input_dim],
        Some(l) => (0..l.fan_out())
            .map(|r| (0..l.fan_in()).any(|c| l.weight[(r, c)] != 0.0) || l.bias[r] > 0.0)
            .collect(),
    }
}

fn is_complete(e: &NeuronEstimate, alive: &[bool], p: &ExtractParams) -> bool {
    e.lines.len() >= p.min_witnesses
        && e.residual <= p.null_residual_max
        && e.known.iter().zip(alive).all(|(k, a)| *k || !*a)
}

/// Recovers the rows of hidden layer `known.layers.len() + 1` of width `width`.
pub fn recover_layer<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    width: usize,
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<LayerSignatures, ExtractError> {
    let d0 = known.input_dim;
    let dim = known.out_dim();
    let sigma = p.origin_scale;
    let half = p.line_half_length * sigma * (d0 as f64).sqrt();
    let tol = BankTol {
        cluster_tol: p.cluster_tol,
        min_common: p.min_common_coords,
        plane_tol: PLANE_TOL,
        residual_max: p.null_residual_max,
    };
    let stencil = StencilParams {
        eps: p.stencil_eps * sigma,
        shrink: p.stencil_shrink,
        tries: p.stencil_tries,
        rel_tol: p.linearity_rel_tol,
    };
    let search_tol = SearchTol {
        rel_tol: p.linearity_rel_tol,
        min_interval_rel: p.min_interval_rel,
    };
    let alive = alive_units(known);
    let mut bank = NeuronBank::new(dim);
    let mut lines: Vec<Line> = Vec::new();
    let mut out = LayerSignatures {
        neurons: Vec::new(),
        dead: 0,
        critical_points: 0,
        measured_witnesses: 0,
        attached_points: 0,
        lines: 0,
        search_queries: 0,
        signature_queries: 0,
        refine_queries: 0,
    };
    for round in 0..p.max_rounds_per_layer {
        // The first round uses one line: every neuron it meets is measured once, and later lines can
        // then be matched for free by the hyperplane test.
        let n_lines = if round == 0 { 1 } else { p.lines_per_round };
        let first = lines.len();
        for _ in 0..n_lines {
            lines.push(random_line(rng, d0, sigma));
        }
        let segments: Vec<(usize, f64, f64)> =
            (first..lines.len()).flat_map(|l| free_segments(known, &lines[l], l, half)).collect();
        let q0 = oracle.queries();
        let cps = find_critical_points(oracle, &lines, &segments, search_tol)?;
        out.search_queries += oracle.queries() - q0;
        out.critical_points += cps.len();
        // Line by line: attach for free where possible, measure the rest.
        for l in first..lines.len() {
            let mine: Vec<&CriticalPoint> = cps.iter().filter(|c| c.line == l).collect();
            let mut to_measure: Vec<CriticalPoint> = Vec::new();
            for cp in mine {
                let x = lines[l].at(cp.t);
                let (_, h) = known.forward_rows(std::slice::from_ref(&x)).pop().expect("one row");
                if bank.attach_point(&h, l, &tol) {
                    out.attached_points += 1;
                } else {
                    to_measure.push(cp.clone());
                }
            }
            let q0 = oracle.queries();
            let ws = measure(oracle, known, &lines, &to_measure, stencil)?;
            out.signature_queries += oracle.queries() - q0;
            for w in ws.into_iter().flatten() {
                out.measured_witnesses += 1;
                bank.add_witness(&w, &tol);
            }
        }
        bank.merge_pass(&tol);
        let done = bank.estimates.iter().filter(|e| is_complete(e, &alive, p)).count();
        on_progress(done.min(width), width);
        tracing::debug!(round, done, width, estimates = bank.estimates.len(), "witness round");
        if done >= width {
            break;
        }
    }
    out.lines = lines.len();
    if std::env::var("NETXRAY_DEBUG").is_ok() {
        for e in &bank.estimates {
            eprintln!(
                "dim {} est lines {} wit {} rows {} res {:.2e} gap {:.2e} complete {} theta[..3] {:?}",
                dim,
                e.lines.len(),
                e.witnesses,
                e.num_rows(),
                e.residual,
                e.gap,
                is_complete(e, &alive, p),
                &e.theta[..3.min(e.theta.len())]
            );
        }
    }
    // Accept: complete estimates first, then the best of the rest; never the same hyperplane twice
    // (an estimate split in two halves that never shared coordinates).
    let mut cands: Vec<NeuronEstimate> = bank
        .estimates
        .into_iter()
        .filter(|e| e.lines.len() >= p.min_witnesses && e.residual <= p.null_residual_max)
        .collect();
    cands.sort_by(|a, b| {
        is_complete(b, &alive, p)
            .cmp(&is_complete(a, &alive, p))
            .then(a.residual.total_cmp(&b.residual))
            .then(b.witnesses.cmp(&a.witnesses))
    });
    let mut accepted: Vec<NeuronEstimate> = Vec::new();
    for c in cands {
        let dup = accepted.iter().any(|a| {
            let d = dot(&a.theta, &c.theta) / (norm(&a.theta) * norm(&c.theta));
            d.abs() > 1.0 - 1e-8
        });
        if !dup && accepted.len() < width {
            accepted.push(c);
        }
    }
    // Precision refinement: predicted crossings on fresh lines, confirmed by a short local search.
    let q0 = oracle.queries();
    refine(oracle, known, &mut accepted, p, rng, half, search_tol)?;
    out.refine_queries += oracle.queries() - q0;
    out.neurons = accepted
        .iter()
        .map(|e| RecoveredNeuron {
            w: e.theta[..dim].to_vec(),
            b: e.theta[dim],
            witnesses: e.witnesses,
            lines: e.lines.len(),
            residual: e.residual,
            unconstrained: (0..dim).filter(|&k| !e.known[k] && alive[k]).collect(),
        })
        .collect();
    out.dead = width - out.neurons.len();
    Ok(out)
}

/// Places `refine_points` predicted crossings per neuron on fresh lines and adds the confirmed ones.
fn refine<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    est: &mut [NeuronEstimate],
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
    half: f64,
    search_tol: SearchTol,
) -> Result<(), ExtractError> {
    if p.refine_points == 0 || est.is_empty() {
        return Ok(());
    }
    let dim = known.out_dim();
    let d0 = known.input_dim;
    let mut lines: Vec<Line> = Vec::new();
    let mut segs: Vec<(usize, f64, f64)> = Vec::new();
    let mut owner: Vec<(usize, f64)> = Vec::new(); // per segment: estimate index, predicted t
    for (ei, e) in est.iter().enumerate() {
        let mut placed = 0;
        let mut attempts = 0;
        while placed < p.refine_points && attempts < 4 * p.refine_points {
            attempts += 1;
            let line = random_line(rng, d0, p.origin_scale);
            let mut bps = vec![-half];
            bps.extend(known.kinks_on_line(&line.origin, &line.dir, -half, half));
            bps.push(half);
            let pts: Vec<Vec<f64>> = bps.iter().map(|&t| line.at(t)).collect();
            let hs = known.forward_rows(&pts);
            let z: Vec<f64> = hs.iter().map(|(_, h)| dot(&e.theta[..dim], h) + e.theta[dim]).collect();
            for j in 0..bps.len() - 1 {
                if (z[j] > 0.0) != (z[j + 1] > 0.0) {
                    let t = bps[j] + (bps[j + 1] - bps[j]) * z[j] / (z[j] - z[j + 1]);
                    let room = (t - bps[j]).min(bps[j + 1] - t);
                    if room > 1e-6 * half {
                        let w = (0.5 * room).min(1e-3 * half);
                        let li = lines.len();
                        lines.push(line.clone());
                        segs.push((li, t - w, t + w));
                        owner.push((ei, t));
                        placed += 1;
                        break;
                    }
                }
            }
        }
    }
    let cps = find_critical_points(oracle, &lines, &segs, search_tol)?;
    for (si, &(ei, t_pred)) in owner.iter().enumerate() {
        let w = segs[si].2 - segs[si].1;
        let best = cps
            .iter()
            .filter(|c| c.line == segs[si].0)
            .min_by(|a, b| (a.t - t_pred).abs().total_cmp(&(b.t - t_pred).abs()));
        if let Some(c) = best
            && (c.t - t_pred).abs() <= 1e-3 * w
        {
            let x = lines[c.line].at(c.t);
            let (_, h) = known.forward_rows(std::slice::from_ref(&x)).pop().expect("one row");
            // Another neuron's kink can sit next to the prediction: keep the point only if the
            // constraints stay consistent.
            let mut trial = est[ei].clone();
            trial.add_point(&h, usize::MAX - si);
            trial.solve();
            if trial.residual <= p.null_residual_max {
                est[ei] = trial;
            }
        }
    }
    Ok(())
}
