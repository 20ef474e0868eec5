//! Small f64 helpers on top of faer: SVD-based null vectors, pseudo-inverses, least squares.

use faer::Mat;

/// Right singular vectors and singular values (descending) of `m` (`n × p`).
pub fn svd_right(m: &Mat<f64>) -> Option<(Vec<f64>, Mat<f64>)> {
    if m.nrows() == 0 || m.ncols() == 0 {
        return None;
    }
    // For tall matrices reduce to the p × p triangular factor first: same singular values and V.
    let r_mat;
    let target = if m.nrows() > m.ncols() {
        let qr = m.qr();
        r_mat = qr.R().to_owned();
        &r_mat
    } else {
        m
    };
    let svd = target.svd().ok()?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    Some((s, svd.V().to_owned()))
}

/// The unit vector minimising `‖m x‖`, with `s_min/s_max` and `s_{p-1}/s_max` (the gap). When `m` has
/// fewer rows than columns the null space has dimension ≥ 2 and the gap is reported as 0.
pub fn null_vector(m: &Mat<f64>) -> Option<(Vec<f64>, f64, f64)> {
    let p = m.ncols();
    let (s, v) = svd_right(m)?;
    let smax = s.first().copied().unwrap_or(0.0);
    if smax <= 0.0 {
        return None;
    }
    let x: Vec<f64> = (0..p).map(|i| v[(i, p - 1)]).collect();
    let (smin, s2) = if s.len() == p {
        (s[p - 1], if p >= 2 { s[p - 2] } else { smax })
    } else {
        (0.0, 0.0)
    };
    Some((x, smin / smax, s2 / smax))
}

/// Inverse-iteration steps of [`null_vector_near`] before it falls back to the SVD.
const INVERSE_ITERATIONS_MAX: usize = 8;

/// [`null_vector_near`] has converged when an iterate moves less than this (unit vectors).
const INVERSE_ITERATION_TOL: f64 = 1e-13;

/// The unit vector minimising `‖m x‖` (as [`null_vector`], same orientation up to sign), found by
/// inverse iteration on the triangular factor `R` of a tall `m`, starting from `start`: each step
/// solves `RᵀR y = x` with two triangular solves. Why: on a 3072-input layer the SVD of the
/// `3073 × 3073` factor cost more than the QR itself, and a hyperplane fit (the smallest singular
/// value ~1e-11 of the next) converges in two steps from a prior near the answer. Accuracy: the
/// solves are backward stable, so the vector is as close as the SVD's (`ε‖m‖ / σ_{p−1}`). Falls back
/// to [`null_vector`] when `m` is not tall, `R` is exactly singular, or the iteration does not settle
/// within [`INVERSE_ITERATIONS_MAX`] steps (two smallest singular values too close to tell apart).
pub fn null_vector_near(m: &Mat<f64>, start: &[f64]) -> Option<Vec<f64>> {
    let fallback = || null_vector(m).map(|(x, _, _)| x);
    match triangular_factor(m, start.len()) {
        Some(r) => inverse_iteration(&r, start)
            .map(|x| (0..x.nrows()).map(|i| x[(i, 0)]).collect())
            .or_else(fallback),
        None => fallback(),
    }
}

/// [`null_vector`] by inverse iteration from `start` ([`null_vector_near`]'s), with `s_min/s_max`
/// from `‖R x‖` and a power iteration for `s_max` (to [`POWER_ITERATION_TOL`]), so no SVD is taken
/// unless the iteration does not settle. The gap is not computed on that path (`NaN`). Why: a
/// deep layer's bank re-solves its `(n+1)`-column constraints (257 on a 256-wide layer) after every
/// witness it files, and the SVD of the factor was two thirds of each solve. A zero `start` begins
/// from the all-ones vector: with the usual gap (`s_min/s_{p−1}` ≲ 1e-4) two or three steps settle.
pub fn null_vector_iterated(m: &Mat<f64>, start: &[f64]) -> Option<(Vec<f64>, f64, f64)> {
    let p = m.ncols();
    let Some(r) = triangular_factor(m, start.len()) else {
        return null_vector(m);
    };
    let ones;
    let start = if start.iter().all(|&v| v == 0.0) {
        ones = vec![1.0; p];
        &ones[..]
    } else {
        start
    };
    let Some(x) = inverse_iteration(&r, start) else {
        return null_vector(m);
    };
    let smin = (r.as_ref() * &x).col(0).norm_l2();
    let smax = largest_singular_value(&r);
    if !(smax > 0.0 && smax.is_finite() && smin.is_finite()) {
        return null_vector(m);
    }
    Some(((0..p).map(|i| x[(i, 0)]).collect(), smin / smax, f64::NAN))
}

