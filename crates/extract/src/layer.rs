//! Recovery of one hidden layer's weight rows and biases (up to sign and positive scale).

use crate::aim::ResidualPool;
use crate::cluster::{BankTol, NeuronBank, NeuronEstimate};
use crate::critical::{CriticalPoint, Line, SearchTol, find_critical_points};
use crate::error::ExtractError;
use crate::known::KnownPrefix;
use crate::linalg::{dot, norm};
use crate::oracle::{CountingOracle, Oracle};
use crate::params::{ExtractParams, PROBE_COMMON_MIN, Precision};
use crate::signature::{StencilParams, measure, measure_on};
use faer::Mat;
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

/// Rounds after which a single-witness estimate with no partner is dropped.
const STALE_ROUNDS: usize = 4;

/// Spread of the validation lines aimed near an estimate's own witnesses, relative to the data scale
/// (`origin_scale`): far enough that the predicted crossing lies in other activation regions, near
/// enough that a rarely active neuron's hyperplane is still met.
pub(crate) const LOCAL_OFFSET: f64 = 0.5;

/// ChaCha stream of the residual pool's inputs (any value other than the main stream's 0).
const AIM_STREAM: u64 = 0xA1;

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
    /// Complete and confirmed by predicted crossings on fresh lines (else accepted as the best of the
    /// incomplete estimates, which can be a deeper unit's local piece).
    pub validated: bool,
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
    let origin: Vec<f64> = (0..d0)
        .map(|_| sigma * rng.sample::<f64, _>(StandardNormal))
        .collect();
    let mut dir: Vec<f64> = (0..d0)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect();
    let n = norm(&dir);
    dir.iter_mut().for_each(|v| *v /= n);
    Line { origin, dir }
}

/// A random line through a point near one of `anchors` (a neuron's own witnesses): origin offset
/// `LOCAL_OFFSET·σ`, so its crossings still lie in other activation regions. `anchors` must not be
/// empty. Draws the anchor first, then the line.
pub(crate) fn line_near_anchor(
    rng: &mut ChaCha20Rng,
    anchors: &[Vec<f64>],
    d0: usize,
    sigma: f64,
) -> Line {
    let anchor = &anchors[rng.random_range(0..anchors.len())];
    let mut line = random_line(rng, d0, LOCAL_OFFSET * sigma);
    line.origin
        .iter_mut()
        .zip(anchor)
        .for_each(|(o, a)| *o += a);
    line
}

/// `n` random inputs `~ N(0, (σ·scales[i mod len])²)` of width `d0`, drawn coordinate by coordinate
/// in order (the stream every sampling stage of the attack shares).
pub fn random_inputs(
    rng: &mut ChaCha20Rng,
    n: usize,
    d0: usize,
    sigma: f64,
    scales: &[f64],
) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| {
            let s = sigma * scales[i % scales.len()];
            (0..d0)
                .map(|_| s * rng.sample::<f64, _>(StandardNormal))
                .collect()
        })
        .collect()
}

/// Splits `[-L, L]` at the known kinks of the line, leaving a small margin around each.
pub fn free_segments(
    known: &KnownPrefix,
    line: &Line,
    line_id: usize,
    half: f64,
) -> Vec<(usize, f64, f64)> {
    free_segments_in(known, line, line_id, -half, half)
}

/// Splits `[t0, t1]` at the known kinks of the line, leaving a small margin around each.
pub fn free_segments_in(
    known: &KnownPrefix,
    line: &Line,
    line_id: usize,
    t0: f64,
    t1: f64,
) -> Vec<(usize, f64, f64)> {
    let ks = known.kinks_on_line(&line.origin, &line.dir, t0, t1);
    let mut pts = vec![t0];
    pts.extend(ks);
    pts.push(t1);
    let margin = 1e-9 * (t1 - t0);
    pts.windows(2)
        .filter(|w| w[1] - w[0] > 4.0 * margin)
        .map(|w| (line_id, w[0] + margin, w[1] - margin))
        .collect()
}

/// Screening of critical points before their full measurement.
///
/// On a wide input most critical points met while recovering layer 1 are kinks of *deeper* layers,
/// and each was measured in full before it could be told apart (2.9 M of the 3.1 M queries of a
/// 784-64-64-10 extraction). A layer-1 neuron's row is the same at every point of its hyperplane, a
/// deeper kink's effective row changes with the activation pattern. So each unattached point is first
/// *probed* on a fixed random subset of input coordinates (4·|S| + 2 queries); only when two probes
/// agree (up to sign) is one of the two points measured in full, and the other joins it by the plane
/// test. Deeper kinks cost a probe each.
///
/// Deeper layers (`probe_units`) work the same way in the previous layer's units: a neuron of the
/// layer has one row there at every point of its (bent) hyperplane, and the probe reads it on the
/// probed units that are active at the point (`active` of the probe witness). Two probes are compared
/// on the units both read (at least [`PROBE_COMMON_MIN`]); a probe that agrees with an estimate of the
/// layer on its known units is measured in full at once (it brings the estimate units it lacks).
#[derive(Debug)]
struct ProbePool {
    /// Probed indices, sorted: input coordinates (first layer) or previous-layer units.
    coords: Vec<usize>,
    /// Unmatched probes.
    waiting: Vec<Probe>,
    tol: f64,
    /// Compare probes with the layer's estimates (deeper layers; see [`ProbePool::screen`]).
    match_estimates: bool,
}

/// One probe: the indices it read (sorted), the unit row on them, and the point.
#[derive(Debug)]
struct Probe {
    idx: Vec<usize>,
    row: Vec<f64>,
    cp: CriticalPoint,
}

/// The entries two rows, given on the sorted indices `ai` and `bi`, have on their shared indices:
/// `(a_k, b_k)` in index order.
fn shared_entries<'r>(
    ai: &'r [usize],
    a: &'r [f64],
    bi: &'r [usize],
    b: &'r [f64],
) -> impl Iterator<Item = (f64, f64)> + 'r {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        while i < ai.len() && j < bi.len() {
            match ai[i].cmp(&bi[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    let pair = (a[i], b[j]);
                    i += 1;
                    j += 1;
                    return Some(pair);
                }
            }
        }
        None
    })
}

/// Do two rows, given on the sorted indices `ai` and `bi`, agree up to sign and scale on the indices
/// they share (at least [`PROBE_COMMON_MIN`] of them, or all when one has fewer)? Each is renormalised
/// on the shared indices, and compared entry by entry to `tol`.
///
/// Every new probe is compared with every waiting one (53,374 waited on the 3072-256×8-10's second
/// layer after two rounds), so this allocates nothing: one merge for the norms, one to compare,
/// stopping at the first entry that differs. The sums run in index order, as `norm` and `dot` of the
/// gathered entries would, so the verdicts are the same bit for bit.
fn rows_agree(ai: &[usize], a: &[f64], bi: &[usize], b: &[f64], tol: f64) -> bool {
    let (mut common, mut saa, mut sbb, mut sab) = (0usize, 0.0_f64, 0.0_f64, 0.0_f64);
    for (x, y) in shared_entries(ai, a, bi, b) {
        common += 1;
        saa += x * x;
        sbb += y * y;
        sab += x * y;
    }
    if common < PROBE_COMMON_MIN.min(ai.len()).min(bi.len()).max(2) {
        return false;
    }
    let (na, nb) = (saa.sqrt(), sbb.sqrt());
    if na == 0.0 || nb == 0.0 {
        return false;
    }
    let s = if sab < 0.0 { -1.0 } else { 1.0 };
    shared_entries(ai, a, bi, b).all(|(x, y)| (x / na - s * y / nb).abs() <= tol)
}

impl ProbePool {
    fn new(n: usize, size: usize, tol: f64, match_estimates: bool, rng: &mut ChaCha20Rng) -> Self {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..size {
            let j = rng.random_range(i..n);
            all.swap(i, j);
        }
        let mut coords = all[..size].to_vec();
        coords.sort_unstable();
        Self {
            coords,
            waiting: Vec::new(),
            tol,
            match_estimates,
        }
    }

    /// Probes `cps` and returns the points to measure in full: matched pairs (a point whose probe
    /// matched an earlier one on another line, and that earlier partner), and on deeper layers the
    /// points whose probe agrees with an estimate in `bank`. The caller measures the first of each
    /// pair in full and tries the partner on the resulting estimate's hyperplane (free) before
    /// measuring it too: a full first-layer measurement is ~4–6·d0 queries (19,400 on a 3072-input
    /// net), and the plane test of an exact crossing holds whenever the single signature is good to
    /// ~`plane_tol`. Points without a usable probe are dropped.
    fn screen<O: Oracle + ?Sized>(
        &mut self,
        oracle: &CountingOracle<'_, O>,
        known: &KnownPrefix,
        lines: &[Line],
        cps: Vec<CriticalPoint>,
        stencil: StencilParams,
        bank: &NeuronBank,
        pair_up: bool,
    ) -> Result<Screened, ExtractError> {
        use rayon::prelude::*;
        // Wall time of the probes (their geometry and queries) and of the comparisons, logged so a
        // profile of a round can be read from the log alone.
        let clock = std::time::Instant::now();
        let target_before = oracle.target_seconds();
        let probes = measure_on(oracle, known, lines, &cps, stencil, Some(&self.coords))?;
        let probe_s = clock.elapsed().as_secs_f64();
        let probe_target_s = oracle.target_seconds() - target_before;
        let clock = std::time::Instant::now();
        let mut out = Screened::default();
        // Probes that gave no row (stencils never linear, or not one kink): ~2.5 % per line on a
        // 3072-256×8-10's first layer; logged so that a jump in it shows up.
        let mut unusable = 0usize;
        // Probes neither matched nor kept waiting (`pair_up` false).
        let mut dropped = 0usize;
        // Waiting probes retired to keep the pool under its bound.
        let mut retired = 0usize;
        // Each estimate's known units and its row on them, for the deeper-layer comparison.
        let est_rows: Vec<(Vec<usize>, Vec<f64>)> = if self.match_estimates {
            bank.estimates
                .iter()
                .filter(|e| e.witnesses > 0)
                .map(|e| {
                    let idx: Vec<usize> = (0..e.known.len()).filter(|&k| e.known[k]).collect();
                    let row = idx.iter().map(|&k| e.theta[k]).collect();
                    (idx, row)
                })
                .collect()
        } else {
            Vec::new()
        };
        for (cp, probe) in cps.into_iter().zip(probes) {
            let Some((idx, row)) = probe.and_then(|w| w.full.map(|f| (w.active, f))) else {
                unusable += 1;
                continue;
            };
            if est_rows
                .par_iter()
                .any(|(ki, theta)| rows_agree(&idx, &row, ki, theta, self.tol))
            {
                out.of_estimates.push(cp);
                continue;
            }
            if !pair_up {
                dropped += 1;
                continue;
            }
            // Only a partner on another line counts: consecutive kinks of one deeper unit on the same
            // line often share the activation pattern, hence the probe row, while a first-layer
            // neuron is met once per line.
            // On both cores: the first match in waiting order, as a serial scan would find.
            let hit = self.waiting.par_iter().position_first(|w| {
                w.cp.line != cp.line && rows_agree(&w.idx, &w.row, &idx, &row, self.tol)
            });
            match hit {
                Some(i) => {
                    let partner = self.waiting.swap_remove(i).cp;
                    out.pairs.push((cp, partner));
                }
                None => self.waiting.push(Probe { idx, row, cp }),
            }
        }
        // Oldest lines first out: every new probe is compared with every waiting one, so an
        // unbounded pool makes screening quadratic in the lines searched (see `WAITING_PROBES_MAX`).
        let excess = self.waiting.len().saturating_sub(WAITING_PROBES_MAX);
        if excess > 0 {
            self.waiting.sort_by_key(|w| w.cp.line);
            self.waiting.drain(..excess);
            retired += excess;
        }
        tracing::debug!(
            layer = known.layers.len() + 1,
            matched = out.pairs.len(),
            of_estimates = out.of_estimates.len(),
            unusable,
            dropped,
            retired,
            waiting = self.waiting.len(),
            probe_s,
            probe_target_s,
            compare_s = clock.elapsed().as_secs_f64(),
            queries = oracle.queries(),
            target_s = oracle.target_seconds(),
            "screening"
        );
        Ok(out)
    }
}

/// Bound on the probes waiting for a partner. Each new probe is compared with every waiting one:
/// 53,374 waited on the 3072-256×8-10's layer 2 after two rounds (the comparisons then took most of
/// a line's screening). A neuron of the layer is met on most lines, so a probe that found no partner
/// among the last ~5 lines' kinks (~3,500 each there) is rarely of one; small nets stay far below.
const WAITING_PROBES_MAX: usize = 20_000;

/// What [`ProbePool::screen`] found worth a full measurement.
#[derive(Debug, Default)]
struct Screened {
    /// Matched probes: the later point, and its earlier partner.
    pairs: Vec<(CriticalPoint, CriticalPoint)>,
    /// Points whose probe agrees with an estimate of the layer (deeper layers only).
    of_estimates: Vec<CriticalPoint>,
}

