//! Every tolerance and budget of the attack, in one place, with its default and the reason for it.
//!
//! Build with [`ExtractParams::builder`]; [`ExtractParamsBuilder::build`] validates each value.

use crate::error::ExtractError;
use serde::{Deserialize, Serialize};

/// The arithmetic of the target's answers, which sets how small a difference the attack can trust.
///
/// The tolerances below are tied to it: [`ExtractParamsBuilder::precision`] sets all of them to the
/// preset of that precision (individual setters called afterwards still override single values).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Measure it: before the first layer, a few queries (second differences on tiny stencils, and
    /// whether every answer is an f32 value) decide between [`Self::F64`] and [`Self::F32`]
    /// (see [`crate::precision`]); the resolved preset is what the run uses and reports. Until resolved
    /// the f64 tolerances are in place.
    Auto,
    /// Answers computed in f64 (~1e-13 relative rounding after a deep forward pass): the 2^-30 presets.
    #[default]
    F64,
    /// Answers computed in f32, as a PyTorch/ONNX float32 deployment does (~1e-7 relative noise on every
    /// answer, ~30 bits fewer than f64): linearity tests get an absolute noise floor and a 40× margin
    /// over the measured noise, clusters and residuals are widened to the ~1e-3 precision of a
    /// signature measured on f32 answers. **Experimental**: on a balanced 20-10-10-1 the first layer
    /// comes out right to ~1.5e-3 but the second layer, built on it, does not, and the run ends in
    /// `VerificationFailed` (never a silently wrong model); see docs/extraction.md.
    F32,
}

impl Precision {
    /// Lower-case name (`f64`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F64 => "f64",
            Self::F32 => "f32",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "f64" => Ok(Self::F64),
            "f32" => Ok(Self::F32),
            other => Err(format!(
                "unknown precision {other:?} (expected auto, f64 or f32)"
            )),
        }
    }
}

