//! Random init recipes. Every recipe is seeded; the same seed gives the same network.

use crate::{Arch, Layer, Network, ReluError};
use faer::Mat;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use std::str::FromStr;

/// How to draw the weights of a new network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitRecipe {
    /// He-normal weights `N(0, 2/fan_in)`, zero bias.
    He,
    /// `N(0,1)/sqrt(fan_out)` weights, zero bias: the recipe of the CRYPTO 2020 reference models.
    Cjm,
    /// Unit-norm random rows; each hidden bias set so the neuron is active on about half of the inputs
    /// (median of its pre-activation over 2048 standard-normal inputs pushed through the layers before it).
    /// Output layer: unit-norm rows, zero bias. The random models of the EUROCRYPT 2024 paper look like this.
    Balanced,
}

impl FromStr for InitRecipe {
    type Err = ReluError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "he" => Ok(Self::He),
            "cjm" => Ok(Self::Cjm),
            "balanced" => Ok(Self::Balanced),
            other => Err(ReluError::InvalidParam(format!(
                "unknown init recipe '{other}' (expected he, cjm or balanced)"
            ))),
        }
    }
}

/// Number of standard-normal probe inputs used to place the `balanced` biases.
const BALANCED_PROBES: usize = 2048;

impl Network {
    /// A random network of the given architecture.
    pub fn random(arch: &Arch, recipe: InitRecipe, seed: u64) -> Network {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let dims = arch.dims();
        let mut layers: Vec<Layer> = Vec::with_capacity(arch.num_layers());
        for w in dims.windows(2) {
            let (fan_in, fan_out) = (w[0], w[1]);
            let mut weight =
                Mat::<f64>::from_fn(fan_out, fan_in, |_, _| rng.sample::<f64, _>(StandardNormal));
            match recipe {
                InitRecipe::He => {
                    let s = (2.0 / fan_in as f64).sqrt();
                    weight.iter_mut_cols_scale(s);
                }
                InitRecipe::Cjm => {
                    let s = 1.0 / (fan_out as f64).sqrt();
                    weight.iter_mut_cols_scale(s);
                }
                InitRecipe::Balanced => {
                    for r in 0..fan_out {
                        let norm = (0..fan_in)
                            .map(|c| weight[(r, c)].powi(2))
                            .sum::<f64>()
                            .sqrt();
                        for c in 0..fan_in {
                            weight[(r, c)] /= norm;
                        }
                    }
                }
            }
            layers.push(Layer {
                weight,
                bias: vec![0.0; fan_out],
            });
        }
        if recipe == InitRecipe::Balanced {
            let d0 = arch.input_dim();
            let probes = Mat::<f64>::from_fn(BALANCED_PROBES, d0, |_, _| {
                rng.sample::<f64, _>(StandardNormal)
            });
            let mut h = probes;
            let last = layers.len() - 1;
            for layer in layers.iter_mut().take(last) {
                let z = crate::network::affine(layer, h.as_ref(), false);
                for j in 0..layer.fan_out() {
                    let mut col: Vec<f64> = (0..z.nrows()).map(|r| z[(r, j)]).collect();
                    col.sort_by(f64::total_cmp);
                    layer.bias[j] = -col[col.len() / 2];
                }
                h = crate::network::affine(layer, h.as_ref(), true);
            }
        }
        Network::new(layers).expect("random init gives a valid network")
    }
}

/// Small extension used above: scale every entry in place.
trait ScaleInPlace {
    fn iter_mut_cols_scale(&mut self, s: f64);
}

impl ScaleInPlace for Mat<f64> {
    fn iter_mut_cols_scale(&mut self, s: f64) {
        for j in 0..self.ncols() {
            for v in self.col_mut(j).iter_mut() {
                *v *= s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_network() {
        let a: Arch = "20-10-5".parse().unwrap();
        for r in [InitRecipe::He, InitRecipe::Cjm, InitRecipe::Balanced] {
            assert_eq!(Network::random(&a, r, 3), Network::random(&a, r, 3));
            assert_ne!(Network::random(&a, r, 3), Network::random(&a, r, 4));
        }
    }

    #[test]
    fn balanced_neurons_fire_about_half_the_time() {
        let a: Arch = "16-32-32-1".parse().unwrap();
        let net = Network::random(&a, InitRecipe::Balanced, 7);
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        let x = Mat::<f64>::from_fn(4000, 16, |_, _| rng.sample::<f64, _>(StandardNormal));
        let pre = net.preactivations(x.as_ref()).unwrap();
        for z in &pre[..2] {
            for j in 0..z.ncols() {
                let frac =
                    (0..z.nrows()).filter(|&r| z[(r, j)] > 0.0).count() as f64 / z.nrows() as f64;
                assert!((0.35..0.65).contains(&frac), "active fraction {frac}");
            }
        }
    }
}
