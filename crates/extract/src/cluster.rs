//! Witnesses → neurons.
//!
//! A [`NeuronEstimate`] collects the witnesses believed to belong to one neuron and solves for its
//! `(w, b)` as the null vector of all their homogeneous constraints stacked:
//! - every witness's signature rows `(I − ŷŷᵀ) A` (partial or full), bias column 0;
//! - every critical point's hyperplane row `[h(x*), 1]` (exact up to the crossing's precision).
//!
//! Witnesses join an estimate when their full signature agrees with it on shared coordinates, or, for
//! free (no queries), when their critical point lies on the estimate's hyperplane and the estimate
//! already constrains every unit active there. A measured partial witness where exactly one unit the
//! estimate lacks is active joins when the weight its hyperplane row implies for that unit also explains
//! its signature ([`NeuronEstimate::extended_by`]). Coordinates no witness ever constrained stay flagged.

use crate::linalg::{dot, norm, null_vector};
use crate::signature::Witness;
use faer::Mat;
use std::collections::BTreeSet;

/// The evidence and current solution for one neuron.
#[derive(Debug, Clone)]
pub struct NeuronEstimate {
    /// Constraint rows (each unit norm), width `dim + 1` (last column: bias).
    rows: Vec<Vec<f64>>,
    /// Lines the witnesses came from.
    pub lines: BTreeSet<usize>,
    /// Number of witnesses (signature or hyperplane).
    pub witnesses: usize,
    /// Which input units are constrained.
    pub known: Vec<bool>,
    /// Current `(w, b)` with ‖w‖ = 1 (overall sign arbitrary).
    pub theta: Vec<f64>,
    /// s_min/s_max of the stacked constraints.
    pub residual: f64,
    /// s_{n-1}/s_max of the stacked constraints (restricted to known coordinates).
    pub gap: f64,
    /// A few input points on this neuron's hyperplane (measured witnesses), for hyperplane following.
    pub anchors: Vec<Vec<f64>>,
    /// Full-witness signatures (active units, unit row on them), expanded into rows when solving.
    fulls: Vec<(Vec<usize>, Vec<f64>)>,
    /// Rows were added since the last solve.
    dirty: bool,
    /// Witness-collection round in which the estimate was created.
    pub born: usize,
    /// Weight of a hyperplane row relative to a (unit) signature row (see
    /// [`crate::params::ExtractParams::hyperplane_weight`]).
    hyperplane_weight: f64,
    /// Dense solves by inverse iteration from the current `theta` (see
    /// [`NeuronBank::for_wide_layer`]); `gap` is then not computed (`NaN`).
    inverse_iteration: bool,
}

/// Fewest signature rows a partial witness needs to extend an estimate by one unit (see
/// [`NeuronEstimate::extended_by`]): one row is only a sign, two leave a single ratio to agree by chance.
const MIN_EXTENSION_ROWS: usize = 3;

/// Most units a partial witness may add to an estimate at once ([`NeuronEstimate::extended_by`]):
/// each needs one more signature row, and deep layers' witnesses have few.
const MAX_JOINT_EXTENSION: usize = 3;

/// The unseen unit's column of a partial witness's signature must be this far from parallel to the
/// measured `y` (1 − cos² of the angle), or the signature cannot fix the unit's weight.
const EXTENSION_COLLINEAR: f64 = 1e-6;

/// How closely the unseen unit's weight from the witness's hyperplane row and from its signature must
/// agree (relative to the weight, whose row has unit norm on the other units): signatures of deep
/// layers are good to ~1e-9, another neuron's witness agrees only by accident.
const EXTENSION_AGREEMENT: f64 = 1e-5;

/// Anchors kept per estimate.
const MAX_ANCHORS: usize = 4;

/// Input width from which [`NeuronEstimate::solve_in_span`] replaces the dense SVD: below it the dense
/// solve costs well under a millisecond and the two agree to rounding.
const SPAN_SOLVE_MIN_DIM: usize = 64;

/// Are `a` and `b` parallel up to sign: ‖a/‖a‖ ∓ b/‖b‖‖ ≤ tol (false if either is zero)?
fn parallel(a: &[f64], b: &[f64], tol: f64) -> bool {
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return false;
    }
    let s = if dot(a, b) >= 0.0 { 1.0 } else { -1.0 };
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x / na - s * y / nb).powi(2))
        .sum::<f64>()
        .sqrt();
    diff <= tol
}

fn unit(v: Vec<f64>) -> Option<Vec<f64>> {
    let n = norm(&v);
    (n > 0.0 && n.is_finite()).then(|| v.into_iter().map(|x| x / n).collect())
}

impl NeuronEstimate {
    /// An estimate that knows every unit, with hyperplane `theta` (weights, then bias) and no
    /// evidence behind it: what polishing sees of a recovered neuron (for benches and tests that
    /// start from a given row).
    pub fn with_row(theta: Vec<f64>, hyperplane_weight: f64) -> Self {
        let dim = theta.len() - 1;
        let mut e = Self::new(dim, hyperplane_weight);
        e.known = vec![true; dim];
        e.theta = theta;
        e
    }