/// Gives each critical point to the estimate whose hyperplane holds it (free), and measures the
/// signatures of the rest (after screening, when enabled), adding every usable witness to the bank.
/// Counts queries and points.
#[allow(clippy::too_many_arguments)]
fn attach_or_measure<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    lines: &[Line],
    cps: Vec<CriticalPoint>,
    stencil: StencilParams,
    bank: &mut NeuronBank,
    tol: &BankTol,
    out: &mut LayerSignatures,
    pool: Option<&mut ProbePool>,
    pair_up: bool,
) -> Result<(), ExtractError> {
    // The prefix's output at every point, in one batch.
    let layer_inputs = |cps: &[CriticalPoint]| -> Vec<Vec<f64>> {
        let xs: Vec<Vec<f64>> = cps.iter().map(|cp| lines[cp.line].at(cp.t)).collect();
        known
            .forward_rows(&xs)
            .into_iter()
            .map(|(_, h)| h)
            .collect()
    };
    let mut to_measure = Vec::new();
    let clock = std::time::Instant::now();
    let n_points = cps.len();
    let inputs = layer_inputs(&cps);
    let line_of: Vec<usize> = cps.iter().map(|cp| cp.line).collect();
    for (cp, attached) in cps
        .into_iter()
        .zip(bank.attach_points(&inputs, &line_of, tol))
    {
        if attached {
            out.attached_points += 1;
        } else {
            to_measure.push(cp);
        }
    }
    let attach_s = clock.elapsed().as_secs_f64();
    let clock = std::time::Instant::now();
    bank.solve_dirty();
    tracing::debug!(
        points = n_points,
        attached = n_points - to_measure.len(),
        attach_s,
        solve_s = clock.elapsed().as_secs_f64(),
        "attached by the plane test"
    );
    let q0 = oracle.queries();
    if let Some(pool) = pool {
        let screened = pool.screen(oracle, known, lines, to_measure, stencil, bank, pair_up)?;
        let (mut first, partners): (Vec<_>, Vec<_>) = screened.pairs.into_iter().unzip();
        first.extend(screened.of_estimates);
        measure_into_bank(oracle, known, lines, &first, stencil, bank, tol, out)?;
        bank.solve_dirty();
        // A partner that lies on the hyperplane of the estimate its match just started joins it for
        // free; the rest (a false match, a signature too coarse for the plane test, or on deeper
        // layers a partner active on units the first point was not) are measured.
        to_measure = Vec::new();
        let mut joined = 0usize;
        let inputs = layer_inputs(&partners);
        let line_of: Vec<usize> = partners.iter().map(|cp| cp.line).collect();
        let attached = bank.attach_points(&inputs, &line_of, tol);
        for (cp, attached) in partners.into_iter().zip(attached) {
            if attached {
                out.attached_points += 1;
                joined += 1;
            } else {
                to_measure.push(cp);
            }
        }
        tracing::debug!(
            joined,
            measured = to_measure.len(),
            target_s = oracle.target_seconds(),
            "screened partners"
        );
    }
    measure_into_bank(oracle, known, lines, &to_measure, stencil, bank, tol, out)?;
    out.signature_queries += oracle.queries() - q0;
    Ok(())
}

/// Measures `cps` in full and adds every usable witness to the bank.
#[allow(clippy::too_many_arguments)]
fn measure_into_bank<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    lines: &[Line],
    cps: &[CriticalPoint],
    stencil: StencilParams,
    bank: &mut NeuronBank,
    tol: &BankTol,
    out: &mut LayerSignatures,
) -> Result<(), ExtractError> {
    if cps.is_empty() {
        return Ok(());
    }
    // Wall time of the measurement (geometry and queries) and of the bank's serial joins, logged
    // so a profile of a round can be read from the log alone.
    let clock = std::time::Instant::now();
    let target_before = oracle.target_seconds();
    let witnesses = measure(oracle, known, lines, cps, stencil)?;
    let measure_s = clock.elapsed().as_secs_f64();
    let measure_target_s = oracle.target_seconds() - target_before;
    let clock = std::time::Instant::now();
    let mut usable = 0usize;
    for w in witnesses.into_iter().flatten() {
        usable += 1;
        out.measured_witnesses += 1;
        bank.add_witness(&w, tol);
    }
    tracing::debug!(
        points = cps.len(),
        usable,
        measure_s,
        measure_target_s,
        bank_s = clock.elapsed().as_secs_f64(),
        "measured into the bank"
    );
    Ok(())
}

/// Cap on hyperplane-following lines per witness round. Every line (and its critical points) is kept
/// for the rest of the layer, and with thousands of promising but incomplete estimates asking for 4
/// lines each the work per round has no bound. Small nets never reach the cap. (It does not stop the
/// memory growth seen on the 8th layer of a balanced 784-16×8-1: that has another cause, still open.)
const MAX_FOLLOW_LINES_PER_ROUND: usize = 256;

/// Missing units an estimate is followed towards per round (one line each).
const FOLLOW_UNITS_PER_ESTIMATE: usize = 4;

/// Orders the hyperplane-following asks `(estimate, missing units)` of one round. When they exceed
/// the cap, the estimates closest to complete go first: in bank order the same first ~64 estimates
/// took the whole cap round after round and the rest were never followed (the 3072-256×8-10's second
/// layer had ~216 promising estimates asking). Below the cap the bank's order stays, and with it
/// every small net's rng stream.
fn order_follow_asks<T>(asks: &mut [(T, Vec<usize>)], units_per_line: usize) {
    let wanted: usize = asks
        .iter()
        .map(|(_, m)| {
            m.len()
                .min(FOLLOW_UNITS_PER_ESTIMATE)
                .div_ceil(units_per_line)
        })
        .sum();
    if wanted > MAX_FOLLOW_LINES_PER_ROUND {
        asks.sort_by_key(|(_, m)| m.len());
    }
}

/// Identity of an estimate for bookkeeping: the bits of its first anchor point.
fn est_key(e: &NeuronEstimate) -> Vec<u64> {
    e.anchors
        .first()
        .map(|a| a.iter().map(|v| v.to_bits()).collect())
        .unwrap_or_default()
}

/// The normal of the estimate `theta`'s hyperplane in input space at the point of `st` (the gradient
/// of `θ · h` through the known prefix), as a unit vector and its length; `None` where it vanishes.
fn input_normal(theta: &[f64], st: &crate::known::LocalState) -> Option<(Vec<f64>, f64)> {
    let (dim, d0) = (st.dh.nrows(), st.dh.ncols());
    let g: Vec<f64> = (0..d0)
        .map(|c| (0..dim).map(|r| theta[r] * st.dh[(r, c)]).sum())
        .collect();
    let gn = norm(&g);
    (gn > 0.0).then(|| (g.iter().map(|v| v / gn).collect(), gn))
}

/// [`input_normal`] from the prefix's pre-activations at the point (as
/// [`KnownPrefix::pre_activations`] gives them for every known layer): one vector-Jacobian product
/// ([`KnownPrefix::input_gradient`]) instead of every layer's full Jacobian. Behind seven 256-wide
/// layers on 3072 inputs that is ~1.2 M multiply-adds instead of ~1.2 G, and `follow_to_unit`, the
/// fallback of a quarter of a deep layer's walks, formed those Jacobians at every step (session 30).
/// Agrees with [`input_normal`] to rounding.
fn input_normal_at(
    known: &KnownPrefix,
    theta: &[f64],
    pre: &[Vec<f64>],
) -> Option<(Vec<f64>, f64)> {
    let g = match pre.last() {
        // Nothing known: `h` is the input itself.
        None => theta[..known.input_dim].to_vec(),
        Some(z) => {
            let v: Vec<f64> = z
                .iter()
                .zip(theta)
                .map(|(&zr, &t)| if zr > 0.0 { t } else { 0.0 })
                .collect();
            known.input_gradient(pre, &v)
        }
    };
    let gn = norm(&g);
    (gn > 0.0).then(|| (g.iter().map(|v| v / gn).collect(), gn))
}

/// Walks from `anchor` (on the hyperplane of the estimate `theta`) along that hyperplane until unit
/// `unit` of the known prefix turns active, and returns a short line through the end point along the
/// estimate's normal, with its half length. Offline: no queries.
///
/// Behind a prefix whose full Jacobian is large ([`jacobian_free`]) each step is one forward pass
/// and two vector-Jacobian products (the normal, and the unit's gradient); on smaller prefixes it
/// forms the Jacobians, as the acceptance runs were measured with (the two differ by rounding, and
/// rounding alone changes a small net's course: see [`crate::signature`]'s
/// `FIRST_LAYER_SVD_MIN_JACOBIAN`).
fn follow_to_unit(
    known: &KnownPrefix,
    theta: &[f64],
    anchor: &[f64],
    unit: usize,
) -> Option<(Line, f64)> {
    follow_to_unit_by(known, theta, anchor, unit, jacobian_free(known))
}

/// [`follow_to_unit`] with the choice of vector-Jacobian products (`by_products`) or full Jacobians
/// made by the caller.
fn follow_to_unit_by(
    known: &KnownPrefix,
    theta: &[f64],
    anchor: &[f64],
    unit: usize,
    by_products: bool,
) -> Option<(Line, f64)> {
    let d0 = known.input_dim;
    let mut x = anchor.to_vec();
    let mut travelled: f64 = 0.0;
    for _ in 0..FOLLOW_MAX_STEPS {
        // The normal, the unit's pre-activation, and its gradient (`None` once the unit is on).
        let (ghat, zk, dz) = if by_products {
            let pre = known.pre_activations(&x, known.layers.len());
            let (ghat, _) = input_normal_at(known, theta, &pre)?;
            let zk = match pre.last() {
                Some(z) => z[unit],
                // The input's own coordinate: nothing to walk along.
                None if x[unit] <= 0.0 => return None,
                None => x[unit],
            };
            let dz = (zk <= 0.0).then(|| {
                let mut pick = vec![0.0; known.out_dim()];
                pick[unit] = 1.0;
                known.input_gradient(&pre, &pick)
            });
            (ghat, zk, dz)
        } else {
            let st = known.local_full(&x);
            let (ghat, _) = input_normal(theta, &st)?;
            let zk = if st.h[unit] > 0.0 {
                st.h[unit]
            } else {
                st.pre.last()?[unit]
            };
            let dz = (st.h[unit] <= 0.0).then(|| {
                let dpre = st.dpre.last().expect("known layer");
                (0..d0).map(|c| dpre[(unit, c)]).collect::<Vec<f64>>()
            });
            (ghat, zk, dz)
        };
        let Some(dz) = dz else {
            let r = (0.25 * travelled).max(1e-6);
            return Some((
                Line {
                    origin: x,
                    dir: ghat,
                },
                r,
            ));
        };
        let along = dot(&dz, &ghat);
        let tau: Vec<f64> = dz.iter().zip(&ghat).map(|(a, b)| a - along * b).collect();
        let tn2 = dot(&tau, &tau);
        if tn2 == 0.0 {
            return None;
        }
        // Step to just past the unit's boundary (first order; repeated when other units change the map).
        let t = -zk / tn2 * 1.02 + 1e-9;
        x.iter_mut().zip(&tau).for_each(|(xi, ti)| *xi += t * ti);
        travelled += t * tn2.sqrt();
    }
    None
}

/// Whether walks behind `known` take vector-Jacobian products instead of forming the prefix's full
/// Jacobians (see [`follow_to_unit`]).
fn jacobian_free(known: &KnownPrefix) -> bool {
    known.out_dim() * known.input_dim >= crate::signature::FIRST_LAYER_SVD_MIN_JACOBIAN
}

