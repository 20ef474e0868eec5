//! What arithmetic the target answers in, measured from a few queries (`--precision auto`).
//!
//! A ReLU network is exactly linear on a tiny stencil `x, x ± h·u` (unless a hyperplane passes within
//! `h`, which for `h = 1e-3·σ` is rare), so the second difference `f(x+hu) + f(x−hu) − 2f(x)` is pure
//! rounding noise. Its median over [`PROBE_POINTS`] stencils, relative to |f|, is ~1e-16 for an f64
//! target and ~1e-8–1e-6 for an f32 one; on top of that an f32 target answers only values that are
//! exactly representable in f32, which a wide f64 answer almost never is. Either sign selects the f32
//! preset. Noise far above f32 (randomised answers) stops the attack at once. Answers rounded to a few
//! decimal digits are a different signature (second differences exactly 0 or one rounding step); the
//! HTTP oracle detects those (`netxray-oracle-http`'s rounding check).

use crate::error::ExtractError;
use crate::oracle::{CountingOracle, Oracle};
use crate::params::Precision;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Stencils of the probe (3 queries each).
pub const PROBE_POINTS: usize = 32;

/// Median relative noise above which the target is not an f64 one (f64 forward passes stay below
/// ~1e-13; f32 ones sit at ~1e-8 and above).
pub const F64_NOISE_MAX: f64 = 1e-11;

/// Median relative noise above which even the f32 preset (linearity tolerance 1e-4) cannot work.
pub const F32_NOISE_MAX: f64 = 1e-5;

/// The linearity tests' absolute floor is this many times the measured absolute noise (median of the
/// second differences): the noise has tails, and a floor at the median would read every tenth stencil
/// as a kink.
pub const FLOOR_FACTOR: f64 = 30.0;

/// What the probe measured and chose.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrecisionProbe {
    /// Median over the stencils of max_j |second difference_j| / max_j |f_j|.
    pub noise_rel: f64,
    /// Median over the stencils of max_j |second difference_j| (output units).
    pub noise_abs: f64,
    /// Every answer was exactly an f32 value.
    pub f32_answers: bool,
    /// The preset chosen.
    pub chosen: Precision,
    /// Queries spent.
    pub queries: u64,
}

/// Measures the target's answer noise and picks the tolerance preset. Deterministic in `seed`.
pub fn probe<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    sigma: f64,
    seed: u64,
) -> Result<PrecisionProbe, ExtractError> {
    let d0 = oracle.input_dim();
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x0070_7265_6369_7369);
    let q0 = oracle.queries();
    let h = 1e-3 * sigma;
    let mut pts = Vec::with_capacity(3 * PROBE_POINTS);
    for _ in 0..PROBE_POINTS {
        let x: Vec<f64> = (0..d0)
            .map(|_| sigma * rng.sample::<f64, _>(StandardNormal))
            .collect();
        let u: Vec<f64> = (0..d0)
            .map(|_| rng.sample::<f64, _>(StandardNormal))
            .collect();
        let un = u
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        pts.push(x.iter().zip(&u).map(|(a, b)| a + h * b / un).collect());
        pts.push(x.iter().zip(&u).map(|(a, b)| a - h * b / un).collect());
        pts.push(x);
    }
    let ys = oracle.query_points(&pts)?;
    let f32_answers = ys.iter().flatten().all(|&v| f64::from(v as f32) == v);
    let (mut rel, mut abs): (Vec<f64>, Vec<f64>) = (0..PROBE_POINTS)
        .map(|i| {
            let (p, m, c) = (&ys[3 * i], &ys[3 * i + 1], &ys[3 * i + 2]);
            let dev = (0..c.len()).fold(0.0_f64, |a, j| a.max((p[j] + m[j] - 2.0 * c[j]).abs()));
            let sc = p
                .iter()
                .chain(m)
                .chain(c)
                .fold(0.0_f64, |a, v| a.max(v.abs()));
            (if sc > 0.0 { dev / sc } else { 0.0 }, dev)
        })
        .unzip();
    rel.sort_by(f64::total_cmp);
    abs.sort_by(f64::total_cmp);
    let noise_rel = rel[rel.len() / 2];
    let noise_abs = abs[abs.len() / 2];
    if noise_rel > F32_NOISE_MAX {
        return Err(ExtractError::TooNoisy {
            noise_rel,
            max: F32_NOISE_MAX,
        });
    }
    let chosen = if f32_answers || noise_rel > F64_NOISE_MAX {
        Precision::F32
    } else {
        Precision::F64
    };
    tracing::info!(
        noise_rel,
        f32_answers,
        chosen = chosen.name(),
        "target precision measured"
    );
    Ok(PrecisionProbe {
        noise_rel,
        noise_abs,
        f32_answers,
        chosen,
        queries: oracle.queries() - q0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::NetworkOracle;
    use netxray_relu::{Arch, InitRecipe, Network};

    #[test]
    fn tells_f64_from_f32_targets() {
        let net = Network::random(
            &"30-20-10-3".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            3,
        );
        let o64 = NetworkOracle::new(net.clone());
        let o32 = NetworkOracle::new_f32(&net);
        let p64 = probe(&CountingOracle::new(&o64, None), 1.0, 1).unwrap();
        let p32 = probe(&CountingOracle::new(&o32, None), 1.0, 1).unwrap();
        assert_eq!(p64.chosen, Precision::F64, "{p64:?}");
        assert!(!p64.f32_answers && p64.noise_rel < 1e-13, "{p64:?}");
        assert_eq!(p32.chosen, Precision::F32, "{p32:?}");
        assert!(p32.f32_answers, "{p32:?}");
        assert_eq!(p64.queries, 3 * PROBE_POINTS as u64);
    }

    #[test]
    fn refuses_noised_answers() {
        // A defence that multiplies every answer by 1 + ~1e-3 noise.
        struct Noised(NetworkOracle);
        impl Oracle for Noised {
            fn input_dim(&self) -> usize {
                self.0.input_dim()
            }
            fn output_dim(&self) -> usize {
                self.0.output_dim()
            }
            fn query_batch(
                &self,
                xs: faer::MatRef<'_, f64>,
            ) -> Result<faer::Mat<f64>, crate::OracleError> {
                let y = self.0.query_batch(xs)?;
                Ok(faer::Mat::from_fn(y.nrows(), y.ncols(), |i, j| {
                    let r = ((i * 7919 + j * 104_729) as f64 + xs[(i, 0)] * 1e4).sin();
                    y[(i, j)] * (1.0 + 1e-3 * r)
                }))
            }
        }
        let net = Network::random(
            &"30-20-10-3".parse::<Arch>().unwrap(),
            InitRecipe::Balanced,
            3,
        );
        let o = Noised(NetworkOracle::new(net));
        let e = probe(&CountingOracle::new(&o, None), 1.0, 1).unwrap_err();
        assert!(matches!(e, ExtractError::TooNoisy { .. }), "{e}");
    }
}
