//! Hyperplane polishing for noisy (float32) targets.
//!
//! On an f32 target a signature (a difference of finite-difference gradients) carries the answers'
//! noise divided by the stencil width and comes out at ~1e-3, while a crossing — the intersection
//! of two linear pieces fitted on either side of a kink — is located to ~1e-6. Deeper layers are
//! built on the recovered ones, so 1e-3 in layer 1 ruins layer 2 (measured on an f32 20-10-10-1:
//! layer 1 to 4e-4, layer 2 off by O(1), verification 0.27). Polishing lets the crossings carry the
//! precision: each round places predicted crossings of every accepted neuron on fresh lines,
//! confirms them with a short local search, and refits the neuron's hyperplane through all points
//! confirmed so far. The fit keeps the signature-based estimate as a weak prior, so directions the
//! points do not constrain (units never active at the crossings) keep their estimate.
//!
//! The same holds, at another scale, for f64 targets: a signature-based estimate is good to ~1e-9
//! (worse in deep layers, where few witnesses constrain each unit), a crossing to about rounding. Two
//! rounds in a narrow window ([`crate::params::ExtractParams::polish_window`]) take the f64 presets'
//! parameters past 2^-30 (balanced 64-128-128-10: 2^-28.3 before, 2^-33.7 after; 2^-46.6 when no
//! neuron is skipped as already precise, see `polish_skip_below`).
//! Rounds: [`crate::params::ExtractParams::polish_rounds`] (f64 2, f32 3); crossings placed by
//! projection instead get one big round and top-ups
//! ([`crate::params::ExtractParams::projected_polish_points_per_unknown`]).

use crate::cluster::NeuronEstimate;
use crate::critical::{Line, SearchTol, find_critical_points};
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::layer::{line_near_anchor, predicted_crossing, random_line};
use crate::linalg::{dot, norm, null_vector, null_vector_near};
use crate::oracle::{CountingOracle, Oracle};
use crate::params::ExtractParams;
use faer::Mat;
use rand_chacha::ChaCha20Rng;

/// Weight of a point's (unit) hyperplane row against the (unit) prior rows that hold the estimate:
/// the ratio of the estimate's error (~1e-3) to a crossing's (~1e-6).
const POINT_WEIGHT: f64 = 1e3;

/// Factor by which a neuron's search window narrows after each round whose fit was well determined.
const WINDOW_SHRINK: f64 = 4.0;

/// Factor by which a neuron's search window widens after a round in which fewer than half of its
/// windows met a kink near the prediction (up to `refine_window`): a safety net for an estimate
/// further off than the narrow projected window (`projected_polish_window`) assumes. A point must
/// also pass the gate (see [`GATE_PER_WINDOW`]), so this matters only where the gate is looser
/// than the window (test `windows_that_miss_are_widened_until_the_crossings_are_met`); it did not
/// rescue the 784-16×8-1 run whose layer-8 estimates were wrong (docs/extraction.md, session 24).
const WINDOW_WIDEN: f64 = 10.0;

/// A fit is made only through at least this many points per unknown: with fewer, a trimmed fit has
/// almost no redundancy and cannot tell a spoiled crossing from a good one.
const MIN_POINTS_PER_UNKNOWN: usize = 2;

/// A point is an outlier (another kink met next to the prediction) when its distance from the fitted
/// hyperplane exceeds this multiple of the median distance.
const OUTLIER_FACTOR: f64 = 30.0;

/// Distance below which no point is called an outlier (f64 rounding of the fit itself).
const OUTLIER_FLOOR: f64 = 1e-12;

/// A confirmed point enters the fit when its distance from the estimate is within the residual
/// bound, [`GATE_MIN`], or this fraction of the window, whichever is largest: f32 3e-3 (the bound);
/// f64 1e-6 ([`GATE_MIN`]), so that deep-layer estimates at ~1e-7, which most need the polish, are
/// not locked out by the 1e-8 bound. Points of another kink in the window are removed by the
/// trimmed fit.
const GATE_PER_WINDOW: f64 = 0.1;