    pub(crate) fn new(dim: usize, hyperplane_weight: f64) -> Self {
        Self {
            hyperplane_weight,
            rows: Vec::new(),
            lines: BTreeSet::new(),
            witnesses: 0,
            known: vec![false; dim],
            theta: vec![0.0; dim + 1],
            residual: 1.0,
            gap: 0.0,
            anchors: Vec::new(),
            fulls: Vec::new(),
            dirty: false,
            born: 0,
            inverse_iteration: false,
        }
    }

    fn dim(&self) -> usize {
        self.known.len()
    }

    /// Adds the hyperplane row of a critical point with previous-layer activation `h`.
    pub fn add_point(&mut self, h: &[f64], line: usize) {
        let mut row = h.to_vec();
        row.push(1.0);
        if let Some(r) = unit(row) {
            // A crossing is located to ~1e-14 relative, a measured signature only to ~1e-11: weight the
            // exact hyperplane rows so that they dominate wherever they constrain the solution.
            self.rows
                .push(r.into_iter().map(|v| v * self.hyperplane_weight).collect());
        }
        self.lines.insert(line);
        self.witnesses += 1;
        self.dirty = true;
    }

    /// Adds a measured witness (signature rows and its hyperplane row).
    pub fn add_witness(&mut self, w: &Witness) {
        let yn = norm(&w.y);
        if let Some(full) = &w.full {
            // Stored compactly (|A| numbers); expanded into rows only while solving, so thousands of
            // lone witnesses on wide inputs cost little memory.
            self.fulls.push((w.active.clone(), full.clone()));
        } else if yn > 0.0 {
            let yh: Vec<f64> = w.y.iter().map(|v| v / yn).collect();
            let r = w.a_rows.nrows();
            let dim = self.dim();
            // P A with P = I − ŷŷᵀ: row k = a_k − ŷ_k Σ_j ŷ_j a_j
            let mut proj = vec![0.0; dim];
            for j in 0..r {
                for c in 0..dim {
                    proj[c] += yh[j] * w.a_rows[(j, c)];
                }
            }
            for k in 0..r {
                let mut row: Vec<f64> = (0..dim)
                    .map(|c| w.a_rows[(k, c)] - yh[k] * proj[c])
                    .collect();
                row.push(0.0);
                if let Some(u) = unit(row) {
                    self.rows.push(u);
                }
            }
        }
        for &a in &w.active {
            self.known[a] = true;
        }
        if self.anchors.len() < MAX_ANCHORS {
            self.anchors.push(w.x.clone());
        }
        self.add_point(&w.h, w.line);
    }

    /// Re-solves the null vector on the known coordinates (others are set to 0).
    pub fn solve(&mut self) {
        let dim = self.dim();
        let cols: Vec<usize> = (0..dim)
            .filter(|&c| self.known[c])
            .chain(std::iter::once(dim))
            .collect();
        if self.rows.is_empty() {
            return;
        }
        self.dirty = false;
        if !self.solve_in_span() {
            self.solve_dense(&cols);
        }
    }

    /// The null vector by an SVD of every constraint row on the known coordinates.
    fn solve_dense(&mut self, cols: &[usize]) {
        let dim = self.dim();
        let p = dim + 1;
        // Rows of a full witness f on A: e_a − f_a·f for a ∈ A (the projection orthogonal to f).
        let mut all: Vec<Vec<f64>> = self.rows.clone();
        for (act, f) in &self.fulls {
            for (i, &a) in act.iter().enumerate() {
                let mut row = vec![0.0; p];
                for (j, &b) in act.iter().enumerate() {
                    row[b] = -f[i] * f[j];
                }
                row[a] += 1.0;
                if let Some(u) = unit(row) {
                    all.push(u);
                }
            }
        }
        // Keep memory and solve time bounded: many rows are replaced by the triangular factor of their
        // QR decomposition, which has the same Gram matrix (same singular values and null space).
        if all.len() > 2 * p {
            let m = Mat::<f64>::from_fn(all.len(), p, |i, j| all[i][j]);
            let qr = m.qr();
            let r = qr.R();
            all = (0..r.nrows().min(p))
                .map(|i| (0..p).map(|j| r[(i, j)]).collect())
                .collect();
            self.rows = all.clone();
            self.fulls.clear();
        }
        let m = Mat::<f64>::from_fn(all.len(), cols.len(), |i, j| all[i][cols[j]]);
        let solved = if self.inverse_iteration {
            let start: Vec<f64> = cols.iter().map(|&c| self.theta[c]).collect();
            crate::linalg::null_vector_iterated(&m, &start)
        } else {
            null_vector(&m)
        };
        if let Some((x, res, gap)) = solved {
            let mut theta = vec![0.0; dim + 1];
            for (j, &c) in cols.iter().enumerate() {
                theta[c] = x[j];
            }
            let wn = norm(&theta[..dim]);
            if wn > 0.0 {
                theta.iter_mut().for_each(|v| *v /= wn);
            }
            self.theta = theta;
            // In units of an unweighted row, so weighting does not loosen the consistency bound.
            self.residual = res * self.hyperplane_weight;
            self.gap = gap;
        }
    }

