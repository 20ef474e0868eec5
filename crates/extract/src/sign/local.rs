//! The local linear map of a recovered layer at one point, kept in *layer space*.
//!
//! The wiggles need, at a point `x`, the input-space gradients `Z = ∂ẑ/∂x` of the layer's
//! pre-activations, their Gram matrix `Z Zᵀ`, directions `δ = Zᵀ c` and the derivatives of every
//! known unit along `δ`. Behind a first layer `W₁` (`n₁ × d₀`) all of it factors through `W₁`:
//! `Z = Q W₁` with `Q = Ŵ_L D_{L−1} W_{L−1} ⋯ W₂ D₁` (`w × n₁`, `D` the ReLU patterns at `x`), so
//! `Z Zᵀ = Q G Qᵀ` with `G = W₁ W₁ᵀ` computed once per layer, `δ = W₁ᵀ (Qᵀ c)`, and the first layer's
//! derivative along `δ` is `G Qᵀ c`. Every product is then `n × n` (256 on the 3072-256×8-10)
//! instead of `n × d₀`: building `Z` itself cost a 256 × 256 × 3072 product per known layer and
//! point, which made the wiggle of one 256-wide layer take over 20 minutes there.

use crate::known::KnownPrefix;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// `a · b`, on the calling thread: these products run inside per-neuron tasks already spread over
/// the cores, where handing each small product to the thread pool costs more than it computes.
fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// `a · v` as a vector, on the calling thread.
pub(crate) fn mul_vec(a: MatRef<'_, f64>, v: &[f64]) -> Vec<f64> {
    let col = MatRef::from_column_major_slice(v, v.len(), 1);
    let out = mul(a, col);
    (0..out.nrows()).map(|i| out[(i, 0)]).collect()
}

/// Pre-activations of every layer of `prefix` at `x`, on the calling thread.
pub(crate) fn pre_activations(prefix: &KnownPrefix, x: &[f64]) -> Vec<Vec<f64>> {
    let l1 = &prefix.layers[0];
    let z1 = mul_vec(l1.weight.as_ref(), x)
        .into_iter()
        .zip(&l1.bias)
        .map(|(a, b)| a + b)
        .collect();
    pre_activations_from(prefix, z1)
}

/// [`pre_activations`] given the first layer's pre-activations `z1`.
pub(crate) fn pre_activations_from(prefix: &KnownPrefix, z1: Vec<f64>) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(prefix.layers.len());
    out.push(z1);
    for l in &prefix.layers[1..] {
        let h: Vec<f64> = out
            .last()
            .expect("a layer")
            .iter()
            .map(|&v| v.max(0.0))
            .collect();
        let z = mul_vec(l.weight.as_ref(), &h)
            .into_iter()
            .zip(&l.bias)
            .map(|(a, b)| a + b)
            .collect();
        out.push(z);
    }
    out
}

/// `W₁ W₁ᵀ` of the first layer of `with_layer` (computed once per sign step).
pub(crate) fn first_layer_gram(with_layer: &KnownPrefix) -> Mat<f64> {
    let w1 = &with_layer.layers[0].weight;
    w1 * w1.transpose()
}

/// The layer's local map at one point (see the module doc).
pub(crate) struct LayerLocal {
    /// Pre-activations of every layer of `with_layer` at the point (the recovered layer last).
    pub pre: Vec<Vec<f64>>,
    /// `Q` (`w × n₁`); `None` when the recovered layer is the first (then `Z = Ŵ₁`, `Q = I`).
    q: Option<Mat<f64>>,
    /// `Z Zᵀ` (`w × w`).
    pub gram: Mat<f64>,
}

impl LayerLocal {
    /// The local map of the last layer of `with_layer` at `x`; `g` is [`first_layer_gram`].
    pub(crate) fn at(with_layer: &KnownPrefix, g: &Mat<f64>, x: &[f64]) -> Self {
        let depth = with_layer.layers.len();
        let pre = pre_activations(with_layer, x);
        if depth == 1 {
            return Self {
                pre,
                q: None,
                gram: g.clone(),
            };
        }
        let mut q = with_layer.layers[depth - 1].weight.clone();
        for l in (0..depth - 1).rev() {
            for (c, &z) in pre[l].iter().enumerate() {
                if z <= 0.0 {
                    q.col_mut(c).fill(0.0);
                }
            }
            if l > 0 {
                q = mul(q.as_ref(), with_layer.layers[l].weight.as_ref());
            }
        }
        let qg = mul(q.as_ref(), g.as_ref());
        let gram = mul(qg.as_ref(), q.transpose());
        Self {
            pre,
            q: Some(q),
            gram,
        }
    }