/// Smallest gate of a confirmed point (see [`GATE_PER_WINDOW`]): a tenth of the 1e-5 line window,
/// kept for the narrower projected window (1e-6), behind which deep-layer estimates still sit at
/// ~1e-7.
const GATE_MIN: f64 = 1e-6;

/// Most bytes of search lines held at once: neurons are searched in groups below it, so memory stays
/// bounded on wide inputs (every neuron at once took a 784-16×8-1 run to 1.6 GB peak). Not lower:
/// at 64 MiB a group held one 3072-input neuron's 823 lines, and every search and placement call
/// paid its fixed part (sparse last bisection levels, a Gram matrix, a half-empty block) per neuron
/// (`STAGE=polish` of `benches/deep_layers.rs`, 32 layer-8 neurons: 24.2 s at 64 MiB, 18.3 s here;
/// the trained 784-128-128-128-10's peak RSS rose from 932 to 1,178 MiB).
const LINE_BYTES_MAX: usize = 256 << 20;

/// Largest memory for the confirmed points held while polishing (each a `dim + 1` row; up to
/// `2·polish_rounds·per_round` per neuron). A 3072-input layer needs ~300 MB per neuron.
const POINT_BYTES_MAX: usize = 2 << 30;

/// What polishing did to one layer.
#[derive(Debug, Clone, Default)]
pub struct PolishStats {
    /// Predicted crossings placed (all rounds, all neurons).
    pub placed: usize,
    /// Points used by the final fits (after outlier removal).
    pub used: usize,
    /// Largest median relative point distance from a final fitted hyperplane.
    pub worst_median: f64,
    /// Seconds placing crossings (offline).
    pub place_s: f64,
    /// Seconds searching the windows (queries and the search's own work).
    pub search_s: f64,
    /// Seconds in the hyperplane fits.
    pub fit_s: f64,
}

/// Relative distance of the unit row `u` from the hyperplane `theta` (scaled by `‖w‖`).
fn distance(theta: &[f64], u: &[f64]) -> f64 {
    let dim = theta.len() - 1;
    dot(theta, u).abs() / norm(&theta[..dim]).max(f64::MIN_POSITIVE)
}

/// The unit row `[h, 1] / ‖[h, 1]‖` of a point with prefix output `h`.
fn point_row(h: &[f64]) -> Vec<f64> {
    let mut r = h.to_vec();
    r.push(1.0);
    let n = norm(&r);
    r.iter_mut().for_each(|v| *v /= n);
    r
}

/// The hyperplane through `points` (unit rows), held near `prior` where they leave it free:
/// the smallest right singular vector of `[POINT_WEIGHT·U; I − θ̂₀θ̂₀ᵀ]`, scaled to `‖w‖ = 1` and
/// oriented like the prior.
fn fit(prior: &[f64], points: &[Vec<f64>]) -> Option<Vec<f64>> {
    let p = prior.len();
    let dim = p - 1;
    let pn = norm(prior);
    let t0: Vec<f64> = prior.iter().map(|v| v / pn).collect();
    let m = Mat::<f64>::from_fn(points.len() + p, p, |i, j| {
        if i < points.len() {
            POINT_WEIGHT * points[i][j]
        } else {
            let k = i - points.len();
            f64::from(u8::from(k == j)) - t0[k] * t0[j]
        }
    });
    // Inverse iteration from the prior where the SVD is the cost (see `NEAR_NULL_MIN_UNKNOWNS`).
    let mut x = if p >= NEAR_NULL_MIN_UNKNOWNS {
        null_vector_near(&m, &t0)?
    } else {
        null_vector(&m)?.0
    };
    let wn = norm(&x[..dim]);
    if !(wn > 0.0 && wn.is_finite()) {
        return None;
    }
    let s = if dot(&x, prior) < 0.0 { -1.0 } else { 1.0 };
    x.iter_mut().for_each(|v| *v *= s / wn);
    Some(x)
}

