//! Partial signatures at critical points.
//!
//! At a critical point `x*` of a neuron η of the layer being recovered, the known prefix gives the local
//! Jacobian `J` of the previous layer's output `h` and its active units `A`. We measure the jump of the
//! target's directional derivatives across η's hyperplane along directions `u_k` spanning the row space of
//! `J_A`: on each side (`x_A`, `x_B` on the search line) a central difference, checked for linearity
//! against the centre value. The jump matrix (outputs × directions) is rank one, `m_η yᵀ`; `y_k` is
//! proportional to `w_η · (J u_k)`. When `J_A` has full row rank the directions are `J_A⁺ e_k` and `y`
//! gives `w_η` on `A` directly (a *full* witness); otherwise only a *partial* constraint
//! `(I − ŷŷᵀ)(J U)ᵀ w_η = 0` is known, to be unified with other witnesses (see `cluster`).

use crate::critical::{CriticalPoint, Line};
use crate::error::OracleError;
use crate::known::{KnownPrefix, MarginRates};
use crate::linalg::{norm, right_pinv};
use crate::oracle::{CountingOracle, Oracle};
use faer::Mat;
use std::sync::Arc;

/// Largest number of f64 values in one batch of stencil points (the oracle's batch limit).
const MAX_BATCH_VALUES: usize = crate::oracle::MAX_BATCH_BYTES / 8;

/// One measured witness of some neuron of the current layer.
#[derive(Debug, Clone)]
pub struct Witness {
    /// The critical point.
    pub x: Vec<f64>,
    /// Search line it came from (distinct lines are independent evidence).
    pub line: usize,
    /// Known-prefix output at `x` (the inputs of the layer being recovered).
    pub h: Vec<f64>,
    /// Units of `h` that vary locally (active units; every input for the first layer).
    pub active: Vec<usize>,
    /// `r × dim(h)` matrix whose rows are `J u_k` (partial witnesses; empty for full ones, whose
    /// row is [`Self::full`]).
    pub a_rows: Mat<f64>,
    /// Measured `y_k ∝ w·(J u_k)`.
    pub y: Vec<f64>,
    /// With full rank: the weight row on `active` (unit norm, arbitrary overall sign).
    pub full: Option<Vec<f64>>,
}

/// Stencil settings.
#[derive(Debug, Clone, Copy)]
pub struct StencilParams {
    /// First step.
    pub eps: f64,
    /// Shrink factor after a failed linearity check.
    pub shrink: f64,
    /// Attempts.
    pub tries: usize,
    /// First step as a fraction of the distance to the kink along the line (see
    /// [`crate::params::ExtractParams::stencil_kink_fraction`]).
    pub kink_fraction: f64,
    /// Relative linearity tolerance.
    pub rel_tol: f64,
    /// Largest deviation from rank one of the jump matrix, relative to its norm.
    pub rank_one_tol: f64,
    /// Absolute floor of the linearity tolerance (see [`crate::critical::SearchTol::abs_floor`]).
    pub abs_floor: f64,
}

/// Stencil directions of a witness.
#[derive(Clone)]
enum Dirs {
    /// Unit input coordinates (the first layer: no `d0 × d0` identity is ever built, which on a
    /// 3072-input net would be 75 MB per witness).
    Coords(Vec<usize>),
    /// Unit columns of a `d0 × r` matrix, shared by the points of one activation pattern (see
    /// [`geometries`]).
    Mat(Arc<Mat<f64>>),
}

impl Dirs {
    fn count(&self) -> usize {
        match self {
            Dirs::Coords(cs) => cs.len(),
            Dirs::Mat(m) => m.ncols(),
        }
    }

    /// Writes `base + e·u_k` into `out` (straight into the oracle's batch: no stencil point is
    /// built as a vector of its own). `e` and `−e` give bit for bit what `base ± e·u_k` did, as
    /// `x + (−y)` is `x − y` exactly.
    fn write_step(&self, base: &[f64], k: usize, e: f64, out: &mut [f64]) {
        out.copy_from_slice(base);
        match self {
            Dirs::Coords(cs) => out[cs[k]] += e,
            Dirs::Mat(m) => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o += e * m[(i, k)];
                }
            }
        }
    }
}

/// Local geometry at a critical point: directions and the rows they map to.
#[derive(Clone)]
struct Geometry {
    h: Vec<f64>,
    active: Vec<usize>,
    dirs: Dirs,
    /// `r × dim(h)` rows `J u_k`; empty for full witnesses, whose row is read off directly.
    a_rows: Mat<f64>,
    full_scale: Option<Vec<f64>>, // |v_k| for full witnesses
    /// The directions' [`MarginRates`] in this point's region, when [`geometries`] shares them.
    margin_rates: Option<Arc<MarginRates>>,
}

/// `cond(J_A)` (s_min/s_max) from which [`gram_geometry`] computes the directions by the normal
/// equations; below it [`svd_gram_geometry`] takes an SVD. The normal equations square the condition number: at 1e-4 the Gram matrix's
/// 1e-8 leaves the once-refined directions at rounding level, and random nets' points sit far above
/// it (the balanced 3072-256-256-256-10's second and third layers).
const GRAM_COND_MIN: f64 = 1e-4;

/// What [`gram_geometry`] decided.
enum GramOutcome {
    /// The answer, as the SVD path would give it (up to rounding).
    Done(Option<Geometry>),
    /// `W₁` too ill-conditioned for its Cholesky factor, or a degenerate result: the SVD of the
    /// full Jacobian decides.
    Fallback,
}

/// What [`gram_geometry`] needs of the first known layer, computed once per batch of points.
struct FirstLayerGram {
    /// `W₁ W₁ᵀ` (`n₁ × n₁`).
    gram: Mat<f64>,
    /// Its Cholesky factor `L` (lower), for [`svd_gram_geometry`]; `None` when it fails or `W₁` is
    /// too ill-conditioned for it (see [`GRAM_FACTOR_COND_MIN`]).
    factor: Option<Mat<f64>>,
}

/// [`FirstLayerGram`] of the first known layer; `None` on the first layer.
fn first_layer_gram(known: &KnownPrefix) -> Option<FirstLayerGram> {
    let gram = known.first_layer_gram()?;
    let factor = gram.llt(faer::Side::Lower).ok().and_then(|llt| {
        let l = llt.L();
        let diag = (0..l.nrows()).map(|i| l[(i, i)].abs());
        let (dmin, dmax) = diag.fold((f64::INFINITY, 0.0_f64), |(a, b), d| (a.min(d), b.max(d)));
        // The factor's diagonal bounds cond(L) = cond(W₁) from below; a bad ratio means
        // `W₁ᵀ L⁻ᵀ` would not be orthonormal.
        (dmax > 0.0 && dmin > GRAM_FACTOR_COND_MIN * dmax).then(|| l.to_owned())
    });
    Some(FirstLayerGram { gram, factor })
}