/// Like [`follow_to_unit`], but walks until every unit in `units` is active at once, so that one
/// full measurement there brings all of them into the estimate. On a wide deeper layer an estimate
/// lacks ~18 of 256 units after its first lines (each earlier unit is active at about half of a
/// neuron's witnesses); one line per missing unit (4,231 asked on the 3072-256×8-10's layer 2 after
/// round 1) cannot keep up with the 256-line cap, one line per estimate can.
///
/// Each step is the minimum-norm move that brings the inactive units (plus any active one the move
/// would turn off) just past their boundaries, within the estimate's local hyperplane, plus a move
/// along the normal back to the anchor's value of the estimate's known part (crossing a known
/// unit's boundary bends the hyperplane; a step in the tangent of the old piece leaves it). The
/// missing units are then barely active, so the true hyperplane (which also has their unknown
/// weights) is close: the search radius is a few times the largest shift they could cause, instead
/// of [`follow_to_unit`]'s quarter of the distance walked, which on a 3072-input layer put dozens of
/// deeper kinks on each line. Returns `None` when the walk does not get there.
fn follow_to_units(
    known: &KnownPrefix,
    theta: &[f64],
    anchor: &[f64],
    units: &[usize],
) -> Option<(Line, f64)> {
    let d0 = known.input_dim;
    let value = |h: &[f64]| dot(theta, h);
    let empty = faer::Mat::<f64>::zeros(d0, 0);
    let v0 = value(&known.local(anchor, &empty).h);
    // Largest entry of `theta`, its bias included (a looser bound on the unknown weights; the runs in
    // docs/extraction.md, "Session 18", were made so).
    let theta_max = theta.iter().fold(0.0_f64, |m, t| m.max(t.abs()));
    let mut x = anchor.to_vec();
    for _ in 0..FOLLOW_MAX_STEPS {
        let st = known.local_full(&x);
        let (ghat, gn) = input_normal(theta, &st)?;
        let off_plane = value(&st.h) - v0;
        if units.iter().all(|&k| st.h[k] > 0.0) {
            // The missing units' unknown weights are taken as at most the largest known one.
            let shift = theta_max * units.iter().map(|&k| st.h[k]).sum::<f64>() + off_plane.abs();
            let r = (FOLLOW_RADIUS_FACTOR * shift / gn).max(1e-6);
            return Some((
                Line {
                    origin: x,
                    dir: ghat,
                },
                r,
            ));
        }
        let z = st.pre.last()?;
        let dpre = st.dpre.last().expect("known layer");
        // Each unit's gradient within the hyperplane (its component along the normal removed).
        let tau: Vec<Vec<f64>> = units
            .iter()
            .map(|&k| {
                let dz: Vec<f64> = (0..d0).map(|c| dpre[(k, c)]).collect();
                let along = dot(&dz, &ghat);
                dz.iter().zip(&ghat).map(|(a, b)| a - along * b).collect()
            })
            .collect();
        // Target pre-activation for a constrained unit: just past zero (2 % of the way it has to
        // travel, as in `follow_to_unit`, and never less than a hair).
        let target = |i: usize| 0.02 * z[units[i]].abs() + 1e-9;
        let mut set: Vec<usize> = (0..units.len()).filter(|&i| z[units[i]] <= 0.0).collect();
        let mut step = vec![0.0; d0];
        for _ in 0..units.len() {
            let a = faer::Mat::<f64>::from_fn(set.len(), d0, |r, c| tau[set[r]][c]);
            let b =
                faer::Mat::<f64>::from_fn(set.len(), 1, |r, _| target(set[r]) - z[units[set[r]]]);
            let sol = crate::linalg::lstsq(&a, &b);
            step = (0..d0).map(|c| sol[(c, 0)]).collect();
            // Units the step would turn off (to first order) join the constrained set.
            let extra: Vec<usize> = (0..units.len())
                .filter(|i| !set.contains(i) && z[units[*i]] + dot(&tau[*i], &step) <= 0.0)
                .collect();
            if extra.is_empty() {
                break;
            }
            set.extend(extra);
        }
        // Back onto the hyperplane along its normal.
        let back = -off_plane / gn;
        step.iter_mut().zip(&ghat).for_each(|(s, n)| *s += back * n);
        let len = norm(&step);
        if !len.is_finite() || len == 0.0 {
            return None;
        }
        x.iter_mut().zip(&step).for_each(|(xi, si)| *xi += si);
    }
    None
}

/// The first known layer's `W₁W₁ᵀ`, factored: maps a change of the first layer's pre-activations
/// back to the least input change, `Δx = W₁ᵀ (W₁W₁ᵀ)⁻¹ Δz₁`. `None` without two known layers or
/// when `W₁` has more rows than inputs.
struct FirstLayerMap {
    llt: faer::linalg::solvers::Llt<f64>,
}

impl FirstLayerMap {
    fn of(known: &KnownPrefix) -> Option<Self> {
        if known.layers.len() < 2 {
            return None;
        }
        let w1 = &known.layers[0].weight;
        if w1.nrows() > w1.ncols() {
            return None;
        }
        let g = known.first_layer_gram()?;
        Some(Self {
            llt: g.llt(faer::Side::Lower).ok()?,
        })
    }
}

/// [`follow_to_units`] behind two or more known layers, where the end point must also keep the
/// control rank: a witness reads the row on the previous layer's active units only if there are no
/// more of them than active units in every earlier layer (the rank of the prefix's Jacobian).
/// Turning all missing units on (~75 per estimate on layer 3 of the 3072-256×8-10) broke that at
/// every end point, so at most [`FOLLOW_RANKED_UNITS_MAX`] are turned on and as many known ones
/// (those closest to their boundary) turned off as the bound needs.
///
/// The walk is taken in the first layer's pre-activation space: everything after the first layer
/// depends on the input only through `z₁ = W₁x + b₁`, so each step is a minimum-norm solve in `n₁`
/// unknowns over products of `n × n` matrices (the input-space walk formed a `256 × 3072` Jacobian
/// per known layer and step, a fifth of layer 3's time in a profile), and the input follows at the
/// end by the least change that gives the reached `z₁`.
fn follow_to_units_ranked(
    known: &KnownPrefix,
    first: &FirstLayerMap,
    theta: &[f64],
    anchor: &[f64],
    units: &[usize],
) -> Option<(Line, f64)> {
    use faer::linalg::solvers::Solve;
    let l1 = &known.layers[0];
    let n1 = l1.fan_out();
    let depth = known.layers.len();
    let dim = known.out_dim();
    let units: Vec<usize> = units
        .iter()
        .copied()
        .take(FOLLOW_RANKED_UNITS_MAX)
        .collect();
    let theta_max = theta.iter().fold(0.0_f64, |m, t| m.max(t.abs()));
    let ac = faer::Col::<f64>::from_fn(anchor.len(), |i| anchor[i]);
    let wa = &l1.weight * &ac;
    let z1_anchor: Vec<f64> = (0..n1).map(|u| wa[u] + l1.bias[u]).collect();
    // Pre-activations of every known layer (the first is `z₁` itself).
    let forward = |z1: &[f64]| -> Vec<Vec<f64>> {
        let mut pre = vec![z1.to_vec()];
        for l in &known.layers[1..] {
            let z = pre.last().expect("a layer");
            let h = faer::Col::<f64>::from_fn(z.len(), |i| z[i].max(0.0));
            let wh = &l.weight * &h;
            pre.push((0..l.fan_out()).map(|r| wh[r] + l.bias[r]).collect());
        }
        pre
    };
    let value = |pre: &[Vec<f64>]| -> f64 {
        let z = pre.last().expect("a layer");
        (0..dim).map(|k| theta[k] * z[k].max(0.0)).sum()
    };
    let v0 = value(&forward(&z1_anchor));
    let last = depth - 1;
    let mut z1 = z1_anchor.clone();
    let mut off: Vec<usize> = Vec::new();
    for _ in 0..FOLLOW_MAX_STEPS {
        let pre = forward(&z1);
        let lin = WalkLinearization::at(known, &pre);
        let z = &pre[last];
        // The hyperplane's normal in z₁ (the gradient of θ·h).
        let on_last = &lin.on[last];
        let normal = lin.combined_row(last, on_last, |i| theta[on_last[i]]);
        let off_plane = value(&pre) - v0;
        let active = on_last.len();
        let bound = lin.on[..last]
            .iter()
            .map(Vec::len)
            .min()
            .unwrap_or(known.input_dim);
        let rank_room = bound as i64 - FOLLOW_RANK_SLACK as i64 - active as i64;
        if units.iter().all(|&k| z[k] > 0.0) && rank_room >= 0 {
            let dz = Mat::<f64>::from_fn(n1, 1, |u, _| z1[u] - z1_anchor[u]);
            let dx = l1.weight.transpose() * first.llt.solve(&dz);
            let x: Vec<f64> = anchor
                .iter()
                .enumerate()
                .map(|(i, a)| a + dx[(i, 0)])
                .collect();
            // The normal in input space, `W₁ᵀ n`.
            let nc = faer::Col::<f64>::from_fn(n1, |i| normal[i]);
            let nx = l1.weight.transpose() * &nc;
            let gn = nx.norm_l2();
            if !(gn > 0.0 && gn.is_finite()) {
                return None;
            }
            let dir: Vec<f64> = (0..nx.nrows()).map(|i| nx[i] / gn).collect();
            let shift = theta_max * units.iter().map(|&k| z[k]).sum::<f64>() + off_plane.abs();
            let r = (FOLLOW_RADIUS_FACTOR * shift / gn).max(1e-6);
            return Some((Line { origin: x, dir }, r));
        }
        if rank_room < 0 {
            let mut cand: Vec<usize> = (0..z.len())
                .filter(|&u| z[u] > 0.0 && !units.contains(&u) && !off.contains(&u))
                .collect();
            cand.sort_by(|&a, &b| z[a].total_cmp(&z[b]));
            off.extend(cand.into_iter().take((-rank_room) as usize));
        }
        // Constraints `(layer, unit, target, on)`: the units to turn on and those to turn off (well
        // past zero, see [`FOLLOW_RANKED_CLEARANCE`], and never less than a hair), and, as the step
        // would turn them off, active units of the earlier layers, held at half their value: their
        // active counts are the rank bound, and a walk that ignored them let the bound collapse
        // (13 → 5 active first-layer units on a small test net).
        let clearance = |k: usize| FOLLOW_RANKED_CLEARANCE * z[k].abs() + 1e-9;
        let mut cons: Vec<(usize, usize, f64, bool)> = units
            .iter()
            .map(|&k| (last, k, clearance(k), true))
            .chain(off.iter().map(|&k| (last, k, -clearance(k), false)))
            .collect();
        let wrong_side = |on: bool, v: f64| if on { v <= 0.0 } else { v >= 0.0 };
        let mut set: Vec<usize> = (0..cons.len())
            .filter(|&i| wrong_side(cons[i].3, pre[cons[i].0][cons[i].1]))
            .collect();
        // Each constraint's row of `∂pre/∂z₁`, computed when it first joins the set.
        let mut rows: Vec<Option<Vec<f64>>> = vec![None; cons.len()];
        let mut step = vec![0.0; n1];
        for _ in 0..FOLLOW_ACTIVE_SET_PASSES {
            rows.resize(cons.len(), None);
            lin.fill_rows(&cons, &set, &mut rows);
            let a = Mat::<f64>::from_fn(set.len() + 1, n1, |r, c| {
                if r < set.len() {
                    rows[set[r]].as_ref().expect("filled above")[c]
                } else {
                    normal[c]
                }
            });
            let b = Mat::<f64>::from_fn(set.len() + 1, 1, |r, _| {
                if r < set.len() {
                    let (l, u, t, _) = cons[set[r]];
                    t - pre[l][u]
                } else {
                    -off_plane
                }
            });
            let sol = crate::linalg::lstsq_gram(&a, &b, FOLLOW_STEP_EIG_CUT)
                .unwrap_or_else(|| crate::linalg::lstsq(&a, &b));
            step = (0..n1).map(|c| sol[(c, 0)]).collect();
            // How every known pre-activation moves under the step (to first order).
            let moved = lin.push_forward(&step);
            // Constrained units the step would push to the wrong side, and active earlier units
            // it would turn off, join the set.
            let mut extra: Vec<usize> = (0..cons.len())
                .filter(|i| {
                    let (l, u, _, on) = cons[*i];
                    !set.contains(i) && wrong_side(on, pre[l][u] + moved[l][u])
                })
                .collect();
            for (l, p) in pre[..last].iter().enumerate() {
                for (u, &v) in p.iter().enumerate() {
                    if v > 0.0
                        && v + moved[l][u] <= 0.0
                        && !cons.iter().any(|&(cl, cu, _, _)| cl == l && cu == u)
                    {
                        cons.push((l, u, 0.5 * v, true));
                        extra.push(cons.len() - 1);
                    }
                }
            }
            if extra.is_empty() {
                break;
            }
            set.extend(extra);
        }
        let len = norm(&step);
        if !len.is_finite() || len == 0.0 {
            return None;
        }
        z1.iter_mut().zip(&step).for_each(|(zi, si)| *zi += si);
    }
    None
}

/// The known prefix linearized at one point of a following walk, in the first layer's
/// pre-activation space `z₁`: `∂pre_l/∂z₁ = W_l D_{l−1} ⋯ W_2 D_1` (`D` the 0/1 masks of the active
/// units).
///
/// Why not the full products: a walk step needs the rows of a few constrained units (tens), the
/// normal (one combined row) and how every unit moves under the step (a Jacobian-vector product).
/// Forming every layer's `width × n₁` product took seven `256 × 128 × 256` GEMMs per step on the
/// 3072-256×8-10's layer 8 (session 29); rows are pulled back through the active blocks alone.
struct WalkLinearization<'a> {
    known: &'a KnownPrefix,
    /// Active units of each layer's pre-activation (`pre[l] > 0`).
    on: Vec<Vec<usize>>,
    /// `W_l[on_l, on_{l−1}]` for `l ≥ 1` (index 0 unused): the blocks every pulled-back row crosses.
    blocks: Vec<Mat<f64>>,
}

impl<'a> WalkLinearization<'a> {
    fn at(known: &'a KnownPrefix, pre: &[Vec<f64>]) -> Self {
        let on: Vec<Vec<usize>> = pre
            .iter()
            .map(|p| (0..p.len()).filter(|&u| p[u] > 0.0).collect())
            .collect();
        let mut blocks = vec![Mat::<f64>::zeros(0, 0)];
        // The last layer's block is never crossed (rows start there), so it is not formed.
        for l in 1..pre.len().saturating_sub(1) {
            let w = &known.layers[l].weight;
            blocks.push(Mat::<f64>::from_fn(on[l].len(), on[l - 1].len(), |r, c| {
                w[(on[l][r], on[l - 1][c])]
            }));
        }
        Self { known, on, blocks }
    }