/// Fits with at least this many unknowns take their null vector by inverse iteration from the prior
/// (`linalg::null_vector_near`), smaller ones by the SVD. Why: on a 3072-input layer the SVD of the
/// `3073 × 3073` factor took most of the polishing (`STAGE=polish` of `benches/deep_layers.rs`,
/// `LAYER=1 NEURONS=3 ROW_PERTURB=3e-7`: 355.6 s, 340.5 s of it in fits; 99.7 s by inverse
/// iteration, same row errors), while at 257 unknowns the fits were 7 % of a deep layer's polishing.
/// Both give the same vector to rounding, but a run's later course is sensitive to rounding: the
/// trained Fashion-MNIST 784-128-128-128-10 (785 unknowns in layer 1) with inverse iteration
/// everywhere lost one more rarely active layer-3 neuron (126 of 128, 9,997 of 10,000 test labels
/// instead of 10,000), so below this size the fits stay as they were measured.
const NEAR_NULL_MIN_UNKNOWNS: usize = 1024;

/// A robust fit's hyperplane, the points it kept and their median distance from it.
type Fitted = (Vec<f64>, Vec<Vec<f64>>, f64);

/// Concentration steps of the trimmed fit: each refits through the best part of the points under the
/// previous fit (least trimmed squares); a handful converge from the estimate's 1e-3 to the points' 1e-7.
const TRIM_STEPS: usize = 6;

/// A robust fit: least trimmed squares started from the prior (refit through the best-fitting
/// `trim_fraction` of the points, `ExtractParams::polish_trim_fraction`, [`TRIM_STEPS`] times), then
/// every point within [`OUTLIER_FACTOR`] × the median distance of that part is kept and the plane
/// refitted. Points of another kink next to the prediction, or crossings spoiled
/// by a second kink inside their window, lie far off and never enter. Returns the hyperplane, the
/// points kept and their median distance.
fn robust_fit(prior: &[f64], points: &[Vec<f64>], trim_fraction: f64) -> Option<Fitted> {
    let unknowns = prior.len();
    // `trim_fraction` 0.5 gives `points.len() / 2`, the rule before it was a parameter.
    let trimmed = ((points.len() as f64 * trim_fraction) as usize)
        .max(unknowns + 1)
        .min(points.len());
    let by_distance = |theta: &[f64]| -> Vec<(f64, usize)> {
        let mut d: Vec<(f64, usize)> = points
            .iter()
            .enumerate()
            .map(|(i, u)| (distance(theta, u), i))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        d
    };
    let mut theta = prior.to_vec();
    let mut chosen: Vec<usize> = Vec::new();
    for _ in 0..TRIM_STEPS {
        let mut best: Vec<usize> = by_distance(&theta)[..trimmed]
            .iter()
            .map(|&(_, i)| i)
            .collect();
        best.sort_unstable();
        // The same points give the same fit: converged (an f64 prior usually is after one step).
        if best == chosen {
            break;
        }
        let rows: Vec<Vec<f64>> = best.iter().map(|&i| points[i].clone()).collect();
        theta = fit(prior, &rows)?;
        chosen = best;
    }
    let d = by_distance(&theta);
    let cut = (OUTLIER_FACTOR * d[trimmed / 2].0).max(OUTLIER_FLOOR);
    let kept: Vec<Vec<f64>> = d
        .iter()
        .filter(|&&(di, _)| di <= cut)
        .map(|&(_, i)| points[i].clone())
        .collect();
    let theta = fit(prior, &kept)?;
    let mut d: Vec<f64> = kept.iter().map(|u| distance(&theta, u)).collect();
    d.sort_by(f64::total_cmp);
    let median = d.get(d.len() / 2).copied().unwrap_or(0.0);
    Some((theta, kept, median))
}