    /// `Qᵀ c` (`n₁`).
    fn qt(&self, c: &[f64]) -> Vec<f64> {
        match &self.q {
            None => c.to_vec(),
            Some(q) => mul_vec(q.transpose(), c),
        }
    }

    /// The input-space direction `δ = Zᵀ c`.
    pub(crate) fn direction(&self, with_layer: &KnownPrefix, c: &[f64]) -> Vec<f64> {
        mul_vec(with_layer.layers[0].weight.transpose(), &self.qt(c))
    }

    /// Derivatives of every layer's pre-activations along `δ = Zᵀ c` (the recovered layer's last:
    /// `Z Zᵀ c`), from `n₁`-space products only.
    pub(crate) fn derivatives(
        &self,
        with_layer: &KnownPrefix,
        g: &Mat<f64>,
        c: &[f64],
    ) -> Vec<Vec<f64>> {
        let depth = with_layer.layers.len();
        let mut out = Vec::with_capacity(depth);
        if depth > 1 {
            let mut d = mul_vec(g.as_ref(), &self.qt(c));
            out.push(d.clone());
            for l in 1..depth - 1 {
                let masked: Vec<f64> = d
                    .iter()
                    .zip(&self.pre[l - 1])
                    .map(|(&v, &z)| if z > 0.0 { v } else { 0.0 })
                    .collect();
                d = mul_vec(with_layer.layers[l].weight.as_ref(), &masked);
                out.push(d.clone());
            }
        }
        out.push(mul_vec(self.gram.as_ref(), c));
        out
    }
}

/// Largest step along `δ` (a multiple of 1) before any known unit, or any unit of the recovered
/// layer other than `k`, changes sign, given the derivatives along `δ` from
/// [`LayerLocal::derivatives`]: first order, exact within the current linear region.
pub(crate) fn max_step(pre: &[Vec<f64>], deriv: &[Vec<f64>], k: usize) -> f64 {
    let mut tmax = f64::INFINITY;
    for (l, (z, d)) in pre.iter().zip(deriv).enumerate() {
        let last = l + 1 == pre.len();
        for u in 0..z.len() {
            if last && u == k {
                continue;
            }
            if d[u] != 0.0 {
                tmax = tmax.min(z[u].abs() / d[u].abs());
            }
        }
    }
    tmax
}

#[cfg(test)]
mod tests {
    use super::*;
    use netxray_relu::{Arch, InitRecipe, Network};

    /// The layer-space products are the input-space ones: `Z Zᵀ`, `Zᵀ c` and the derivatives along
    /// it, against the full Jacobians of `KnownPrefix::local_full`.
    #[test]
    fn layer_space_products_match_the_full_jacobian() {
        let net = Network::random(
            &"30-12-10-8-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            5,
        );
        let x: Vec<f64> = (0..30).map(|i| ((i * 7) as f64 * 0.37).sin()).collect();
        for depth in 1..=3 {
            let wl = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 30,
            };
            let g = first_layer_gram(&wl);
            let loc = LayerLocal::at(&wl, &g, &x);
            let st = wl.local_full(&x);
            let z = st.dpre.last().unwrap();
            let zz = z * z.transpose();
            let w = z.nrows();
            for i in 0..w {
                for j in 0..w {
                    assert!(
                        (zz[(i, j)] - loc.gram[(i, j)]).abs() < 1e-12,
                        "depth {depth} gram"
                    );
                }
            }
            let c: Vec<f64> = (0..w).map(|i| (i as f64 * 1.3).cos()).collect();
            let delta = loc.direction(&wl, &c);
            for col in 0..30 {
                let want: f64 = (0..w).map(|r| z[(r, col)] * c[r]).sum();
                assert!((want - delta[col]).abs() < 1e-12, "depth {depth} direction");
            }
            let dirs = Mat::<f64>::from_fn(30, 1, |i, _| delta[i]);
            let along = wl.local(&x, &dirs);
            let deriv = loc.derivatives(&wl, &g, &c);
            for (l, d) in deriv.iter().enumerate() {
                for u in 0..d.len() {
                    assert!(
                        (along.dpre[l][(u, 0)] - d[u]).abs() < 1e-10,
                        "depth {depth} layer {l} unit {u}"
                    );
                }
            }
        }
    }
}