/// [`geometry`] of a deeper layer without the `dim × d0` Jacobian. The prefix's Jacobian at `x` is
/// `J = P W₁` with `P = D_L W_L ⋯ W₂ D₁` (`dim × n₁`, products of small matrices), so the Gram matrix
/// of the active rows is `P_A (W₁W₁ᵀ) P_Aᵀ` and the pseudo-inverse columns the directions need are
/// `W₁ᵀ P_Aᵀ (P_A G P_Aᵀ)⁻¹ e_k`: only the picked columns (a probe's few units) are ever formed. One
/// step of iterative refinement brings them to the SVD's accuracy. On the 3072-input bench
/// (`benches/deep_geometry.rs`) this replaced an SVD of a 3072 × |A| matrix and a 256 × 3072
/// Jacobian per point, which was nearly all of the screening time on a deeper layer.
///
/// `J_A` cannot have full row rank when `|A|` exceeds the active count of an earlier known layer
/// (or `d0`): a probe then gives nothing at once, without any algebra.
fn gram_geometry(
    known: &KnownPrefix,
    gram: &FirstLayerGram,
    x: &[f64],
    coords: Option<&[usize]>,
    pre: Option<&[Vec<f64>]>,
) -> GramOutcome {
    let d0 = known.input_dim;
    let w1 = &known.layers[0].weight;
    // The prefix's own forward pass, so `h` and the active sets are those of the SVD path.
    let own;
    let pre = match pre {
        Some(pre) => pre,
        None => {
            own = known.pre_activations(x, known.layers.len());
            &own[..]
        }
    };
    // Rank bound of J from the earlier layers' active counts.
    let rank_bound = pre[..pre.len() - 1]
        .iter()
        .map(|z| z.iter().filter(|&&v| v > 0.0).count())
        .fold(d0, usize::min);
    let h: Vec<f64> = pre
        .last()
        .expect("a deeper layer has a known layer")
        .iter()
        .map(|&v| if v <= 0.0 { 0.0 } else { v })
        .collect();
    let active: Vec<usize> = (0..h.len()).filter(|&k| h[k] > 0.0).collect();
    if active.is_empty() {
        return GramOutcome::Done(None);
    }
    let picked: Vec<usize> = match coords {
        Some(units) => (0..active.len())
            .filter(|&k| units.binary_search(&active[k]).is_ok())
            .collect(),
        None => (0..active.len()).collect(),
    };
    if coords.is_some() && (picked.is_empty() || active.len() > rank_bound) {
        // No probe: nothing probed is active, or `J_A` is rank deficient (see `geometry`). Decided
        // before `P` is formed: behind layer 7 of the 3072-256×8-10 nearly every kink is such a
        // point, and `P` costs seven `256³` products.
        return GramOutcome::Done(None);
    }
    let pa = first_layer_rows(known, pre, &active);
    let factor = gram
        .factor
        .as_ref()
        .filter(|_| h.len() * d0 >= FIRST_LAYER_SVD_MIN_JACOBIAN);
    if active.len() > rank_bound {
        let Some(l) = factor else {
            return GramOutcome::Fallback;
        };
        return svd_gram_geometry(w1, l, &pa, active, &picked, coords.is_some(), h);
    }
    let k = &pa * &gram.gram * pa.transpose();
    let Ok(ev) = k.self_adjoint_eigenvalues(faer::Side::Lower) else {
        return GramOutcome::Fallback;
    };
    let (lmin, lmax) = (ev[0], ev[ev.len() - 1]);
    if !(lmax > 0.0 && lmin > GRAM_COND_MIN * GRAM_COND_MIN * lmax) {
        let Some(l) = factor else {
            return GramOutcome::Fallback;
        };
        if wide_first_layer(known)
            && lmax > 0.0
            && lmin > GRAM_QR_COND_MIN * GRAM_QR_COND_MIN * lmax
        {
            if picked.is_empty() {
                return GramOutcome::Done(None);
            }
            return qr_gram_geometry(w1, l, &pa, active, &picked, h);
        }
        return svd_gram_geometry(w1, l, &pa, active, &picked, coords.is_some(), h);
    }
    let Ok(llt) = k.llt(faer::Side::Lower) else {
        return GramOutcome::Fallback;
    };
    use faer::linalg::solvers::Solve;
    let r = picked.len();
    let e = Mat::<f64>::from_fn(
        active.len(),
        r,
        |i, c| if i == picked[c] { 1.0 } else { 0.0 },
    );
    let w1t = w1.transpose();
    let u = if wide_first_layer(known) {
        // The same refinement in first-layer space: `u = W₁ᵀ v` gives `W₁ u = G v`, so the residual
        // needs no product with the wide `W₁`, and `u` is formed once at the end (one `d0 × n₁`
        // product instead of three).
        let mut v = pa.transpose() * llt.solve(&e);
        let res = &e - &pa * (&gram.gram * &v);
        v += pa.transpose() * llt.solve(&res);
        w1t * &v
    } else {
        let mut u = w1t * (pa.transpose() * llt.solve(&e));
        // One refinement step: the residual of J_A u = e, computed as P_A (W₁ u).
        let res = &e - &pa * (w1 * &u);
        u += w1t * (pa.transpose() * llt.solve(&res));
        u
    };
    let Some((dirs, scale)) = unit_columns(&u) else {
        return GramOutcome::Fallback;
    };
    GramOutcome::Done(Some(Geometry {
        active: picked.iter().map(|&k| active[k]).collect(),
        h,
        dirs: Dirs::Mat(Arc::new(dirs)),
        a_rows: Mat::<f64>::zeros(0, known.out_dim()),
        full_scale: Some(scale),
        margin_rates: None,
    }))
}

/// `cond(J_A)` from which a point the normal equations cannot take ([`GRAM_COND_MIN`]) has its
/// pseudo-inverse columns from a QR factorisation instead of an SVD ([`qr_gram_geometry`]), behind a
/// wide first layer. The eigenvalues of `K = J_A J_Aᵀ` are good to ~`n ε λ_max` (3e-14 of it at
/// `n = 256`), so `λ_min > 1e-12 λ_max` proves `cond(J_A)` far above the SVD path's 1e-9 cut: the
/// SVD would take its full-rank branch, and the QR gives the same columns. Behind five known layers
/// of the 3072-256×8-10 three in five screened points needing more than the normal equations fell
/// here, and their SVDs were most of the screening's geometry (`DEPTHS=5` of
/// `benches/deep_geometry.rs`).
const GRAM_QR_COND_MIN: f64 = 1e-6;

/// [`svd_gram_geometry`]'s full-row-rank answer by a QR factorisation: with `Mᵀ = Q R` (`M = P_A L`,
/// `Q` `n₁ × |A|`), `M⁺ = Q R⁻ᵀ`, so the picked pseudo-inverse columns are `Q R⁻ᵀ e_k`, mapped to input
/// space as there. The caller has established full row rank ([`GRAM_QR_COND_MIN`]).
fn qr_gram_geometry(
    w1: &Mat<f64>,
    l: &Mat<f64>,
    pa: &Mat<f64>,
    active: Vec<usize>,
    picked: &[usize],
    h: Vec<f64>,
) -> GramOutcome {
    use faer::linalg::triangular_solve::{
        solve_lower_triangular_in_place, solve_upper_triangular_in_place,
    };
    let mt = (pa * l).transpose().to_owned();
    let qr = mt.qr();
    let r = qr.R();
    let n = active.len();
    if r.nrows() != n || (0..n).any(|i| !(r[(i, i)] != 0.0 && r[(i, i)].is_finite())) {
        return GramOutcome::Fallback;
    }
    let mut x = Mat::<f64>::from_fn(
        n,
        picked.len(),
        |i, c| if i == picked[c] { 1.0 } else { 0.0 },
    );
    solve_lower_triangular_in_place(r.transpose(), x.as_mut(), faer::Par::Seq);
    let mut cols = qr.compute_thin_Q() * &x;
    // `W₁ᵀ L⁻ᵀ X`: input-space directions from first-layer-space columns.
    solve_upper_triangular_in_place(l.transpose(), cols.as_mut(), faer::Par::Seq);
    let Some((dirs, scale)) = unit_columns(&(w1.transpose() * &cols)) else {
        return GramOutcome::Fallback;
    };
    GramOutcome::Done(Some(Geometry {
        active: picked.iter().map(|&k| active[k]).collect(),
        a_rows: Mat::<f64>::zeros(0, h.len()),
        h,
        dirs: Dirs::Mat(Arc::new(dirs)),
        full_scale: Some(scale),
        margin_rates: None,
    }))
}

/// The columns of `m` scaled to unit length, and their lengths (the pseudo-inverse columns' scales a
/// full witness needs); `None` if one is zero or not finite.
fn unit_columns(m: &Mat<f64>) -> Option<(Mat<f64>, Vec<f64>)> {
    let scale: Vec<f64> = (0..m.ncols()).map(|c| m.col(c).norm_l2()).collect();
    if scale.iter().any(|&n| !(n > 0.0 && n.is_finite())) {
        return None;
    }
    Some((
        Mat::from_fn(m.nrows(), m.ncols(), |i, c| m[(i, c)] / scale[c]),
        scale,
    ))
}

