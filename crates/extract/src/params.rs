//! Every tolerance and budget of the attack, in one place, with its default and the reason for it.
//!
//! Build with [`ExtractParams::builder`]; [`ExtractParamsBuilder::build`] validates each value.

use crate::error::ExtractError;
use serde::{Deserialize, Serialize};

/// Checked parameters of an extraction. Construct through [`ExtractParamsBuilder`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtractParams {
    /// Seed of every random choice (lines, directions, probe points). Same seed → same result.
    pub seed: u64,
    /// Standard deviation σ of line origins. Default 1: targets are assumed to take roughly standardised
    /// inputs (random nets on N(0, I), trained nets on standardised pixels).
    pub origin_scale: f64,
    /// Half length of a search line in units of σ·√d0. Default 10: with unit directions a hidden unit's
    /// crossing lies within this window for ~94 % of lines (Cauchy-like tail), long enough to meet rare
    /// neurons, short enough to keep outputs (and rounding) at data scale.
    pub line_half_length: f64,
    /// Relative tolerance of the linearity tests: a deviation below `tol·(|f| scale)` counts as linear.
    /// Default 1e-10: f64 rounding of a deep forward pass is ~1e-13 relative, so this leaves a 1000× margin
    /// and still sees any kink whose slope jump is above ~1e-10 of the output scale.
    pub linearity_rel_tol: f64,
    /// Intervals shorter than this fraction of the line are abandoned. Default 1e-11 (two kinks closer than
    /// this are indistinguishable in f64 anyway).
    pub min_interval_rel: f64,
    /// Search lines drawn per round of witness collection. Default 4.
    pub lines_per_round: usize,
    /// Maximum rounds of witness collection per layer before the unfound neurons are declared dead.
    /// Default 40.
    pub max_rounds_per_layer: usize,
    /// Consistent witnesses (from distinct lines) needed before a neuron is accepted. Default 2: one
    /// witness could be a deeper-layer kink that happens to look like a neuron; two from independent
    /// lines cannot (they would have to share a deeper activation pattern).
    pub min_witnesses: usize,
    /// Two signatures agree when their normalised difference on shared coordinates is below this.
    /// Default 1e-7: clean signatures agree to ~1e-10; distinct neurons differ by O(1).
    pub cluster_tol: f64,
    /// Shared active coordinates needed to compare two partial signatures. Default 2 (one shared
    /// coordinate says nothing about direction).
    pub min_common_coords: usize,
    /// Largest relative singular value s_min/s_max accepted for a neuron's stacked constraints.
    /// Default 1e-8: consistent constraints give ~1e-12–1e-10; one wrong witness or a stencil that crossed another boundary gives 1e-7 or more.
    pub null_residual_max: f64,
    /// Smallest gap s_{n-1}/s_max for the null space to be one-dimensional. Default 1e-7.
    pub null_gap_min: f64,
    /// First finite-difference step (input units, relative to σ). Default 1e-3; shrunk by
    /// [`Self::stencil_shrink`] up to [`Self::stencil_tries`] times when a linearity check fails.
    /// Large steps give precise derivatives on a piecewise linear function (no truncation error).
    pub stencil_eps: f64,
    /// Factor applied to the stencil on a failed linearity check. Default 0.1.
    pub stencil_shrink: f64,
    /// Attempts per stencil. Default 5.
    pub stencil_tries: usize,
    /// First-layer screening (off by default): unattached critical points are first probed on this
    /// many random input coordinates (4·k + 2 queries) and measured in full (4·d0 + 2) only once two
    /// probes agree, i.e. once the point is known to be a first-layer neuron and not a deeper kink.
    /// Measured on a balanced 784-64-64-10 (seed 7, attack seed 1): k = 24 cuts the queries from
    /// 3.06 M to 0.60 M and the time from 364 s to 199 s, but layer-1 neurons then rest on one full
    /// witness and the worst parameter falls from 2^-30.4 to 2^-26.1 (functional error 2^-28 relative,
    /// labels 100 %). Default 0 keeps the 2^-30 precision target; use 24 when queries cost more than
    /// precision. Used only when d0 ≥ 4k; 1 is invalid (one coordinate says nothing about direction).
    pub probe_coords: usize,
    /// Extra critical points per neuron placed offline (predicted from the current estimate, confirmed
    /// by a few queries) to refine precision. Default 8.
    pub refine_points: usize,
    /// Probe points for the SOE/contractive sign method. Default 24.
    pub sign_points: usize,
    /// A sign is reported as confident when at least this fraction of decisive votes agree and at least
    /// [`Self::sign_min_votes`] votes were cast. Default 0.9.
    pub sign_confidence_min: f64,
    /// Decisive votes needed per neuron. Default 4 (confidence is capped at 1 − 2^−votes, so 4 votes allow 0.94).
    pub sign_min_votes: usize,
    /// Wiggle samples per neuron for expansive layers. Default 24.
    pub wiggle_samples: usize,
    /// Query budget (None: unlimited).
    pub max_queries: Option<u64>,
    /// Worker threads (None: rayon default = all cores).
    pub threads: Option<usize>,
}