    /// The null vector by a reduced problem when every full witness covers every input unit (always
    /// so on layer 1, where all inputs are "active"): then the stacked Gram matrix is
    /// `k·D − Σ f fᵀ + Σ r rᵀ` (`D` = identity on the weights, 0 on the bias), and any eigenvector with
    /// eigenvalue below `k` lies in `span(e_bias, f₁…f_k, r₁…)`. Solving there (an orthonormal basis
    /// `Q`, each full witness becoming the projector `I − q_b q_bᵀ − g gᵀ` with `g = Qᵀ f`) gives the
    /// same solution as the dense `(d+1)`-column SVD at `O(d·m²)` instead of `O(d³)` — on a
    /// 3072-input layer that is the difference between milliseconds and tens of seconds per solve.
    /// Outside that span every full row acts as the identity, so the singular value there is `√k`,
    /// folded into `s_max` and the gap. Returns false (nothing changed) when the reduction does not
    /// apply or would not be smaller.
    fn solve_in_span(&mut self) -> bool {
        let dim = self.dim();
        let p = dim + 1;
        let k = self.fulls.len();
        if dim < SPAN_SOLVE_MIN_DIM
            || k == 0
            || !self.known.iter().all(|&c| c)
            || self.fulls.iter().any(|(act, _)| act.len() != dim)
        {
            return false;
        }
        let m = 1 + k + self.rows.len();
        if 2 * m > p {
            return false;
        }
        // Basis of the span: e_bias, each full signature (zero bias), each row.
        let mut basis = Mat::<f64>::zeros(p, m);
        basis[(dim, 0)] = 1.0;
        for (j, (act, f)) in self.fulls.iter().enumerate() {
            for (i, &a) in act.iter().enumerate() {
                basis[(a, 1 + j)] = f[i];
            }
        }
        for (j, r) in self.rows.iter().enumerate() {
            for (c, &v) in r.iter().enumerate() {
                basis[(c, 1 + k + j)] = v;
            }
        }
        let q = basis.qr().compute_thin_Q();
        let qb: Vec<f64> = (0..m).map(|j| q[(dim, j)]).collect();
        let mut reduced: Vec<Vec<f64>> = Vec::with_capacity(k * m + self.rows.len());
        for (act, f) in &self.fulls {
            let g: Vec<f64> = (0..m)
                .map(|j| act.iter().zip(f).map(|(&a, &v)| q[(a, j)] * v).sum())
                .collect();
            for i in 0..m {
                let mut row: Vec<f64> = (0..m).map(|j| -qb[i] * qb[j] - g[i] * g[j]).collect();
                row[i] += 1.0;
                reduced.push(row);
            }
        }
        for r in &self.rows {
            reduced.push(
                (0..m)
                    .map(|j| r.iter().enumerate().map(|(c, &v)| v * q[(c, j)]).sum())
                    .collect(),
            );
        }
        let mm = Mat::<f64>::from_fn(reduced.len(), m, |i, j| reduced[i][j]);
        let Some((s, v)) = crate::linalg::svd_right(&mm) else {
            return false;
        };
        if s.len() < m {
            return false;
        }
        let outside = (k as f64).sqrt();
        let smax = s[0].max(outside);
        let (smin, s2) = (s[m - 1], s[m - 2].min(outside));
        let mut theta: Vec<f64> = (0..p)
            .map(|c| (0..m).map(|j| q[(c, j)] * v[(j, m - 1)]).sum())
            .collect();
        let wn = norm(&theta[..dim]);
        if wn > 0.0 {
            theta.iter_mut().for_each(|x| *x /= wn);
        }
        self.theta = theta;
        self.residual = smin / smax * self.hyperplane_weight;
        self.gap = s2 / smax;
        true
    }

    /// Relative distance of a point (previous-layer activation `h`) from this neuron's hyperplane,
    /// or `None` when `h` has active units this estimate does not constrain.
    pub fn plane_distance(&self, h: &[f64]) -> Option<f64> {
        let dim = self.dim();
        if h.iter()
            .enumerate()
            .any(|(k, &v)| v != 0.0 && !self.known[k])
        {
            return None;
        }
        let z = dot(&self.theta[..dim], h) + self.theta[dim];
        let scale = norm(h) + self.theta[dim].abs();
        Some(z.abs() / scale.max(f64::MIN_POSITIVE))
    }

    /// Does a full witness agree with this estimate on shared coordinates (up to sign)?
    pub fn agrees(&self, w: &Witness, tol: f64, min_common: usize) -> bool {
        let Some(full) = &w.full else { return false };
        let common: Vec<(usize, usize)> = w
            .active
            .iter()
            .enumerate()
            .filter(|&(_, &a)| self.known[a])
            .map(|(i, &a)| (i, a))
            .collect();
        if common.len() < min_common {
            return false;
        }
        let a: Vec<f64> = common.iter().map(|&(i, _)| full[i]).collect();
        let b: Vec<f64> = common.iter().map(|&(_, c)| self.theta[c]).collect();
        parallel(&a, &b, tol)
    }