/// Power-iteration steps of [`largest_singular_value`] at most.
const POWER_ITERATIONS_MAX: usize = 100;

/// [`largest_singular_value`] stops when an estimate moves less than this, relative. A residual
/// `s_min/s_max` is compared with bounds that are orders of magnitude apart, so `s_max` needs only a
/// few digits; the estimate is a lower bound that approaches it from below, and where the largest
/// singular values crowd together it stops up to ~0.1 % short (the residual ~0.1 % high: the
/// linalg test's random 300 × 60 matrices).
const POWER_ITERATION_TOL: f64 = 1e-6;

/// The largest singular value of `r`, by power iteration on `rᵀr` from the all-ones vector.
fn largest_singular_value(r: &Mat<f64>) -> f64 {
    let p = r.ncols();
    let mut v = Mat::<f64>::from_fn(p, 1, |_, _| 1.0 / (p as f64).sqrt());
    let mut s = 0.0;
    for _ in 0..POWER_ITERATIONS_MAX {
        let w = r * &v;
        let s_new = w.col(0).norm_l2();
        let z = r.transpose() * &w;
        let zn = z.col(0).norm_l2();
        if !(zn > 0.0 && zn.is_finite()) {
            return s_new;
        }
        v = Mat::from_fn(p, 1, |i, _| z[(i, 0)] / zn);
        let settled = (s_new - s).abs() <= POWER_ITERATION_TOL * s_new;
        s = s_new;
        if settled {
            break;
        }
    }
    s
}

/// The `p × p` triangular factor `R` of a tall `m` with `p` columns, when it is nonsingular and
/// finite (what [`inverse_iteration`] needs); `None` otherwise.
fn triangular_factor(m: &Mat<f64>, p: usize) -> Option<Mat<f64>> {
    if p == 0 || m.ncols() != p || m.nrows() < p {
        return None;
    }
    let r = m.qr().R().to_owned();
    (r.nrows() == p && (0..p).all(|i| r[(i, i)] != 0.0 && r[(i, i)].is_finite())).then_some(r)
}

/// Inverse iteration on `RᵀR` from `start`: each step solves `RᵀR y = x` with two triangular
/// solves. The unit vector once an iterate moves less than [`INVERSE_ITERATION_TOL`], or `None` if
/// it does not within [`INVERSE_ITERATIONS_MAX`] steps or `start` is zero.
fn inverse_iteration(r: &Mat<f64>, start: &[f64]) -> Option<Mat<f64>> {
    use faer::linalg::triangular_solve::{
        solve_lower_triangular_in_place, solve_upper_triangular_in_place,
    };
    let p = r.ncols();
    let sn = norm(start);
    if !(sn > 0.0 && sn.is_finite()) {
        return None;
    }
    let mut x = Mat::<f64>::from_fn(p, 1, |i, _| start[i] / sn);
    for _ in 0..INVERSE_ITERATIONS_MAX {
        let mut y = x.clone();
        solve_lower_triangular_in_place(r.transpose(), y.as_mut(), faer::Par::Seq);
        solve_upper_triangular_in_place(r.as_ref(), y.as_mut(), faer::Par::Seq);
        let yn = y.col(0).norm_l2();
        if !(yn > 0.0 && yn.is_finite()) {
            return None;
        }
        let s = if (0..p).map(|i| y[(i, 0)] * x[(i, 0)]).sum::<f64>() < 0.0 {
            -1.0 / yn
        } else {
            1.0 / yn
        };
        let moved = (0..p)
            .map(|i| (s * y[(i, 0)] - x[(i, 0)]).powi(2))
            .sum::<f64>()
            .sqrt();
        x = Mat::from_fn(p, 1, |i, _| s * y[(i, 0)]);
        if moved <= INVERSE_ITERATION_TOL {
            return Some(x);
        }
    }
    None
}