/// `P_A`: the rows of the prefix's Jacobian with respect to the first layer's pre-activations `z₁`
/// (`J = P W₁`) for the last layer's units `active`, with the ReLU pattern of `pre`.
fn first_layer_rows(known: &KnownPrefix, pre: &[Vec<f64>], active: &[usize]) -> Mat<f64> {
    if wide_first_layer(known) {
        return first_layer_rows_on_active(known, pre, active);
    }
    let n1 = known.layers[0].fan_out();
    let mut p = Mat::<f64>::zeros(0, n1);
    for (li, (l, z)) in known.layers.iter().zip(pre).enumerate() {
        let on: Vec<bool> = z.iter().map(|&v| v > 0.0).collect();
        p = if li == 0 {
            Mat::from_fn(n1, n1, |i, j| if i == j && on[i] { 1.0 } else { 0.0 })
        } else {
            let mut m = &l.weight * &p;
            for (r, _) in on.iter().enumerate().filter(|(_, a)| !**a) {
                m.row_mut(r).fill(0.0);
            }
            m
        };
    }
    Mat::<f64>::from_fn(active.len(), n1, |i, j| p[(active[i], j)])
}

/// [`first_layer_rows`] through the active units only: `P = D_L W_L ⋯ W₂ D₁` has zero rows at every
/// inactive unit of each layer and zero columns at the first layer's inactive units, so each product
/// is of the active blocks `W_l[on_l, on_{l−1}]`, about an eighth of the full `n_l × n_{l−1} × n₁`
/// product when half the units are on. Same values up to the order of the sums (the skipped terms
/// are exact zeros).
fn first_layer_rows_on_active(known: &KnownPrefix, pre: &[Vec<f64>], active: &[usize]) -> Mat<f64> {
    let n1 = known.layers[0].fan_out();
    let on = |z: &Vec<f64>| -> Vec<usize> { (0..z.len()).filter(|&i| z[i] > 0.0).collect() };
    let on1 = on(&pre[0]);
    // Rows: the active units of layer `l` (`prev`); columns: `on1`. `None` stands for the
    // identity of the first layer, so the first product is the block itself.
    let mut prev = on1.clone();
    let mut p: Option<Mat<f64>> = None;
    for (l, z) in known.layers.iter().zip(pre).skip(1) {
        let rows = on(z);
        let w = Mat::<f64>::from_fn(rows.len(), prev.len(), |i, j| l.weight[(rows[i], prev[j])]);
        p = Some(match p {
            None => w,
            Some(p) => &w * &p,
        });
        prev = rows;
    }
    let p = p.unwrap_or_else(|| Mat::<f64>::identity(on1.len(), on1.len()));
    // `active` are the last layer's active units, which are `prev`, in the same order.
    debug_assert_eq!(prev, active);
    let mut pa = Mat::<f64>::zeros(active.len(), n1);
    for (c, &j) in on1.iter().enumerate() {
        for i in 0..active.len() {
            pa[(i, j)] = p[(i, c)];
        }
    }
    pa
}

/// Smallest `s_min/s_max` of the first layer's `W₁` for which [`svd_gram_geometry`] works through
/// its Cholesky factor: the factor's errors grow with `cond(W₁)²`, and at 1e-4 they stay near
/// 1e-8 of the directions' orthogonality, well inside the stencil's own error. Random layers sit near
/// 0.4 (256 × 3072: `(√3072 − √256)/(√3072 + √256)`).
const GRAM_FACTOR_COND_MIN: f64 = 1e-4;

/// Size of the full Jacobian (`dim × d0` entries) from which [`svd_gram_geometry`] replaces its SVD.
/// On 3072 inputs behind 256-wide layers (786,432 entries) forming it and its SVD was ~40 % of a
/// layer-8 round; on the acceptance nets it is small (12,544 entries on the 784-16×8-1, 100,352 on
/// the 784-128-128-128-10) and the two paths differ only by rounding, but rounding is enough to
/// change their course (session 28): with the new path everywhere, the balanced 784-16×8-1 at attack
/// seed 1 flagged 14 of layer 7's 16 signs as low confidence, got that layer's rows wrong and failed
/// verification (2.6e-1; seeds 2–5 passed on both paths), and the trained Fashion-MNIST net took
/// 7,306,072 queries instead of 7,126,063 with the same outcome. Small Jacobians keep the path
/// their acceptance runs were measured with.
pub(crate) const FIRST_LAYER_SVD_MIN_JACOBIAN: usize = 1 << 19;

/// [`geometry`]'s SVD path without the `dim × d0` Jacobian, for the points the normal equations of
/// [`gram_geometry`] cannot take: `J_A` rank deficient (a partial witness) or ill-conditioned. With
/// `W₁W₁ᵀ = L Lᵀ`, the columns of `Q = W₁ᵀ L⁻ᵀ` are orthonormal and `J_A = P_A W₁ = M Qᵀ` with
/// `M = P_A L` (`|A| × n₁`): `J_A` and `M` have the same singular values, `J_A⁺ = Q M⁺`, and `Q`
/// maps `M`'s right singular vectors `U` to `J_A`'s, so a partial witness's directions are
/// `W₁ᵀ L⁻ᵀ U` and the rows they read `J_A Q U = M U`. The SVD is of an `n₁ × |A|` matrix instead of
/// `d0 × |A|`, and no `dim × d0` product is formed. Behind layer 7 of the 3072-256×8-10 most kinks
/// have about as many active units as the rank bound; the Jacobian with its SVD for each was ~40 %
/// of a round (session 28). The decisions (pseudo-inverse condition above 1e-9, else a partial
/// witness cut at 1e-9 of the largest singular value; no probe without full rank) are the SVD
/// path's.
fn svd_gram_geometry(
    w1: &Mat<f64>,
    l: &Mat<f64>,
    pa: &Mat<f64>,
    active: Vec<usize>,
    picked: &[usize],
    probe: bool,
    h: Vec<f64>,
) -> GramOutcome {
    let m = pa * l;
    let Ok(svd) = m.transpose().thin_svd() else {
        return GramOutcome::Fallback;
    };
    // Mᵀ = U S Vᵀ (`n₁ × |A|`).
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let smax = s.iter().cloned().fold(0.0, f64::max);
    let smin = s.iter().cloned().fold(f64::INFINITY, f64::min);
    if !(smax > 0.0 && smax.is_finite()) {
        return GramOutcome::Done(None);
    }
    let (u, v) = (svd.U(), svd.V());
    // `W₁ᵀ L⁻ᵀ X`: input-space directions from first-layer-space columns.
    let to_input = |mut x: Mat<f64>| -> Mat<f64> {
        faer::linalg::triangular_solve::solve_upper_triangular_in_place(
            l.transpose(),
            x.as_mut(),
            faer::Par::Seq,
        );
        w1.transpose() * &x
    };
    if s.len() == active.len() && smin > 1e-9 * smax {
        // Full row rank: the pseudo-inverse's picked columns, `Q U S⁻¹ Vᵀ e_k`.
        if picked.is_empty() {
            return GramOutcome::Done(None);
        }
        let cols = Mat::<f64>::from_fn(u.nrows(), picked.len(), |i, c| {
            (0..s.len())
                .map(|j| u[(i, j)] * v[(picked[c], j)] / s[j])
                .sum()
        });
        let Some((dirs, scale)) = unit_columns(&to_input(cols)) else {
            return GramOutcome::Fallback;
        };
        return GramOutcome::Done(Some(Geometry {
            active: picked.iter().map(|&k| active[k]).collect(),
            a_rows: Mat::<f64>::zeros(0, h.len()),
            h,
            dirs: Dirs::Mat(Arc::new(dirs)),
            full_scale: Some(scale),
            margin_rates: None,
        }));
    }
    if probe {
        // No probe without full row rank (see `geometry`).
        return GramOutcome::Done(None);
    }
    let r = s.iter().filter(|&&v| v > 1e-9 * smax).count();
    let ur = u.subcols(0, r).to_owned();
    let dirs = to_input(ur.clone());
    if !dirs.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
        return GramOutcome::Fallback;
    }
    let ju = &m * &ur;
    let mut a_rows = Mat::<f64>::zeros(r, h.len());
    for k in 0..r {
        for (i, &a) in active.iter().enumerate() {
            a_rows[(k, a)] = ju[(i, k)];
        }
    }
    GramOutcome::Done(Some(Geometry {
        h,
        active,
        dirs: Dirs::Mat(Arc::new(dirs)),
        a_rows,
        full_scale: None,
        margin_rates: None,
    }))
}