    /// Can a partial witness met where exactly one unit `u` this estimate has never seen is active
    /// belong to it? (The plane test cannot say: it needs every active unit's weight.) The witness lies
    /// on the neuron's hyperplane, which fixes `w_u = −(θ·h + b)/h_u`; its own signature, `A w ∥ y` on
    /// at least [`MIN_EXTENSION_ROWS`] rows, must fix the same `w_u` independently (within
    /// [`EXTENSION_AGREEMENT`]) and fit the known part within `tol`. Without this, a unit active only where the control rank is short (deep
    /// layers) is never constrained: measured on layer 8 of a 784-16×8-1 net, one neuron stayed
    /// incomplete after 460 witnesses.
    pub fn extended_by(&self, w: &Witness, tol: f64) -> bool {
        let dim = self.dim();
        if w.full.is_some() || w.a_rows.nrows() < MIN_EXTENSION_ROWS || self.witnesses < 2 {
            return false;
        }
        let unseen: Vec<usize> = (0..dim)
            .filter(|&k| w.h[k] != 0.0 && !self.known[k])
            .collect();
        let u = match unseen.as_slice() {
            [] => return false,
            [u] => *u,
            _ => return self.extended_jointly_by(w, &unseen, tol),
        };
        let (z, c) = self.known_part(w, &[u]);
        let from_plane = -z / w.h[u];
        // The signature alone must fix w_u too (else a witness of another neuron with uninformative
        // rows would pass): A_K θ_K + a_u w_u = λ y, least squares in (w_u, λ).
        let r = w.a_rows.nrows();
        let a: Vec<f64> = (0..r).map(|j| w.a_rows[(j, u)]).collect();
        let y = &w.y;
        let (aa, ay, yy) = (dot(&a, &a), dot(&a, y), dot(y, y));
        let det = aa * yy - ay * ay;
        if det.is_nan() || det <= EXTENSION_COLLINEAR * aa * yy {
            return false;
        }
        let (ac, yc) = (dot(&a, &c), dot(y, &c));
        let from_signature = (-ac * yy + ay * yc) / det;
        let lambda = (aa * yc - ay * ac) / det;
        let resid: f64 = (0..r)
            .map(|j| (a[j] * from_signature - y[j] * lambda + c[j]).powi(2))
            .sum::<f64>()
            .sqrt();
        resid <= tol * norm(&c).max(f64::MIN_POSITIVE)
            && (from_signature - from_plane).abs() <= EXTENSION_AGREEMENT * (1.0 + from_plane.abs())
    }

    /// What the estimate's known weights (every unit but `unseen`) contribute at witness `w`: to its
    /// pre-activation, `z = θ_K·h_K + b`, and to each signature row, `c_j = (A θ_K)_j`.
    fn known_part(&self, w: &Witness, unseen: &[usize]) -> (f64, Vec<f64>) {
        let dim = self.dim();
        let th = &self.theta;
        let seen = |k: &usize| !unseen.contains(k);
        let z = (0..dim).filter(seen).map(|k| th[k] * w.h[k]).sum::<f64>() + th[dim];
        let c = (0..w.a_rows.nrows())
            .map(|j| {
                (0..dim)
                    .filter(seen)
                    .map(|k| w.a_rows[(j, k)] * th[k])
                    .sum()
            })
            .collect();
        (z, c)
    }

    /// [`Self::extended_by`] for a witness where `m = unseen.len() ≥ 2` units this estimate has never
    /// seen are active at once. Measured on the last hidden layer of a balanced 784-16×8-1: hundreds of
    /// partial witnesses where two missing units were on together, none usable one unit at a time.
    /// The signature alone fixes `(w_U, λ)` by least squares on `r ≥ m + 2` rows (one redundant row to
    /// test), its columns must be well conditioned, and the hyperplane then supplies the independent
    /// check: `h_U·w_U = −(θ_K·h_K + b)` within [`EXTENSION_AGREEMENT`].
    fn extended_jointly_by(&self, w: &Witness, unseen: &[usize], tol: f64) -> bool {
        let (r, m) = (w.a_rows.nrows(), unseen.len());
        if m > MAX_JOINT_EXTENSION || r < m + 2 {
            return false;
        }
        let (z, c) = self.known_part(w, unseen);
        // Columns a_u (u ∈ U) and −y, each scaled to unit norm so the conditioning test is scale-free.
        let mut cols: Vec<Vec<f64>> = unseen
            .iter()
            .map(|&u| (0..r).map(|j| w.a_rows[(j, u)]).collect())
            .collect();
        cols.push(w.y.iter().map(|v| -v).collect());
        let scales: Vec<f64> = cols.iter().map(|c| norm(c)).collect();
        if scales.iter().any(|&n| !(n > 0.0 && n.is_finite())) {
            return false;
        }
        let mat = Mat::<f64>::from_fn(r, m + 1, |j, i| cols[i][j] / scales[i]);
        let Some((sv, _)) = crate::linalg::svd_right(&mat) else {
            return false;
        };
        let (smax, smin) = (sv[0], sv[sv.len() - 1]);
        if smin.is_nan() || smin <= EXTENSION_COLLINEAR.sqrt() * smax {
            return false;
        }
        let rhs = Mat::<f64>::from_fn(r, 1, |j, _| -c[j]);
        let x = crate::linalg::lstsq(&mat, &rhs);
        let resid: f64 = (0..r)
            .map(|j| ((0..=m).map(|i| mat[(j, i)] * x[(i, 0)]).sum::<f64>() + c[j]).powi(2))
            .sum::<f64>()
            .sqrt();
        if resid > tol * norm(&c).max(f64::MIN_POSITIVE) {
            return false;
        }
        let w_u: Vec<f64> = (0..m).map(|i| x[(i, 0)] / scales[i]).collect();
        let h_u: Vec<f64> = unseen.iter().map(|&u| w.h[u]).collect();
        (dot(&h_u, &w_u) + z).abs()
            <= EXTENSION_AGREEMENT * (norm(&h_u) * (1.0 + norm(&w_u)) + z.abs())
    }

