//! The part of the network recovered so far ("known prefix"), evaluated offline: no queries.
//!
//! Holds hidden layers `1..i-1` with their signs fixed. Gives hidden activations, local Jacobians, the
//! distance to the nearest known boundary along a direction, and the exact positions of known kinks on a
//! line (so the search never spends queries on them).

use faer::Mat;
use netxray_relu::Layer;

/// Recovered hidden layers (each followed by ReLU), input side first.
#[derive(Debug, Clone, Default)]
pub struct KnownPrefix {
    /// The layers; weights `[out, in]`.
    pub layers: Vec<Layer>,
    /// Input width.
    pub input_dim: usize,
}

/// Activations of every known layer at one point, with forward-mode derivatives along some directions.
#[derive(Debug, Clone)]
pub struct LocalState {
    /// Pre-activations per known layer.
    pub pre: Vec<Vec<f64>>,
    /// Output of the last known layer (or the input itself when nothing is known).
    pub h: Vec<f64>,
    /// Derivatives of each known layer's pre-activations along the directions (`width × m`).
    pub dpre: Vec<Mat<f64>>,
    /// Derivative of `h` along the directions (`width × m`).
    pub dh: Mat<f64>,
}

/// What [`KnownPrefix::margin`] needs of its directions, taken once for a whole activation region:
/// the known units' ReLU pattern there and, per known unit, the largest |derivative| of its
/// pre-activation along any of the directions (constant within the region).
#[derive(Debug, Clone)]
pub struct MarginRates {
    pattern: Vec<bool>,
    rates: Vec<Vec<f64>>,
}

impl KnownPrefix {
    /// Empty prefix for inputs of width `d0`.
    pub fn new(input_dim: usize) -> Self {
        Self {
            layers: Vec::new(),
            input_dim,
        }
    }

    /// This prefix followed by `layer` (for offline work on a layer recovered up to sign: zero sets and
    /// margins do not depend on the sign).
    pub fn extended(&self, layer: &Layer) -> KnownPrefix {
        let mut layers = self.layers.clone();
        layers.push(layer.clone());
        KnownPrefix {
            layers,
            input_dim: self.input_dim,
        }
    }

    /// `W₁W₁ᵀ` of the first known layer (`None` without known layers): what takes a step written in
    /// the first layer's pre-activations back to input-space lengths (Jacobian-free geometry, ranked
    /// walks, projected placement).
    pub fn first_layer_gram(&self) -> Option<Mat<f64>> {
        let w1 = &self.layers.first()?.weight;
        Some(w1 * w1.transpose())
    }

    /// Width of the output of the known prefix (`d0` when empty).
    pub fn out_dim(&self) -> usize {
        self.layers
            .last()
            .map(|l| l.fan_out())
            .unwrap_or(self.input_dim)
    }

    /// Forward pass with derivatives along the columns of `dirs` (`d0 × m`), ReLU pattern taken at `x`.
    pub fn local(&self, x: &[f64], dirs: &Mat<f64>) -> LocalState {
        self.local_from(x, Some(dirs), self.layers.len())
    }

    /// [`Self::local`] along every input coordinate (the full Jacobians), without multiplying the
    /// first layer by a `d0 × d0` identity: on a 3072-input net that product alone is 2.4 GFLOP.
    pub fn local_full(&self, x: &[f64]) -> LocalState {
        self.local_from(x, None, self.layers.len())
    }

    /// Pre-activations of the first `upto` known layers at `x` (no derivatives, no copies of weights).
    pub fn pre_activations(&self, x: &[f64], upto: usize) -> Vec<Vec<f64>> {
        let empty = Mat::<f64>::zeros(self.input_dim, 0);
        self.local_from(x, Some(&empty), upto).pre
    }