/// A point's pattern (every known unit on or off), `h` and the known layers' pre-activations.
type PointState = (Vec<bool>, Vec<f64>, Vec<Vec<f64>>);

/// [`geometry`] at every point, computed once per activation pattern of the known prefix.
///
/// Past the first layer everything in a [`Geometry`] but `h` is a function of the known layers'
/// ReLU pattern at the point (the Jacobian is piecewise constant), and the critical points of one
/// search line come in runs on the same free segment (~16 per segment on the 3072-256×8-10's layer
/// 2, where the pseudo-inverse columns were half of a replayed screening's time in a profile). The
/// shared answer is the one each point would have computed for itself, bit for bit: the same code
/// on the same pattern; only `h` is the point's own.
fn geometries(
    known: &KnownPrefix,
    lines: &[Line],
    cps: &[CriticalPoint],
    coords: Option<&[usize]>,
    gram: Option<&FirstLayerGram>,
) -> Vec<Option<Geometry>> {
    use rayon::prelude::*;
    let at = |cp: &CriticalPoint| lines[cp.line].at(cp.t);
    if known.layers.is_empty() {
        // The first layer's geometry is the point itself.
        return cps
            .par_iter()
            .map(|cp| geometry(known, &at(cp), coords, gram))
            .collect();
    }
    let depth = known.layers.len();
    let pres: Vec<Vec<Vec<f64>>> = if wide_first_layer(known) {
        known
            .forward_rows(&cps.iter().map(at).collect::<Vec<_>>())
            .into_iter()
            .map(|(pre, _)| pre)
            .collect()
    } else {
        cps.par_iter()
            .map(|cp| known.pre_activations(&at(cp), depth))
            .collect()
    };
    // Pattern (every known unit's state, as `geometry` decides it: on iff the pre-activation is
    // positive), `h` and the pre-activations per point; a non-finite pre-activation is left to
    // `geometry` alone.
    let local: Vec<Option<PointState>> = pres
        .into_par_iter()
        .map(|pre| {
            if pre.iter().flatten().any(|v| !v.is_finite()) {
                return None;
            }
            let pattern = pre.iter().flatten().map(|&v| v > 0.0).collect();
            let last = pre.last().expect("a deeper layer has a known layer");
            let h = last
                .iter()
                .map(|&v| if v <= 0.0 { 0.0 } else { v })
                .collect();
            Some((pattern, h, pre))
        })
        .collect();
    let mut rep_of: std::collections::HashMap<&[bool], usize> = std::collections::HashMap::new();
    let mut reps: Vec<usize> = Vec::new();
    let slot: Vec<Option<usize>> = local
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.as_ref().map(|(pattern, _, _)| {
                *rep_of.entry(pattern.as_slice()).or_insert_with(|| {
                    reps.push(i);
                    reps.len() - 1
                })
            })
        })
        .collect();
    let shared: Vec<Option<Geometry>> = reps
        .par_iter()
        .map(|&i| {
            let x = at(&cps[i]);
            let pre = local[i].as_ref().map(|(_, _, pre)| &pre[..]);
            geometry_from(known, &x, coords, gram, pre).map(|mut g| {
                if let Dirs::Mat(m) = &g.dirs {
                    g.margin_rates = Some(Arc::new(known.margin_rates(&x, m)));
                }
                g
            })
        })
        .collect();
    cps.iter()
        .zip(slot)
        .zip(local)
        .map(|((cp, s), l)| match (s, l) {
            (Some(r), Some((_, h, _))) => shared[r].as_ref().map(|g| Geometry { h, ..g.clone() }),
            _ => geometry(known, &at(cp), coords, gram),
        })
        .collect()
}

fn geometry(
    known: &KnownPrefix,
    x: &[f64],
    coords: Option<&[usize]>,
    gram: Option<&FirstLayerGram>,
) -> Option<Geometry> {
    geometry_from(known, x, coords, gram, None)
}

/// [`geometry`] given the known layers' pre-activations at `x`, when the caller already has them.
fn geometry_from(
    known: &KnownPrefix,
    x: &[f64],
    coords: Option<&[usize]>,
    gram: Option<&FirstLayerGram>,
    pre: Option<&[Vec<f64>]>,
) -> Option<Geometry> {
    let d0 = known.input_dim;
    if let Some(g) = gram
        && let GramOutcome::Done(geo) = gram_geometry(known, g, x, coords, pre)
    {
        return geo;
    }
    if known.layers.is_empty() {
        // First layer: the row itself, on a few coordinates (a probe) or on all of them.
        let cs: Vec<usize> = coords.map_or_else(|| (0..d0).collect(), <[usize]>::to_vec);
        return Some(Geometry {
            h: x.to_vec(),
            full_scale: Some(vec![1.0; cs.len()]),
            margin_rates: None,
            active: cs.clone(),
            a_rows: Mat::<f64>::zeros(0, d0),
            dirs: Dirs::Coords(cs),
        });
    }
    let st = known.local_full(x);
    let dh = st.dh; // dim(h) × d0
    let active: Vec<usize> = (0..st.h.len()).filter(|&k| st.h[k] > 0.0).collect();
    if active.is_empty() {
        return None;
    }
    let ja = Mat::<f64>::from_fn(active.len(), d0, |i, j| dh[(active[i], j)]);
    let dim = st.h.len();
    if active.len() <= d0
        && let Some((pinv, cond)) = right_pinv(&ja)
        && cond > 1e-9
    {
        // A probe moves only the probed units that are active here (column k of the pseudo-inverse
        // moves unit `active[k]` alone); a full measurement moves every active unit.
        let picked: Vec<usize> = match coords {
            Some(units) => (0..active.len())
                .filter(|&k| units.binary_search(&active[k]).is_ok())
                .collect(),
            None => (0..active.len()).collect(),
        };
        if picked.is_empty() {
            return None;
        }
        let r = picked.len();
        let mut dirs = Mat::<f64>::zeros(d0, r);
        let mut scale = vec![0.0; r];
        for (c, &k) in picked.iter().enumerate() {
            let nk = (0..d0).map(|i| pinv[(i, k)].powi(2)).sum::<f64>().sqrt();
            scale[c] = nk;
            for i in 0..d0 {
                dirs[(i, c)] = pinv[(i, k)] / nk;
            }
        }
        return Some(Geometry {
            h: st.h,
            active: picked.iter().map(|&k| active[k]).collect(),
            dirs: Dirs::Mat(Arc::new(dirs)),
            a_rows: Mat::<f64>::zeros(0, dim),
            full_scale: Some(scale),
            margin_rates: None,
        });
    }
    if coords.is_some() {
        // No probe without full row rank: the partial constraint of a rank-deficient point does not
        // isolate units, so it cannot be compared with another point's.
        return None;
    }
    // Partial: orthonormal basis of the row space of J_A.
    let jat = ja.transpose().to_owned(); // d0 × |A|
    let svd = jat.thin_svd().ok()?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let smax = s.iter().cloned().fold(0.0, f64::max);
    let r = s.iter().filter(|&&v| v > 1e-9 * smax).count();
    if r == 0 {
        return None;
    }
    let u = svd.U();
    let dirs = Mat::<f64>::from_fn(d0, r, |i, k| u[(i, k)]);
    let ju = &ja * &dirs; // |A| × r
    let mut a_rows = Mat::<f64>::zeros(r, dim);
    for k in 0..r {
        for (i, &a) in active.iter().enumerate() {
            a_rows[(k, a)] = ju[(i, k)];
        }
    }
    Some(Geometry {
        h: st.h,
        active,
        dirs: Dirs::Mat(Arc::new(dirs)),
        a_rows,
        full_scale: None,
        margin_rates: None,
    })
}