    /// Merges another estimate's evidence into this one.
    pub fn absorb(&mut self, other: NeuronEstimate) {
        self.rows.extend(other.rows);
        self.fulls.extend(other.fulls);
        self.lines.extend(other.lines);
        self.witnesses += other.witnesses;
        for a in other.anchors {
            if self.anchors.len() < MAX_ANCHORS {
                self.anchors.push(a);
            }
        }
        for (k, o) in self.known.iter_mut().zip(other.known) {
            *k |= o;
        }
    }

    /// Number of constraint rows.
    pub fn num_rows(&self) -> usize {
        self.rows.len()
    }
}

/// All estimates of the layer being recovered.
#[derive(Debug, Clone, Default)]
pub struct NeuronBank {
    /// Estimates (some may be deeper-layer noise until they gather enough evidence).
    pub estimates: Vec<NeuronEstimate>,
    dim: usize,
    /// Current witness-collection round (stamped on new estimates).
    pub round: usize,
    hyperplane_weight: f64,
    /// See [`Self::for_wide_layer`].
    wide: bool,
}

/// Tolerances for the bank.
#[derive(Debug, Clone, Copy)]
pub struct BankTol {
    /// Signature agreement tolerance.
    pub cluster_tol: f64,
    /// Minimum shared coordinates.
    pub min_common: usize,
    /// Hyperplane membership tolerance (relative distance).
    pub plane_tol: f64,
    /// A join is kept only if the joint null-space residual stays below this.
    pub residual_max: f64,
}

impl NeuronBank {
    /// Empty bank for a layer whose inputs have width `dim`; hyperplane rows get `hyperplane_weight`.
    pub fn new(dim: usize, hyperplane_weight: f64) -> Self {
        Self {
            hyperplane_weight,
            estimates: Vec::new(),
            dim,
            round: 0,
            wide: false,
        }
    }

    /// The bank for a wide deep layer, where its algebra was a quarter of the witness rounds
    /// (layer 6 of the 3072-256×8-10, 256 wide; the bench in `docs/extraction.md`, "Session 34"):
    /// - every estimate it starts is solved by inverse iteration from its current solution
    ///   (`linalg::null_vector_iterated`) instead of an SVD: on 257 unknowns a solve then costs the
    ///   QR alone, about a third of QR and SVD;
    /// - [`Self::attach_points`] tests a batch of points against every hyperplane as one matrix
    ///   product instead of a dot product per pair.
    ///
    /// Both round differently (residuals agree with the SVD's to ~0.1 %), and rounding alone can
    /// change a bank's course where a join sits at its bound: the acceptance nets' layers keep the
    /// arithmetic they were measured with (see `layer::recover_layer`).
    pub fn for_wide_layer(mut self) -> Self {
        self.wide = true;
        self
    }

    /// Finds an estimate whose hyperplane holds the point; attaches it there (no queries needed).
    pub fn attach_point(&mut self, h: &[f64], line: usize, tol: &BankTol) -> bool {
        let mut best: Option<(usize, f64)> = None;
        for (i, e) in self.estimates.iter().enumerate() {
            if e.witnesses == 0 {
                continue;
            }
            if let Some(d) = e.plane_distance(h)
                && d <= tol.plane_tol
                && best.is_none_or(|(_, bd)| d < bd)
            {
                best = Some((i, d));
            }
        }
        if let Some((i, _)) = best {
            // The plane test is as tight as the residual bound, so the joint solve can wait.
            self.estimates[i].add_point(h, line);
            return true;
        }
        false
    }