    /// Rows of `∂pre_l/∂z₁` for `units` of layer `l` (`|units| × n₁`), or with `weights` their
    /// weighted sum (`1 × n₁`).
    fn pull_back(
        &self,
        l: usize,
        units: &[usize],
        weights: Option<&dyn Fn(usize) -> f64>,
    ) -> Mat<f64> {
        let n1 = self.known.layers[0].fan_out();
        if l == 0 {
            // Rows of the identity.
            let m = match weights {
                Some(wt) => Mat::<f64>::from_fn(1, units.len(), |_, i| wt(i)),
                None => Mat::<f64>::identity(units.len(), units.len()),
            };
            return scatter_columns(&m, units, n1);
        }
        // The rows on the columns of `on[l − 1]`, then back through each earlier active block.
        let w = &self.known.layers[l].weight;
        let prev = &self.on[l - 1];
        let mut r = match weights {
            Some(wt) => Mat::<f64>::from_fn(1, prev.len(), |_, c| {
                units
                    .iter()
                    .enumerate()
                    .map(|(i, &u)| wt(i) * w[(u, prev[c])])
                    .sum()
            }),
            None => Mat::<f64>::from_fn(units.len(), prev.len(), |i, c| w[(units[i], prev[c])]),
        };
        for j in (1..l).rev() {
            r = &r * &self.blocks[j];
        }
        scatter_columns(&r, &self.on[0], n1)
    }

    /// `Σᵢ weight(i) · ∂pre_l[units[i]]/∂z₁`.
    fn combined_row(&self, l: usize, units: &[usize], weight: impl Fn(usize) -> f64) -> Vec<f64> {
        let m = self.pull_back(l, units, Some(&weight));
        (0..m.ncols()).map(|c| m[(0, c)]).collect()
    }

    /// Fills `rows[i]` for every constraint `i` in `set` that has none yet, one batch per layer.
    fn fill_rows(
        &self,
        cons: &[(usize, usize, f64, bool)],
        set: &[usize],
        rows: &mut [Option<Vec<f64>>],
    ) {
        let mut by_layer: Vec<Vec<usize>> = vec![Vec::new(); self.on.len()];
        for &i in set {
            if rows[i].is_none() {
                by_layer[cons[i].0].push(i);
            }
        }
        for (l, idx) in by_layer.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            let units: Vec<usize> = idx.iter().map(|&i| cons[i].1).collect();
            let m = self.pull_back(l, &units, None);
            for (r, &i) in idx.iter().enumerate() {
                rows[i] = Some((0..m.ncols()).map(|c| m[(r, c)]).collect());
            }
        }
    }

    /// `∂pre_l/∂z₁ · step` for every layer `l` (forward through the active units).
    fn push_forward(&self, step: &[f64]) -> Vec<Vec<f64>> {
        let mut out = vec![step.to_vec()];
        for l in 1..self.on.len() {
            let w = &self.known.layers[l].weight;
            let d = out.last().expect("a layer");
            let mut next = vec![0.0; w.nrows()];
            // Column by column: faer matrices are column-major.
            for &c in &self.on[l - 1] {
                let (col, dc) = (w.col(c), d[c]);
                next.iter_mut()
                    .zip(col.iter())
                    .for_each(|(o, &v)| *o += v * dc);
            }
            out.push(next);
        }
        out
    }
}

/// `m`'s columns placed at `cols` of an `m.nrows() × n` matrix, zero elsewhere.
fn scatter_columns(m: &Mat<f64>, cols: &[usize], n: usize) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(m.nrows(), n);
    for (c, &u) in cols.iter().enumerate() {
        for i in 0..m.nrows() {
            out[(i, u)] = m[(i, c)];
        }
    }
    out
}

/// One following walk's outcome: whether it reached all its units, and the line it gives (if any,
/// after falling back to one unit) with the free segments near its origin, not yet stamped with the
/// line's id.
type WalkOutcome = (bool, Option<(Line, Vec<(usize, f64, f64)>)>);

/// Walks one estimate gets per round at most when few estimates ask (see [`follow_chunks`]).
const FOLLOW_WALKS_PER_ESTIMATE_MAX: usize = 8;

/// Splits an estimate's missing units into the targets of `walks` following walks: shuffled, then
/// dealt round-robin into `walks` chunks of at most `chunk_max` units; with fewer
/// units than walks each unit is a walk's target more than once (the anchors differ).
///
/// Why: the walks of a deep layer's last incomplete estimates kept failing the same way round after
/// round. On the balanced 3072-256×8-10 (session 21) layer 4 went from 217 to 245 neurons over
/// rounds 82–118 with one walk per estimate per round (8–30 lines against a cap of 256), always
/// towards the first 16 missing units in index order, and ended with 8 partial neurons; layer 3's
/// last estimate (33 missing units) stayed partial for 18 rounds. Random chunks stop one hard unit
/// from blocking the others, smaller chunks keep the walks (and so the search radius) short, and
/// the spare cap pays for the extra walks.
fn follow_chunks(
    missing: &[usize],
    walks: usize,
    chunk_max: usize,
    rng: &mut ChaCha20Rng,
) -> Vec<Vec<usize>> {
    let mut units = missing.to_vec();
    for i in (1..units.len()).rev() {
        let j = rng.random_range(0..=i);
        units.swap(i, j);
    }
    let walks = walks.max(1);
    if units.is_empty() {
        return Vec::new();
    }
    if units.len() <= walks {
        return (0..walks).map(|w| vec![units[w % units.len()]]).collect();
    }
    let mut chunks = vec![Vec::new(); walks];
    for (i, u) in units.into_iter().enumerate() {
        if chunks[i % walks].len() < chunk_max {
            chunks[i % walks].push(u);
        }
    }
    chunks
}

/// Rounds of the active-set loop of [`follow_to_units_ranked`] per step.
const FOLLOW_ACTIVE_SET_PASSES: usize = 8;

/// Eigenvalues of the Gram matrix of a walk step's constraints (see [`crate::linalg::lstsq_gram`])
/// below this fraction of the largest are dropped: constraints whose rows are within ~3e-7 (the
/// square root) of being dependent give no step along their difference.
///
/// Why the Gram path: the thin SVDs of each step's systems (up to 8 active-set passes a step, often
/// with more constraints than `n₁` once the earlier layers' holds join, and mostly rank deficient)
/// were ~80 % of the walks' time on the 3072-256×8-10's layer 8 (session 29, `perf`). Why 1e-13:
/// the eigenvalues of the Gram matrix carry an absolute error of ~`size · ε` of the largest (~6e-14
/// at 256), so a smaller cut would keep noise.
const FOLLOW_STEP_EIG_CUT: f64 = 1e-13;

/// Missing units one following walk turns on behind two or more known layers (see
/// [`follow_to_units_ranked`]): each one turned on must be paid for by a known one turned off.
const FOLLOW_RANKED_UNITS_MAX: usize = 16;

/// How far past its boundary [`follow_to_units_ranked`] pushes each unit it turns on or off, as a
/// fraction of the distance it started at on the other side (per step, as the walk re-linearizes).
///
/// Why not just past zero (2 %, as [`follow_to_unit`] still does): a unit turned on barely
/// contributes almost nothing at the walk's end, so the witnesses found there hardly constrain its
/// weight; and every unit the walk leaves near its boundary, on or off, puts a kink within a hair
/// of the estimate's on the following line, too close for a probe's stencil
/// ([`crate::signature::measure_on`] skips it), so no witness that would bring the lacking unit is
/// ever measured (a point where an unknown unit is active cannot join by the plane test). With 2 %
/// for both, three rows of the 3072-256×8-10's layer 8 ended with inputs that never got constrained
/// (half-active units, reached by all 24 walks of the last round: 201 of their 241 kinks unusable
/// to the probes), set to 0 (errors up to 0.11, output 2^-6.6). With 30 % for the units turned on
/// only, the same layer behind the true prefix validated all 256 rows (max row error 7.9e-7) in 53
/// rounds instead of 65 and 10.7 M queries instead of 11.5 M, although each round took longer
/// (1,548 s vs 1,323 s: the larger shift widens the search radius; session 31, `deep_layers` bench,
/// `LAYER=8 STAGE=signatures`); behind the recovered prefix it still left two rows lacking units,
/// with their following lines' kinks unusable (session 32).
const FOLLOW_RANKED_CLEARANCE: f64 = 0.3;

/// Active units of the previous layer kept below the rank bound at a following walk's end point, so
/// that the probe there still has full rank after the small moves of the line search.
const FOLLOW_RANK_SLACK: usize = 2;

/// The free segments of a following line searched on each side of the one holding its origin. The
/// end point of [`follow_to_units`] sits just past the boundaries of the units it activated, so a
/// line along the normal crosses known kinks within a hair on both sides; the estimate's kink is in
/// the origin's segment or next to it. All of `-r..r` (3,240 segments, 33,693 critical points for
/// 233 lines on the 3072-256×8-10's layer 2, each probed) cost more than the round's random lines.
const FOLLOW_SEGMENTS_AROUND: usize = 1;

/// [`FOLLOW_SEGMENTS_AROUND`] behind two or more known layers, where [`follow_to_units`] also turns
/// units off.
const FOLLOW_SEGMENTS_AROUND_RANKED: usize = 8;

/// The segments (sorted, disjoint, as [`free_segments_in`] gives them) within `around` places of the
/// one holding `t = 0` (or of the gap holding it).
fn segments_around_origin(segs: &[(usize, f64, f64)], around: usize) -> Vec<(usize, f64, f64)> {
    // First segment that does not end before the origin.
    let at = segs.partition_point(|&(_, _, b)| b < 0.0);
    let lo = at.saturating_sub(around);
    let hi = (at + around + 1).min(segs.len());
    segs[lo..hi].to_vec()
}

/// Search radius of [`follow_to_units`]'s line, in multiples of the largest shift of the hyperplane
/// the barely active missing units could cause.
const FOLLOW_RADIUS_FACTOR: f64 = 4.0;

/// Steps a hyperplane-following walk takes before giving up (each re-linearizes at the new region).
const FOLLOW_MAX_STEPS: usize = 16;

/// Rejection-samples an input (at several scales) where unit `unit` of the known prefix's output is
/// active. Offline: costs no queries.
fn point_with_active_unit(
    known: &KnownPrefix,
    unit: usize,
    sigma: f64,
    rng: &mut ChaCha20Rng,
) -> Option<Vec<f64>> {
    let d0 = known.input_dim;
    let empty = faer::Mat::<f64>::zeros(d0, 0);
    for attempt in 0..4000 {
        let s = sigma * [1.0, 0.3, 3.0, 10.0][attempt % 4];
        let x: Vec<f64> = (0..d0)
            .map(|_| s * rng.sample::<f64, _>(StandardNormal))
            .collect();
        if known.local(&x, &empty).h[unit] > 0.0 {
            return Some(x);
        }
    }
    None
}

fn alive_units(known: &KnownPrefix) -> Vec<bool> {
    match known.layers.last() {
        None => vec![true; known.input_dim],
        Some(l) => (0..l.fan_out())
            .map(|r| (0..l.fan_in()).any(|c| l.weight[(r, c)] != 0.0) || l.bias[r] > 0.0)
            .collect(),
    }
}

/// Witnessing search lines that are independent random lines (not hyperplane-following lines, which
/// stay in one neighbourhood, nor refinement lines).
fn independent_lines(e: &NeuronEstimate, following: &[bool]) -> usize {
    e.lines
        .iter()
        .filter(|&&l| l < following.len() && !following[l])
        .count()
}

/// With first-layer screening a neuron's row rests on a single full signature (its partner joins by
/// the plane test), not two, and on a 3072-input net a few neurons with a small output jump sit just
/// above `null_residual_max` (1.1e-8–1.9e-8 for 3 of 256 on the balanced 3072-256×8-10, two of them
/// already confirmed by prediction; the other 252 below 1e-8), so the layer never completed. Their
/// bound is this multiple of `null_residual_max`: still well under the ≥ 1e-7 of a wrong witness, and
/// validation by prediction follows as for any neuron.
///
/// Deeper screened layers (`probe_units`) take the same bound. Their estimates gather many full
/// witnesses (up to 23 on 11 lines), and on the balanced 3072-256×8-10's layer 2 the joint residual of
/// six of them crept to 1.0e-8–2.3e-8 (round 3 of session 19, the layer at 252 of 256): over the
/// bound, an estimate can neither take a witness that brings a unit it lacks nor ask for following,
/// so these neurons never completed.
const SCREENED_RESIDUAL_FACTOR: f64 = 3.0;

/// A screened first layer with more inputs than this keeps its signature-based rows (no polishing).
/// A polishing point fixes one of d0 + 1 unknowns for ~30 queries and a fit holds 2·(d0 + 1) points
/// per neuron: on 3072 inputs ~200 k queries and ~150 MB per neuron and round (all 256 neurons of a
/// 3072-256×8-10 at once: killed at 24 GiB), while a whole signature costs ~5·d0. On 784 inputs
/// (~50 k queries per neuron) it pays: without it the balanced 784-16×8-1 ends at 2^-26.1 instead of
/// 2^-30 (layer-1 weights 2.7e-10 instead of 2.5e-11). On the 3072-input layer the rows are left at
/// a median 9e-11, worst 3e-7, of their norm.
const SCREENED_POLISH_MAX_INPUTS: usize = 1024;