/// Checked parameters of an extraction. Construct through [`ExtractParamsBuilder`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtractParams {
    /// The target arithmetic the tolerances were chosen for (see [`Precision`]). Default f64 in the
    /// library (the CLI defaults to `auto`).
    #[serde(default)]
    pub precision: Precision,
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
    /// Once `max_rounds_per_layer` rounds are spent, collection goes on while some neuron was completed
    /// within the last `round_patience` rounds, up to [`ROUND_LIMIT_FACTOR`] × `max_rounds_per_layer`.
    /// Default 8: on a trained 784-128-128-128-10 the last hidden layer was still completing a neuron
    /// every 2–5 rounds at round 40, and the neurons left unfound broke the output layer; a layer that
    /// has stopped progressing (truly dead neurons) stops after at most 8 more rounds. 0 turns the
    /// extension off.
    #[serde(default = "defaults::round_patience")]
    pub round_patience: usize,
    /// Random inputs (queried once per last hidden layer) on which the output is fitted from the
    /// neurons found so far; lines are then aimed through the inputs it explains worst, where a missing
    /// neuron of the last hidden layer is switched unlike its linear extension: active for a rarely
    /// active neuron, inactive for an almost-always-on one. Drawn only when the layer is still not
    /// complete after `max_rounds_per_layer` rounds (the `round_patience` phase). Default 4096 (sees
    /// a neuron switched on ~0.2 % of inputs about 8 times); 0 turns aiming off.
    #[serde(default = "defaults::residual_aim_points")]
    pub residual_aim_points: usize,
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
    /// First step as a fraction of the distance from the stencil's centre to the kink it measures
    /// (the centres sit halfway to the nearest other kink on the search line). Default 1/4 (f64).
    /// A step as long as that distance crosses the point's own hyperplane along every direction `u`
    /// with `|w·u| > |w·d|` (`d` the line), about half of them on a random line: on the
    /// 3072-256×8-10's first line 49 % of the probe directions failed their first try and were
    /// measured again 10× narrower. At 1/4 it was 10 % (27 % fewer probe queries); layer 1 of the
    /// 784-16×8-1 took 165 k instead of 209 k signature queries. The derivative's rounding error
    /// grows as the step shrinks, but the directions that failed were already measured at a tenth
    /// of the step, and a row's worst entry is one of those: the 784-16×8-1 ended at 2^-30.0
    /// instead of 2^-29.9 with 2 low-confidence signs instead of 4. At 1/8 it had 16 (and 2^-29.4),
    /// hence 1/4. f32: 1 (a noisy answer divided by a shorter step costs more than the retries).
    /// Checkpoints written before this field resume with 1, i.e. as they started.
    #[serde(default = "defaults::stencil_kink_fraction")]
    pub stencil_kink_fraction: f64,
    /// First-layer screening (off by default): unattached critical points are first probed on this
    /// many random input coordinates (4·k + 2 queries) and measured in full (4·d0 + 2) only once two
    /// probes on different lines agree, i.e. once the point is known to be a first-layer neuron and
    /// not a deeper kink; one point of the pair is then measured in full and the other joins its
    /// estimate by the plane test (measured too only if it does not). It pays off on deep nets, where
    /// most kinks on a line belong to deeper layers: on a balanced 784-16×8-1 (seed 7, attack seed 1)
    /// k = 24 cuts layer 1 from 8.67 M queries and ~200 s to 0.63 M and 14 s. On a shallow net it does
    /// not (reference 784-32-1: 263 k instead of 188 k queries, output error 2^-27.7 instead of
    /// 2^-31.0 absolute), hence off by default. Used only when d0 ≥ 4k; 1 is invalid (one coordinate
    /// says nothing about direction).
    pub probe_coords: usize,
    /// Deeper-layer screening (off by default): on layers after the first, unattached critical points
    /// are probed on the active ones among this many fixed random units of the previous layer (about
    /// 2·k + 2 queries when half the units are active) before a full measurement (4·|active| + 2,
    /// ~514 on a 256-wide layer). A point is measured in full only when its probe agrees, on at least
    /// [`PROBE_COMMON_MIN`](crate::params::PROBE_COMMON_MIN) shared units, with an estimate of the
    /// layer or with another probe on another line. A deeper kink's effective row in the previous
    /// layer's units changes with the activation pattern between, so it matches nothing and costs a
    /// probe. Made for wide layers (the 3072-256×8-10's second layer meets ~3,500 kinks on one line);
    /// used only when the previous layer has ≥ 4·k units. 1 is invalid.
    #[serde(default)]
    pub probe_units: usize,
    /// Deeper screened layers (`probe_units`) behind at least [`Self::deep_tol_from`] extracted
    /// layers take `cluster_tol`, `null_residual_max` and `plane_tol` times this factor. Default 100.
    /// Their witnesses are measured through a recovered prefix whose rows carry errors of ~1e-8 of
    /// their norm by the third layer (the balanced 3072-256×8-10: layer 3 at 1.8e-8), and those
    /// errors, not the oracle, set how well two signatures of one neuron agree. Measured on that
    /// net's layer 4 with the true prefix perturbed by 1e-8 (`benches/deep_layers.rs`, session 21):
    /// at the defaults no neuron completed (round 2: 986 estimates, joint residuals at the 3e-8
    /// bound); ×100 completed all 256 (rows at a median 2.7e-7 of their norm before polishing),
    /// while distinct neurons still differ by O(1). 1 keeps the defaults everywhere.
    #[serde(default = "defaults::deep_tol_scale")]
    pub deep_tol_scale: f64,
    /// Extracted layers in front of a deeper screened layer from which [`Self::deep_tol_scale`]
    /// applies. Default 3 (layer 4 onwards): layers 2 and 3 complete at the defaults behind the
    /// measured prefixes (layer 2 at 1.5e-15, layer 3 at 8e-10 polishing residual).
    #[serde(default = "defaults::deep_tol_from")]
    pub deep_tol_from: usize,
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
    /// Half width of the search window around a predicted crossing (validation and refinement), as a
    /// fraction of the line's half length. Default 1e-3 (f64 estimates predict crossings to ~1e-9 of
    /// the line); f32: 1e-2 (predictions are off by ~1e-4 of the line, so a 1e-3 window misses them).
    #[serde(default = "defaults::refine_window")]
    pub refine_window: f64,
    /// Weight of a critical point's hyperplane row relative to a (unit) signature row in a neuron's
    /// joint solve. Default 10 (f64: crossings are located to ~1e-14, signatures to ~1e-11). A knob for
    /// noisy targets, where crossings (~1e-6) are far more precise than signatures (~1e-3); the f32
    /// preset keeps 10 because 100 or 1e3 validated fewer neurons on 20-10-10-1 in our measurements
    /// (signature rows then barely count while too few hyperplane points are confirmed).
    #[serde(default = "defaults::hyperplane_weight")]
    pub hyperplane_weight: f64,
    /// A kink found in a refinement window counts as the predicted crossing only within this
    /// fraction of the window's half-width from the prediction. Default 1e-3 (f64 estimates predict
    /// to ~1e-10, so anything farther is another kink); f32: 0.5 (signature-based estimates predict
    /// to ~1e-2 of the window, and the hyperplane-distance test after it is the real check).
    #[serde(default = "defaults::refine_match")]
    pub refine_match: f64,
    /// Relative distance below which a critical point is taken to lie on an estimate's hyperplane.
    /// Default 1e-8 (f64): single-witness estimates are accurate to ~1e-10 and points of other neurons
    /// sit O(1) away; equal to the null-space residual bound, so an attached point cannot spoil the
    /// joint solve. f32: the same (see [`Precision::F32`]).
    #[serde(default = "defaults::plane_tol")]
    pub plane_tol: f64,
    /// A measured jump matrix (outputs × directions) must be rank one to within this fraction of its
    /// norm, or the stencil met more than one kink. Default 1e-6 (f64 jumps are exact to ~1e-10);
    /// f32: 1e-2.
    #[serde(default = "defaults::rank_one_tol")]
    pub rank_one_tol: f64,
    /// Absolute floor of every linearity test, in output units. Default 0 (f64 targets); set by the
    /// precision probe to [`crate::precision::FLOOR_FACTOR`] × the measured absolute noise of a
    /// second difference when the target answers in f32.
    #[serde(default)]
    pub noise_floor: f64,
    /// Relative noise of one answer: differences below `noise_rel·|f|` are treated as zero by the sign
    /// methods (a vote, a tie, an influential feature). Default 2.2e-13 (1000 f64 ulps, the rounding of
    /// a deep forward pass with margin); f32: 1e-5.
    #[serde(default = "defaults::noise_rel")]
    pub noise_rel: f64,
    /// Largest relative functional error the final check on fresh queries accepts. Default 1e-6 (f64):
    /// far above the ~1e-10 of a correct extraction, far below the O(1) error of a wrong sign or a
    /// missing neuron. f32: 1e-4, the functional target for float32 deployments.
    #[serde(default = "defaults::verify_rel_tol")]
    pub verify_rel_tol: f64,
    /// Cross-check every hidden layer of width ≤ 16 by brute force over its 2^w sign patterns
    /// ([`crate::sign::brute`]): where the best pattern disagrees with the chosen signs it is adopted
    /// if decisive, else the neurons are reported as low confidence. Default on: it costs
    /// `(2·w + 8)·(2·w + 1)` queries and 2^w scorings per narrow layer (≤ 1,300 queries and about a
    /// second at w = 16), and it fixes the wiggle's wrong signs on small expansive layers (the
    /// reference 10-15-15-1 verifies only with it).
    #[serde(default)]
    pub brute_check: bool,
    /// Isolated-wiggle probes per neuron and pass for expansive layers ([`crate::sign::wiggle::isolate`]),
    /// 0 = off. Default 4: after the plain wiggle, each neuron is wiggled where the control rank lets
    /// every other *active* unit of the layer stay exactly still, so the output moves on the active
    /// side only — a clean vote is proof, not a majority. Costs `2·3·k·w` queries per layer; on a
    /// balanced 784-16×8-1 the plain wiggle got 1–4 signs per 16-wide layer wrong without it.
    #[serde(default)]
    pub isolated_wiggles: usize,
    /// Rounds of hyperplane polishing after refinement ([`crate::polish`]): predicted crossings on
    /// fresh lines, and each neuron refitted through all confirmed ones. Each round costs about
    /// `2·(dim+1)` local searches per neuron, and a fit needs `2·(dim+1)` confirmed points, so one
    /// round leaves every neuron that lost a single point unfitted. Default 2 (f64: signature-based
    /// estimates are good to ~1e-10–1e-9, worse in deep layers, while a crossing is exact to about
    /// rounding; two rounds took a balanced 64-128-128-10 from 2^-28.3 to 2^-33.7 for +10 % queries);
    /// f32: 3 (signatures at ~1e-3, crossings at ~1e-6). Checkpoints written before this field resume
    /// with 0, i.e. as they started.
    #[serde(default)]
    pub polish_rounds: usize,
    /// Half width of the polishing search window around a predicted crossing on a random line, as a
    /// fraction of the line's half length (narrowed 4× after every well-determined fit). Default 1e-5
    /// (f64): the prediction of a ~1e-9 estimate is far inside it, and a window as wide as
    /// `refine_window` (1e-3) held a second kink about every other time on a 64-128-128-10 — a weak
    /// one inside a fitted piece shifts the located crossing by ~1e-5, so half the points were lost.
    /// f32: 1e-2 (= `refine_window`; predictions are off by ~1e-4). Crossings placed by projection
    /// (deeper screened layers) use [`Self::projected_polish_window`].
    #[serde(default = "defaults::polish_window")]
    pub polish_window: f64,
    /// The same for crossings placed by projection (`crate::place`, layers screened with
    /// `probe_units`), where the window is also capped by the landing point's activation region.
    /// Default 1e-6 (f64): a wider window meets other kinks, each of which costs a split of the
    /// search. At 1e-5 a window of the 3072-256×8-10's layer 2 held 2.1 kinks on average and a
    /// crossing cost ~21 queries; at 1e-6 7.7, with the same polished rows (`STAGE=polish` of
    /// `benches/deep_layers.rs`: 32 neurons, rows 1e-8 off: 700,812 → 254,460 queries, row error
    /// after 2.8e-14 → 4.0e-14; layer 5 behind a prefix perturbed by 1e-8, rows 1e-7 off: 609,125 →
    /// 289,868 queries, 9.5e-9 → 8.9e-9). A neuron whose windows mostly miss gets wider ones (see
    /// `polish.rs`). f32: 1e-2. Checkpoints written before this field resume with 1e-5, as they
    /// started.
    #[serde(default = "defaults::polish_window")]
    pub projected_polish_window: f64,
    /// A polished neuron whose final fit kept fewer than this many points per unknown of its
    /// hyperplane (`dim + 1`; points of another kink and imprecise crossings are cut by the robust
    /// fit) gets up to `polish_rounds` more rounds. f32: 4, f64: 8/3 — two thirds of the points the
    /// preset places in its rounds (3 or 2 rounds of 2 points per unknown): a neuron with small
    /// outgoing weights has a small jump and noisier crossings, and needs more of them (on an f32
    /// 40-20-10-10-10 one layer-1 neuron kept 45 of 75 points). On f64 the outlier cut, 30× the
    /// median distance, also trims the slightly less precise crossings near other kinks, so this
    /// sends many deep-layer neurons to a third round; session 26 measured 1.25 instead
    /// (`STAGE=polish` of `benches/deep_layers.rs`, 32 neurons, rows 1e-7 off): layer 3 behind a
    /// prefix 1e-9 off, 300,583 → 263,665 queries, row error (median / max) 3.3e-10 / 6.9e-10 →
    /// 4.0e-10 / 8.2e-10; layer 5 behind a prefix 1e-8 off, 289,868 → 269,336 queries, 6.0e-9 /
    /// 8.9e-9 → 6.4e-9 / 1.2e-8 — but the balanced 784-16×8-1 (`scripts/bench-scale.sh`'s flags)
    /// then failed verification (relative error 1.7e-1: layer 7's brute-force sign check chose a
    /// wrong pattern, 22 signs low-confidence) where 8/3 verified at 2^-30, so 8/3 stays. Unlike the
    /// two-thirds rule it replaces, it does not follow a `polish_rounds` set by hand. Checkpoints
    /// written before this field resume with 8/3, as they started.
    #[serde(default = "defaults::polish_kept_per_unknown")]
    pub polish_kept_per_unknown: f64,
    /// Predicted crossings placed per neuron and polishing round, per unknown of its hyperplane
    /// (`dim + 1`). Default 2 (both presets): a round-0 fit needs 2 points per unknown after the
    /// misses, so with 2 a neuron that lost one point is fitted only after its second round. Session
    /// 26 measured 3 with `polish_rounds` 1 and `polish_trim_fraction` 0.75: `STAGE=polish` of
    /// `benches/deep_layers.rs` (32 neurons, rows 1e-7 off), layer 3 behind a prefix 1e-9 off:
    /// 300,583 → 199,852 queries, row error (median / max) 3.3e-10 / 6.9e-10 → 3.6e-10 / 9.3e-10;
    /// layer 5 behind a prefix 1e-8 off: 289,868 → 202,692 queries, 6.0e-9 / 8.9e-9 → 6.9e-9 /
    /// 1.0e-8; the balanced 784-16×8-1 end to end verified at 2^-30.4 with 944,333 queries instead
    /// of 2^-30.9 with 1,030,435, but with 14 low-confidence signs instead of 2. An experiment until
    /// measured on the 3072-256×8-10 end to end. Checkpoints written before this field resume with
    /// 2, as they started.
    #[serde(default = "defaults::polish_points_per_unknown")]
    pub polish_points_per_unknown: f64,
    /// Polishing schedule for crossings placed by projection (deeper screened layers, see
    /// `crate::place`): when positive, one regular round places this many crossings per unknown, and
    /// each later round (up to `polish_rounds`, for neurons without a fit or with fewer than
    /// `polish_kept_per_unknown` points kept) places only the points the neuron still lacks, scaled
    /// by its own confirmation rate so far. 0: the schedule of every other layer
    /// (`polish_rounds` rounds of `polish_points_per_unknown`). Why: with 2 per unknown a round-0 fit
    /// needs every placed point confirmed, so nearly every neuron of a deep 256-wide layer waited for
    /// round 1 and was fitted once, through ~4 placed points per unknown; a first round big enough to
    /// fit keeps the 8/3 rule with about a fifth fewer crossings. Default 3.2 (f64: projected
    /// crossings are confirmed ~90 % of the time, and 3.2 · 0.9 leaves room over 8/3); f32 0 (not
    /// measured). Checkpoints written before this field resume with 0, as they started.
    #[serde(default)]
    pub projected_polish_points_per_unknown: f64,
    /// Fraction of a neuron's polishing points (closest to the current fit first) that its trimmed
    /// fit goes through before the outlier cut; at least `dim + 2` points either way. Default 0.5
    /// (both presets): robust to up to half the points lying on other kinks. On the 3072-256×8-10's
    /// deep layers far fewer do (~1.09 kinks per window), and 0.75 kept more points and gave better
    /// rows at fewer queries (session 26, `STAGE=polish`, layer 3 as for
    /// `polish_points_per_unknown`: 300,583 → 263,661 queries, 3.3e-10 / 6.9e-10 → 3.1e-10 /
    /// 6.0e-10, no neuron sent to a third round), but the balanced 784-16×8-1 end to end then
    /// failed verification (relative error 0.99, 35 signs low-confidence; not analysed further).
    /// Checkpoints written before this field resume with 0.5, as they started.
    #[serde(default = "defaults::polish_trim_fraction")]
    pub polish_trim_fraction: f64,
    /// A neuron is not polished when at least half its refinement points confirmed and all of them
    /// lie within this relative distance of its estimate (before joining it): the estimate is
    /// already that precise. Default 1e-11 (f64: most first-layer neurons, measured directly on
    /// input coordinates, sit at ~1e-12, and polishing a 784-input neuron costs ~50,000 queries per
    /// round; deep-layer estimates at 1e-9–1e-7 are polished). f32: 0 (every neuron).
    #[serde(default = "defaults::polish_skip_below")]
    pub polish_skip_below: f64,
    /// Query budget (None: unlimited).
    pub max_queries: Option<u64>,
    /// Worker threads (None: rayon default = all cores).
    pub threads: Option<usize>,
}