    /// [`Self::attach_point`] for each point of a batch (previous-layer activations `hs`, from lines
    /// `lines`), in order; whether each was attached. Attaching adds a row but changes neither an
    /// estimate's solution nor its known units (the joint solve waits), so every point sees the bank
    /// as it was and the batch can be one product. On a [wide](Self::for_wide_layer) bank it is:
    /// `H Θᵀ` for the hyperplanes, and the product of the points' active units with the estimates'
    /// unknown ones for the points an estimate does not constrain (exact: counts of 0/1 entries).
    pub fn attach_points(&mut self, hs: &[Vec<f64>], lines: &[usize], tol: &BankTol) -> Vec<bool> {
        if !self.wide {
            return hs
                .iter()
                .zip(lines)
                .map(|(h, &line)| self.attach_point(h, line, tol))
                .collect();
        }
        let candidates: Vec<usize> = (0..self.estimates.len())
            .filter(|&i| self.estimates[i].witnesses > 0)
            .collect();
        let (n, c, dim) = (hs.len(), candidates.len(), self.dim);
        if n == 0 || c == 0 {
            return vec![false; n];
        }
        let est = &self.estimates;
        let h = Mat::<f64>::from_fn(n, dim, |i, j| hs[i][j]);
        let theta = Mat::<f64>::from_fn(dim, c, |j, k| est[candidates[k]].theta[j]);
        let on = Mat::<f64>::from_fn(n, dim, |i, j| if hs[i][j] != 0.0 { 1.0 } else { 0.0 });
        let unknown = Mat::<f64>::from_fn(dim, c, |j, k| {
            if est[candidates[k]].known[j] {
                0.0
            } else {
                1.0
            }
        });
        let (z, missing) = (&h * &theta, &on * &unknown);
        let best: Vec<Option<usize>> = (0..n)
            .map(|i| {
                let hn = norm(&hs[i]);
                let mut best: Option<(usize, f64)> = None;
                for (k, &e) in candidates.iter().enumerate() {
                    if missing[(i, k)] != 0.0 {
                        continue;
                    }
                    let b = est[e].theta[dim];
                    let d = (z[(i, k)] + b).abs() / (hn + b.abs()).max(f64::MIN_POSITIVE);
                    if d <= tol.plane_tol && best.is_none_or(|(_, bd)| d < bd) {
                        best = Some((e, d));
                    }
                }
                best.map(|(e, _)| e)
            })
            .collect();
        best.iter()
            .zip(hs.iter().zip(lines))
            .map(|(b, (h, &line))| {
                b.inspect(|&e| self.estimates[e].add_point(h, line))
                    .is_some()
            })
            .collect()
    }

    /// Re-solves every estimate that gained rows since its last solve.
    pub fn solve_dirty(&mut self) {
        // Independent SVDs: one per estimate, spread over the cores (results do not depend on the
        // number of threads).
        use rayon::prelude::*;
        self.estimates
            .par_iter_mut()
            .filter(|e| e.dirty)
            .for_each(|e| e.solve());
    }

    /// Merges pairs of estimates that agree on their shared known coordinates and stay consistent when
    /// joined (pieces of one neuron whose witnesses never shared enough active units).
    pub fn merge_pass(&mut self, tol: &BankTol) {
        self.solve_dirty();
        let mut i = 0;
        while i < self.estimates.len() {
            let mut j = i + 1;
            while j < self.estimates.len() {
                let (a, b) = (&self.estimates[i], &self.estimates[j]);
                // Two estimates that both constrain every coordinate would already have been joined
                // when their witnesses were compared; only fragments need this pass.
                let fragments = !a.known.iter().all(|&k| k) || !b.known.iter().all(|&k| k);
                let common: Vec<usize> = if fragments {
                    (0..self.dim)
                        .filter(|&k| a.known[k] && b.known[k])
                        .collect()
                } else {
                    Vec::new()
                };
                let mut merged = false;
                if common.len() >= tol.min_common {
                    let va: Vec<f64> = common.iter().map(|&k| a.theta[k]).collect();
                    let vb: Vec<f64> = common.iter().map(|&k| b.theta[k]).collect();
                    {
                        if parallel(&va, &vb, tol.cluster_tol) {
                            let mut trial = a.clone();
                            trial.absorb(b.clone());
                            trial.solve();
                            if trial.residual <= tol.residual_max {
                                self.estimates[i] = trial;
                                self.estimates.remove(j);
                                merged = true;
                            }
                        }
                    }
                }
                if !merged {
                    j += 1;
                }
            }
            i += 1;
        }
    }