    /// `dirs = None` means the identity (derivatives along every input coordinate).
    fn local_from(&self, x: &[f64], dirs: Option<&Mat<f64>>, upto: usize) -> LocalState {
        let mut h = x.to_vec();
        let mut dh = dirs
            .cloned()
            .unwrap_or_else(|| Mat::zeros(self.input_dim, 0));
        let mut identity = dirs.is_none();
        let mut pre_all = Vec::with_capacity(upto);
        let mut dpre_all = Vec::with_capacity(upto);
        for l in &self.layers[..upto] {
            // One GEMV instead of a strided scalar loop: this forward pass runs for every
            // critical point of every deeper layer.
            let hv = faer::Col::<f64>::from_fn(h.len(), |i| h[i]);
            let wh = &l.weight * &hv;
            let z: Vec<f64> = (0..l.fan_out()).map(|r| l.bias[r] + wh[r]).collect();
            let dz = if identity {
                identity = false;
                l.weight.clone()
            } else if dh.ncols() > 0 {
                &l.weight * &dh
            } else {
                Mat::zeros(l.fan_out(), 0)
            };
            let mut hn = z.clone();
            let mut dhn = dz.clone();
            for r in 0..hn.len() {
                if hn[r] <= 0.0 {
                    hn[r] = 0.0;
                    for c in 0..dhn.ncols() {
                        dhn[(r, c)] = 0.0;
                    }
                }
            }
            pre_all.push(z);
            dpre_all.push(dz);
            h = hn;
            dh = dhn;
        }
        if identity {
            // No layer consumed the identity: the derivatives of the input itself.
            dh = Mat::identity(self.input_dim, self.input_dim);
        }
        LocalState {
            pre: pre_all,
            h,
            dpre: dpre_all,
            dh,
        }
    }

    /// Output of the known prefix at a batch of points (rows), and all pre-activations.
    ///
    /// Rows go through each layer as one matrix product per block of [`FORWARD_BLOCK`] rows: one
    /// point at a time, every point streamed the whole first layer (6 MB on a 3072-256 layer) for a
    /// matrix-vector product, and the critical points of a deeper layer's lines (~15,000 a round on
    /// the 3072-256×8-10) were a quarter of its time in a profile.
    pub fn forward_rows(&self, xs: &[Vec<f64>]) -> Vec<(Vec<Vec<f64>>, Vec<f64>)> {
        let mut out = Vec::with_capacity(xs.len());
        for block in xs.chunks(FORWARD_BLOCK) {
            let n = block.len();
            let mut h = Mat::<f64>::from_fn(n, self.input_dim, |i, j| block[i][j]);
            let mut pres: Vec<Mat<f64>> = Vec::with_capacity(self.layers.len());
            for l in &self.layers {
                let z = affine_block(l, h.as_ref());
                h = Mat::from_fn(n, l.fan_out(), |i, j| z[(i, j)].max(0.0));
                pres.push(z);
            }
            for i in 0..n {
                let pre = pres
                    .iter()
                    .map(|z| (0..z.ncols()).map(|j| z[(i, j)]).collect())
                    .collect();
                let hi = (0..h.ncols()).map(|j| h[(i, j)]).collect();
                out.push((pre, hi));
            }
        }
        out
    }

    /// Largest step `s` such that moving from `x` by `±s·v_k` flips no known neuron, for every column
    /// `v_k` of `dirs`. Exact within the current linear region.
    pub fn margin(&self, x: &[f64], dirs: &Mat<f64>) -> f64 {
        let st = self.local(x, dirs);
        let mut m = f64::INFINITY;
        for (z, dz) in st.pre.iter().zip(&st.dpre) {
            for r in 0..z.len() {
                for c in 0..dz.ncols() {
                    let g = dz[(r, c)].abs();
                    if g > 0.0 {
                        m = m.min(z[r].abs() / g);
                    }
                }
            }
        }
        m
    }

    /// [`MarginRates`] of `dirs` in the activation region of `x`.
    pub fn margin_rates(&self, x: &[f64], dirs: &Mat<f64>) -> MarginRates {
        let st = self.local(x, dirs);
        MarginRates {
            pattern: st.pre.iter().flatten().map(|&v| v > 0.0).collect(),
            rates: st
                .dpre
                .iter()
                .map(|dz| {
                    (0..dz.nrows())
                        .map(|r| (0..dz.ncols()).fold(0.0, |g, c| dz[(r, c)].abs().max(g)))
                        .collect()
                })
                .collect(),
        }
    }