/// On a screened first layer wider than [`SCREENED_POLISH_MAX_INPUTS`], neurons whose refinement
/// points lie farther than this from their hyperplane are still polished (the worst
/// [`WIDE_POLISH_MAX`] of them).
const WIDE_POLISH_ABOVE: f64 = 1e-9;

/// Neurons polished at most on such a layer: each costs ~200 k queries and ~600 MB of points per
/// round on 3072 inputs (the polishing budget holds 3 of them at once).
const WIDE_POLISH_MAX: usize = 3;

/// Units of the previous layer that are alive but not yet known to the estimate `e`: what hyperplane
/// following still has to find, and why an estimate is not complete.
fn missing_units(e: &NeuronEstimate, alive: &[bool]) -> Vec<usize> {
    e.known
        .iter()
        .zip(alive)
        .enumerate()
        .filter(|(_, (known, alive))| !**known && **alive)
        .map(|(k, _)| k)
        .collect()
}

fn is_complete(
    e: &NeuronEstimate,
    alive: &[bool],
    p: &ExtractParams,
    following: &[bool],
    residual_max: f64,
) -> bool {
    independent_lines(e, following) >= p.min_witnesses
        && e.residual <= residual_max
        && missing_units(e, alive).is_empty()
}

/// Do `a` and `b` describe the same hyperplane: parallel on every coordinate both constrain (at
/// least `min_common_coords` of them), to within the hyperplane tolerance or, on noisy targets, the
/// distance at which two signatures count as one neuron (1 − cos ≈ diff²/2)?
fn same_hyperplane(a: &NeuronEstimate, b: &NeuronEstimate, p: &ExtractParams) -> bool {
    let dim = a.known.len();
    let common: Vec<usize> = (0..dim).filter(|&k| a.known[k] && b.known[k]).collect();
    if common.len() < p.min_common_coords {
        return false;
    }
    let va: Vec<f64> = common.iter().map(|&k| a.theta[k]).collect();
    let vb: Vec<f64> = common.iter().map(|&k| b.theta[k]).collect();
    let d = dot(&va, &vb) / (norm(&va) * norm(&vb));
    d.abs() > 1.0 - p.plane_tol.max(0.5 * p.cluster_tol * p.cluster_tol)
}