impl ExtractParams {
    /// A builder with the documented defaults.
    pub fn builder() -> ExtractParamsBuilder {
        ExtractParamsBuilder::default()
    }
}

impl Default for ExtractParams {
    fn default() -> Self {
        ExtractParamsBuilder::default()
            .build()
            .expect("defaults are valid")
    }
}

/// Builder for [`ExtractParams`]; every setter takes the raw value and `build` validates all of them.
#[derive(Debug, Clone)]
pub struct ExtractParamsBuilder {
    p: ExtractParams,
}

impl Default for ExtractParamsBuilder {
    fn default() -> Self {
        Self {
            p: ExtractParams {
                seed: 0,
                origin_scale: 1.0,
                line_half_length: 10.0,
                linearity_rel_tol: 1e-10,
                min_interval_rel: 1e-11,
                lines_per_round: 4,
                max_rounds_per_layer: 40,
                min_witnesses: 2,
                cluster_tol: 1e-7,
                min_common_coords: 2,
                null_residual_max: 1e-8,
                null_gap_min: 1e-7,
                stencil_eps: 1e-1,
                stencil_shrink: 0.1,
                stencil_tries: 5,
                probe_coords: 0,
                refine_points: 8,
                sign_points: 24,
                sign_confidence_min: 0.9,
                sign_min_votes: 4,
                wiggle_samples: 24,
                max_queries: None,
                threads: None,
            },
        }
    }
}

macro_rules! setter {
    ($name:ident, $t:ty) => {
        #[doc = concat!("Sets `", stringify!($name), "` (see [`ExtractParams`]).")]
        pub fn $name(mut self, v: $t) -> Self {
            self.p.$name = v;
            self
        }
    };
}

impl ExtractParamsBuilder {
    setter!(seed, u64);
    setter!(origin_scale, f64);
    setter!(line_half_length, f64);
    setter!(linearity_rel_tol, f64);
    setter!(min_interval_rel, f64);
    setter!(lines_per_round, usize);
    setter!(max_rounds_per_layer, usize);
    setter!(min_witnesses, usize);
    setter!(cluster_tol, f64);
    setter!(min_common_coords, usize);
    setter!(null_residual_max, f64);
    setter!(null_gap_min, f64);
    setter!(stencil_eps, f64);
    setter!(stencil_shrink, f64);
    setter!(stencil_tries, usize);
    setter!(refine_points, usize);
    setter!(probe_coords, usize);
    setter!(sign_points, usize);
    setter!(sign_confidence_min, f64);
    setter!(sign_min_votes, usize);
    setter!(wiggle_samples, usize);
    setter!(max_queries, Option<u64>);
    setter!(threads, Option<usize>);