    /// [`Self::margin`] at `x` from the rates of its directions in `x`'s region: bit for bit the same
    /// value (`|z|/g` is monotone in `g`, so the smallest ratio is the one with the largest rate) for
    /// one forward pass instead of a product of every layer with the directions. `None` when `x` is
    /// in another region than the one the rates were taken in.
    pub fn margin_in_region(&self, x: &[f64], rates: &MarginRates) -> Option<f64> {
        Self::margin_in_region_of(&self.pre_activations(x, self.layers.len()), rates)
    }

    /// [`Self::margin_in_region`] from the point's pre-activations in every known layer (as
    /// [`Self::forward_rows`] gives them for a batch of points).
    pub fn margin_in_region_of(pre: &[Vec<f64>], rates: &MarginRates) -> Option<f64> {
        if !pre
            .iter()
            .flatten()
            .map(|&v| v > 0.0)
            .eq(rates.pattern.iter().copied())
        {
            return None;
        }
        let mut m = f64::INFINITY;
        for (z, g) in pre.iter().zip(&rates.rates) {
            for (zr, &gr) in z.iter().zip(g) {
                if gr > 0.0 {
                    m = m.min(zr.abs() / gr);
                }
            }
        }
        Some(m)
    }

    /// The input-space gradient of `v · z_L`, where `z_L` are the last known layer's pre-activations,
    /// with the ReLU pattern of `pre` (as [`Self::pre_activations`] gives it for every known layer):
    /// one vector-Jacobian product, `Σ n_l·n_{l−1}` multiply-adds, where [`Self::local_full`] forms
    /// every `n_l × d0` Jacobian (1.2 G multiply-adds behind seven 256-wide layers on 3072 inputs,
    /// per step of a hyperplane-following walk). Rows of that Jacobian agree with it to rounding.
    ///
    /// # Panics
    /// If nothing is known, or `pre`/`v` do not match the layers' widths.
    pub fn input_gradient(&self, pre: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
        assert!(!self.layers.is_empty(), "no known layer to differentiate");
        assert_eq!(pre.len(), self.layers.len(), "one pre-activation per layer");
        let mut g = v.to_vec();
        for (li, l) in self.layers.iter().enumerate().rev() {
            assert_eq!(g.len(), l.fan_out(), "gradient width of layer {li}");
            let gc = faer::Col::<f64>::from_fn(g.len(), |i| g[i]);
            let back = l.weight.transpose() * &gc;
            g = (0..l.fan_in()).map(|c| back[c]).collect();
            if li > 0 {
                for (gi, &z) in g.iter_mut().zip(&pre[li - 1]) {
                    if z <= 0.0 {
                        *gi = 0.0;
                    }
                }
            }
        }
        g
    }

    /// Smallest |pre-activation| / ‖gradient‖ over known neurons at `x`: the Euclidean distance to the
    /// nearest known boundary (exact for the first known layer, first order for the others).
    pub fn boundary_distance(&self, x: &[f64]) -> f64 {
        let st = self.local_full(x);
        let mut m = f64::INFINITY;
        for (z, dz) in st.pre.iter().zip(&st.dpre) {
            for r in 0..z.len() {
                let g: f64 = (0..dz.ncols())
                    .map(|c| dz[(r, c)].powi(2))
                    .sum::<f64>()
                    .sqrt();
                if g > 0.0 {
                    m = m.min(z[r].abs() / g);
                }
            }
        }
        m
    }

    /// Every `t` in `(t0, t1)` where a known neuron's pre-activation is zero on the line `o + t·d`,
    /// sorted. Exact: within a segment free of earlier-layer kinks each pre-activation is affine in t.
    pub fn kinks_on_line(&self, o: &[f64], d: &[f64], t0: f64, t1: f64) -> Vec<f64> {
        let (ts, _) = self.line_profile(o, d, t0, t1);
        ts.into_iter().filter(|&t| t > t0 && t < t1).collect()
    }