/// Recovers the rows of hidden layer `known.layers.len() + 1` of width `width`.
pub fn recover_layer<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    width: usize,
    last_hidden: bool,
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<LayerSignatures, ExtractError> {
    let d0 = known.input_dim;
    let dim = known.out_dim();
    let sigma = p.origin_scale;
    let half = p.line_half_length * sigma * (d0 as f64).sqrt();
    // Screening pays off only when a probe is much cheaper than a full measurement.
    let first_screening = known.layers.is_empty() && p.probe_coords > 0 && d0 >= 4 * p.probe_coords;
    let deeper_screening =
        !known.layers.is_empty() && p.probe_units > 0 && dim >= 4 * p.probe_units;
    // Behind a deep recovered prefix the prefix's own errors, not the oracle, set how well witnesses
    // of one neuron agree: see `ExtractParams::deep_tol_scale`. Everything below, polishing
    // included, sees the scaled tolerances.
    let scaled;
    let p = if deeper_screening && known.layers.len() >= p.deep_tol_from && p.deep_tol_scale > 1.0 {
        scaled = p.with_scaled_tolerances(p.deep_tol_scale);
        tracing::debug!(
            layer = known.layers.len() + 1,
            scale = p.deep_tol_scale,
            "deep layer: scaled tolerances"
        );
        &scaled
    } else {
        p
    };
    // The looser residual bound and the validated-stays-complete rule below answer screened layers
    // (first: neurons that each rest on one signature; deeper: see `SCREENED_RESIDUAL_FACTOR`).
    let residual_max = if first_screening || deeper_screening {
        SCREENED_RESIDUAL_FACTOR * p.null_residual_max
    } else {
        p.null_residual_max
    };
    let tol = BankTol {
        cluster_tol: p.cluster_tol,
        min_common: p.min_common_coords,
        plane_tol: p.plane_tol,
        residual_max,
    };
    // With screening, an estimate validated by prediction (complete at the time) stays complete.
    // Only points join it afterwards (the plane test), and on a 3072-input layer the joint residual
    // of its one signature against many exact points creeps over the bound (4.6e-8 after 9 lines for
    // a neuron validated in round 1) without anything being wrong; up to
    // `SCREENED_POLISH_MAX_INPUTS` inputs polishing then fits the hyperplane through the points.
    // Deeper screened layers (`probe_units`) need the same rule: on the balanced 3072-256×8-10,
    // layer 2 had 16 neurons validated by prediction that stopped counting after 28–42 full
    // witnesses, at joint residuals of 1.0e-8–1.5e-8 against the 1e-8 bound (round 2: 166 counted).
    // Without screening every neuron rests on several signatures and the bench rows never needed
    // this, so they are left as they were.
    let stays_complete = first_screening || deeper_screening;
    // Behind a wide prefix (deeper screening) a long line's profile costs 4–33 ms (three to seven
    // 256-wide layers) and validation, refinement and polishing place ~260,000 crossings per layer:
    // they are placed by projection instead (`crate::place`). Elsewhere they stay on random lines,
    // as every bench row without `--probe-units` was measured.
    let projected = deeper_screening;
    let stencil = p.stencil();
    let search_tol = p.search_tol();
    let alive = alive_units(known);
    let mut pool = if first_screening {
        Some(ProbePool::new(
            d0,
            p.probe_coords,
            10.0 * p.cluster_tol,
            false,
            rng,
        ))
    } else if deeper_screening {
        Some(ProbePool::new(
            dim,
            p.probe_units,
            10.0 * p.cluster_tol,
            true,
            rng,
        ))
    } else {
        None
    };
    let mut bank = NeuronBank::new(dim, p.hyperplane_weight);
    if deeper_screening {
        // Behind a wide prefix the bank's algebra was a quarter of a deep layer's witness rounds
        // (layer 6 of the 3072-256×8-10); elsewhere it stays as the acceptance runs measured it.
        bank = bank.for_wide_layer();
    }
    let mut lines: Vec<Line> = Vec::new();
    // Validation verdicts, keyed by the estimate's first anchor (stable across merges of others).
    let mut validated: std::collections::HashMap<Vec<u64>, bool> = std::collections::HashMap::new();
    // Per line: was it a hyperplane-following line (local, not independent evidence)?
    let mut following: Vec<bool> = Vec::new();
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
    let mut last_progress = (0usize, 0usize); // (round, neurons done then)
    // Whether the last round's hyperplane following was asked for and the count rose: then, on a
    // deeper screened layer, the next round follows without new random lines. On the balanced
    // 3072-256×8-10's layer 2 (session 19), rounds 2 and 3 spent ~5 minutes each on four random lines
    // that started 2 and 0 new estimates, while following gained 35 and 8 neurons in half a minute.
    // Random lines come back as soon as following stops paying (new neurons, and second lines for
    // estimates seen once, only come from them).
    let (mut done_before, mut following_paid) = (0usize, false);
    let mut residual_pool: Option<ResidualPool> = None;
    for round in 0..p.max_rounds_per_layer * crate::params::ROUND_LIMIT_FACTOR {
        if round >= p.max_rounds_per_layer && round >= last_progress.0 + p.round_patience {
            break;
        }
        // The first round uses one line: every neuron it meets is measured once, and later lines can
        // then be matched for free by the hyperplane test.
        let n_lines = if round == 0 {
            1
        } else if deeper_screening && following_paid {
            0
        } else {
            p.lines_per_round
        };
        bank.round = round;
        // Forget lone witnesses that found no partner within a few rounds: almost always kinks of deeper
        // layers (a real neuron of this layer is met again by most new lines). Keeps the bank small.
        if round >= STALE_ROUNDS {
            bank.estimates.retain(|e| {
                e.witnesses > 1
                    || e.born + STALE_ROUNDS > round
                    || independent_lines(e, &following) >= p.min_witnesses
            });
        }
        let first = lines.len();
        // Units that some promising estimate still lacks: aim half of the new lines through points
        // where such a unit is active, so rarely active inputs get witnessed too.
        let targets: Vec<(usize, usize)> = if round >= 2 {
            // (estimate, missing unit) pairs of promising but incomplete estimates.
            bank.estimates
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    independent_lines(e, &following) >= p.min_witnesses
                        && e.residual <= residual_max
                })
                .flat_map(|(i, e)| missing_units(e, &alive).into_iter().map(move |k| (i, k)))
                .collect()
        } else {
            Vec::new()
        };
        // Last hidden layer still incomplete once its regular rounds are spent (the patience phase):
        // aim the even-numbered lines through inputs where the output is not explained by the
        // neurons found so far (see `aim`). Not earlier: on a trained 784-128-128-128-10, aiming from
        // round 2 on ended with 121 validated neurons instead of 127 (fewer random lines, and many
        // estimates from aimed lines failed validation).
        let aimed: Vec<(Vec<f64>, f64)> =
            if last_hidden && round >= p.max_rounds_per_layer && p.residual_aim_points > 0 {
                if residual_pool.is_none() {
                    let n = p.residual_aim_points;
                    // A separate stream: the main one (and so every layer that completes without
                    // aiming) is left exactly as it was.
                    let mut pool_rng = rng.clone();
                    pool_rng.set_stream(AIM_STREAM);
                    let q0 = oracle.queries();
                    residual_pool =
                        Some(ResidualPool::new(oracle, known, n, sigma, &mut pool_rng)?);
                    out.search_queries += oracle.queries() - q0;
                }
                let found: Vec<&[f64]> = bank
                    .estimates
                    .iter()
                    .filter(|e| {
                        validated.get(&est_key(e)) == Some(&true)
                            && is_complete(e, &alive, p, &following, residual_max)
                    })
                    .map(|e| e.theta.as_slice())
                    .collect();
                let pool = residual_pool.as_mut().expect("pool drawn above");
                pool.worst(&found, n_lines.div_ceil(2))
            } else {
                Vec::new()
            };
        if let Some((_, r)) = aimed.first() {
            tracing::debug!(
                lines = aimed.len(),
                worst = r,
                "aimed at unexplained outputs"
            );
        }
        for j in 0..n_lines {
            following.push(false);
            let mut line = random_line(rng, d0, sigma);
            if let Some((x, _)) = aimed.get(j / 2).filter(|_| j % 2 == 0) {
                // Same random direction, drawn as before, so the main stream stays aligned.
                line.origin = x.clone();
            } else if !targets.is_empty() && j % 2 == 1 {
                // Through a point where the missing unit is active, heading for the estimate's
                // hyperplane along its (partially known) normal.
                let (ei, unit) = targets[rng.random_range(0..targets.len())];
                if let Some(o) = point_with_active_unit(known, unit, sigma, rng) {
                    let theta = &bank.estimates[ei].theta;
                    let normal = if jacobian_free(known) {
                        let pre = known.pre_activations(&o, known.layers.len());
                        input_normal_at(known, theta, &pre)
                    } else {
                        input_normal(theta, &known.local_full(&o))
                    };
                    if let Some((normal, _)) = normal {
                        line.dir = normal;
                    }
                    line.origin = o;
                }
            }
            lines.push(line);
        }
        let segments: Vec<(usize, f64, f64)> = (first..lines.len())
            .flat_map(|l| free_segments(known, &lines[l], l, half))
            .collect();
        let q0 = oracle.queries();
        let cps = find_critical_points(oracle, &lines, &segments, search_tol)?;
        out.search_queries += oracle.queries() - q0;
        out.critical_points += cps.len();
        tracing::debug!(
            segments = segments.len(),
            critical_points = cps.len(),
            queries = oracle.queries() - q0,
            target_s = oracle.target_seconds(),
            "line search"
        );
        // Line by line: attach for free where possible, measure the rest.
        for l in first..lines.len() {
            let mine: Vec<CriticalPoint> = cps.iter().filter(|c| c.line == l).cloned().collect();
            attach_or_measure(
                oracle,
                known,
                &lines,
                mine,
                stencil,
                &mut bank,
                &tol,
                &mut out,
                pool.as_mut(),
                true,
            )?;
        }
        // Hyperplane following: from a witness of an incomplete estimate, walk along its hyperplane into
        // the region where a unit it lacks is active, then look for its (bent) hyperplane there.
        let mut asked = 0usize;
        if round >= 1 {
            let mut follow_lines: Vec<Line> = Vec::new();
            let mut segs = Vec::new();
            // Estimates that asked for following, and the units they lacked: shows when the cap,
            // not the search, holds a wide layer back.
            let mut asks: Vec<(&NeuronEstimate, Vec<usize>)> = bank
                .estimates
                .iter()
                .filter(|e| {
                    e.residual <= residual_max
                        && !e.anchors.is_empty()
                        && independent_lines(e, &following) >= p.min_witnesses
                })
                .map(|e| (e, missing_units(e, &alive)))
                .filter(|(_, missing)| !missing.is_empty())
                .collect();
            let asking = asks.len();
            asked = asking;
            let lacking: usize = asks.iter().map(|(_, m)| m.len()).sum();
            // Deeper screened layers follow each estimate towards all its missing units at once
            // (see `follow_to_units`); elsewhere one line per missing unit, as the bench rows were
            // measured with.
            let all_at_once = deeper_screening;
            // Behind two or more known layers the walk keeps the control rank (and runs in the
            // first layer's pre-activation space).
            let first_map = FirstLayerMap::of(known);
            // Walks of `follow_to_units` that got there, and those that fell back to one unit.
            let mut walks = (0usize, 0usize);
            order_follow_asks(&mut asks, if all_at_once { usize::MAX } else { 1 });
            // Walks per estimate: one while the asks fill the cap, more (towards disjoint random
            // chunks of its missing units, from random anchors) once few estimates are left.
            let walks_each = if all_at_once {
                (MAX_FOLLOW_LINES_PER_ROUND / asking.max(1)).clamp(1, FOLLOW_WALKS_PER_ESTIMATE_MAX)
            } else {
                1
            };
            // `follow_to_units_ranked` turns at most `FOLLOW_RANKED_UNITS_MAX` units on per walk.
            let chunk_max = if first_map.is_some() {
                FOLLOW_RANKED_UNITS_MAX
            } else {
                usize::MAX
            };
            // Behind two or more known layers the end point sits among the boundaries of the units
            // turned on *and* off, and the neuron's own kink is seldom in the origin's segment or
            // the next.
            let reach = if known.layers.len() >= 2 {
                FOLLOW_SEGMENTS_AROUND_RANKED
            } else {
                FOLLOW_SEGMENTS_AROUND
            };
            let walk_clock = std::time::Instant::now();
            if all_at_once {
                // The walks are offline and independent, so they run on every core in batches of
                // what the cap still allows; the random draws (chunks, anchors) and the order of the
                // lines stay those of one walk after another, so the result does not depend on the
                // number of threads. On layer 8 of the 3072-256×8-10 a round's walks took ~2
                // minutes one at a time (session 27) and 44–54 s on both cores (session 28).
                let mut next_ask = 0usize;
                let mut chunks_left: Option<(usize, std::vec::IntoIter<Vec<usize>>)> = None;
                loop {
                    let room = MAX_FOLLOW_LINES_PER_ROUND.saturating_sub(follow_lines.len());
                    let mut tasks: Vec<(&NeuronEstimate, &[f64], Vec<usize>)> = Vec::new();
                    while tasks.len() < room {
                        if let Some((ask, chunks)) = chunks_left.as_mut() {
                            if let Some(chunk) = chunks.next() {
                                let e = asks[*ask].0;
                                let anchor = &e.anchors[rng.random_range(0..e.anchors.len())];
                                tasks.push((e, anchor.as_slice(), chunk));
                                continue;
                            }
                            chunks_left = None;
                        }
                        let Some((_, missing)) = asks.get(next_ask) else {
                            break;
                        };
                        let chunks = follow_chunks(missing, walks_each, chunk_max, rng);
                        chunks_left = Some((next_ask, chunks.into_iter()));
                        next_ask += 1;
                    }
                    if tasks.is_empty() {
                        break;
                    }
                    use rayon::prelude::*;
                    let walked: Vec<WalkOutcome> = tasks
                        .par_iter()
                        .map(|(e, anchor, chunk)| {
                            let reached = match &first_map {
                                Some(f) => {
                                    follow_to_units_ranked(known, f, &e.theta, anchor, chunk)
                                }
                                None => follow_to_units(known, &e.theta, anchor, chunk),
                            };
                            let ok = reached.is_some();
                            let found = reached
                                .or_else(|| follow_to_unit(known, &e.theta, anchor, chunk[0]));
                            // Segments are stamped with the line's id once the order is known.
                            let line = found.map(|(line, r)| {
                                let around = free_segments_in(known, &line, 0, -r, r);
                                let near = segments_around_origin(&around, reach);
                                (line, near)
                            });
                            (ok, line)
                        })
                        .collect();
                    for (ok, line) in walked {
                        if ok {
                            walks.0 += 1;
                        } else {
                            walks.1 += 1;
                        }
                        if let Some((line, near)) = line {
                            let id = lines.len() + follow_lines.len();
                            segs.extend(near.into_iter().map(|(_, a, b)| (id, a, b)));
                            follow_lines.push(line);
                        }
                    }
                }
            } else {
                for (e, missing) in &asks {
                    if follow_lines.len() >= MAX_FOLLOW_LINES_PER_ROUND {
                        break;
                    }
                    for &k in missing.iter().take(FOLLOW_UNITS_PER_ESTIMATE) {
                        let anchor = &e.anchors[rng.random_range(0..e.anchors.len())];
                        if let Some((line, r)) = follow_to_unit(known, &e.theta, anchor, k) {
                            let id = lines.len() + follow_lines.len();
                            segs.extend(free_segments_in(known, &line, id, -r, r));
                            follow_lines.push(line);
                        }
                    }
                }
            }
            let walk_s = walk_clock.elapsed().as_secs_f64();
            if !segs.is_empty() {
                let base = lines.len();
                following.extend(std::iter::repeat_n(true, follow_lines.len()));
                lines.extend(follow_lines);
                let q0 = oracle.queries();
                let cps = find_critical_points(oracle, &lines, &segs, search_tol)?;
                out.search_queries += oracle.queries() - q0;
                out.critical_points += cps.len();
                tracing::debug!(
                    lines = lines.len() - base,
                    segments = segs.len(),
                    critical_points = cps.len(),
                    queries = oracle.queries() - q0,
                    target_s = oracle.target_seconds(),
                    "following search"
                );
                attach_or_measure(
                    oracle,
                    known,
                    &lines,
                    cps,
                    stencil,
                    &mut bank,
                    &tol,
                    &mut out,
                    pool.as_mut(),
                    // On a deeper screened layer a following line's kinks are of the estimate it
                    // follows or of deeper units met near it: the first match an estimate, the
                    // rest are not kept to pair (local, not independent evidence; they made the
                    // waiting pool grow by ~10,000 a round on the 3072-256×8-10's layer 2).
                    !all_at_once,
                )?;
                tracing::debug!(
                    following = lines.len() - base,
                    walks_reached = walks.0,
                    walks_fell_back = walks.1,
                    walk_s,
                    asking,
                    lacking,
                    segments = segs.len(),
                    queries = oracle.queries() - q0,
                    "hyperplane following"
                );
            }
        }
        bank.merge_pass(&tol);
        // Validate newly complete estimates by prediction: a real neuron of this layer has a kink
        // exactly where its hyperplane meets a fresh random line; a deeper unit's local piece (which
        // can masquerade as a neuron inside one activation region) does not.
        let fresh: Vec<usize> = (0..bank.estimates.len())
            .filter(|&i| {
                !validated.contains_key(&est_key(&bank.estimates[i]))
                    && is_complete(&bank.estimates[i], &alive, p, &following, residual_max)
            })
            .collect();
        if !fresh.is_empty() {
            let mut sub: Vec<NeuronEstimate> =
                fresh.iter().map(|&i| bank.estimates[i].clone()).collect();
            let q0 = oracle.queries();
            let tally = refine(oracle, known, &mut sub, p, rng, half, search_tol, projected)?;
            out.refine_queries += oracle.queries() - q0;
            for ((&i, e), (placed, confirmed, _)) in fresh.iter().zip(sub).zip(tally) {
                let ok = confirmed >= 1 && 2 * confirmed >= placed;
                tracing::debug!(placed, confirmed, ok, "validation by prediction");
                bank.estimates[i] = e;
                validated.insert(est_key(&bank.estimates[i]), ok);
            }
            bank.estimates
                .retain(|e| validated.get(&est_key(e)) != Some(&false));
        }
        // Distinct hyperplanes only: on noisy targets two estimates of one neuron can both be
        // validated without merging (an f32 100-50-20-10 counted 50 of 50 in layer 1 with three
        // such pairs, stopped, and accepted 47).
        let mut counted: Vec<&NeuronEstimate> = Vec::new();
        for e in &bank.estimates {
            if validated.get(&est_key(e)) == Some(&true)
                && (stays_complete || is_complete(e, &alive, p, &following, residual_max))
                && !counted.iter().any(|c| same_hyperplane(c, e, p))
            {
                counted.push(e);
            }
        }
        let done = counted.len();
        // Estimates seen on two lines that still do not count: why a layer stalls short of its width.
        for e in bank.estimates.iter().filter(|e| {
            independent_lines(e, &following) >= p.min_witnesses
                && !counted.iter().any(|c| std::ptr::eq(*c, *e))
        }) {
            tracing::debug!(
                round,
                lines = independent_lines(e, &following),
                witnesses = e.witnesses,
                residual = e.residual,
                gap = e.gap,
                complete = is_complete(e, &alive, p, &following, residual_max),
                missing_units = missing_units(e, &alive).len(),
                validated = ?validated.get(&est_key(e)),
                "estimate not counted"
            );
        }
        on_progress(done.min(width), width);
        tracing::debug!(
            round,
            done,
            width,
            estimates = bank.estimates.len(),
            random_lines = n_lines,
            queries = oracle.queries(),
            target_s = oracle.target_seconds(),
            "witness round"
        );
        following_paid = asked > 0 && done > done_before;
        done_before = done;
        if done >= width {
            break;
        }
        if done > last_progress.1 {
            last_progress = (round, done);
        }
    }
    out.lines = following.iter().filter(|f| !**f).count();
    for e in &bank.estimates {
        tracing::trace!(
            dim,
            lines = e.lines.len(),
            witnesses = e.witnesses,
            residual = e.residual,
            gap = e.gap,
            complete = is_complete(e, &alive, p, &following, residual_max),
            "estimate"
        );
    }
    // Accept: complete estimates first, then the best of the rest; never the same hyperplane twice
    // (an estimate split in two halves that never shared coordinates).
    let mut cands: Vec<NeuronEstimate> = bank
        .estimates
        .into_iter()
        .filter(|e| {
            independent_lines(e, &following) >= p.min_witnesses
                && (e.residual <= residual_max
                    || (stays_complete && validated.get(&est_key(e)) == Some(&true)))
        })
        .collect();
    cands.retain(|e| validated.get(&est_key(e)) != Some(&false));
    cands.sort_by(|a, b| {
        (validated.get(&est_key(b)) == Some(&true))
            .cmp(&(validated.get(&est_key(a)) == Some(&true)))
            .then(
                is_complete(b, &alive, p, &following, residual_max).cmp(&is_complete(
                    a,
                    &alive,
                    p,
                    &following,
                    residual_max,
                )),
            )
            .then(a.residual.total_cmp(&b.residual))
            .then(b.witnesses.cmp(&a.witnesses))
    });
    let mut accepted: Vec<NeuronEstimate> = Vec::new();
    for c in cands {
        // Same hyperplane: parallel on every coordinate both constrain (a fragment of a neuron that
        // was completed elsewhere must not take the place of a missing one).
        let dup = accepted.iter().any(|a| same_hyperplane(a, &c, p));
        if !dup && accepted.len() < width {
            accepted.push(c);
        }
    }
    // Precision refinement: predicted crossings on fresh lines, confirmed by a short local search.
    let q0 = oracle.queries();
    let tally = refine(
        oracle,
        known,
        &mut accepted,
        p,
        rng,
        half,
        search_tol,
        projected,
    )?;
    // Let the precisely located crossings, not the signatures, set the hyperplanes — except where
    // at least half the refinement points already lie within `polish_skip_below` of the estimate,
    // and on a screened first layer wider than `SCREENED_POLISH_MAX_INPUTS`.
    let unpolished = first_screening && d0 > SCREENED_POLISH_MAX_INPUTS;
    let mut precise: Vec<bool> = tally
        .iter()
        .map(|&(_, confirmed, worst)| {
            unpolished
                || (p.polish_skip_below > 0.0
                    && 2 * confirmed >= p.refine_points.max(1)
                    && worst <= p.polish_skip_below)
        })
        .collect();
    if unpolished {
        // The few least precise neurons are polished all the same: every deeper layer's geometry
        // is built on these rows, and one row off by 3e-7 (the worst of the 3072-256×8-10's first
        // layer, median 9e-11) is more than the deeper layers' clustering tolerance allows.
        let mut rough: Vec<usize> = (0..tally.len())
            .filter(|&k| tally[k].2 > WIDE_POLISH_ABOVE)
            .collect();
        rough.sort_by(|&a, &b| tally[b].2.total_cmp(&tally[a].2));
        for &k in rough.iter().take(WIDE_POLISH_MAX) {
            precise[k] = false;
        }
        tracing::debug!(
            rough = rough.len(),
            polished = rough.len().min(WIDE_POLISH_MAX),
            "wide screened first layer: polishing only its least precise neurons"
        );
    }
    if !tally.is_empty() {
        let mut worst: Vec<f64> = tally.iter().map(|t| t.2).collect();
        worst.sort_by(f64::total_cmp);
        tracing::debug!(
            median = worst[worst.len() / 2],
            max = worst[worst.len() - 1],
            "refinement: worst point distance per neuron"
        );
    }
    let polished = crate::polish::polish(
        oracle,
        known,
        &mut accepted,
        &precise,
        p,
        rng,
        half,
        search_tol,
        projected,
    )?;
    if p.polish_rounds > 0 {
        tracing::info!(
            skipped = precise.iter().filter(|&&s| s).count(),
            placed = polished.placed,
            used = polished.used,
            worst_median = polished.worst_median,
            place_s = polished.place_s,
            search_s = polished.search_s,
            fit_s = polished.fit_s,
            "hyperplanes polished"
        );
    }
    out.refine_queries += oracle.queries() - q0;
    out.neurons = accepted
        .iter()
        .map(|e| RecoveredNeuron {
            w: e.theta[..dim].to_vec(),
            b: e.theta[dim],
            witnesses: e.witnesses,
            lines: independent_lines(e, &following),
            residual: e.residual,
            unconstrained: (0..dim).filter(|&k| !e.known[k] && alive[k]).collect(),
            validated: validated.get(&est_key(e)) == Some(&true),
        })
        .collect();
    out.dead = width - out.neurons.len();
    Ok(out)
}