    /// Validates every value and returns the checked parameters.
    pub fn build(self) -> Result<ExtractParams, ExtractError> {
        let p = self.p;
        fn bad(name: &'static str, reason: &str) -> ExtractError {
            ExtractError::InvalidParam {
                name,
                reason: reason.to_string(),
            }
        }
        let pos = |name: &'static str, v: f64| -> Result<(), ExtractError> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(name, &format!("must be a finite number > 0, got {v}")))
            }
        };
        pos("origin_scale", p.origin_scale)?;
        pos("line_half_length", p.line_half_length)?;
        pos("linearity_rel_tol", p.linearity_rel_tol)?;
        pos("min_interval_rel", p.min_interval_rel)?;
        pos("cluster_tol", p.cluster_tol)?;
        pos("null_residual_max", p.null_residual_max)?;
        pos("null_gap_min", p.null_gap_min)?;
        pos("stencil_eps", p.stencil_eps)?;
        if p.linearity_rel_tol >= 1e-2 {
            return Err(bad(
                "linearity_rel_tol",
                "must be < 1e-2 (kinks would be invisible)",
            ));
        }
        if !(p.stencil_shrink > 0.0 && p.stencil_shrink < 1.0) {
            return Err(bad("stencil_shrink", "must be in (0, 1)"));
        }
        if !(p.sign_confidence_min > 0.5 && p.sign_confidence_min <= 1.0) {
            return Err(bad("sign_confidence_min", "must be in (0.5, 1]"));
        }
        for (name, v) in [
            ("lines_per_round", p.lines_per_round),
            ("max_rounds_per_layer", p.max_rounds_per_layer),
            ("min_witnesses", p.min_witnesses),
            ("stencil_tries", p.stencil_tries),
            ("sign_points", p.sign_points),
            ("sign_min_votes", p.sign_min_votes),
            ("wiggle_samples", p.wiggle_samples),
        ] {
            if v == 0 {
                return Err(bad(name, "must be at least 1"));
            }
        }
        if p.probe_coords == 1 {
            return Err(bad(
                "probe_coords",
                "must be 0 (off) or at least 2 (one coordinate says nothing about direction)",
            ));
        }
        if p.min_common_coords < 2 {
            return Err(bad("min_common_coords", "must be at least 2"));
        }
        if p.max_queries == Some(0) {
            return Err(bad("max_queries", "must be at least 1 when set"));
        }
        if p.threads == Some(0) {
            return Err(bad("threads", "must be at least 1 when set"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(e: ExtractError) -> &'static str {
        match e {
            ExtractError::InvalidParam { name, .. } => name,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        ExtractParams::builder().build().unwrap();
    }

    #[test]
    fn each_invalid_value_is_rejected_by_name() {
        let b = ExtractParams::builder;
        let cases: Vec<(ExtractParamsBuilder, &str)> = vec![
            (b().origin_scale(0.0), "origin_scale"),
            (b().origin_scale(f64::NAN), "origin_scale"),
            (b().line_half_length(-1.0), "line_half_length"),
            (b().linearity_rel_tol(0.5), "linearity_rel_tol"),
            (b().min_interval_rel(0.0), "min_interval_rel"),
            (b().cluster_tol(f64::INFINITY), "cluster_tol"),
            (b().null_residual_max(0.0), "null_residual_max"),
            (b().null_gap_min(-1.0), "null_gap_min"),
            (b().stencil_eps(0.0), "stencil_eps"),
            (b().stencil_shrink(1.0), "stencil_shrink"),
            (b().sign_confidence_min(0.5), "sign_confidence_min"),
            (b().lines_per_round(0), "lines_per_round"),
            (b().max_rounds_per_layer(0), "max_rounds_per_layer"),
            (b().min_witnesses(0), "min_witnesses"),
            (b().stencil_tries(0), "stencil_tries"),
            (b().sign_points(0), "sign_points"),
            (b().sign_min_votes(0), "sign_min_votes"),
            (b().wiggle_samples(0), "wiggle_samples"),
            (b().min_common_coords(1), "min_common_coords"),
            (b().probe_coords(1), "probe_coords"),
            (b().max_queries(Some(0)), "max_queries"),
            (b().threads(Some(0)), "threads"),
        ];
        for (builder, expected) in cases {
            assert_eq!(name_of(builder.build().unwrap_err()), expected);
        }
    }
}