    /// The known kinks on the line `o + t·d` in `(t0, t1)` with `t0` and `t1` themselves (sorted), and
    /// the prefix's output `h` at each of them: between two consecutive ones every known
    /// pre-activation, and so `θ·h` for any `θ`, is affine in `t`.
    ///
    /// The first layer is affine along the whole line, `z₁(t) = (W₁o + b₁) + t·W₁d`, so it takes two
    /// products with `W₁` per line instead of one per breakpoint, and each breakpoint's deeper layers
    /// are evaluated once and kept. On a 3072-input net a breakpoint's pass over `W₁` streams 6 MB; a
    /// line through seven 256-wide layers has ~1,800 breakpoints, and every predicted crossing of
    /// validation, refinement and polishing walked one such line.
    pub fn line_profile(
        &self,
        o: &[f64],
        d: &[f64],
        t0: f64,
        t1: f64,
    ) -> (Vec<f64>, Vec<Vec<f64>>) {
        let relu = |z: Vec<f64>| -> Vec<f64> { z.into_iter().map(|v| v.max(0.0)).collect() };
        let Some(l1) = self.layers.first() else {
            let at = |t: f64| -> Vec<f64> { o.iter().zip(d).map(|(a, b)| a + t * b).collect() };
            return (vec![t0, t1], vec![at(t0), at(t1)]);
        };
        let oc = faer::Col::<f64>::from_fn(o.len(), |i| o[i]);
        let dc = faer::Col::<f64>::from_fn(d.len(), |i| d[i]);
        let wo = &l1.weight * &oc;
        let wd = &l1.weight * &dc;
        let a: Vec<f64> = (0..l1.fan_out()).map(|u| wo[u] + l1.bias[u]).collect();
        let c: Vec<f64> = (0..l1.fan_out()).map(|u| wd[u]).collect();
        let z1 = |t: f64| -> Vec<f64> { a.iter().zip(&c).map(|(a, c)| a + t * c).collect() };
        let mut ts: Vec<f64> = vec![t0, t1];
        for u in 0..a.len() {
            if c[u] != 0.0 {
                let t = -a[u] / c[u];
                if t > t0 && t < t1 {
                    ts.push(t);
                }
            }
        }
        ts.sort_by(f64::total_cmp);
        ts.dedup();
        // Pre-activations of the current layer at every breakpoint so far.
        let mut vals: Vec<Vec<f64>> = ts.iter().map(|&t| z1(t)).collect();
        for li in 1..self.layers.len() {
            vals = next_layer_rows(&self.layers[li], &vals);
            // New breakpoints, with the interval of the old ones they fall in and their place in it.
            let mut new_at: Vec<(f64, usize, f64)> = Vec::new();
            for j in 0..ts.len() - 1 {
                let (za, zb) = (&vals[j], &vals[j + 1]);
                for r in 0..za.len() {
                    if (za[r] > 0.0) != (zb[r] > 0.0) && za[r] != zb[r] {
                        let frac = za[r] / (za[r] - zb[r]);
                        let t = ts[j] + frac * (ts[j + 1] - ts[j]);
                        if t > ts[j] && t < ts[j + 1] {
                            new_at.push((t, j, frac));
                        }
                    }
                }
            }
            if new_at.is_empty() {
                continue;
            }
            new_at.sort_by(|a, b| a.0.total_cmp(&b.0));
            new_at.dedup_by(|a, b| a.0 == b.0);
            let new_ts: Vec<f64> = new_at.iter().map(|a| a.0).collect();
            // Layer `li` is affine between two breakpoints of the layers before it, so its
            // pre-activations at a new breakpoint interpolate those at the interval's ends (a forward
            // pass from the first layer each cost as much as the rest of the profile).
            let new_vals: Vec<Vec<f64>> = new_at
                .iter()
                .map(|&(_, j, frac)| {
                    let (za, zb) = (&vals[j], &vals[j + 1]);
                    za.iter().zip(zb).map(|(a, b)| a + frac * (b - a)).collect()
                })
                .collect();
            // Merge the two sorted lists.
            let (mut merged_t, mut merged_v) = (Vec::new(), Vec::new());
            let mut old = ts.into_iter().zip(vals).peekable();
            let mut new = new_ts.into_iter().zip(new_vals).peekable();
            loop {
                let take_old = match (old.peek(), new.peek()) {
                    (Some((to, _)), Some((tn, _))) => {
                        if to == tn {
                            new.next();
                            continue;
                        }
                        to < tn
                    }
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                let (t, v) = if take_old { old.next() } else { new.next() }.expect("peeked");
                merged_t.push(t);
                merged_v.push(v);
            }
            ts = merged_t;
            vals = merged_v;
        }
        let hs = vals.into_iter().map(relu).collect();
        (ts, hs)
    }
}

/// Rows per matrix product in [`KnownPrefix::forward_rows`] and [`next_layer_rows`].
const FORWARD_BLOCK: usize = 512;

/// `H·Wᵀ + b` for a block of input rows `h` of layer `l`: on all cores once the product is large
/// enough to pay for the hand-off, on the calling thread below.
fn affine_block(l: &Layer, h: faer::MatRef<'_, f64>) -> Mat<f64> {
    let n = h.nrows();
    let mut z = Mat::<f64>::from_fn(n, l.fan_out(), |_, j| l.bias[j]);
    let par = if n * l.fan_out() * l.fan_in() >= 1 << 22 {
        faer::Par::rayon(0)
    } else {
        faer::Par::Seq
    };
    faer::linalg::matmul::matmul(
        z.as_mut(),
        faer::Accum::Add,
        h,
        l.weight.transpose(),
        1.0,
        par,
    );
    z
}

/// Pre-activations of layer `l` from the previous layer's pre-activations `zs` (one row per point):
/// `W·ReLU(z) + b`, one matrix product per block of [`FORWARD_BLOCK`] rows. A line's breakpoints
/// through a deep prefix are thousands of points per layer; one matrix-vector product each was 63 %
/// of polishing layer 3 of the 3072-256×8-10 in a profile (the whole of polishing took longer than
/// the layer's signatures).
fn next_layer_rows(l: &Layer, zs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let mut out = Vec::with_capacity(zs.len());
    for block in zs.chunks(FORWARD_BLOCK) {
        let n = block.len();
        let h = Mat::<f64>::from_fn(n, l.fan_in(), |i, j| block[i][j].max(0.0));
        let z = affine_block(l, h.as_ref());
        out.extend((0..n).map(|i| (0..z.ncols()).map(|j| z[(i, j)]).collect::<Vec<f64>>()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netxray_relu::{Arch, InitRecipe, Network};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn input_gradient_is_a_row_of_the_full_jacobian() {
        let net = Network::random(
            &"9-7-6-5-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            4,
        );
        let kp = KnownPrefix {
            layers: net.layers()[..3].to_vec(),
            input_dim: 9,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for _ in 0..20 {
            let x: Vec<f64> = (0..9).map(|_| rng.random_range(-1.0..1.0)).collect();
            let st = kp.local_full(&x);
            let pre = kp.pre_activations(&x, 3);
            let v: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
            let g = kp.input_gradient(&pre, &v);
            let dz = st.dpre.last().unwrap();
            for c in 0..9 {
                let want: f64 = (0..5).map(|r| v[r] * dz[(r, c)]).sum();
                assert!((g[c] - want).abs() <= 1e-12, "coordinate {c}");
            }
        }
    }

    #[test]
    fn local_full_equals_local_along_the_identity() {
        let net = Network::random(&"5-7-6-1".parse::<Arch>().unwrap(), InitRecipe::Balanced, 4);
        let x = vec![0.3, -0.2, 0.1, 0.5, -1.0];
        let eye = Mat::<f64>::identity(5, 5);
        for depth in 0..=2 {
            let kp = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 5,
            };
            let (a, b) = (kp.local(&x, &eye), kp.local_full(&x));
            assert_eq!(a.pre, b.pre);
            assert_eq!(a.h, b.h);
            assert_eq!(a.dh, b.dh, "depth {depth}");
            assert_eq!(a.dpre, b.dpre);
        }
    }

    /// The margin from a region's rates is the direct margin bit for bit at every point of that
    /// region, and refused at points of other regions.
    #[test]
    fn margin_in_region_is_the_margin_inside_and_refused_outside() {
        let net = Network::random(&"5-7-6-1".parse::<Arch>().unwrap(), InitRecipe::Balanced, 3);
        let o = [0.3, -0.2, 0.1, 0.5, -1.0];
        let d = [1.0, 0.5, -0.3, 0.2, 0.7];
        let dirs = Mat::<f64>::from_fn(5, 3, |i, j| ((i * 3 + j) as f64 * 0.7).sin());
        let at = |t: f64| -> Vec<f64> { o.iter().zip(&d).map(|(a, b)| a + t * b).collect() };
        for depth in 1..=2 {
            let kp = KnownPrefix {
                layers: net.layers()[..depth].to_vec(),
                input_dim: 5,
            };
            let rates = kp.margin_rates(&at(0.0), &dirs);
            let (mut inside, mut outside) = (0, 0);
            for i in -200..=200 {
                let x = at(0.05 * i as f64);
                let same = kp
                    .pre_activations(&x, depth)
                    .concat()
                    .iter()
                    .map(|&v| v > 0.0)
                    .eq(kp
                        .pre_activations(&at(0.0), depth)
                        .concat()
                        .iter()
                        .map(|&v| v > 0.0));
                match kp.margin_in_region(&x, &rates) {
                    Some(m) => {
                        assert!(same);
                        assert_eq!(m.to_bits(), kp.margin(&x, &dirs).to_bits());
                        inside += 1;
                    }
                    None => {
                        assert!(!same);
                        outside += 1;
                    }
                }
            }
            assert!(
                inside >= 2 && outside >= 2,
                "depth {depth}: {inside} in, {outside} out"
            );
        }
    }

    /// The profile's outputs are the forward pass at its breakpoints, and the same breakpoints come
    /// out of every sub-interval that holds them.
    #[test]
    fn line_profile_matches_the_forward_pass() {
        let net = Network::random(
            &"6-9-8-7-1".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            2,
        );
        let kp = KnownPrefix {
            layers: net.layers()[..3].to_vec(),
            input_dim: 6,
        };
        let o = vec![0.3, -0.2, 0.1, 0.5, -1.0, 0.4];
        let d = vec![1.0, 0.5, -0.3, 0.2, 0.7, -0.6];
        let (ts, hs) = kp.line_profile(&o, &d, -15.0, 15.0);
        assert!(ts.len() > 10 && ts.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((ts[0], ts[ts.len() - 1]), (-15.0, 15.0));
        let empty = Mat::<f64>::zeros(6, 0);
        for (t, h) in ts.iter().zip(&hs) {
            let x: Vec<f64> = o.iter().zip(&d).map(|(a, b)| a + t * b).collect();
            let want = kp.local(&x, &empty).h;
            for (a, b) in h.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "h at {t}");
            }
        }
        let inner = kp.kinks_on_line(&o, &d, ts[3] - 1e-9, ts[7] + 1e-9);
        assert_eq!(inner.len(), 5);
        for (a, b) in inner.iter().zip(&ts[3..8]) {
            assert!((a - b).abs() < 1e-9);
        }
    }

    #[test]
    fn kinks_on_line_are_zeros_of_known_neurons() {
        let net = Network::random(&"5-7-6-1".parse::<Arch>().unwrap(), InitRecipe::Balanced, 3);
        let kp = KnownPrefix {
            layers: net.layers()[..2].to_vec(),
            input_dim: 5,
        };
        let o = vec![0.3, -0.2, 0.1, 0.5, -1.0];
        let d = vec![1.0, 0.5, -0.3, 0.2, 0.7];
        let ks = kp.kinks_on_line(&o, &d, -20.0, 20.0);
        assert!(!ks.is_empty());
        let empty = Mat::<f64>::zeros(5, 0);
        for t in ks {
            let x: Vec<f64> = o.iter().zip(&d).map(|(a, b)| a + t * b).collect();
            let st = kp.local(&x, &empty);
            let m = st
                .pre
                .iter()
                .flatten()
                .fold(f64::INFINITY, |m, z| m.min(z.abs()));
            assert!(m < 1e-9, "no neuron at zero: {m}");
        }
    }
}