/// One polishing search for the neurons in `chunk`: predicted crossings on fresh lines, the kink
/// nearest each prediction located, and the points on (or near) the estimate's plane kept.
#[allow(clippy::too_many_arguments)]
fn search_chunk<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    est: &[NeuronEstimate],
    chunk: &[usize],
    windows: &[f64],
    hits: &mut [(usize, usize)],
    counts: &[usize],
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
    half: f64,
    search_tol: SearchTol,
    gate: f64,
    points: &mut [Vec<Vec<f64>>],
    stats: &mut PolishStats,
    projected: bool,
) -> Result<(), ExtractError> {
    let d0 = known.input_dim;
    let mut lines: Vec<Line> = Vec::new();
    let mut segs: Vec<(usize, f64, f64)> = Vec::new();
    let mut owner: Vec<(usize, f64)> = Vec::new();
    let t_place = std::time::Instant::now();
    if projected {
        // Placed by projection (see `crate::place`): the chunk's neurons in one batch per window
        // width (most neurons share one), so the projections of many neurons run as blocked
        // products on all cores.
        let mut by_window: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for &ei in chunk {
            by_window.entry(windows[ei].to_bits()).or_default().push(ei);
        }
        for (bits, group) in by_window {
            let window = f64::from_bits(bits);
            let thetas: Vec<&[f64]> = group.iter().map(|&ei| est[ei].theta.as_slice()).collect();
            let anchors: Vec<&[Vec<f64>]> =
                group.iter().map(|&ei| est[ei].anchors.as_slice()).collect();
            let per: Vec<usize> = group.iter().map(|&ei| counts[ei]).collect();
            let placed = crate::place::place_crossings(
                known,
                &thetas,
                &anchors,
                &per,
                rng,
                p.origin_scale,
                half,
                window,
                crate::layer::WINDOW_RIGHT,
            );
            for (&ei, ps) in group.iter().zip(placed) {
                stats.placed += ps.len();
                for pc in ps {
                    lines.push(pc.line);
                    segs.push((lines.len() - 1, pc.lo, pc.hi));
                    owner.push((ei, pc.t));
                }
            }
        }
    }
    // Otherwise on random lines profiled through the prefix.
    for &ei in chunk.iter().filter(|_| !projected) {
        let e = &est[ei];
        let window = windows[ei];
        let per_round = counts[ei];
        let mut placed = 0;
        let mut attempts = 0;
        // Random lines first; a rarely active neuron's plane is met by few of them, so the rest
        // through points near its own witnesses (as in the refinement stage).
        while placed < per_round && attempts < 4 * per_round {
            attempts += 1;
            let mut line = random_line(rng, d0, p.origin_scale);
            if attempts > per_round && !e.anchors.is_empty() {
                line = line_near_anchor(rng, &e.anchors, d0, p.origin_scale);
            }
            if let Some((t, lo, hi)) = predicted_crossing(known, &e.theta, &line, half, window) {
                lines.push(line);
                segs.push((lines.len() - 1, lo, hi));
                owner.push((ei, t));
                placed += 1;
            }
        }
        stats.placed += placed;
    }
    let t_search = std::time::Instant::now();
    stats.place_s += (t_search - t_place).as_secs_f64();
    let cps = find_critical_points(oracle, &lines, &segs, search_tol)?;
    stats.search_s += t_search.elapsed().as_secs_f64();
    let mut nearest: Vec<Option<(f64, f64)>> = vec![None; segs.len()];
    for c in &cps {
        let si = c.line; // one line per segment
        let d = (c.t - owner[si].1).abs();
        if nearest[si].is_none_or(|(_, best)| d < best) {
            nearest[si] = Some((c.t, d));
        }
    }
    let xs: Vec<(usize, Vec<f64>)> = nearest
        .iter()
        .enumerate()
        .filter_map(|(si, n)| {
            let (t, d) = (*n)?;
            // The kink nearest the prediction, inside the inner half of the window.
            (d <= 0.5 * (segs[si].2 - segs[si].1) * 0.5).then(|| (si, lines[si].at(t)))
        })
        .collect();
    for &(ei, _) in &owner {
        hits[ei].0 += 1;
    }
    for &(si, _) in &xs {
        hits[owner[si].0].1 += 1;
    }
    tracing::debug!(
        segments = segs.len(),
        with_kink = nearest.iter().filter(|n| n.is_some()).count(),
        near = xs.len(),
        kinks = cps.len(),
        "polish search"
    );
    let hs = known.forward_rows(&xs.iter().map(|(_, x)| x.clone()).collect::<Vec<_>>());
    for ((si, _), (_, h)) in xs.iter().zip(hs) {
        let ei = owner[*si].0;
        let u = point_row(&h);
        // A point of another kink lies far off; the estimate is within the gate (see
        // `GATE_PER_WINDOW`).
        let d = distance(&est[ei].theta, &u);
        if d <= gate {
            points[ei].push(u);
        }
    }
    Ok(())
}