/// Measures witnesses for a batch of critical points. Points whose geometry is degenerate or whose
/// stencils never pass the linearity check are dropped (returned as `None`).
pub fn measure<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    lines: &[Line],
    cps: &[CriticalPoint],
    p: StencilParams,
) -> Result<Vec<Option<Witness>>, OracleError> {
    measure_on(oracle, known, lines, cps, p, None)
}

/// [`measure`], restricted to `coords` (a *probe*; sorted). On the first layer these are input
/// coordinates: the witness's `full` row holds the weights on `coords` only, unit norm, for
/// `4·|coords| + 2` queries per point instead of `4·d0 + 2`. On deeper layers they are units of the
/// previous layer: only those active at the point are probed (the witness's `active`), and a point
/// without full row rank, or with none of them active, gives no probe.
pub fn measure_on<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    lines: &[Line],
    cps: &[CriticalPoint],
    p: StencilParams,
    coords: Option<&[usize]>,
) -> Result<Vec<Option<Witness>>, OracleError> {
    // Past the first layer each point in flight holds its stencil directions (d0 × |active|: 3 MB on
    // a 3072-256 layer, where one search line meets ~3,500 kinks), so points go in chunks of bounded
    // memory. Points are independent: the chunking changes neither the answers nor the query count.
    // First-layer directions are coordinate indices, and need no chunks.
    let per_chunk = if known.layers.is_empty() {
        cps.len().max(1)
    } else {
        (GEOMETRY_BYTES_MAX / (8 * known.input_dim.max(1) * known.out_dim().max(1))).max(1)
    };
    let gram = first_layer_gram(known);
    // A deeper-layer probe whose stencil would be too narrow is not measured (see
    // [`PROBE_STENCIL_MIN`]): it gives no probe, as it would after its geometry and queries.
    let wide_enough: Vec<bool> = cps
        .iter()
        .map(|cp| {
            coords.is_none()
                || known.layers.is_empty()
                || p.kink_fraction * stencil_half_width(cp) * norm(&lines[cp.line].dir)
                    >= PROBE_STENCIL_MIN * p.eps
        })
        .collect();
    let kept: Vec<CriticalPoint> = cps
        .iter()
        .zip(&wide_enough)
        .filter(|(_, w)| **w)
        .map(|(cp, _)| cp.clone())
        .collect();
    if kept.len() < cps.len() {
        tracing::debug!(
            points = cps.len(),
            too_narrow = cps.len() - kept.len(),
            "probes skipped"
        );
    }
    let mut measured = Vec::with_capacity(kept.len());
    for chunk in kept.chunks(per_chunk) {
        measured.extend(measure_chunk(
            oracle,
            known,
            lines,
            chunk,
            p,
            coords,
            gram.as_ref(),
        )?);
    }
    let mut measured = measured.into_iter();
    Ok(wide_enough
        .into_iter()
        .map(|w| if w { measured.next().flatten() } else { None })
        .collect())
}

/// Half the width of the kink-free interval around a critical point, in units of the line's `t`:
/// how far the stencil's two centres sit from the kink.
fn stencil_half_width(cp: &CriticalPoint) -> f64 {
    0.5 * (cp.t - cp.a).min(cp.b - cp.t)
}

/// A deeper-layer probe is measured only when its stencil can be at least this fraction of the
/// stencil width ([`StencilParams::eps`]) wide, that is when the kink-free interval around the point
/// allows it: a narrower one is dominated by rounding. On the 3072-256×8-10's layer 8 (session 30,
/// logged per chunk) ~80 % of the kinks on hyperplane-following lines sat within ~1e-8 of another
/// kink (the line crosses the boundaries of the units the walk just turned on); their stencils of
/// median width 3e-9 failed the rank-one test (median residual 2e-3 of the jump, against 1e-6),
/// after their geometry (~6 ms a point) and queries; the usable probes' stencils were wider (per
/// chunk of 170 points, a tenth of them below 1.4e-5–6.6e-5). ~20 s of a round's ~27 s of
/// following-line screening went to such points. With the default width 0.1 the bound is 1e-6.
const PROBE_STENCIL_MIN: f64 = 1e-5;

/// Memory budget of the stencil directions of the points measured together (see [`measure_on`]).
const GEOMETRY_BYTES_MAX: usize = 1 << 30;

/// Size of the first known layer (`n₁ × d0` weights) from which the critical points' and stencil
/// centres' forward passes through the prefix go as one batched product ([`KnownPrefix::forward_rows`])
/// instead of one matrix-vector product per point. A first layer this large (4 MiB) does not stay in
/// cache, so every matrix-vector product streams it from memory: behind five known layers of the
/// 3072-256×8-10 (6 MiB) these passes were about a third of a screened line's offline work
/// (`DEPTHS=5` of `benches/deep_geometry.rs`). Smaller first layers (the acceptance nets': 784 × 16,
/// 784 × 128) keep the per-point passes their runs were measured with: the batched product rounds
/// differently, and rounding alone can change a run's course (see `FIRST_LAYER_SVD_MIN_JACOBIAN`).
const WIDE_FIRST_LAYER_MIN_WEIGHTS: usize = 1 << 19;

/// Whether [`WIDE_FIRST_LAYER_MIN_WEIGHTS`] applies to `known`.
fn wide_first_layer(known: &KnownPrefix) -> bool {
    known
        .layers
        .first()
        .is_some_and(|l| l.fan_in() * l.fan_out() >= WIDE_FIRST_LAYER_MIN_WEIGHTS)
}