/// The f64 default of [`ExtractParams::stencil_kink_fraction`] (see there).
pub const STENCIL_KINK_FRACTION_F64: f64 = 0.25;

/// Hard limit on witness rounds per layer, as a multiple of `max_rounds_per_layer`, however long
/// progress continues (see `round_patience`): bounds the time spent on one layer.
pub const ROUND_LIMIT_FACTOR: usize = 4;

/// Fewest shared probed units for two deeper-layer probes (or a probe and an estimate) to be compared
/// (see [`ExtractParams::probe_units`]). Two unit rows agreeing to the probe tolerance (1e-6) on 4
/// coordinates by accident means 3 free directions matching to 1e-6 each; with k = 32 probed units,
/// about half active at each point, two points share ~8 on average, and a pair sharing fewer simply
/// waits for another partner.
pub const PROBE_COMMON_MIN: usize = 4;

/// Serde defaults of fields added after the first checkpoint schema (older `state.json` files).
mod defaults {
    pub fn round_patience() -> usize {
        8
    }
    pub fn residual_aim_points() -> usize {
        4096
    }
    pub fn plane_tol() -> f64 {
        1e-8
    }
    pub fn deep_tol_scale() -> f64 {
        100.0
    }
    pub fn deep_tol_from() -> usize {
        3
    }
    pub fn refine_window() -> f64 {
        1e-3
    }
    pub fn refine_match() -> f64 {
        1e-3
    }
    pub fn polish_window() -> f64 {
        1e-5
    }
    pub fn stencil_kink_fraction() -> f64 {
        1.0
    }
    pub fn polish_kept_per_unknown() -> f64 {
        8.0 / 3.0
    }
    pub fn polish_points_per_unknown() -> f64 {
        2.0
    }
    pub fn projected_polish_points_per_unknown() -> f64 {
        3.2
    }
    pub fn polish_trim_fraction() -> f64 {
        0.5
    }
    pub fn polish_skip_below() -> f64 {
        1e-11
    }
    pub fn hyperplane_weight() -> f64 {
        10.0
    }
    pub fn rank_one_tol() -> f64 {
        1e-6
    }
    pub fn noise_rel() -> f64 {
        2.2e-13
    }
    pub fn verify_rel_tol() -> f64 {
        1e-6
    }
}