/// Right reach of a search window around a predicted crossing, as a fraction of its left reach.
///
/// Not 1: a window centred on the prediction puts the predicted kink exactly on the window's
/// midpoint, where [`find_critical_points`] splits an interval that holds more than one kink, and a
/// kink at the shared end of both halves is seen by neither. On a balanced 64-128-128-128-10 about
/// 430 kinks lie on each search line, every third layer-1 validation window held another one, and
/// real neurons were confirmed on only 4–7 of 8 lines (five never validated). The golden-ratio
/// conjugate keeps the prediction off every dyadic point of the window.
pub(crate) const WINDOW_RIGHT: f64 = 0.618_033_988_749_894_8;

/// The first crossing of the hyperplane `θ = (w, b)` (on the known prefix's output) with `line` in
/// `[-half, half]`, as `(t, lo, hi)`: the predicted `t` and a search window `[lo, hi]` around it
/// that stays inside one activation region of the prefix (reaching at most `window·half` to the
/// left and [`WINDOW_RIGHT`] of that to the right).
pub(crate) fn predicted_crossing(
    known: &KnownPrefix,
    theta: &[f64],
    line: &Line,
    half: f64,
    window: f64,
) -> Option<(f64, f64, f64)> {
    let dim = known.out_dim();
    let (bps, hs) = known.line_profile(&line.origin, &line.dir, -half, half);
    let z: Vec<f64> = hs
        .iter()
        .map(|h| dot(&theta[..dim], h) + theta[dim])
        .collect();
    (0..bps.len() - 1).find_map(|j| {
        if (z[j] > 0.0) == (z[j + 1] > 0.0) {
            return None;
        }
        let t = bps[j] + (bps[j + 1] - bps[j]) * z[j] / (z[j] - z[j + 1]);
        let room = (t - bps[j]).min(bps[j + 1] - t);
        let w = (0.5 * room).min(window * half);
        (room > 1e-6 * half).then_some((t, t - w, t + WINDOW_RIGHT * w))
    })
}