/// Least-squares solution of `a x ≈ b` (columns of `b` solved independently): QR when `a` has full
/// column rank, otherwise the minimum-norm solution through the SVD (singular values below 1e-12 of
/// the largest dropped), so rank-deficient systems never produce NaN/inf.
pub fn lstsq(a: &Mat<f64>, b: &Mat<f64>) -> Mat<f64> {
    use faer::linalg::solvers::SolveLstsq;
    if a.nrows() >= a.ncols() {
        let x = a.qr().solve_lstsq(b);
        if (0..x.ncols()).all(|j| x.col(j).iter().all(|v| v.is_finite())) && full_rank(a) {
            return x;
        }
    }
    let Ok(svd) = a.thin_svd() else {
        return Mat::zeros(a.ncols(), b.ncols());
    };
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let smax = s.iter().cloned().fold(0.0, f64::max);
    let (u, v) = (svd.U(), svd.V());
    let utb = u.transpose() * b;
    // Truncated pseudo-inverse as one GEMM: V · (S⁻¹ Uᵀ b), dropping negligible singular values.
    let scaled = Mat::<f64>::from_fn(s.len(), b.ncols(), |k, j| {
        if s[k] > 1e-12 * smax {
            utb[(k, j)] / s[k]
        } else {
            0.0
        }
    });
    v * &scaled
}

/// Minimum-norm least-squares solution of `a x ≈ b` (`a` is `r × n`) through the eigen-decomposition
/// of the smaller Gram matrix: `x = aᵀ U Λ⁺ Uᵀ b` with `a aᵀ = U Λ Uᵀ` when `r < n`, `x = V Λ⁺ Vᵀ aᵀ b`
/// with `aᵀ a = V Λ Vᵀ` otherwise; eigenvalues below `eig_cut` of the largest are dropped. `None`
/// when `a` is empty, all zero or not finite.
///
/// Why: a thin SVD costs a QR plus a bidiagonalisation, while the Gram matrix is one GEMM and its
/// symmetric eigen-decomposition works on `min(r, n)²` alone. The price is precision: the Gram
/// matrix squares the condition number, so directions with singular values below ~`sqrt(eig_cut)`
/// of the largest are dropped instead of amplified. For a step that only has to move a walk
/// towards its constraints (the hyperplane-following walks of `layer.rs`) that is a
/// regularisation, not a loss: nearly dependent constraints are nearly redundant, and the SVD
/// path turned them into huge steps.
pub fn lstsq_gram(a: &Mat<f64>, b: &Mat<f64>, eig_cut: f64) -> Option<Mat<f64>> {
    let (r, n) = (a.nrows(), a.ncols());
    if r == 0 || n == 0 || b.nrows() != r {
        return None;
    }
    let wide = r < n;
    let g = if wide {
        a * a.transpose()
    } else {
        a.transpose() * a
    };
    let eig = g.self_adjoint_eigen(faer::Side::Lower).ok()?;
    let lambda: Vec<f64> = eig.S().column_vector().iter().copied().collect();
    let lmax = lambda.iter().fold(0.0_f64, |m, &v| m.max(v));
    if !(lmax > 0.0 && lmax.is_finite()) {
        return None;
    }
    let u = eig.U();
    // `Uᵀ c` for the right-hand side in the Gram matrix's space (`b`, or `aᵀ b` when tall).
    let utc = if wide {
        u.transpose() * b
    } else {
        u.transpose() * (a.transpose() * b)
    };
    let scaled = Mat::<f64>::from_fn(lambda.len(), b.ncols(), |k, j| {
        if lambda[k] > eig_cut * lmax {
            utc[(k, j)] / lambda[k]
        } else {
            0.0
        }
    });
    let x = if wide {
        a.transpose() * (u * scaled)
    } else {
        u * scaled
    };
    (0..x.ncols())
        .all(|j| x.col(j).iter().all(|v| v.is_finite()))
        .then_some(x)
}

/// Whether the R factor of `a` has no negligible diagonal entry.
fn full_rank(a: &Mat<f64>) -> bool {
    let qr = a.qr();
    let r = qr.R();
    let n = r.nrows().min(r.ncols());
    let dmax = (0..n).map(|i| r[(i, i)].abs()).fold(0.0, f64::max);
    (0..n).all(|i| r[(i, i)].abs() > 1e-11 * dmax)
}