impl ExtractParams {
    /// A builder with the documented defaults.
    pub fn builder() -> ExtractParamsBuilder {
        ExtractParamsBuilder::default()
    }

    /// These parameters with the agreement tolerances (`cluster_tol`, `null_residual_max`,
    /// `plane_tol`) multiplied by `factor`: what a deeper screened layer behind a noisy recovered
    /// prefix uses (see [`Self::deep_tol_scale`]).
    pub fn with_scaled_tolerances(&self, factor: f64) -> Self {
        let mut p = self.clone();
        p.cluster_tol *= factor;
        p.null_residual_max *= factor;
        p.plane_tol *= factor;
        p
    }

    /// These parameters with the tolerance preset of `precision` (everything else unchanged).
    pub fn with_precision(&self, precision: Precision) -> ExtractParams {
        ExtractParamsBuilder { p: self.clone() }
            .precision(precision)
            .p
    }

    /// The stencil settings of a witness measurement (first step scaled by `origin_scale`).
    pub fn stencil(&self) -> crate::signature::StencilParams {
        crate::signature::StencilParams {
            eps: self.stencil_eps * self.origin_scale,
            shrink: self.stencil_shrink,
            tries: self.stencil_tries,
            kink_fraction: self.stencil_kink_fraction,
            rel_tol: self.linearity_rel_tol,
            rank_one_tol: self.rank_one_tol,
            abs_floor: self.noise_floor,
        }
    }