    /// Adds a measured witness: joins (and merges) every agreeing estimate, or starts a new one.
    pub fn add_witness(&mut self, w: &Witness, tol: &BankTol) {
        let agreeing: Vec<usize> = if w.full.is_some() {
            (0..self.estimates.len())
                .filter(|&i| self.estimates[i].agrees(w, tol.cluster_tol, tol.min_common))
                .collect()
        } else {
            // Partial witness: the hyperplane test places it; failing that, an estimate it extends by
            // one unit.
            let on_plane: Vec<usize> = (0..self.estimates.len())
                .filter(|&i| {
                    self.estimates[i]
                        .plane_distance(&w.h)
                        .is_some_and(|d| d <= tol.plane_tol)
                })
                .take(1)
                .collect();
            if on_plane.is_empty() {
                (0..self.estimates.len())
                    .filter(|&i| self.estimates[i].extended_by(w, tol.cluster_tol))
                    .take(1)
                    .collect()
            } else {
                on_plane
            }
        };
        // Join the agreeing estimates only if the joint constraints stay consistent; a witness that
        // agrees on a few coordinates by accident (or a contaminated one) fails that test.
        if !agreeing.is_empty() {
            let mut trial = self.estimates[agreeing[0]].clone();
            for &i in &agreeing[1..] {
                trial.absorb(self.estimates[i].clone());
            }
            trial.add_witness(w);
            trial.solve();
            tracing::trace!(
                agreeing = agreeing.len(),
                residual = trial.residual,
                "join attempt"
            );
            if trial.residual <= tol.residual_max {
                for &i in agreeing[1..].iter().rev() {
                    self.estimates.remove(i);
                }
                self.estimates[agreeing[0]] = trial;
                return;
            }
        }
        if w.full.is_some() {
            let mut e = NeuronEstimate::new(self.dim, self.hyperplane_weight);
            e.inverse_iteration = self.wide;
            e.born = self.round;
            e.add_witness(w);
            e.solve();
            self.estimates.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    /// An estimate of a random neuron on `dim` inputs from `k` noisy full witnesses and `points`
    /// hyperplane points.
    fn estimate(dim: usize, k: usize, points: usize, seed: u64) -> (NeuronEstimate, Vec<f64>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut w: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let wn = norm(&w);
        w.iter_mut().for_each(|v| *v /= wn);
        let b = 0.3;
        let mut e = NeuronEstimate::new(dim, 10.0);
        for _ in 0..k {
            let f: Vec<f64> = w
                .iter()
                .map(|v| v + 1e-12 * rng.random_range(-1.0..1.0))
                .collect();
            e.fulls.push(((0..dim).collect(), unit(f).unwrap()));
        }
        e.known = vec![true; dim];
        for line in 0..points {
            // A point with w·h + b = 0.
            let mut h: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let z = dot(&w, &h) + b;
            h.iter_mut().zip(&w).for_each(|(x, wv)| *x -= z * wv);
            e.add_point(&h, line);
        }
        let mut theta = w;
        theta.push(b);
        (e, theta)
    }

    fn same_up_to_sign(a: &[f64], b: &[f64]) -> f64 {
        let s = if dot(a, b) >= 0.0 { 1.0 } else { -1.0 };
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - s * y).abs())
            .fold(0.0, f64::max)
    }

    /// A partial witness of the neuron `theta` (on `dim` units) at a point of its hyperplane where
    /// units `active` are on, with `rows` signature rows.
    fn partial_witness(theta: &[f64], active: &[usize], rows: usize, seed: u64) -> Witness {
        let dim = theta.len() - 1;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut h = vec![0.0; dim];
        active
            .iter()
            .for_each(|&k| h[k] = rng.random_range(0.2..1.0));
        // Move the last active unit so that θ·h + b = 0 (positive by construction of the test nets).
        let last = *active.last().unwrap();
        let z: f64 = dot(&theta[..dim], &h) + theta[dim] - theta[last] * h[last];
        h[last] = -z / theta[last];
        let a_rows = Mat::<f64>::from_fn(rows, dim, |_, c| {
            if active.contains(&c) {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            }
        });
        let y = (0..rows)
            .map(|j| (0..dim).map(|c| a_rows[(j, c)] * theta[c]).sum())
            .collect();
        Witness {
            x: vec![0.0; 3],
            line: 0,
            h,
            active: active.to_vec(),
            a_rows,
            y,
            full: None,
        }
    }

    #[test]
    fn a_partial_witness_extends_its_estimate_by_one_unseen_unit() {
        let dim = 8;
        let (mut e, truth) = estimate(dim, 2, 12, 9);
        // The estimate has never seen unit 7: forget it.
        e.known[7] = false;
        e.fulls.iter_mut().for_each(|(act, row)| {
            act.pop();
            row.pop();
            *row = unit(row.clone()).unwrap();
        });
        e.rows.clear();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let wr = &truth[..7];
        for line in 0..12 {
            // Points of the hyperplane where unit 7 is off.
            let mut h: Vec<f64> = (0..7).map(|_| rng.random_range(-1.0..1.0)).collect();
            let z = (dot(wr, &h) + truth[dim]) / dot(wr, wr);
            h.iter_mut().zip(wr).for_each(|(x, wv)| *x -= z * wv);
            h.push(0.0);
            e.add_point(&h, line);
        }
        e.solve();
        assert_eq!(e.theta[7], 0.0);
        // Where unit 7 is on, the hyperplane (with its true weight) and the signature agree.
        let w = partial_witness(&truth, &[0, 2, 3, 5, 7], 4, 1);
        assert_ne!(w.h[7], 0.0);
        assert!(e.extended_by(&w, 1e-7));
        // Another neuron's witness at the same kind of point does not.
        let mut other = truth.clone();
        other[2] += 0.3;
        assert!(!e.extended_by(&partial_witness(&other, &[0, 2, 3, 5, 7], 4, 1), 1e-7));
        // Too few rows to test: refused.
        assert!(!e.extended_by(&partial_witness(&truth, &[0, 2, 3, 5, 7], 2, 1), 1e-7));
        // Two unseen units on together: joined when the signature fixes both (r ≥ 4) and the
        // hyperplane agrees; refused for another neuron or with too few rows.
        e.known[6] = false;
        assert!(e.extended_by(&partial_witness(&truth, &[0, 2, 6, 7], 4, 1), 1e-7));
        assert!(e.extended_by(&partial_witness(&truth, &[0, 2, 3, 6, 7], 6, 5), 1e-7));
        assert!(!e.extended_by(&partial_witness(&other, &[0, 2, 6, 7], 5, 1), 1e-7));
        assert!(!e.extended_by(&partial_witness(&truth, &[0, 2, 6, 7], 3, 1), 1e-7));
    }

