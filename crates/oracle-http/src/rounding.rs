//! Detecting targets that round their outputs (a common defence), so that the attack stops early with a
//! clear message instead of spending its budget on noise.
//!
//! A value is a multiple of 10^-D when `v·10^D` is within [`GRID_TOL`] of an integer. Only values with
//! `|v|·10^D ≤ `[`MAX_SCALED`] say anything about digit D: beyond that, `f64` resolution (2^-52 relative)
//! is coarser than the tolerance and every value would look like a multiple. Raw `f64` outputs pass the
//! test for a given D with probability ~2·10^-4 per value, so [`MIN_SUPPORT`] informative values that
//! all pass cannot be chance; [`MIN_DISTINCT`] distinct values keep a constant-output model (all
//! outputs equal to one short decimal) from looking rounded.

use faer::{Mat, MatRef};
use netxray_extract::{Oracle, OracleError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest number of decimal digits tested.
pub const MAX_DIGITS: u32 = 8;
/// Tolerance, in units of 10^-D, for a value to count as a multiple of 10^-D.
pub const GRID_TOL: f64 = 1e-4;
/// Largest `|v|·10^D` that is informative about digit D (its `f64` error, ~2e-16 of it, stays far
/// below [`GRID_TOL`]).
pub const MAX_SCALED: f64 = 1e10;
/// Informative non-zero values needed before a rounding verdict.
pub const MIN_SUPPORT: usize = 64;
/// Distinct non-zero values needed before a rounding verdict.
pub const MIN_DISTINCT: usize = 16;
/// Values after which an undecided detector gives up (nothing useful can be learnt any more).
pub const MAX_OBSERVED: usize = 1 << 16;

/// The state of a [`RoundingDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough evidence yet.
    Undecided,
    /// Outputs carry more than [`MAX_DIGITS`] decimal digits (or the detector gave up).
    Raw,
    /// Every output is a multiple of 10^-digits.
    Rounded(u32),
}

/// Accumulates outputs and decides whether they are rounded to a fixed number of decimal digits.
#[derive(Debug, Clone)]
pub struct RoundingDetector {
    violated: [bool; MAX_DIGITS as usize + 1],
    support: [usize; MAX_DIGITS as usize + 1],
    distinct: Vec<u64>,
    observed: usize,
    verdict: Verdict,
}