fn measure_chunk<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    lines: &[Line],
    cps: &[CriticalPoint],
    p: StencilParams,
    coords: Option<&[usize]>,
    gram: Option<&FirstLayerGram>,
) -> Result<Vec<Option<Witness>>, OracleError> {
    struct Job {
        geo: Geometry,
        xa: Vec<f64>,
        xb: Vec<f64>,
        x: Vec<f64>,
        eps: Vec<f64>,
        fa: Vec<f64>,
        fb: Vec<f64>,
        da: Vec<Option<Vec<f64>>>,
        db: Vec<Option<Vec<f64>>>,
        mhat: Vec<f64>,
    }
    // The local geometry (pseudo-inverse columns of the known prefix's Jacobian), once per
    // activation pattern, on all cores.
    use rayon::prelude::*;
    let clock = std::time::Instant::now();
    let geos = geometries(known, lines, cps, coords, gram);
    let geometry_s = clock.elapsed().as_secs_f64();
    let no_geometry = geos.iter().filter(|g| g.is_none()).count();
    // The stencil's two centres on the line, either side of the kink, and how far they may move
    // along the directions before a known unit flips (on all cores: a product of the first layer
    // with the directions per centre, unless the region's rates are shared).
    let centres_of = |cp: &CriticalPoint| {
        let s = stencil_half_width(cp);
        (s, lines[cp.line].at(cp.t - s), lines[cp.line].at(cp.t + s))
    };
    // Behind a wide first layer the centres' pre-activations come from one batched forward pass
    // (see `wide_first_layer`), a pair for each point whose region's rates are shared.
    let batched = wide_first_layer(known);
    let has_rates = |g: &Option<Geometry>| g.as_ref().is_some_and(|g| g.margin_rates.is_some());
    let centre_pres: Vec<Vec<Vec<f64>>> = if batched {
        let xs: Vec<Vec<f64>> = cps
            .iter()
            .zip(&geos)
            .filter(|(_, g)| has_rates(g))
            .flat_map(|(cp, _)| {
                let (_, xa, xb) = centres_of(cp);
                [xa, xb]
            })
            .collect();
        known
            .forward_rows(&xs)
            .into_iter()
            .map(|(pre, _)| pre)
            .collect()
    } else {
        Vec::new()
    };
    let mut pairs = centre_pres.chunks_exact(2);
    let centre_pre: Vec<Option<&[Vec<Vec<f64>>]>> = geos
        .iter()
        .map(|g| {
            (batched && has_rates(g)).then(|| pairs.next().expect("a pair per point with rates"))
        })
        .collect();
    let margins: Vec<f64> = cps
        .par_iter()
        .zip(geos.par_iter())
        .zip(centre_pre.par_iter())
        .map(
            |((cp, geo), pair)| match geo.as_ref().map(|g| (&g.dirs, &g.margin_rates)) {
                None => 0.0,
                // No known layer to keep still.
                Some((Dirs::Coords(_), _)) => f64::INFINITY,
                Some((Dirs::Mat(m), rates)) => {
                    // The centres themselves only where no batched pass answers.
                    let centre = |side: usize| {
                        let s = stencil_half_width(cp);
                        lines[cp.line].at(if side == 0 { cp.t - s } else { cp.t + s })
                    };
                    let at = |side: usize| {
                        let in_region = match (rates, pair) {
                            (Some(r), Some(pre)) => KnownPrefix::margin_in_region_of(&pre[side], r),
                            (Some(r), None) => known.margin_in_region(&centre(side), r),
                            (None, _) => None,
                        };
                        in_region.unwrap_or_else(|| known.margin(&centre(side), m))
                    };
                    at(0).min(at(1))
                }
            },
        )
        .collect();
    let mut jobs: Vec<Option<Job>> = Vec::with_capacity(cps.len());
    let mut centre_pts = Vec::new();
    for ((cp, geo), m_known) in cps.iter().zip(geos).zip(margins) {
        let line = &lines[cp.line];
        let x = line.at(cp.t);
        let Some(geo) = geo else {
            jobs.push(None);
            continue;
        };
        let (s, xa, xb) = centres_of(cp);
        let step = s * norm(&line.dir);
        let eps0 = p.eps.min(0.5 * m_known).min(p.kink_fraction * step);
        let r = geo.dirs.count();
        let jn = norm(&cp.jump);
        if jn == 0.0 || !eps0.is_finite() || eps0 <= 0.0 {
            jobs.push(None);
            continue;
        }
        let mhat: Vec<f64> = cp.jump.iter().map(|v| v / jn).collect();
        centre_pts.push(xa.clone());
        centre_pts.push(xb.clone());
        jobs.push(Some(Job {
            geo,
            xa,
            xb,
            x,
            eps: vec![eps0; r],
            fa: Vec::new(),
            fb: Vec::new(),
            da: vec![None; r],
            db: vec![None; r],
            mhat,
        }));
    }
    let centres = oracle.query_points(&centre_pts)?;
    let mut ci = 0;
    for j in jobs.iter_mut().flatten() {
        j.fa = centres[ci].clone();
        j.fb = centres[ci + 1].clone();
        ci += 2;
    }
    // Stencil points are built and queried in chunks so memory stays bounded on wide inputs
    // (a 784-input witness alone needs 3,136 points).
    let d0 = known.input_dim;
    let pairs_per_chunk = (MAX_BATCH_VALUES / (4 * d0.max(1))).max(1);
    for _ in 0..p.tries {
        let pending: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .filter_map(|(ji, j)| j.as_ref().map(|j| (ji, j)))
            .flat_map(|(ji, j)| {
                (0..j.eps.len())
                    .filter(|&k| j.da[k].is_none() || j.db[k].is_none())
                    .map(move |k| (ji, k))
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        // Retries re-query every direction whose stencil crossed a kink. On the first layer about half
        // the first-try coordinate stencils cross the point's own hyperplane (the first width is the
        // distance to it along the line), so retries add ~55 % (docs/extraction.md, "Session 13").
        tracing::debug!(
            points = cps.len(),
            directions = pending.len(),
            queries = 4 * pending.len(),
            "stencil try"
        );
        for idx in pending.chunks(pairs_per_chunk) {
            // Per direction: a + e·u, a − e·u, b + e·u, b − e·u, written into the batch on demand
            // (building them as vectors, then copying them into the batch, was most of the 12 % of a
            // 3072-input run's CPU samples in `memmove` and `query_points`).
            let ys = oracle.query_generated(idx.len() * 4, |q, row| {
                let (ji, k) = idx[q / 4];
                let j = jobs[ji].as_ref().expect("pending job exists");
                let base = if q % 4 < 2 { &j.xa } else { &j.xb };
                let e = if q % 2 == 0 { j.eps[k] } else { -j.eps[k] };
                j.geo.dirs.write_step(base, k, e, row);
            })?;
            for (n, &(ji, k)) in idx.iter().enumerate() {
                let j = jobs[ji].as_mut().expect("pending job exists");
                let e = j.eps[k];
                let (ap, am, bp, bm) = (&ys[4 * n], &ys[4 * n + 1], &ys[4 * n + 2], &ys[4 * n + 3]);
                let ok = |plus: &[f64], minus: &[f64], c: &[f64]| -> Option<Vec<f64>> {
                    let mut sc: f64 = 0.0;
                    let mut dev: f64 = 0.0;
                    for i in 0..c.len() {
                        sc = sc.max(c[i].abs()).max((plus[i] - minus[i]).abs());
                        dev = dev.max((plus[i] + minus[i] - 2.0 * c[i]).abs());
                    }
                    (dev <= (p.rel_tol * sc).max(p.abs_floor).max(f64::MIN_POSITIVE)).then(|| {
                        plus.iter()
                            .zip(minus)
                            .map(|(a, b)| (a - b) / (2.0 * e))
                            .collect()
                    })
                };
                let da = ok(ap, am, &j.fa);
                let db = ok(bp, bm, &j.fb);
                if da.is_some() && db.is_some() {
                    j.da[k] = da;
                    j.db[k] = db;
                } else {
                    j.eps[k] *= p.shrink;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(cps.len());
    // Why points gave no witness, logged per chunk: which part of a measurement is wasted.
    let (mut not_linear, mut not_one_kink) = (0usize, 0usize);
    let no_step = jobs.iter().filter(|j| j.is_none()).count() - no_geometry;
    for (cp, job) in cps.iter().zip(jobs) {
        let Some(j) = job else {
            out.push(None);
            continue;
        };
        if j.da.iter().any(|d| d.is_none()) || j.db.iter().any(|d| d.is_none()) {
            not_linear += 1;
            out.push(None);
            continue;
        }
        let r = j.eps.len();
        let mut y = vec![0.0; r];
        let mut resid: f64 = 0.0;
        let mut big: f64 = 0.0;
        for k in 0..r {
            let jump: Vec<f64> = j.db[k]
                .as_ref()
                .unwrap()
                .iter()
                .zip(j.da[k].as_ref().unwrap())
                .map(|(b, a)| b - a)
                .collect();
            y[k] = jump.iter().zip(&j.mhat).map(|(a, b)| a * b).sum();
            for (i, v) in jump.iter().enumerate() {
                resid = resid.max((v - y[k] * j.mhat[i]).abs());
            }
            big = big.max(norm(&jump));
        }
        // A single neuron's jump is rank one across directions; anything else is not one kink.
        if big == 0.0 || resid > p.rank_one_tol * big {
            not_one_kink += 1;
            out.push(None);
            continue;
        }
        let full = j.geo.full_scale.as_ref().map(|sc| {
            let w: Vec<f64> = y.iter().zip(sc).map(|(a, s)| a * s).collect();
            let n = norm(&w);
            w.into_iter().map(|v| v / n).collect::<Vec<f64>>()
        });
        out.push(Some(Witness {
            x: j.x,
            line: cp.line,
            h: j.geo.h,
            active: j.geo.active,
            a_rows: j.geo.a_rows,
            y,
            full,
        }));
    }
    tracing::debug!(
        points = cps.len(),
        probe = coords.is_some(),
        geometry_s,
        no_geometry,
        no_step,
        not_linear,
        not_one_kink,
        no_full_row = out.iter().flatten().filter(|w| w.full.is_none()).count(),
        "measured chunk"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netxray_relu::{Arch, InitRecipe, Network};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    /// Sharing the geometry among the points of one activation pattern changes nothing: every
    /// point gets exactly (bit for bit) what it would have computed alone, with or without the Gram
    /// path, for full measurements and probes; and the points do share patterns.
    #[test]
    fn geometry_shared_per_pattern_is_each_points_own() {
        let net = Network::random(
            &"30-12-10-8-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            2,
        );
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let lines: Vec<Line> = (0..3)
            .map(|_| Line {
                origin: (0..30).map(|_| rng.random_range(-1.0..1.0)).collect(),
                dir: (0..30).map(|_| rng.random_range(-1.0..1.0)).collect(),
            })
            .collect();
        // Many points per line, a few hundredths apart: runs of them share a pattern.
        let cps: Vec<CriticalPoint> = (0..3)
            .flat_map(|line| {
                (0..60).map(move |i| CriticalPoint {
                    line,
                    t: -1.5 + 0.05 * i as f64,
                    a: 0.0,
                    b: 0.0,
                    jump: vec![1.0],
                })
            })
            .collect();
        let probe = [0usize, 3, 5, 7];
        let mut patterns = std::collections::HashSet::new();
        for depth in 1..=2 {
            let known = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 30,
            };
            for cp in &cps {
                let pre = known.pre_activations(&lines[cp.line].at(cp.t), depth);
                patterns.insert((
                    depth,
                    pre.concat().iter().map(|&v| v > 0.0).collect::<Vec<_>>(),
                ));
            }
            let gram = first_layer_gram(&known);
            for g in [gram.as_ref(), None] {
                for coords in [None, Some(&probe[..])] {
                    let shared = geometries(&known, &lines, &cps, coords, g);
                    for (cp, s) in cps.iter().zip(shared) {
                        let own = geometry(&known, &lines[cp.line].at(cp.t), coords, g);
                        match (s, own) {
                            (Some(s), Some(o)) => {
                                assert_eq!(s.h, o.h);
                                assert_eq!(s.active, o.active);
                                assert_eq!(s.full_scale, o.full_scale);
                                assert_eq!(s.a_rows, o.a_rows);
                                let (Dirs::Mat(sd), Dirs::Mat(od)) = (&s.dirs, &o.dirs) else {
                                    panic!("deeper layers move along matrices");
                                };
                                assert_eq!(**sd, **od);
                            }
                            (None, None) => {}
                            (s, o) => panic!("shared {} but own {}", s.is_some(), o.is_some()),
                        }
                    }
                }
            }
        }
        assert!(
            patterns.len() < cps.len(),
            "no two points shared a pattern: nothing was shared"
        );
    }

    /// A deeper-layer probe whose kink-free interval is too narrow for a stencil (see
    /// [`PROBE_STENCIL_MIN`]) gives nothing and costs no query; the other points get exactly what
    /// they get measured on their own, and full measurements are never skipped.
    #[test]
    fn probes_too_narrow_for_a_stencil_are_skipped_without_queries() {
        use crate::critical::{SearchTol, find_critical_points};
        use crate::oracle::NetworkOracle;
        let net = Network::random(
            &"20-12-10-2".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            4,
        );
        let known = KnownPrefix {
            layers: net.layers()[..1].to_vec(),
            input_dim: 20,
        };
        let target = NetworkOracle::new(net);
        let oracle = CountingOracle::new(&target, None);
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let line = Line {
            origin: (0..20).map(|_| rng.random_range(-1.0..1.0)).collect(),
            dir: (0..20).map(|_| rng.random_range(-1.0..1.0)).collect(),
        };
        let tol = SearchTol {
            rel_tol: 1e-10,
            min_interval_rel: 1e-12,
            abs_floor: 0.0,
        };
        let found =
            find_critical_points(&oracle, std::slice::from_ref(&line), &[(0, -8.0, 8.0)], tol)
                .unwrap();
        assert!(found.len() >= 4, "{} kinks", found.len());
        let p = StencilParams {
            eps: 1e-1,
            shrink: 0.1,
            tries: 4,
            kink_fraction: 1.0,
            rel_tol: 1e-10,
            abs_floor: 0.0,
            rank_one_tol: 1e-6,
        };
        // Every other point squeezed between two neighbours a hair away.
        let squeezed: Vec<CriticalPoint> = found
            .iter()
            .enumerate()
            .map(|(i, cp)| {
                let mut cp = cp.clone();
                if i % 2 == 1 {
                    (cp.a, cp.b) = (cp.t - 1e-9, cp.t + 1e-9);
                }
                cp
            })
            .collect();
        let probe: Vec<usize> = (0..12).collect();
        let lines = std::slice::from_ref(&line);
        let q0 = oracle.queries();
        let got = measure_on(&oracle, &known, lines, &squeezed, p, Some(&probe)).unwrap();
        let used = oracle.queries() - q0;
        let wide: Vec<CriticalPoint> = squeezed.iter().step_by(2).cloned().collect();
        let q1 = oracle.queries();
        let alone = measure_on(&oracle, &known, lines, &wide, p, Some(&probe)).unwrap();
        assert_eq!(
            used,
            oracle.queries() - q1,
            "the narrow probes cost queries"
        );
        for (i, w) in got.iter().enumerate() {
            if i % 2 == 1 {
                assert!(w.is_none(), "narrow probe {i} measured");
            } else {
                let (a, b) = (w.as_ref(), alone[i / 2].as_ref());
                assert_eq!(a.map(|w| &w.y), b.map(|w| &w.y), "point {i}");
            }
        }
        assert!(got.iter().any(|w| w.is_some()), "no probe at all");
        // Full measurements are not filtered: a squeezed point still costs its stencil.
        let q2 = oracle.queries();
        measure_on(&oracle, &known, lines, &squeezed[1..2], p, None).unwrap();
        assert!(oracle.queries() > q2, "a full measurement was skipped");
    }

    /// Behind a wide first layer (the active-block products of `first_layer_rows_on_active`, the
    /// refinement in first-layer space) the Gram path still gives the SVD path's directions and
    /// scales, for full measurements and probes.
    #[test]
    fn wide_gram_geometry_matches_the_svd_path() {
        let net = Network::random(
            &"1024-512-24-16-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            8,
        );
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut compared = 0;
        for depth in 2..=3 {
            let known = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 1024,
            };
            assert!(wide_first_layer(&known));
            let gram = first_layer_gram(&known).unwrap();
            let probe = [1usize, 4, 6, 9];
            for _ in 0..12 {
                let x: Vec<f64> = (0..1024).map(|_| rng.random_range(-1.0..1.0)).collect();
                for coords in [None, Some(&probe[..])] {
                    let fast = geometry(&known, &x, coords, Some(&gram));
                    let slow = geometry(&known, &x, coords, None);
                    let (Some(f), Some(s)) = (fast, slow) else {
                        continue;
                    };
                    if s.full_scale.is_none() {
                        continue;
                    }
                    assert_eq!(f.active, s.active);
                    let (Dirs::Mat(fd), Dirs::Mat(sd)) = (&f.dirs, &s.dirs) else {
                        panic!("deeper layers move along matrices");
                    };
                    assert!((&**fd - &**sd).norm_max() < 1e-9, "directions");
                    for (a, b) in f.full_scale.unwrap().iter().zip(s.full_scale.unwrap()) {
                        assert!((a / b - 1.0).abs() < 1e-9, "scale {a} against {b}");
                    }
                    compared += 1;
                }
            }
        }
        assert!(compared >= 10, "only {compared} points compared");
    }

    /// The QR path gives the SVD path's full-row-rank directions and scales, on a moderately
    /// ill-conditioned `P_A` (the points it takes: `cond(J_A)` between 1e-6 and 1e-4).
    #[test]
    fn qr_gram_geometry_matches_the_svd_path() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let (d0, n1, na) = (90, 24, 14);
        let w1 = Mat::<f64>::from_fn(n1, d0, |_, _| rng.random_range(-1.0..1.0));
        let gram = &w1 * w1.transpose();
        let l = gram
            .llt(faer::Side::Lower)
            .expect("W₁ has full row rank")
            .L()
            .to_owned();
        // Rows with a spread of scales down to 1e-5, then mixed: an ill-conditioned but full-rank P_A.
        let mut pa = Mat::<f64>::from_fn(na, n1, |_, _| rng.random_range(-1.0..1.0));
        for i in 0..na {
            let sc = 10f64.powf(-5.0 * i as f64 / (na - 1) as f64);
            pa.row_mut(i).iter_mut().for_each(|v| *v *= sc);
        }
        let mix = Mat::<f64>::from_fn(na, na, |_, _| rng.random_range(-1.0..1.0));
        let pa = &mix * &pa;
        let active: Vec<usize> = (0..na).map(|i| 2 * i).collect();
        let h = vec![0.5; 2 * na];
        for picked in [vec![0usize, 3, 7], (0..na).collect::<Vec<_>>()] {
            let by = |qr: bool| {
                let outcome = if qr {
                    qr_gram_geometry(&w1, &l, &pa, active.clone(), &picked, h.clone())
                } else {
                    svd_gram_geometry(&w1, &l, &pa, active.clone(), &picked, true, h.clone())
                };
                let GramOutcome::Done(Some(g)) = outcome else {
                    panic!("no geometry (qr: {qr})");
                };
                g
            };
            let (q, s) = (by(true), by(false));
            assert_eq!(q.active, s.active);
            let (Dirs::Mat(qd), Dirs::Mat(sd)) = (&q.dirs, &s.dirs) else {
                panic!("deeper layers move along matrices");
            };
            assert!((&**qd - &**sd).norm_max() < 1e-9, "directions");
            for (a, b) in q.full_scale.unwrap().iter().zip(s.full_scale.unwrap()) {
                assert!((a / b - 1.0).abs() < 1e-9, "scale {a} against {b}");
            }
        }
    }

    /// The Gram path and the SVD path agree on the active units, the scales and the directions (to
    /// rounding), for full measurements and probes, one and two known layers deep, and on the
    /// subspace and rows of partial witnesses; and where one gives no geometry, neither does the
    /// other.
    #[test]
    fn gram_geometry_matches_the_svd_path() {
        let net = Network::random(
            &"60-14-12-10-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            5,
        );
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (mut compared, mut both_none, mut by_gram) = (0, 0, 0);
        let (mut partial, mut by_svd_full) = (0, 0);
        for depth in 1..=2 {
            let known = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 60,
            };
            let gram = first_layer_gram(&known).unwrap();
            let probe = [1usize, 4, 6, 9];
            for _ in 0..40 {
                let x: Vec<f64> = (0..60).map(|_| rng.random_range(-1.0..1.0)).collect();
                for coords in [None, Some(&probe[..])] {
                    if let GramOutcome::Done(Some(_)) =
                        gram_geometry(&known, &gram, &x, coords, None)
                    {
                        by_gram += 1;
                    }
                    let fast = geometry(&known, &x, coords, Some(&gram));
                    let slow = geometry(&known, &x, coords, None);
                    match (fast, slow) {
                        (Some(f), Some(s)) => {
                            assert_eq!(f.active, s.active);
                            assert_eq!(f.h, s.h);
                            let (Dirs::Mat(fd), Dirs::Mat(sd)) = (&f.dirs, &s.dirs) else {
                                panic!("deeper layers move along matrices");
                            };
                            // The SVD in first-layer space (which takes the points the normal
                            // equations cannot on wide nets), called directly: this net's
                            // Jacobian is smaller than `FIRST_LAYER_SVD_MIN_JACOBIAN`.
                            let by_svd = coords.is_none().then(|| {
                                let pre = known.pre_activations(&x, depth);
                                let pa = first_layer_rows(&known, &pre, &s.active);
                                let all: Vec<usize> = (0..s.active.len()).collect();
                                let GramOutcome::Done(Some(g)) = svd_gram_geometry(
                                    &known.layers[0].weight,
                                    gram.factor
                                        .as_ref()
                                        .expect("a well-conditioned first layer"),
                                    &pa,
                                    s.active.clone(),
                                    &all,
                                    false,
                                    s.h.clone(),
                                ) else {
                                    panic!("no geometry by the first-layer-space SVD");
                                };
                                g
                            });
                            if s.full_scale.is_none() {
                                // A partial witness: the same subspace (the bases may differ by a
                                // rotation), so the same rows read along it: `Σ_k u_k (J_A u_k)ᵀ` is
                                // basis free.
                                assert!(f.full_scale.is_none());
                                let g = by_svd.expect("partial witnesses are full measurements");
                                let Dirs::Mat(gd) = &g.dirs else {
                                    panic!("deeper layers move along matrices");
                                };
                                assert!(g.full_scale.is_none());
                                assert_eq!(g.a_rows.nrows(), s.a_rows.nrows(), "rank");
                                let (gp, sp) = (&**gd * &g.a_rows, &**sd * &s.a_rows);
                                let (gq, sq) = (&**gd * gd.transpose(), &**sd * sd.transpose());
                                assert!((&gp - &sp).norm_max() <= 1e-10 * sp.norm_max(), "rows");
                                assert!((&gq - &sq).norm_max() <= 1e-10, "directions");
                                partial += 1;
                                continue;
                            }
                            if let Some(g) = by_svd {
                                // At full rank it gives the pseudo-inverse's directions too.
                                let (Dirs::Mat(gd), Some(gs)) = (&g.dirs, &g.full_scale) else {
                                    panic!("a full-rank point reads a full row");
                                };
                                let ss = s.full_scale.as_ref().unwrap();
                                for c in 0..gs.len() {
                                    assert!((gs[c] - ss[c]).abs() <= 1e-10 * ss[c], "scale {c}");
                                    for i in 0..60 {
                                        assert!((gd[(i, c)] - sd[(i, c)]).abs() <= 1e-10);
                                    }
                                }
                                by_svd_full += 1;
                            }
                            let (fs, ss) = (f.full_scale.unwrap(), s.full_scale.unwrap());
                            for c in 0..fs.len() {
                                assert!((fs[c] - ss[c]).abs() <= 1e-12 * ss[c], "scale {c}");
                                for i in 0..60 {
                                    assert!((fd[(i, c)] - sd[(i, c)]).abs() <= 1e-12, "dir {c}");
                                }
                            }
                            compared += 1;
                        }
                        (None, None) => both_none += 1,
                        (f, s) => panic!(
                            "paths disagree on existence: gram {}, svd {}",
                            f.is_some(),
                            s.is_some()
                        ),
                    }
                }
            }
        }
        assert!(compared >= 40, "only {compared} full-rank points compared");
        assert!(partial >= 5, "only {partial} partial points compared");
        assert!(
            by_svd_full >= 20,
            "only {by_svd_full} full points by the first-layer-space SVD"
        );
        assert!(by_gram >= 40, "the Gram path answered only {by_gram} times");
        assert!(
            both_none >= 1,
            "no point without a probe: the rank rule went untested"
        );
    }
}
