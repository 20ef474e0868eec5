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

    /// Width of the output of the known prefix (`d0` when empty).
    pub fn out_dim(&self) -> usize {
        self.layers
            .last()
            .map(|l| l.fan_out())
            .unwrap_or(self.input_dim)
    }

    /// Forward pass with derivatives along the columns of `dirs` (`d0 × m`), ReLU pattern taken at `x`.
    pub fn local(&self, x: &[f64], dirs: &Mat<f64>) -> LocalState {
        let mut h = x.to_vec();
        let mut dh = dirs.clone();
        let mut pre_all = Vec::with_capacity(self.layers.len());
        let mut dpre_all = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut z = l.bias.clone();
            for r in 0..l.fan_out() {
                let mut s = 0.0;
                for c in 0..l.fan_in() {
                    s += l.weight[(r, c)] * h[c];
                }
                z[r] += s;
            }
            let dz = if dh.ncols() > 0 {
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
        LocalState {
            pre: pre_all,
            h,
            dpre: dpre_all,
            dh,
        }
    }

    /// Output of the known prefix at a batch of points (rows), and all pre-activations.
    pub fn forward_rows(&self, xs: &[Vec<f64>]) -> Vec<(Vec<Vec<f64>>, Vec<f64>)> {
        let empty = Mat::<f64>::zeros(self.input_dim, 0);
        xs.iter()
            .map(|x| {
                let s = self.local(x, &empty);
                (s.pre, s.h)
            })
            .collect()
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

    /// Smallest |pre-activation| / ‖gradient‖ over known neurons at `x`: the Euclidean distance to the
    /// nearest known boundary (exact for the first known layer, first order for the others).
    pub fn boundary_distance(&self, x: &[f64]) -> f64 {
        let eye = Mat::<f64>::identity(self.input_dim, self.input_dim);
        let st = self.local(x, &eye);
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
        let mut ts: Vec<f64> = vec![t0, t1];
        let point = |t: f64| -> Vec<f64> { o.iter().zip(d).map(|(a, b)| a + t * b).collect() };
        for li in 0..self.layers.len() {
            // Evaluate this layer's pre-activations at all breakpoints so far.
            let sub = KnownPrefix {
                layers: self.layers[..=li].to_vec(),
                input_dim: self.input_dim,
            };
            let pts: Vec<Vec<f64>> = ts.iter().map(|&t| point(t)).collect();
            let vals = sub.forward_rows(&pts);
            let mut new_ts = Vec::new();
            for j in 0..ts.len() - 1 {
                let za = &vals[j].0[li];
                let zb = &vals[j + 1].0[li];
                for r in 0..za.len() {
                    if (za[r] > 0.0) != (zb[r] > 0.0) && za[r] != zb[r] {
                        let frac = za[r] / (za[r] - zb[r]);
                        let t = ts[j] + frac * (ts[j + 1] - ts[j]);
                        if t > ts[j] && t < ts[j + 1] {
                            new_ts.push(t);
                        }
                    }
                }
            }
            ts.extend(new_ts);
            ts.sort_by(f64::total_cmp);
            ts.dedup();
        }
        ts.into_iter().filter(|&t| t > t0 && t < t1).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netxray_relu::{Arch, InitRecipe, Network};

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