    /// The tolerances of the critical-point search.
    pub fn search_tol(&self) -> crate::critical::SearchTol {
        crate::critical::SearchTol {
            rel_tol: self.linearity_rel_tol,
            min_interval_rel: self.min_interval_rel,
            abs_floor: self.noise_floor,
        }
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
                precision: Precision::F64,
                seed: 0,
                origin_scale: 1.0,
                line_half_length: 10.0,
                linearity_rel_tol: 1e-10,
                min_interval_rel: 1e-11,
                lines_per_round: 4,
                max_rounds_per_layer: 40,
                round_patience: defaults::round_patience(),
                residual_aim_points: defaults::residual_aim_points(),
                min_witnesses: 2,
                cluster_tol: 1e-7,
                min_common_coords: 2,
                null_residual_max: 1e-8,
                null_gap_min: 1e-7,
                stencil_eps: 1e-1,
                stencil_shrink: 0.1,
                stencil_tries: 5,
                stencil_kink_fraction: STENCIL_KINK_FRACTION_F64,
                probe_coords: 0,
                probe_units: 0,
                deep_tol_scale: defaults::deep_tol_scale(),
                deep_tol_from: defaults::deep_tol_from(),
                refine_points: 8,
                sign_points: 24,
                sign_confidence_min: 0.9,
                sign_min_votes: 4,
                wiggle_samples: 24,
                refine_window: defaults::refine_window(),
                hyperplane_weight: defaults::hyperplane_weight(),
                refine_match: defaults::refine_match(),
                plane_tol: defaults::plane_tol(),
                rank_one_tol: defaults::rank_one_tol(),
                noise_rel: defaults::noise_rel(),
                verify_rel_tol: defaults::verify_rel_tol(),
                noise_floor: 0.0,
                brute_check: true,
                isolated_wiggles: 4,
                polish_rounds: 2,
                polish_window: defaults::polish_window(),
                projected_polish_window: 1e-6,
                polish_kept_per_unknown: defaults::polish_kept_per_unknown(),
                polish_points_per_unknown: defaults::polish_points_per_unknown(),
                projected_polish_points_per_unknown: defaults::projected_polish_points_per_unknown(
                ),
                polish_trim_fraction: defaults::polish_trim_fraction(),
                polish_skip_below: defaults::polish_skip_below(),
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
    setter!(round_patience, usize);
    setter!(residual_aim_points, usize);
    setter!(min_witnesses, usize);
    setter!(cluster_tol, f64);
    setter!(min_common_coords, usize);
    setter!(null_residual_max, f64);
    setter!(null_gap_min, f64);
    setter!(stencil_eps, f64);
    setter!(stencil_shrink, f64);
    setter!(stencil_tries, usize);
    setter!(stencil_kink_fraction, f64);
    setter!(refine_points, usize);
    setter!(probe_coords, usize);
    setter!(probe_units, usize);
    setter!(deep_tol_scale, f64);
    setter!(deep_tol_from, usize);
    setter!(sign_points, usize);
    setter!(sign_confidence_min, f64);
    setter!(sign_min_votes, usize);
    setter!(wiggle_samples, usize);
    setter!(refine_window, f64);
    setter!(refine_match, f64);
    setter!(hyperplane_weight, f64);
    setter!(plane_tol, f64);
    setter!(rank_one_tol, f64);
    setter!(noise_rel, f64);
    setter!(noise_floor, f64);
    setter!(brute_check, bool);
    setter!(isolated_wiggles, usize);
    setter!(polish_rounds, usize);
    setter!(polish_window, f64);
    setter!(projected_polish_window, f64);
    setter!(polish_skip_below, f64);
    setter!(polish_kept_per_unknown, f64);
    setter!(polish_points_per_unknown, f64);
    setter!(projected_polish_points_per_unknown, f64);
    setter!(polish_trim_fraction, f64);
    setter!(verify_rel_tol, f64);
    setter!(max_queries, Option<u64>);
    setter!(threads, Option<usize>);

    /// Sets every precision-dependent tolerance to the preset of `precision` (and records it).
    ///
    /// The f32 preset follows the noise measured on float32 targets (the precision probe: median
    /// relative second difference 2.4e-7 on 20-10-10-1, 4.8e-7 on 64-32-32-10): linearity tests at 1e-5
    /// (looser lets stencils that straddle a second kink through: on 20-10-10-1 a tolerance of 1e-4 gave
    /// layer-1 signatures off by up to 0.13, 1e-5 by at most 9e-4), bisection stops at 1e-6 of the
    /// segment, clusters 1e-2 apart, null-space residuals up to 3e-3, and a stencil that fails its check
    /// is shrunk only twice by 0.3 (a tiny stencil on f32 answers is pure noise). Free attachment by
    /// hyperplane distance keeps the f64 tolerance: any wider slab (1e-5 already, measured) lets other
    /// neurons' points in, so on f32 targets every critical point is measured.
    pub fn precision(mut self, precision: Precision) -> Self {
        let p = &mut self.p;
        p.precision = precision;
        // Every precision-dependent tolerance starts from the f64 preset; f32 then widens what noise
        // touches (hyperplane attachment and weight stay as they are, see the doc above).
        let d = ExtractParamsBuilder::default().p;
        p.linearity_rel_tol = d.linearity_rel_tol;
        p.min_interval_rel = d.min_interval_rel;
        p.cluster_tol = d.cluster_tol;
        p.null_residual_max = d.null_residual_max;
        p.null_gap_min = d.null_gap_min;
        p.stencil_shrink = d.stencil_shrink;
        p.stencil_tries = d.stencil_tries;
        p.stencil_kink_fraction = d.stencil_kink_fraction;
        p.refine_window = d.refine_window;
        p.refine_match = d.refine_match;
        p.hyperplane_weight = d.hyperplane_weight;
        p.plane_tol = d.plane_tol;
        p.rank_one_tol = d.rank_one_tol;
        p.noise_rel = d.noise_rel;
        p.verify_rel_tol = d.verify_rel_tol;
        p.polish_rounds = d.polish_rounds;
        p.polish_window = d.polish_window;
        p.projected_polish_window = d.projected_polish_window;
        p.polish_skip_below = d.polish_skip_below;
        p.polish_kept_per_unknown = d.polish_kept_per_unknown;
        p.polish_points_per_unknown = d.polish_points_per_unknown;
        p.projected_polish_points_per_unknown = d.projected_polish_points_per_unknown;
        p.polish_trim_fraction = d.polish_trim_fraction;
        if precision == Precision::F32 {
            p.linearity_rel_tol = 1e-5;
            p.min_interval_rel = 1e-6;
            p.cluster_tol = 1e-2;
            p.null_residual_max = 3e-3;
            p.null_gap_min = 1e-2;
            p.stencil_shrink = 0.3;
            p.stencil_tries = 3;
            p.stencil_kink_fraction = 1.0;
            p.refine_window = 1e-2;
            p.refine_match = 0.5;
            p.rank_one_tol = 1e-2;
            p.noise_rel = 1e-5;
            p.verify_rel_tol = 1e-4;
            p.polish_rounds = 3;
            p.polish_window = 1e-2;
            p.projected_polish_window = 1e-2;
            p.polish_skip_below = 0.0;
            p.polish_kept_per_unknown = 4.0;
            p.projected_polish_points_per_unknown = 0.0;
        }
        self
    }

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
        pos("plane_tol", p.plane_tol)?;
        pos("hyperplane_weight", p.hyperplane_weight)?;
        if !(p.deep_tol_scale.is_finite() && p.deep_tol_scale >= 1.0) {
            return Err(bad("deep_tol_scale", "must be a finite number >= 1"));
        }
        if !(p.refine_window > 0.0 && p.refine_window < 0.5) {
            return Err(bad("refine_window", "must be in (0, 0.5)"));
        }
        if !(p.polish_skip_below.is_finite() && p.polish_skip_below >= 0.0) {
            return Err(bad("polish_skip_below", "must be a finite number >= 0"));
        }
        if !(p.polish_kept_per_unknown.is_finite() && p.polish_kept_per_unknown >= 0.0) {
            return Err(bad(
                "polish_kept_per_unknown",
                "must be a finite number >= 0",
            ));
        }
        if !(p.polish_points_per_unknown.is_finite() && p.polish_points_per_unknown >= 1.0) {
            return Err(bad(
                "polish_points_per_unknown",
                "must be a finite number >= 1",
            ));
        }
        // 0 (the other layers' schedule), or enough for a fit after the first round (see
        // `polish.rs`, two points per unknown).
        let pp = p.projected_polish_points_per_unknown;
        if !(pp == 0.0 || (pp.is_finite() && pp >= 2.0)) {
            return Err(bad(
                "projected_polish_points_per_unknown",
                "must be 0 or a finite number >= 2",
            ));
        }
        if !(p.polish_trim_fraction > 0.0 && p.polish_trim_fraction <= 1.0) {
            return Err(bad("polish_trim_fraction", "must be in (0, 1]"));
        }
        if !(p.polish_window > 0.0 && p.polish_window < 0.5) {
            return Err(bad("polish_window", "must be in (0, 0.5)"));
        }
        if !(p.projected_polish_window > 0.0 && p.projected_polish_window < 0.5) {
            return Err(bad("projected_polish_window", "must be in (0, 0.5)"));
        }
        if !(p.refine_match > 0.0 && p.refine_match <= 1.0) {
            return Err(bad("refine_match", "must be in (0, 1]"));
        }
        pos("rank_one_tol", p.rank_one_tol)?;
        pos("noise_rel", p.noise_rel)?;
        if !(p.noise_floor.is_finite() && p.noise_floor >= 0.0) {
            return Err(bad("noise_floor", "must be a finite number >= 0"));
        }
        pos("verify_rel_tol", p.verify_rel_tol)?;
        if p.linearity_rel_tol >= 1e-2 {
            return Err(bad(
                "linearity_rel_tol",
                "must be < 1e-2 (kinks would be invisible)",
            ));
        }
        if !(p.stencil_shrink > 0.0 && p.stencil_shrink < 1.0) {
            return Err(bad("stencil_shrink", "must be in (0, 1)"));
        }
        if !(p.stencil_kink_fraction > 0.0 && p.stencil_kink_fraction <= 1.0) {
            return Err(bad("stencil_kink_fraction", "must be in (0, 1]"));
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
        if p.probe_units == 1 {
            return Err(bad(
                "probe_units",
                "must be 0 (off) or at least 2 (one unit says nothing about direction)",
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
    fn precision_presets_are_valid_and_reversible() {
        let f32p = ExtractParams::builder()
            .precision(Precision::F32)
            .build()
            .unwrap();
        assert_eq!(f32p.precision, Precision::F32);
        assert!(f32p.linearity_rel_tol > ExtractParams::default().linearity_rel_tol);
        // Back to f64 gives exactly the defaults.
        let back = ExtractParams::builder()
            .precision(Precision::F32)
            .precision(Precision::F64)
            .build()
            .unwrap();
        assert_eq!(back, ExtractParams::default());
        // A setter after the preset overrides it.
        let o = ExtractParams::builder()
            .precision(Precision::F32)
            .verify_rel_tol(1e-3)
            .build()
            .unwrap();
        assert_eq!(o.verify_rel_tol, 1e-3);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert_eq!("auto".parse::<Precision>().unwrap(), Precision::Auto);
        let auto = ExtractParams::default().with_precision(Precision::Auto);
        assert_eq!(auto.verify_rel_tol, ExtractParams::default().verify_rel_tol);
        assert_eq!(
            auto.with_precision(Precision::F32),
            ExtractParams::default().with_precision(Precision::F32)
        );
        assert!("f16".parse::<Precision>().is_err());
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
            (b().stencil_kink_fraction(0.0), "stencil_kink_fraction"),
            (b().stencil_kink_fraction(1.5), "stencil_kink_fraction"),
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
            (b().probe_units(1), "probe_units"),
            (b().max_queries(Some(0)), "max_queries"),
            (b().threads(Some(0)), "threads"),
            (b().plane_tol(0.0), "plane_tol"),
            (b().refine_window(0.5), "refine_window"),
            (b().refine_match(0.0), "refine_match"),
            (b().refine_match(1.5), "refine_match"),
            (b().polish_window(0.0), "polish_window"),
            (b().polish_window(0.5), "polish_window"),
            (b().projected_polish_window(0.0), "projected_polish_window"),
            (
                b().projected_polish_window(f64::NAN),
                "projected_polish_window",
            ),
            (b().polish_skip_below(-1.0), "polish_skip_below"),
            (b().polish_kept_per_unknown(-1.0), "polish_kept_per_unknown"),
            (
                b().polish_kept_per_unknown(f64::INFINITY),
                "polish_kept_per_unknown",
            ),
            (
                b().polish_points_per_unknown(0.5),
                "polish_points_per_unknown",
            ),
            (
                b().polish_points_per_unknown(f64::NAN),
                "polish_points_per_unknown",
            ),
            (
                b().projected_polish_points_per_unknown(1.5),
                "projected_polish_points_per_unknown",
            ),
            (
                b().projected_polish_points_per_unknown(f64::INFINITY),
                "projected_polish_points_per_unknown",
            ),
            (b().polish_trim_fraction(0.0), "polish_trim_fraction"),
            (b().polish_trim_fraction(1.5), "polish_trim_fraction"),
            (b().hyperplane_weight(0.0), "hyperplane_weight"),
            (b().rank_one_tol(f64::NAN), "rank_one_tol"),
            (b().noise_rel(-1e-9), "noise_rel"),
            (b().noise_floor(f64::NAN), "noise_floor"),
            (b().verify_rel_tol(0.0), "verify_rel_tol"),
            (b().deep_tol_scale(0.5), "deep_tol_scale"),
            (b().deep_tol_scale(f64::NAN), "deep_tol_scale"),
        ];
        for (builder, expected) in cases {
            assert_eq!(name_of(builder.build().unwrap_err()), expected);
        }
    }
}