/// A top-up is scaled up by this factor over what the neuron lacks: the refit after it cuts a few
/// points again (outliers, slightly imprecise crossings next to other kinks).
const TOPUP_MARGIN: f64 = 1.25;

/// A neuron's confirmation rate is taken as at least this when sizing its top-up, so one unlucky
/// round does not ask for a whole round's worth and more.
const TOPUP_RATE_MIN: f64 = 0.25;

/// Crossings to place for a neuron that holds `held` points and wants `wanted`, given the
/// `confirmed` of `placed` so far: what it lacks over its rate, with [`TOPUP_MARGIN`], between 1
/// and `most`.
fn topup_count(held: usize, wanted: f64, placed: usize, confirmed: usize, most: usize) -> usize {
    let lacking = (wanted - held as f64).max(1.0);
    let rate = if placed == 0 {
        1.0
    } else {
        (confirmed as f64 / placed as f64).max(TOPUP_RATE_MIN)
    };
    ((lacking * TOPUP_MARGIN / rate).ceil() as usize).clamp(1, most.max(1))
}

/// Runs `p.polish_rounds` rounds of predicted crossings and hyperplane refits on the accepted
/// estimates not marked in `skip` (their `theta` is replaced; their other evidence is left as it
/// was). With `projected` the crossings are placed by projection ([`crate::place`]).
#[allow(clippy::too_many_arguments)]
pub fn polish<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    est: &mut [NeuronEstimate],
    skip: &[bool],
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
    half: f64,
    search_tol: SearchTol,
    projected: bool,
) -> Result<PolishStats, ExtractError> {
    let mut stats = PolishStats::default();
    if p.polish_rounds == 0 || est.is_empty() {
        return Ok(stats);
    }
    let d0 = known.input_dim;
    let unknowns = known.out_dim() + 1;
    // Points per neuron and round (`ExtractParams::polish_points_per_unknown`), or, for crossings
    // placed by projection, one big first round and top-ups
    // (`ExtractParams::projected_polish_points_per_unknown`).
    let per_round = (p.polish_points_per_unknown * unknowns as f64).ceil() as usize;
    let topped_up = projected && p.projected_polish_points_per_unknown > 0.0;
    let (regular_rounds, first_round) = if topped_up {
        let first = (p.projected_polish_points_per_unknown * unknowns as f64).ceil() as usize;
        (1, first)
    } else {
        (p.polish_rounds, per_round)
    };
    let most_per_round = first_round.max(per_round);
    let priors: Vec<Vec<f64>> = est.iter().map(|e| e.theta.clone()).collect();
    let mut points: Vec<Vec<Vec<f64>>> = vec![Vec::new(); est.len()];
    // Per neuron, all rounds: crossings placed, and points that passed the gate (the rate a
    // top-up is scaled by).
    let mut placed_total = vec![0usize; est.len()];
    let mut confirmed_total = vec![0usize; est.len()];
    // Each neuron's window: narrowed after every well-determined fit (the next estimate is far
    // better, and a narrower window meets fewer other kinks), widened after a round that mostly
    // missed (see `WINDOW_WIDEN`).
    let first_window = if projected {
        p.projected_polish_window
    } else {
        p.polish_window
    };
    let mut windows = vec![first_window; est.len()];
    let mut has_fit = vec![false; est.len()];
    let widest = p.refine_window.max(first_window);
    // The confirmed points of every polished neuron are held until the end: bound them. Neurons past
    // the budget keep their signature-based rows (said in a warning).
    let bytes_per_neuron =
        (regular_rounds + p.polish_rounds) * most_per_round * unknowns * std::mem::size_of::<f64>();
    let budget = (POINT_BYTES_MAX / bytes_per_neuron.max(1)).max(1);
    let mut skip = skip.to_vec();
    let wanted: Vec<usize> = (0..est.len()).filter(|&ei| !skip[ei]).collect();
    if wanted.len() > budget {
        tracing::warn!(
            neurons = wanted.len(),
            polished = budget,
            "hyperplane polishing would hold more than {} MiB of points; the rest keep their signature-based rows",
            POINT_BYTES_MAX >> 20
        );
        for &ei in &wanted[budget..] {
            skip[ei] = true;
        }
    }
    let kept_wanted = p.polish_kept_per_unknown * unknowns as f64;
    for round in 0..regular_rounds + p.polish_rounds {
        let active: Vec<usize> = (0..est.len())
            .filter(|&ei| !skip[ei])
            .filter(|&ei| {
                // Extra rounds (up to `polish_rounds` more) for a neuron not fitted yet or whose
                // fit kept too few points (`ExtractParams::polish_kept_per_unknown`).
                round < regular_rounds || !has_fit[ei] || (points[ei].len() as f64) < kept_wanted
            })
            .collect();
        if active.is_empty() {
            break;
        }
        // Crossings to place per neuron this round.
        let mut counts = vec![0usize; est.len()];
        for &ei in &active {
            counts[ei] = if !topped_up || round < regular_rounds {
                first_round
            } else {
                topup_count(
                    points[ei].len(),
                    kept_wanted.max((MIN_POINTS_PER_UNKNOWN * unknowns) as f64),
                    placed_total[ei],
                    confirmed_total[ei],
                    first_round,
                )
            };
        }
        // Neurons in groups whose lines fit in `LINE_BYTES_MAX` (a 784-input layer places 1,570 lines
        // of 12.5 KB per neuron and round). Lines are drawn in the same order either way.
        let per_neuron_bytes = most_per_round * 2 * d0 * std::mem::size_of::<f64>();
        let group = (LINE_BYTES_MAX / per_neuron_bytes.max(1)).max(1);
        let mut hits = vec![(0usize, 0usize); est.len()];
        let held: Vec<usize> = points.iter().map(Vec::len).collect();
        for chunk in active.chunks(group) {
            search_chunk(
                oracle,
                known,
                est,
                chunk,
                &windows,
                &mut hits,
                &counts,
                p,
                rng,
                half,
                search_tol,
                p.null_residual_max
                    .max(GATE_MIN)
                    .max(GATE_PER_WINDOW * first_window),
                &mut points,
                &mut stats,
                projected,
            )?;
        }
        for &ei in &active {
            placed_total[ei] += hits[ei].0;
            confirmed_total[ei] += points[ei].len() - held[ei];
        }
        let t_fit = std::time::Instant::now();
        // Independent per neuron (an SVD of up to ~4·(dim+1) rows each): both cores.
        let fits: Vec<(usize, Option<Fitted>)> = {
            use rayon::prelude::*;
            active
                .par_iter()
                .filter(|&&ei| points[ei].len() >= MIN_POINTS_PER_UNKNOWN * unknowns)
                .map(|&ei| {
                    (
                        ei,
                        robust_fit(&priors[ei], &points[ei], p.polish_trim_fraction),
                    )
                })
                .collect()
        };
        stats.fit_s += t_fit.elapsed().as_secs_f64();
        // Most windows missed: the estimate is further off than the window assumes.
        let missed: Vec<usize> = active
            .iter()
            .copied()
            .filter(|&ei| 2 * hits[ei].1 < hits[ei].0)
            .collect();
        let before = windows.clone();
        for (ei, fitted) in fits {
            let e = &mut est[ei];
            if let Some((theta, kept, median)) = fitted {
                tracing::debug!(
                    round,
                    neuron = ei,
                    points = points[ei].len(),
                    kept = kept.len(),
                    median,
                    moved = theta
                        .iter()
                        .zip(&e.theta)
                        .fold(0.0_f64, |m, (a, b)| m.max((a - b).abs())),
                    "polished"
                );
                e.theta = theta;
                has_fit[ei] = true;
                if kept.len() >= MIN_POINTS_PER_UNKNOWN * unknowns {
                    windows[ei] /= WINDOW_SHRINK;
                }
                points[ei] = kept;
            }
        }
        for &ei in &missed {
            windows[ei] = (before[ei] * WINDOW_WIDEN).min(widest);
        }
        if !missed.is_empty() {
            tracing::debug!(
                round,
                neurons = missed.len(),
                "polish windows widened: most met no kink near the prediction"
            );
        }
    }
    for (ei, e) in est.iter().enumerate() {
        if has_fit[ei] && !points[ei].is_empty() {
            stats.used += points[ei].len();
            let mut d: Vec<f64> = points[ei].iter().map(|u| distance(&e.theta, u)).collect();
            d.sort_by(f64::total_cmp);
            stats.worst_median = stats.worst_median.max(d[d.len() / 2]);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_plane_from_noisy_points_and_keeps_the_prior_elsewhere() {
        // Plane w = (3, -4, 0)/5, b = 0.5 in 3-d; points only with h_3 = 0, so the third weight is
        // fixed by the prior alone.
        let truth = [0.6, -0.8, 0.0, 0.5];
        let prior = [0.6 + 1e-3, -0.8, 2e-3, 0.5 - 1e-3];
        let mut pts = Vec::new();
        for i in 0..20 {
            let a = i as f64 * 0.37 - 3.0;
            // 0.6·x − 0.8·y + 0.5 = 0 → y = (0.6x + 0.5)/0.8, plus 1e-7 noise.
            let y = (0.6 * a + 0.5) / 0.8 + 1e-7 * ((i % 3) as f64 - 1.0);
            pts.push(point_row(&[a, y, 0.0]));
        }
        // One point of another kink far off the plane.
        pts.push(point_row(&[1.0, 1.0, 0.0]));
        let (theta, kept, median) = robust_fit(&prior, &pts, 0.5).expect("fit");
        assert_eq!(kept.len(), 20, "the outlier is dropped");
        assert!(median < 1e-6, "median {median}");
        assert!((theta[0] - truth[0]).abs() < 1e-5, "{theta:?}");
        assert!((theta[1] - truth[1]).abs() < 1e-5, "{theta:?}");
        assert!((theta[3] - truth[3]).abs() < 1e-5, "{theta:?}");
        // Unconstrained by the points: stays at the prior's value (scaled).
        assert!((theta[2] - 2e-3).abs() < 1e-4, "{theta:?}");
    }

    #[test]
    fn topups_ask_for_what_is_lacking_over_the_rate() {
        // 10 lacking at a rate of one half: 10 · 1.25 / 0.5.
        assert_eq!(topup_count(90, 100.0, 200, 100, 1000), 25);
        // Nothing placed yet: the rate is taken as 1.
        assert_eq!(topup_count(90, 100.0, 0, 0, 1000), 13);
        // A rate below `TOPUP_RATE_MIN` counts as that rate.
        assert_eq!(topup_count(90, 100.0, 100, 1, 1000), 50);
        // At most a first round's worth, and at least one point (even with enough held: a neuron
        // without a fit still needs new evidence).
        assert_eq!(topup_count(0, 1000.0, 10, 10, 300), 300);
        assert_eq!(topup_count(500, 100.0, 10, 10, 300), 2);
    }

    /// A balanced 12-8-6-1 net and its first layer's 8 rows (weights, then bias), unit-normalised.
    fn first_layer_rows(seed: u64) -> (netxray_relu::Network, Vec<Vec<f64>>) {
        use netxray_relu::{Arch, InitRecipe, Network};
        let arch = Arch::new(vec![12, 8, 6, 1]).expect("arch");
        let net = Network::random(&arch, InitRecipe::Balanced, seed);
        let first = &net.layers()[0];
        let truth = (0..8)
            .map(|i| {
                let mut t: Vec<f64> = (0..12).map(|k| first.weight[(i, k)]).collect();
                t.push(first.bias[i]);
                let n = norm(&t[..12]);
                t.iter().map(|v| v / n).collect()
            })
            .collect();
        (net, truth)
    }

    #[test]
    fn f64_polish_takes_perturbed_first_layer_estimates_to_rounding() {
        use crate::oracle::NetworkOracle;
        use rand::SeedableRng;
        let (net, truth) = first_layer_rows(3);
        let error = |est: &[NeuronEstimate], truth: &[Vec<f64>]| {
            est.iter().zip(truth).fold(0.0_f64, |m, (e, t)| {
                let n = norm(&e.theta[..12]);
                e.theta
                    .iter()
                    .zip(t)
                    .fold(m, |m, (a, b)| m.max((a / n - b).abs()))
            })
        };
        let p = ExtractParams::builder().build().expect("defaults");
        let oracle = NetworkOracle::new(net.clone());
        let co = CountingOracle::new(&oracle, None);
        let known = KnownPrefix::new(12);
        let half = p.line_half_length * p.origin_scale * 12f64.sqrt();
        // f64 preset: no noise floor.
        let tol = p.search_tol();
        // On random lines profiled through the prefix, and placed by projection (`crate::place`).
        for projected in [false, true] {
            // Estimates 1e-7 off (as deep-layer signatures come out), every coordinate constrained.
            let mut est: Vec<NeuronEstimate> = truth
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut e = NeuronEstimate::new(12, 10.0);
                    e.known = vec![true; 12];
                    e.theta = t
                        .iter()
                        .enumerate()
                        .map(|(k, v)| v + 1e-7 * (((i * 13 + k * 7) % 5) as f64 - 2.0))
                        .collect();
                    e
                })
                .collect();
            assert!(error(&est, &truth) > 1e-8);
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            // Neuron 0 is marked precise: it must be left exactly as it was.
            let before = est[0].theta.clone();
            let mut skip = vec![false; 8];
            skip[0] = true;
            let stats = polish(
                &co, &known, &mut est, &skip, &p, &mut rng, half, tol, projected,
            )
            .expect("polish");
            assert_eq!(est[0].theta, before, "a skipped neuron is not refitted");
            assert!(
                stats.used >= 7 * 2 * 13,
                "used {} (projected: {projected})",
                stats.used
            );
            let polished = error(&est[1..], &truth[1..]);
            assert!(
                polished < 1e-12,
                "after polishing: {polished:e} (projected: {projected})"
            );
        }
    }

    #[test]
    fn windows_that_miss_are_widened_until_the_crossings_are_met() {
        use crate::oracle::NetworkOracle;
        use rand::SeedableRng;
        let (net, truth) = first_layer_rows(5);
        // A residual bound loose enough to admit points 1e-4 off the estimate, so that only the
        // window can stand in the way.
        let p = ExtractParams::builder()
            .null_residual_max(1e-3)
            .build()
            .expect("params");
        let oracle = NetworkOracle::new(net.clone());
        let co = CountingOracle::new(&oracle, None);
        let known = KnownPrefix::new(12);
        let half = p.line_half_length * p.origin_scale * 12f64.sqrt();
        // f64 preset: no noise floor.
        let tol = p.search_tol();
        // 1e-4 off: the predictions miss the 1e-6 projected window (3.5e-5 of the input scale
        // here) by an order of magnitude; without widening no point is confirmed.
        let mut est: Vec<NeuronEstimate> = truth
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let theta = t
                    .iter()
                    .enumerate()
                    .map(|(k, v)| v + 1e-4 * (((i * 11 + k * 5) % 7) as f64 - 3.0))
                    .collect();
                NeuronEstimate::with_row(theta, 10.0)
            })
            .collect();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        polish(
            &co,
            &known,
            &mut est,
            &[false; 8],
            &p,
            &mut rng,
            half,
            tol,
            true,
        )
        .expect("polish");
        for (e, t) in est.iter().zip(&truth) {
            let n = norm(&e.theta[..12]);
            let err = e
                .theta
                .iter()
                .zip(t)
                .fold(0.0_f64, |m, (a, b)| m.max((a / n - b).abs()));
            assert!(err < 1e-8, "after polishing: {err:e}");
        }
    }
}