/// Places `refine_points` predicted crossings per neuron on fresh lines and adds the confirmed ones.
/// Returns per estimate: crossings placed, confirmed, and the largest relative distance of a
/// confirmed one from the estimate's hyperplane before it was added (how far off the estimate is).
///
/// With `projected`, the crossings are placed by projection ([`crate::place`]) instead of on long
/// random lines profiled through the prefix.
#[allow(clippy::too_many_arguments)]
fn refine<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    est: &mut [NeuronEstimate],
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
    half: f64,
    search_tol: SearchTol,
    projected: bool,
) -> Result<Vec<(usize, usize, f64)>, ExtractError> {
    let mut tally = vec![(0usize, 0usize, 0.0_f64); est.len()];
    if p.refine_points == 0 || est.is_empty() {
        return Ok(tally);
    }
    let d0 = known.input_dim;
    let mut lines: Vec<Line> = Vec::new();
    let mut segs: Vec<(usize, f64, f64)> = Vec::new();
    let mut owner: Vec<(usize, f64)> = Vec::new(); // per segment: estimate index, predicted t
    let crossing = |e: &NeuronEstimate, line: &Line| {
        predicted_crossing(known, &e.theta, line, half, p.refine_window)
    };
    if projected {
        let thetas: Vec<&[f64]> = est.iter().map(|e| e.theta.as_slice()).collect();
        let anchors: Vec<&[Vec<f64>]> = est.iter().map(|e| e.anchors.as_slice()).collect();
        let placed = crate::place::place_crossings(
            known,
            &thetas,
            &anchors,
            &vec![p.refine_points; est.len()],
            rng,
            p.origin_scale,
            half,
            p.refine_window,
            WINDOW_RIGHT,
        );
        for (ei, ps) in placed.into_iter().enumerate() {
            tally[ei].0 = ps.len();
            for pc in ps {
                lines.push(pc.line);
                segs.push((lines.len() - 1, pc.lo, pc.hi));
                owner.push((ei, pc.t));
            }
        }
    }
    for (ei, e) in est.iter().enumerate() {
        if projected {
            break;
        }
        let mut placed = 0;
        let mut attempts = 0;
        while placed < p.refine_points && attempts < 4 * p.refine_points {
            attempts += 1;
            let line = random_line(rng, d0, p.origin_scale);
            if let Some((t, lo, hi)) = crossing(e, &line) {
                lines.push(line);
                segs.push((lines.len() - 1, lo, hi));
                owner.push((ei, t));
                placed += 1;
            }
        }
        // A rarely active neuron's hyperplane is missed by most random lines (on a trained
        // 784-128-128-128-10, three last-layer neurons were placed on 0 or 1 of 32 lines and so
        // rejected as fakes). Then aim: lines through a random point near one of the estimate's
        // own witnesses. The predicted crossing still lies in another activation region (the offset
        // is `LOCAL_OFFSET` of the data scale), so a deeper unit's local piece still fails.
        let want = p.refine_points.div_ceil(2);
        let mut local_attempts = 0;
        while placed < want && !e.anchors.is_empty() && local_attempts < 4 * p.refine_points {
            local_attempts += 1;
            let line = line_near_anchor(rng, &e.anchors, d0, p.origin_scale);
            if let Some((t, lo, hi)) = crossing(e, &line) {
                lines.push(line);
                segs.push((lines.len() - 1, lo, hi));
                owner.push((ei, t));
                placed += 1;
            }
        }
        tally[ei].0 = placed;
    }
    let cps = find_critical_points(oracle, &lines, &segs, search_tol)?;
    // Why predicted crossings went unconfirmed (debug log only).
    let (mut no_kink, mut too_far, mut off_plane) = (0usize, 0usize, 0usize);
    let mut off_plane_worst = 0.0_f64;
    for (si, &(ei, t_pred)) in owner.iter().enumerate() {
        let w = segs[si].2 - segs[si].1;
        let best = cps
            .iter()
            .filter(|c| c.line == segs[si].0)
            .min_by(|a, b| (a.t - t_pred).abs().total_cmp(&(b.t - t_pred).abs()));
        // The kink found must be the predicted one: within `refine_match` of the window. The
        // hyperplane test below is the real check.
        let c = match best {
            None => {
                no_kink += 1;
                continue;
            }
            Some(c) if (c.t - t_pred).abs() > p.refine_match * w => {
                too_far += 1;
                continue;
            }
            Some(c) => c,
        };
        let x = lines[c.line].at(c.t);
        let (_, h) = known
            .forward_rows(std::slice::from_ref(&x))
            .pop()
            .expect("one row");
        // Another neuron's kink can sit next to the prediction: keep the point only if it lies on
        // the estimate's hyperplane to within the residual bound.
        match est[ei].plane_distance(&h) {
            Some(d) if d <= p.null_residual_max => {
                // Noisy targets: a point at the confirmation distance would pull a signature-based
                // estimate off by as much; the polishing stage fits the hyperplanes robustly instead.
                // (An f64 crossing is exact to rounding, so it may join the estimate's solve.)
                if p.precision != Precision::F32 {
                    est[ei].add_point(&h, usize::MAX - si);
                }
                tally[ei].1 += 1;
                tally[ei].2 = tally[ei].2.max(d);
            }
            Some(d) => {
                off_plane += 1;
                off_plane_worst = off_plane_worst.max(d);
            }
            None => {}
        }
    }
    tracing::debug!(
        placed = owner.len(),
        no_kink,
        too_far,
        off_plane,
        off_plane_worst,
        "refinement misses"
    );
    {
        use rayon::prelude::*;
        est.par_iter_mut().for_each(|e| e.solve());
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A predicted crossing lies on the hyperplane, its window holds no known kink, and the lines
    /// that cross the hyperplane mostly give one.
    #[test]
    fn predicted_crossing_is_on_the_plane_in_one_region() {
        use netxray_relu::{Arch, InitRecipe, Network};
        let net = Network::random(
            &"8-12-10-9-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            5,
        );
        let known = KnownPrefix {
            layers: net.layers()[..2].to_vec(),
            input_dim: 8,
        };
        let l3 = &net.layers()[2];
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (half, window) = (12.0, 1e-2);
        let mut found = 0;
        for k in 0..l3.fan_out() {
            let theta: Vec<f64> = (0..10)
                .map(|c| l3.weight[(k, c)])
                .chain([l3.bias[k]])
                .collect();
            for _ in 0..20 {
                let line = random_line(&mut rng, 8, 1.0);
                let Some((t, lo, hi)) = predicted_crossing(&known, &theta, &line, half, window)
                else {
                    continue;
                };
                found += 1;
                assert!(lo < t && t < hi && hi - lo <= 2.0 * window * half);
                let (_, h) = known.forward_rows(&[line.at(t)]).remove(0);
                let z = dot(&theta[..10], &h) + theta[10];
                assert!(z.abs() < 1e-9, "off the plane: {z}");
                assert!(
                    known
                        .kinks_on_line(&line.origin, &line.dir, lo, hi)
                        .is_empty()
                );
            }
        }
        assert!(found > 60, "only {found} of 180 lines gave a crossing");
    }

    /// `rows_agree` gives the verdict of gathering the shared entries and comparing their unit
    /// vectors (its first form), on rows that agree, agree up to sign, agree on too few indices, or
    /// differ by a little.
    #[test]
    fn rows_agree_matches_the_gathering_form() {
        fn gathered(ai: &[usize], a: &[f64], bi: &[usize], b: &[f64], tol: f64) -> bool {
            let (mut va, mut vb) = (Vec::new(), Vec::new());
            for (i, &k) in ai.iter().enumerate() {
                if let Ok(j) = bi.binary_search(&k) {
                    va.push(a[i]);
                    vb.push(b[j]);
                }
            }
            if va.len() < PROBE_COMMON_MIN.min(ai.len()).min(bi.len()).max(2) {
                return false;
            }
            let (na, nb) = (norm(&va), norm(&vb));
            if na == 0.0 || nb == 0.0 {
                return false;
            }
            let s = if dot(&va, &vb) < 0.0 { -1.0 } else { 1.0 };
            va.iter()
                .zip(&vb)
                .all(|(x, y)| (x / na - s * y / nb).abs() <= tol)
        }
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (mut yes, mut no) = (0, 0);
        for case in 0..3000 {
            let theta: Vec<f64> = (0..32).map(|_| rng.random_range(-1.0..1.0)).collect();
            let pick = |rng: &mut ChaCha20Rng| -> Vec<usize> {
                (0..32)
                    .filter(|_| rng.random_range(0.0..1.0) < 0.4)
                    .collect()
            };
            let (ai, bi) = (pick(&mut rng), pick(&mut rng));
            let scale = if case % 2 == 0 { 2.5 } else { -0.7 };
            let noise = [0.0, 1e-9, 1e-5][case % 3];
            let a: Vec<f64> = ai.iter().map(|&k| theta[k]).collect();
            let b: Vec<f64> = bi
                .iter()
                .map(|&k| scale * theta[k] + noise * rng.random_range(-1.0..1.0))
                .collect();
            let got = rows_agree(&ai, &a, &bi, &b, 1e-6);
            assert_eq!(got, gathered(&ai, &a, &bi, &b, 1e-6), "case {case}");
            if got { yes += 1 } else { no += 1 }
        }
        assert!(yes > 500 && no > 500, "{yes} agree, {no} do not");
    }

    #[test]
    fn follow_asks_keep_bank_order_below_the_cap_and_go_closest_first_above_it() {
        let asks_of = |lens: &[usize]| -> Vec<(usize, Vec<usize>)> {
            lens.iter()
                .enumerate()
                .map(|(i, &n)| (i, (0..n).collect()))
                .collect()
        };
        // 10 estimates asking for at most 4 lines each: 40 lines, under the cap.
        let lens: Vec<usize> = (0..10).map(|i| 10 - i).collect();
        let mut asks = asks_of(&lens);
        order_follow_asks(&mut asks, 1);
        assert_eq!(asks, asks_of(&lens));
        // 100 estimates asking for 4 each: over the cap, fewest missing first, ties in bank order.
        let lens: Vec<usize> = (0..100).map(|i| 4 + (97 * i) % 13).collect();
        let mut asks = asks_of(&lens);
        let sorted = |asks: &[(usize, Vec<usize>)]| {
            asks.windows(2).all(|w| {
                w[0].1.len() < w[1].1.len() || (w[0].1.len() == w[1].1.len() && w[0].0 < w[1].0)
            })
        };
        order_follow_asks(&mut asks, 1);
        assert!(sorted(&asks));
        assert_eq!(asks.len(), 100);
        // One line per estimate (all its units at once): 100 lines are under the cap, 300 are not.
        let mut asks = asks_of(&lens);
        order_follow_asks(&mut asks, usize::MAX);
        assert_eq!(asks, asks_of(&lens));
        let lens: Vec<usize> = (0..300).map(|i| 4 + (97 * i) % 13).collect();
        let mut asks = asks_of(&lens);
        order_follow_asks(&mut asks, usize::MAX);
        assert!(sorted(&asks));
        assert_eq!(asks.len(), 300);
    }

    /// Following towards several units ends at a point where all of them are active, with a unit
    /// normal as the search direction.
    #[test]
    fn following_to_several_units_activates_all_of_them() {
        use netxray_relu::{Arch, InitRecipe, Network};
        let net = Network::random(
            &"20-24-8-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            5,
        );
        let known = KnownPrefix {
            layers: net.layers()[..1].to_vec(),
            input_dim: 20,
        };
        let theta: Vec<f64> = net.layers()[1].weight.row(0).iter().copied().collect();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut reached = 0;
        for _ in 0..20 {
            let x: Vec<f64> = (0..20)
                .map(|_| rng.sample::<f64, _>(StandardNormal))
                .collect();
            let h = known.local_full(&x).h;
            let off: Vec<usize> = (0..24).filter(|&k| h[k] <= 0.0).take(6).collect();
            assert!(off.len() >= 3, "a random point has several inactive units");
            if let Some((line, r)) = follow_to_units(&known, &theta, &x, &off) {
                reached += 1;
                let h = known.local_full(&line.origin).h;
                assert!(off.iter().all(|&k| h[k] > 0.0));
                assert!((norm(&line.dir) - 1.0).abs() < 1e-12 && r > 0.0);
            }
        }
        assert!(
            reached >= 15,
            "reached all units from {reached} of 20 points"
        );
    }

    /// The walk's pulled-back rows, combined row and pushed-forward step agree with the full
    /// products `∂pre_l/∂z₁ = W_l D_{l−1} ∂pre_{l−1}/∂z₁` they replace.
    #[test]
    fn walk_linearization_matches_the_full_products() {
        use netxray_relu::{Arch, InitRecipe, Network};
        let net = Network::random(
            &"30-12-10-9-7-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            11,
        );
        let known = KnownPrefix {
            layers: net.layers()[..4].to_vec(),
            input_dim: 30,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let z1: Vec<f64> = (0..12)
            .map(|_| rng.sample::<f64, _>(StandardNormal))
            .collect();
        let mut pre = vec![z1.clone()];
        let mut full = vec![Mat::<f64>::identity(12, 12)];
        for l in &known.layers[1..] {
            let z = pre.last().unwrap();
            let mask = Mat::<f64>::from_fn(z.len(), z.len(), |r, c| {
                f64::from(u8::from(r == c && z[r] > 0.0))
            });
            let h: Vec<f64> = z.iter().map(|v| v.max(0.0)).collect();
            pre.push(
                (0..l.fan_out())
                    .map(|r| (0..h.len()).map(|c| l.weight[(r, c)] * h[c]).sum::<f64>() + l.bias[r])
                    .collect(),
            );
            let next = &l.weight * &mask * full.last().unwrap();
            full.push(next);
        }
        assert!(
            pre.iter().all(|p| p.iter().any(|&v| v > 0.0)),
            "a live path"
        );
        let lin = WalkLinearization::at(&known, &pre);
        let step: Vec<f64> = (0..12)
            .map(|_| rng.sample::<f64, _>(StandardNormal))
            .collect();
        let moved = lin.push_forward(&step);
        for (l, m) in full.iter().enumerate() {
            let units: Vec<usize> = (0..m.nrows()).rev().step_by(2).collect();
            let rows = lin.pull_back(l, &units, None);
            let weights = [0.7, -1.3, 0.2, 2.0, -0.4, 1.1, 0.9];
            let combined = lin.combined_row(l, &units, |i| weights[i]);
            for c in 0..12 {
                for (i, &u) in units.iter().enumerate() {
                    assert!(
                        (rows[(i, c)] - m[(u, c)]).abs() < 1e-12,
                        "layer {l} row {u}"
                    );
                }
                let want: f64 = units
                    .iter()
                    .enumerate()
                    .map(|(i, &u)| weights[i] * m[(u, c)])
                    .sum();
                assert!((combined[c] - want).abs() < 1e-12, "layer {l} combined");
            }
            for u in 0..m.nrows() {
                let want: f64 = (0..12).map(|c| m[(u, c)] * step[c]).sum();
                assert!(
                    (moved[l][u] - want).abs() < 1e-12,
                    "layer {l} unit {u} moved"
                );
            }
        }
    }

    /// The normal from one vector-Jacobian product agrees with the one from the full Jacobians, behind
    /// zero to three known layers, and `follow_to_unit` (which walks on it) turns its unit on while
    /// staying on the hyperplane to first order, the same by vector-Jacobian products as by full
    /// Jacobians.
    #[test]
    fn normal_from_the_gradient_matches_the_jacobian_and_following_turns_the_unit_on() {
        use netxray_relu::{Arch, InitRecipe, Network};
        let net = Network::random(
            &"30-20-20-20-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            5,
        );
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let (mut reached, mut tried) = (0, 0);
        for depth in 0..=3 {
            let known = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 30,
            };
            let dim = known.out_dim();
            for _ in 0..10 {
                let x: Vec<f64> = (0..30)
                    .map(|_| rng.sample::<f64, _>(StandardNormal))
                    .collect();
                let theta: Vec<f64> = (0..=dim)
                    .map(|_| rng.sample::<f64, _>(StandardNormal))
                    .collect();
                let pre = known.pre_activations(&x, depth);
                let want = input_normal(&theta, &known.local_full(&x));
                let got = input_normal_at(&known, &theta, &pre);
                match (want, got) {
                    (Some((a, an)), Some((b, bn))) => {
                        assert!((an - bn).abs() <= 1e-12 * an, "lengths {an} vs {bn}");
                        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-12));
                    }
                    (None, None) => {}
                    (a, b) => panic!("one vanished: {:?} vs {:?}", a.is_some(), b.is_some()),
                }
                if depth == 0 {
                    continue;
                }
                let h = known.local_full(&x).h;
                let Some(unit) = (0..dim).find(|&k| h[k] <= 0.0) else {
                    continue;
                };
                tried += 1;
                let value = |p: &[f64]| -> f64 {
                    let h = known.local_full(p).h;
                    (0..dim).map(|k| theta[k] * h[k]).sum::<f64>()
                };
                let by_jacobians = follow_to_unit_by(&known, &theta, &x, unit, false);
                let by_products = follow_to_unit_by(&known, &theta, &x, unit, true);
                // The two ways differ by rounding only.
                match (&by_jacobians, &by_products) {
                    (Some((a, ra)), Some((b, rb))) => {
                        let gap = a.origin.iter().zip(&b.origin).map(|(p, q)| (p - q).abs());
                        assert!(gap.fold(0.0, f64::max) <= 1e-9, "end points differ");
                        assert!((ra - rb).abs() <= 1e-9 * ra.max(1.0));
                    }
                    (None, None) => {}
                    _ => panic!("one way reached the unit, the other did not"),
                }
                if let Some((line, r)) = by_products {
                    reached += 1;
                    assert!(known.local_full(&line.origin).h[unit] > 0.0, "unit on");
                    assert!(r > 0.0 && (norm(&line.dir) - 1.0).abs() < 1e-12);
                    let (_, gn) = input_normal(&theta, &known.local_full(&x)).expect("a normal");
                    // First-order steps within the hyperplane: off it by little against the way
                    // walked (the known units crossed bend it).
                    assert!((value(&line.origin) - value(&x)).abs() / gn <= 4.0 * r + 1e-9);
                }
            }
        }
        assert!(
            tried >= 15 && reached * 2 >= tried,
            "reached {reached} of {tried}"
        );
    }

    /// Behind two known layers the walk turns the asked units on while keeping no more active units
    /// in the last known layer than in the first (minus the slack), and lands on the hyperplane.
    #[test]
    fn ranked_following_activates_the_units_and_keeps_the_control_rank() {
        use netxray_relu::{Arch, InitRecipe, Network};
        let net = Network::random(
            &"60-24-24-8-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            3,
        );
        let known = KnownPrefix {
            layers: net.layers()[..2].to_vec(),
            input_dim: 60,
        };
        let first = FirstLayerMap::of(&known).expect("two known layers");
        let mut theta: Vec<f64> = net.layers()[2].weight.row(0).iter().copied().collect();
        theta.push(net.layers()[2].bias[0]);
        let value = |x: &[f64]| -> f64 {
            let h = known.local_full(x).h;
            (0..24).map(|k| theta[k] * h[k]).sum::<f64>()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (mut reached, mut tried) = (0, 0);
        let mut depth_on = Vec::new();
        for _ in 0..40 {
            let x: Vec<f64> = (0..60)
                .map(|_| rng.sample::<f64, _>(StandardNormal))
                .collect();
            let h = known.local_full(&x).h;
            let want: Vec<usize> = (0..24).filter(|&k| h[k] <= 0.0).take(3).collect();
            if want.len() < 3 {
                continue;
            }
            tried += 1;
            if let Some((line, r)) = follow_to_units_ranked(&known, &first, &theta, &x, &want) {
                reached += 1;
                let st = known.local_full(&line.origin);
                assert!(want.iter().all(|&k| st.h[k] > 0.0), "asked units on");
                // How far on each asked unit ends, against how far off it started.
                let start = known.local_full(&x);
                depth_on.extend(want.iter().map(|&k| st.pre[1][k] / start.pre[1][k].abs()));
                let a1 = st.pre[0].iter().filter(|&&v| v > 0.0).count();
                let a2 = st.pre[1].iter().filter(|&&v| v > 0.0).count();
                assert!(
                    a2 + FOLLOW_RANK_SLACK <= a1,
                    "rank kept: {a2} active of {a1}"
                );
                // Off the hyperplane through the start by less than the search radius (the units
                // turned on bend it; their weights are what the line is searched for).
                let (_, gn) = input_normal(&theta, &st).expect("a normal");
                assert!(
                    (value(&line.origin) - value(&x)).abs() / gn <= r,
                    "within the radius"
                );
                assert!((norm(&line.dir) - 1.0).abs() < 1e-12 && r > 0.0);
            }
        }
        assert!(
            tried >= 20 && reached * 2 >= tried,
            "reached {reached} of {tried}"
        );
        // Well on, not barely (a step that overshoots re-targets from nearer, hence the spread): a
        // barely active unit leaves the witnesses there blind to its weight.
        depth_on.sort_by(f64::total_cmp);
        let median = depth_on[depth_on.len() / 2];
        assert!(
            median >= 0.5 * FOLLOW_RANKED_CLEARANCE,
            "median depth {median}"
        );
    }

    #[test]
    fn follow_chunks_are_disjoint_random_and_bounded() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let missing: Vec<usize> = (0..40).map(|k| 3 * k).collect();
        // Few walks: disjoint chunks, each at most `chunk_max` long, all drawn from `missing`.
        let chunks = follow_chunks(&missing, 2, 16, &mut rng);
        assert_eq!(chunks.len(), 2);
        let mut seen: Vec<usize> = chunks.iter().flatten().copied().collect();
        assert_eq!(seen.len(), 32);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 32);
        assert!(seen.iter().all(|u| missing.contains(u)));
        // Not the first units in index order (the walks that kept failing took those).
        assert_ne!(chunks[0], missing[..16].to_vec());
        // Enough walks: every unit is some walk's target.
        let chunks = follow_chunks(&missing, 8, 16, &mut rng);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 40);
        // More walks than units: each unit is targeted, alone, more than once.
        let chunks = follow_chunks(&[7, 9], 5, 16, &mut rng);
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|c| c.len() == 1));
        assert!(chunks.iter().any(|c| c == &[7]) && chunks.iter().any(|c| c == &[9]));
        assert!(follow_chunks(&[], 3, 16, &mut rng).is_empty());
        // Same seed, same chunks.
        let a = follow_chunks(&missing, 3, 16, &mut ChaCha20Rng::seed_from_u64(9));
        let b = follow_chunks(&missing, 3, 16, &mut ChaCha20Rng::seed_from_u64(9));
        assert_eq!(a, b);
    }

    #[test]
    fn segments_around_origin_keep_the_origins_segment_and_its_neighbours() {
        let segs: Vec<(usize, f64, f64)> = [
            (-3.0, -2.0),
            (-2.0, -0.5),
            (-0.5, 0.2),
            (0.2, 1.0),
            (1.0, 4.0),
        ]
        .iter()
        .map(|&(a, b)| (7, a, b))
        .collect();
        let ends = |v: Vec<(usize, f64, f64)>| v.iter().map(|s| s.1).collect::<Vec<_>>();
        assert_eq!(
            ends(segments_around_origin(&segs, 1)),
            vec![-2.0, -0.5, 0.2]
        );
        assert_eq!(ends(segments_around_origin(&segs, 0)), vec![-0.5]);
        // Origin in a gap (a dropped sliver): the next segment and its neighbours.
        let gap = vec![(7, -1.0, -0.1), (7, 0.1, 1.0), (7, 1.0, 2.0)];
        assert_eq!(ends(segments_around_origin(&gap, 0)), vec![0.1]);
        assert_eq!(segments_around_origin(&[], 1), vec![]);
    }
}