    #[test]
    fn span_solve_matches_the_dense_svd() {
        for seed in 0..4 {
            let (e, truth) = estimate(200, 1 + seed as usize, 3 + seed as usize, seed);
            let cols: Vec<usize> = (0..=200).collect();
            let mut dense = e.clone();
            dense.solve_dense(&cols);
            let mut span = e.clone();
            assert!(span.solve_in_span(), "reduction applies");
            assert!(same_up_to_sign(&span.theta, &dense.theta) < 1e-10);
            assert!(same_up_to_sign(&span.theta, &truth) < 1e-9);
            // The dense path normalises each projector row to unit length, which reweights the Gram
            // matrix by 1 + O(max f_a²): the ratios agree to well under a percent, not to rounding.
            let close = |a: f64, b: f64| (a - b).abs() <= 0.01 * b;
            assert!(
                close(span.residual, dense.residual),
                "{} {}",
                span.residual,
                dense.residual
            );
            assert!(close(span.gap, dense.gap), "{} {}", span.gap, dense.gap);
        }
    }

    /// A wide bank's batched plane test attaches the same points to the same estimates as the
    /// point-by-point one (its solves are `linalg::null_vector_iterated`'s, tested there).
    #[test]
    fn wide_bank_attaches_and_solves_as_the_plain_one() {
        let mut rng = ChaCha20Rng::seed_from_u64(17);
        let dim = 20;
        let tol = BankTol {
            cluster_tol: 1e-6,
            min_common: 4,
            plane_tol: 1e-8,
            residual_max: 1e-6,
        };
        let thetas: Vec<Vec<f64>> = (0..6)
            .map(|_| (0..=dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let mut plain = NeuronBank::new(dim, 10.0);
        for (i, t) in thetas.iter().enumerate() {
            let mut e = NeuronEstimate::with_row(t.clone(), 10.0);
            // Estimate 1 does not know units 0–4; estimate 5 has no witness yet (never attached to).
            if i == 1 {
                e.known[..5].iter_mut().for_each(|k| *k = false);
            }
            if i != 5 {
                e.add_point(&vec![0.3; dim], 0);
            }
            plain.estimates.push(e);
        }
        let mut wide = plain.clone().for_wide_layer();
        // Points on each hyperplane (some with units 0–4 off), near misses, and random points.
        let mut hs = Vec::new();
        for t in &thetas {
            for off in [0.0, 1e-10, 1e-6] {
                let mut h: Vec<f64> = (0..dim).map(|_| rng.random_range(0.0..1.0)).collect();
                if rng.random_range(0.0..1.0) < 0.5 {
                    h[..5].iter_mut().for_each(|v| *v = 0.0);
                }
                // Move h along unit 10 onto the plane θ·h + b = off.
                let z: f64 = (0..dim).map(|j| t[j] * h[j]).sum::<f64>() + t[dim];
                h[10] += (off - z) / t[10];
                hs.push(h);
            }
        }
        let lines: Vec<usize> = (0..hs.len()).collect();
        let a = plain.attach_points(&hs, &lines, &tol);
        let b = wide.attach_points(&hs, &lines, &tol);
        assert_eq!(a, b);
        assert!(a.iter().filter(|&&x| x).count() >= 8, "{a:?}");
        for (p, w) in plain.estimates.iter().zip(&wide.estimates) {
            assert_eq!(p.witnesses, w.witnesses);
            assert_eq!(p.lines, w.lines);
        }
    }

    #[test]
    fn span_solve_declines_partial_coverage_and_small_inputs() {
        let (mut e, _) = estimate(200, 2, 3, 7);
        e.fulls[0].0.pop();
        e.fulls[0].1.pop();
        assert!(!e.solve_in_span());
        let (mut small, _) = estimate(SPAN_SOLVE_MIN_DIM - 1, 2, 3, 7);
        assert!(!small.solve_in_span());
    }
}