/// Pseudo-inverse columns: for `j` (`r × d`) of full row rank, returns `d × r` with `j · out = I`,
/// plus the ratio s_min/s_max, or `None` if degenerate.
pub fn right_pinv(j: &Mat<f64>) -> Option<(Mat<f64>, f64)> {
    let r = j.nrows();
    let jt = j.transpose().to_owned();
    let svd = jt.thin_svd().ok()?; // jᵀ = U S Vᵀ  (d × r)
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let smax = s.iter().cloned().fold(0.0, f64::max);
    let smin = s.iter().cloned().fold(f64::INFINITY, f64::min);
    if smax <= 0.0 || s.len() < r {
        return None;
    }
    // pinv(j) = (jᵀ)ᵀ⁺ ... j = V S Uᵀ  ⇒  j⁺ = U S⁻¹ Vᵀ
    if s.iter().any(|&sk| sk <= 0.0) {
        return None;
    }
    // One GEMM: (U · S⁻¹) · Vᵀ.
    let u_scaled = Mat::<f64>::from_fn(jt.nrows(), s.len(), |a, k| svd.U()[(a, k)] / s[k]);
    let out = &u_scaled * svd.V().transpose();
    Some((out, smin / smax))
}

/// Euclidean norm.
pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Dot product.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinv_and_null_vector() {
        let j = Mat::<f64>::from_fn(2, 3, |i, k| [[1.0, 2.0, 0.5], [0.0, 1.0, -1.0]][i][k]);
        let (p, _) = right_pinv(&j).unwrap();
        let prod = &j * &p;
        for i in 0..2 {
            for k in 0..2 {
                assert!((prod[(i, k)] - if i == k { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        // rows orthogonal to (1, 1, 1)
        let m = Mat::<f64>::from_fn(4, 3, |i, k| {
            [
                [1.0, -1.0, 0.0],
                [0.0, 1.0, -1.0],
                [2.0, -1.0, -1.0],
                [1.0, 0.0, -1.0],
            ][i][k]
        });
        let (x, res, gap) = null_vector(&m).unwrap();
        assert!(res < 1e-14);
        assert!(gap > 0.1);
        assert!((x[0] - x[1]).abs() < 1e-12 && (x[1] - x[2]).abs() < 1e-12);
    }

    /// Largest entry of `|a ∓ b|`, with the sign that aligns `b` with `a`.
    fn diff_up_to_sign(a: &[f64], b: &[f64]) -> f64 {
        let s = dot(a, b).signum();
        a.iter()
            .zip(b)
            .fold(0.0_f64, |d, (x, y)| d.max((x - s * y).abs()))
    }

    /// Largest entry of `|m x|`.
    fn largest_image_entry(m: &Mat<f64>, x: &[f64]) -> f64 {
        (0..m.nrows())
            .map(|i| (0..m.ncols()).map(|j| m[(i, j)] * x[j]).sum::<f64>().abs())
            .fold(0.0_f64, f64::max)
    }

    /// An `n × p` matrix whose rows are orthogonal to a random vector `v` up to `noise`: a clear
    /// smallest singular value near `noise`, with `v` its vector. Returns the matrix and `v`.
    fn planted_null(
        rng: &mut rand_chacha::ChaCha20Rng,
        n: usize,
        p: usize,
        noise: f64,
    ) -> (Mat<f64>, Vec<f64>) {
        use rand::Rng;
        let v: Vec<f64> = (0..p).map(|_| rng.random_range(-1.0..1.0)).collect();
        let vn = norm(&v);
        let mut m = Mat::<f64>::zeros(n, p);
        for i in 0..n {
            let row: Vec<f64> = (0..p).map(|_| rng.random_range(-1.0..1.0)).collect();
            let c = dot(&row, &v) / (vn * vn);
            for j in 0..p {
                m[(i, j)] = row[j] - c * v[j] + noise * rng.random_range(-1.0..1.0);
            }
        }
        (m, v)
    }

    #[test]
    fn inverse_iteration_finds_the_svd_null_vector() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let (n, p) = (120, 30);
        let (m, v) = planted_null(&mut rng, n, p, 1e-12);
        let vn = norm(&v);
        let (svd, _, _) = null_vector(&m).expect("svd");
        // From a start 1e-3 off the answer.
        let start: Vec<f64> = v
            .iter()
            .map(|x| x / vn + 1e-3 * rng.random_range(-1.0..1.0))
            .collect();
        let near = null_vector_near(&m, &start).expect("inverse iteration");
        let diff = diff_up_to_sign(&near, &svd);
        assert!(diff < 1e-12, "inverse iteration vs SVD: {diff:e}");
        assert!((norm(&near) - 1.0).abs() < 1e-14);
        // A start orthogonal to the answer still gets there (the iteration amplifies any component).
        let mut other = vec![0.0; p];
        other[0] = v[1];
        other[1] = -v[0];
        let near = null_vector_near(&m, &other).expect("inverse iteration");
        assert!((dot(&near, &svd).abs() - 1.0).abs() < 1e-12);
        // A two-dimensional null space (`R` exactly singular): the SVD's answer, some vector of it.
        let mut flat = Mat::<f64>::zeros(n, p);
        for i in 0..n {
            for j in 2..p {
                flat[(i, j)] = rng.random_range(-1.0..1.0);
            }
        }
        let x = null_vector_near(&flat, &start).expect("fallback");
        let mx = largest_image_entry(&flat, &x);
        assert!(mx < 1e-12, "not in the null space: {mx:e}");
    }

    #[test]
    fn iterated_null_vector_and_residual_match_the_svd() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let (n, p) = (300, 60);
        for noise in [1e-12, 1e-8, 1e-5] {
            let (m, v) = planted_null(&mut rng, n, p, noise);
            let vn = norm(&v);
            let (svd, res, gap) = null_vector(&m).expect("svd");
            // From the solution before a perturbation, and from nothing (the all-ones start).
            let prior: Vec<f64> = v
                .iter()
                .map(|x| x / vn + 1e-4 * rng.random_range(-1.0..1.0))
                .collect();
            for start in [prior, vec![0.0; p]] {
                let (x, r, g) = null_vector_iterated(&m, &start).expect("iterated");
                let diff = diff_up_to_sign(&x, &svd);
                assert!(diff < 1e-10, "noise {noise:e}: vector off by {diff:e}");
                // `s_max` by power iteration is a lower bound a little short of it (0.12 % here,
                // where the largest singular values of a random matrix crowd together).
                assert!(
                    r >= res * (1.0 - 1e-12) && r / res - 1.0 < 1e-2,
                    "noise {noise:e}: residual {r:e} against the SVD's {res:e}"
                );
                assert!(g.is_nan() && gap > 0.0);
            }
        }
        // Fewer rows than columns: the SVD's answer, gap and all.
        let wide = Mat::<f64>::from_fn(3, 5, |i, j| ((i * 5 + j) as f64).sin());
        let (x, r, g) = null_vector_iterated(&wide, &[1.0; 5]).expect("fallback");
        assert_eq!((r, g), (0.0, 0.0));
        assert!(largest_image_entry(&wide, &x) < 1e-12);
    }

    #[test]
    fn lstsq_gram_matches_the_svd_solution() {
        // A wide, rank-deficient system (row 3 = row 1 + row 2) with a consistent right-hand side:
        // both paths must give the minimum-norm solution.
        let rows = [
            [1.0, 2.0, 0.5, -1.0, 0.3],
            [0.0, 1.0, -1.0, 2.0, 0.7],
            [1.0, 3.0, -0.5, 1.0, 1.0],
            [0.2, -0.4, 1.1, 0.0, -2.0],
        ];
        let a = Mat::<f64>::from_fn(4, 5, |i, k| rows[i][k]);
        let x_true = Mat::<f64>::from_fn(5, 1, |i, _| [0.3, -1.2, 0.8, 0.1, 0.5][i]);
        let b = &a * &x_true;
        let close = |x: &Mat<f64>, y: &Mat<f64>| {
            x.nrows() == y.nrows() && (0..x.nrows()).all(|i| (x[(i, 0)] - y[(i, 0)]).abs() < 1e-10)
        };
        let via_gram = lstsq_gram(&a, &b, 1e-13).expect("a solution");
        assert!(close(&lstsq(&a, &b), &via_gram));
        assert!((&a * &via_gram - &b).norm_l2() < 1e-10 * b.norm_l2());
        // Tall and rank deficient (column 5 = column 1 − column 2), inconsistent: the
        // minimum-norm least-squares solution, as through the SVD.
        let mut t = Mat::<f64>::from_fn(7, 5, |i, k| {
            ((3 * i + 5 * k) % 7) as f64 - 2.5 + 0.1 * k as f64
        });
        for i in 0..7 {
            t[(i, 4)] = t[(i, 0)] - t[(i, 1)];
        }
        let bt = Mat::<f64>::from_fn(7, 1, |i, _| (i as f64).sin());
        assert!(close(
            &lstsq(&t, &bt),
            &lstsq_gram(&t, &bt, 1e-13).expect("a solution")
        ));
        // An all-zero system has none.
        assert!(lstsq_gram(&Mat::zeros(2, 5), &Mat::zeros(2, 1), 1e-13).is_none());
    }
}