impl Default for RoundingDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl RoundingDetector {
    /// A detector that has seen nothing.
    pub fn new() -> Self {
        Self {
            violated: [false; MAX_DIGITS as usize + 1],
            support: [0; MAX_DIGITS as usize + 1],
            distinct: Vec::new(),
            observed: 0,
            verdict: Verdict::Undecided,
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Feeds output values; returns the verdict after them. A decided verdict never changes.
    pub fn observe(&mut self, values: impl IntoIterator<Item = f64>) -> Verdict {
        if self.verdict != Verdict::Undecided {
            return self.verdict;
        }
        for v in values {
            self.observed += 1;
            if v == 0.0 || !v.is_finite() {
                continue;
            }
            if self.distinct.len() < MIN_DISTINCT && !self.distinct.contains(&v.to_bits()) {
                self.distinct.push(v.to_bits());
            }
            for d in 0..=MAX_DIGITS as usize {
                if self.violated[d] {
                    continue;
                }
                let x = v * 10f64.powi(d as i32);
                if x.abs() > MAX_SCALED {
                    continue;
                }
                self.support[d] += 1;
                if (x - x.round()).abs() > GRID_TOL {
                    self.violated[d] = true;
                }
            }
        }
        self.verdict = self.decide();
        self.verdict
    }

    fn decide(&self) -> Verdict {
        if self.violated.iter().all(|&v| v) {
            return Verdict::Raw;
        }
        // The coarsest grid that every informative value sits on. Finer grids contain it, so the
        // smallest such D is the rounding.
        for d in 0..=MAX_DIGITS as usize {
            if !self.violated[d] {
                if self.support[d] >= MIN_SUPPORT && self.distinct.len() >= MIN_DISTINCT {
                    return Verdict::Rounded(d as u32);
                }
                break;
            }
        }
        if self.observed >= MAX_OBSERVED {
            Verdict::Raw
        } else {
            Verdict::Undecided
        }
    }
}

/// Decides from one batch of outputs whether they are rounded: `Some(digits)` when every value is a
/// multiple of 10^-digits for some `digits ≤ 8` (with enough informative, distinct values to be sure);
/// `None` for raw outputs or too little evidence.
pub fn detect_rounding(values: &[f64]) -> Option<u32> {
    match RoundingDetector::new().observe(values.iter().copied()) {
        Verdict::Rounded(d) => Some(d),
        _ => None,
    }
}

/// Wraps an oracle and watches its first answers: once they show that the target rounds its outputs,
/// this and every later query fails with [`OracleError::RoundedOutputs`]. No extra queries are spent
/// (the attack's own first queries are the probe), so query counts stay identical to the unwrapped
/// oracle's. Once the outputs are known to be raw the check costs one atomic load per batch.
pub struct RoundingGuard<'a, O: Oracle + ?Sized> {
    inner: &'a O,
    detector: Mutex<RoundingDetector>,
    settled_raw: AtomicBool,
}

impl<'a, O: Oracle + ?Sized> RoundingGuard<'a, O> {
    /// Guards `inner`.
    pub fn new(inner: &'a O) -> Self {
        Self {
            inner,
            detector: Mutex::new(RoundingDetector::new()),
            settled_raw: AtomicBool::new(false),
        }
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.detector.lock().expect("detector lock").verdict()
    }
}

impl<O: Oracle + ?Sized> Oracle for RoundingGuard<'_, O> {
    fn input_dim(&self) -> usize {
        self.inner.input_dim()
    }
    fn output_dim(&self) -> usize {
        self.inner.output_dim()
    }
    fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        if !self.settled_raw.load(Ordering::Relaxed)
            && let Verdict::Rounded(digits) = self.verdict()
        {
            return Err(OracleError::RoundedOutputs { digits });
        }
        let ys = self.inner.query_batch(xs)?;
        if self.settled_raw.load(Ordering::Relaxed) {
            return Ok(ys);
        }
        let verdict = {
            let mut d = self.detector.lock().expect("detector lock");
            d.observe(
                (0..ys.nrows())
                    .flat_map(|i| (0..ys.ncols()).map(move |j| (i, j)))
                    .map(|(i, j)| ys[(i, j)]),
            )
        };
        match verdict {
            Verdict::Rounded(digits) => Err(OracleError::RoundedOutputs { digits }),
            Verdict::Raw => {
                self.settled_raw.store(true, Ordering::Relaxed);
                Ok(ys)
            }
            Verdict::Undecided => Ok(ys),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::round_to_digits;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    fn sample(n: usize, scale: f64, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| scale * rng.sample::<f64, _>(StandardNormal))
            .collect()
    }

    #[test]
    fn raw_outputs_are_not_rounded() {
        for (scale, seed) in [(1e-3, 1), (1.0, 2), (100.0, 3)] {
            assert_eq!(detect_rounding(&sample(256, scale, seed)), None, "{scale}");
            let mut d = RoundingDetector::new();
            assert_eq!(d.observe(sample(256, scale, seed)), Verdict::Raw, "{scale}");
        }
        // Outputs so large that the finest grid is below f64 resolution: never called rounded.
        assert_eq!(detect_rounding(&sample(256, 1e6, 4)), None);
    }

    #[test]
    fn rounded_outputs_are_detected_with_their_digits() {
        for digits in 0..=MAX_DIGITS {
            for scale in [1.0, 30.0] {
                let v: Vec<f64> = sample(256, scale * 10f64.powi(3 - digits as i32).max(1.0), 7)
                    .into_iter()
                    .map(|x| round_to_digits(x, digits))
                    .collect();
                assert_eq!(detect_rounding(&v), Some(digits), "{digits} {scale}");
            }
        }
    }

    #[test]
    fn constant_or_sparse_outputs_are_not_called_rounded() {
        assert_eq!(detect_rounding(&[0.5; 1000]), None);
        assert_eq!(detect_rounding(&[0.0; 1000]), None);
        let few: Vec<f64> = sample(20, 1.0, 9)
            .into_iter()
            .map(|x| round_to_digits(x, 4))
            .collect();
        assert_eq!(detect_rounding(&few), None);
    }
}
