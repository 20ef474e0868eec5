//! Layer-by-layer orchestration, per-stage statistics and the JSON report.

use crate::checkpoint::{ExtractionState, JournalOracle, ResumeDir, STATE_SCHEMA};
use crate::error::{ExtractError, OracleError};
use crate::known::KnownPrefix;
use crate::layer::recover_layer;
use crate::oracle::{CountingOracle, Oracle};
use crate::output::fit_output;
use crate::params::{ExtractParams, Precision};
use crate::precision::{self, PrecisionProbe};
use crate::sign::brute::{self, BruteCheck};
use crate::sign::{SignOutcome, last_layer, soe, wiggle};
use faer::Mat;
use netxray_relu::{Arch, Layer, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Progress events for front ends (progress bars).
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// Starting hidden layer `layer` (1-based) of `width` neurons.
    LayerStart {
        /// Layer index.
        layer: usize,
        /// Width.
        width: usize,
    },
    /// Neurons recovered so far in the current layer.
    Neurons {
        /// Done.
        done: usize,
        /// Width.
        width: usize,
    },
    /// Working on a named stage.
    Stage(&'static str),
    /// Layer finished.
    LayerDone,
}

/// Per-layer statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerReport {
    /// 1-based hidden layer index.
    pub layer: usize,
    /// Width.
    pub width: usize,
    /// Neurons recovered.
    pub neurons_found: usize,
    /// Neurons never seen (dead or unreachable), recovered as zero rows.
    pub dead: Vec<usize>,
    /// Neurons that never switch off, recovered from the output's linear part (last hidden layer;
    /// their bias is not identifiable: the one chosen keeps them on over the data).
    #[serde(default)]
    pub always_on: Vec<usize>,
    /// Critical points found by the search.
    pub critical_points: usize,
    /// Witnesses whose signature was measured.
    pub measured_witnesses: usize,
    /// Critical points attributed for free by the hyperplane test.
    pub attached_points: usize,
    /// Search lines.
    pub lines: usize,
    /// Queries per stage.
    pub queries: StageQueries,
    /// Wall seconds per stage.
    pub seconds: StageSeconds,
    /// Sign method.
    pub sign_method: String,
    /// The brute-force cross-check of the signs (with `brute_check`, width ≤ 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brute_check: Option<BruteCheck>,
    /// Sign confidence per neuron (order of the output network).
    pub sign_confidence: Vec<f64>,
    /// Neurons whose sign confidence is below the threshold.
    pub low_confidence: Vec<usize>,
    /// Worst null-space residual over the layer's neurons.
    pub max_null_residual: f64,
    /// Neurons with unconstrained input coordinates (set to 0).
    pub partially_constrained: Vec<usize>,
}

/// Queries per stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageQueries {
    /// Critical-point search.
    pub search: u64,
    /// Signature measurement.
    pub signature: u64,
    /// Precision refinement.
    pub refine: u64,
    /// Sign recovery.
    pub sign: u64,
}

/// Wall seconds per stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageSeconds {
    /// Search, signatures and refinement together.
    pub signatures: f64,
    /// Sign recovery.
    pub sign: f64,
    /// Of both stages together, the seconds spent waiting for the target's answers
    /// ([`CountingOracle::target_seconds`]); the rest is the attack's own computation. Zero in
    /// reports written before this field existed.
    #[serde(default)]
    pub target: f64,
}

/// The report of a whole extraction.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractionReport {
    /// Report schema version.
    pub schema: u32,
    /// Architecture attacked.
    pub arch: String,
    /// Parameters used.
    pub params: ExtractParams,
    /// Total queries.
    pub total_queries: u64,
    /// Total wall seconds.
    pub wall_seconds: f64,
    /// Of `wall_seconds`, the seconds spent waiting for the target's answers, over all runs of a
    /// resumed extraction. With `--resume` the journal sits between the attack and the target, so
    /// its hashing and writing count here too, and answers replayed from it cost only the reading.
    pub target_seconds: f64,
    /// Hidden layers.
    pub layers: Vec<LayerReport>,
    /// Queries of the output-layer fit.
    pub output_queries: u64,
    /// Max |residual| / max |f| of the output fit (≈ 1e-13 when everything before is right).
    pub output_fit_residual: f64,
    /// (layer, neuron) pairs whose sign is not confident.
    pub low_confidence_signs: Vec<(usize, usize)>,
    /// Fresh queries spent on the final verification.
    pub verify_queries: u64,
    /// max |f − f̂| / max |f| on the verification queries.
    pub verify_rel_error: f64,
    /// Present when the run used a resume directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeInfo>,
    /// The target arithmetic assumed, how it was chosen, and the precision reached.
    pub precision: PrecisionReport,
}

/// Which tolerance preset the run used and what precision it reached.
#[derive(Debug, Clone, Serialize)]
pub struct PrecisionReport {
    /// What was asked for (`auto`, `f64`, `f32`).
    pub requested: Precision,
    /// The preset used (never `auto`).
    pub used: Precision,
    /// The measurement behind an `auto` choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<PrecisionProbe>,
    /// Precision reached, in bits: −log2 of the verification's relative functional error.
    pub reached_bits: f64,
}

/// How a checkpointed extraction was carried across runs.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeInfo {
    /// Runs that worked on this extraction (1 = never interrupted).
    pub runs: u32,
    /// Queries committed by earlier runs (included in `total_queries`).
    pub queries_before_this_run: u64,
    /// Queries answered from the journal of the interrupted stage instead of the target (paid for by
    /// the interrupted run; included in `total_queries`).
    pub replayed_queries: u64,
    /// Batches answered from the journal.
    pub replayed_batches: u64,
    /// Whether the requests stopped matching the journal (other code or options), so that the rest of
    /// the interrupted stage was asked again.
    pub journal_diverged: bool,
}

/// Queries for the final verification. A sample cannot see errors confined to rare inputs; those come
/// from neurons with unconstrained inputs, which are refused separately (`ExtractError::Incomplete`).
const VERIFY_POINTS: usize = 256;

fn verify<O: Oracle + ?Sized>(
    co: &CountingOracle<'_, O>,
    net: &Network,
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
) -> Result<f64, ExtractError> {
    use rand::Rng;
    use rand_distr::StandardNormal;
    let d0 = net.input_dim();
    let xs = Mat::<f64>::from_fn(VERIFY_POINTS, d0, |_, _| {
        p.origin_scale * rng.sample::<f64, _>(StandardNormal)
    });
    let truth = co.query(xs.as_ref())?;
    let ours = net.forward(xs.as_ref())?;
    let mut err: f64 = 0.0;
    let mut scale: f64 = 0.0;
    for i in 0..truth.nrows() {
        for j in 0..truth.ncols() {
            err = err.max((truth[(i, j)] - ours[(i, j)]).abs());
            scale = scale.max(truth[(i, j)].abs());
        }
    }
    Ok(err / scale.max(f64::MIN_POSITIVE))
}

/// A finished extraction.
#[derive(Debug, Clone)]
pub struct Extraction {
    /// The recovered network (canonical gauge: unit-norm hidden rows).
    pub network: Network,
    /// What it cost and how sure we are.
    pub report: ExtractionReport,
}

/// The signs of one hidden layer's recovered rows (`layer`, unit-norm rows of unknown sign) behind the
/// signed `known` prefix: the last-layer fit when `is_last_hidden`, else the exact system of equations,
/// then the neuron wiggle and the isolated wiggle for what SOE left unsure. Public for the per-layer
/// bench (`benches/deep_layers.rs`); [`extract`] calls it once per layer.
pub fn sign_layer<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    known: &KnownPrefix,
    layer: &Layer,
    is_last_hidden: bool,
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
) -> Result<SignOutcome, ExtractError> {
    if is_last_hidden
        && let Some(s) =
            last_layer::recover(oracle, known, layer, p.origin_scale, p.noise_rel, rng)?
    {
        return Ok(s);
    }
    let soe_out = soe::recover(
        oracle,
        known,
        layer,
        p.sign_points,
        p.sign_min_votes,
        p.sign_confidence_min,
        p.origin_scale,
        p.linearity_rel_tol,
        p.noise_floor,
        p.noise_rel,
        rng,
    )?;
    if let Some(s) = &soe_out
        && s.low_confidence(p.sign_confidence_min).is_empty()
    {
        return Ok(s.clone());
    }
    // Expansive layer (or neurons SOE could not isolate): neuron wiggle for the neurons SOE left
    // unsure only (its confident answers are proofs, and on a 256-wide layer behind 3072 inputs the
    // wiggle of all neurons took over 20 minutes for the one or two SOE had not settled); keep SOE's
    // answer where it was more confident.
    let w = layer.fan_out();
    let unsure: Vec<usize> = match &soe_out {
        Some(s) => s.low_confidence(p.sign_confidence_min),
        None => (0..w).collect(),
    };
    tracing::info!(
        unsure = unsure.len(),
        width = w,
        "neurons left to the wiggle"
    );
    let mut wig = wiggle::recover(
        oracle,
        known,
        layer,
        &unsure,
        p.wiggle_samples,
        p.sign_confidence_min,
        p.origin_scale,
        p.noise_rel,
        rng,
    )?;
    if let Some(s) = soe_out {
        for k in 0..wig.signs.len() {
            if s.confidence[k] > wig.confidence[k] {
                wig.signs[k] = s.signs[k];
                wig.confidence[k] = s.confidence[k];
            }
        }
        wig.queries += s.queries;
        wig.method = "soe-exact + neuron-wiggle";
    }
    if p.isolated_wiggles > 0 {
        let changed = wiggle::isolate(
            oracle,
            known,
            layer,
            &unsure,
            &mut wig,
            p.isolated_wiggles,
            p.origin_scale,
            rng,
        )?;
        if !changed.is_empty() {
            tracing::info!(neurons = ?changed, "isolated wiggles corrected signs");
        }
        wig.method = if wig.method == "neuron-wiggle" {
            "neuron-wiggle + isolated wiggle"
        } else {
            "soe-exact + neuron-wiggle + isolated wiggle"
        };
    }
    Ok(wig)
}

/// Runs the whole attack against `oracle` for a network of architecture `arch`.
pub fn extract<O: Oracle + ?Sized>(
    oracle: &O,
    arch: &Arch,
    p: &ExtractParams,
    progress: impl FnMut(ProgressEvent),
) -> Result<Extraction, ExtractError> {
    extract_resumable(oracle, arch, p, None, progress)
}

/// Either the target itself or the target behind the journal of a resume directory.
enum StageOracle<'a, O: Oracle + ?Sized> {
    Plain(&'a O),
    Journal(JournalOracle<'a, O>),
}

impl<O: Oracle + ?Sized> Oracle for StageOracle<'_, O> {
    fn input_dim(&self) -> usize {
        match self {
            Self::Plain(o) => o.input_dim(),
            Self::Journal(j) => j.input_dim(),
        }
    }
    fn output_dim(&self) -> usize {
        match self {
            Self::Plain(o) => o.output_dim(),
            Self::Journal(j) => j.output_dim(),
        }
    }
    fn query_batch(&self, xs: faer::MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        match self {
            Self::Plain(o) => o.query_batch(xs),
            Self::Journal(j) => j.query_batch(xs),
        }
    }
}

/// [`extract`] with checkpoint/resume: with `resume = Some(dir)`, every finished stage (hidden layer,
/// output layer) is committed to `dir` and the answers of the stage in progress are journaled, so that
/// rerunning the same call after a crash or `kill -9` continues where it stopped, asks no query again
/// except the batch in flight, and returns the same network (see [`crate::checkpoint`]). The directory
/// is refused if it belongs to another architecture, seed or tolerance set.
pub fn extract_resumable<O: Oracle + ?Sized>(
    oracle: &O,
    arch: &Arch,
    p: &ExtractParams,
    resume: Option<&Path>,
    mut progress: impl FnMut(ProgressEvent),
) -> Result<Extraction, ExtractError> {
    if arch.input_dim() != oracle.input_dim() || arch.output_dim() != oracle.output_dim() {
        return Err(ExtractError::Arch(format!(
            "architecture {arch} does not fit the oracle ({} inputs, {} outputs)",
            oracle.input_dim(),
            oracle.output_dim()
        )));
    }
    let start = Instant::now();
    let requested = p.precision;
    let mut p_owned = p.clone();
    let dir = resume.map(ResumeDir::open).transpose()?;
    let loaded = match &dir {
        Some(d) => d.load(arch, p)?,
        None => None,
    };
    if let Some(st) = &loaded
        && requested == Precision::Auto
    {
        // Resumes with the preset an earlier run measured (still `auto` if it died before measuring).
        p_owned = p.with_precision(st.params.precision);
    }
    let mut state = loaded.unwrap_or_else(|| ExtractionState {
        schema: STATE_SCHEMA,
        arch: arch.to_string(),
        params: p.clone(),
        layers: Vec::new(),
        reports: Vec::new(),
        low_confidence_signs: Vec::new(),
        queries: 0,
        wall_seconds: 0.0,
        target_seconds: 0.0,
        runs: 0,
        precision_probe: None,
    });
    state.runs += 1;
    state.params = p_owned.clone();
    if let Some(d) = &dir {
        // Records this run (and creates the state of a new extraction); the journal is untouched.
        d.commit(&state)?;
    }
    let earlier_seconds = state.wall_seconds;
    let earlier_target_seconds = state.target_seconds;
    let resumed_queries = state.queries;
    let stage_oracle = match &dir {
        Some(d) => StageOracle::Journal(JournalOracle::open(
            oracle,
            &d.journal_path(),
            state.layers.len() as u64,
        )?),
        None => StageOracle::Plain(oracle),
    };
    let co = CountingOracle::new(&stage_oracle, p.max_queries).with_used(state.queries);
    if p_owned.precision != Precision::F64 && state.precision_probe.is_none() {
        // `auto` chooses the preset; f32 needs the measured noise for its absolute floor.
        progress(ProgressEvent::Stage("precision"));
        let probe = precision::probe(&co, p.origin_scale, p.seed)?;
        if p_owned.precision == Precision::Auto {
            p_owned = p_owned.with_precision(probe.chosen);
        }
        if p_owned.precision == Precision::F32 {
            p_owned.noise_floor = precision::FLOOR_FACTOR * probe.noise_abs;
        }
        state.params = p_owned.clone();
        state.precision_probe = Some(probe);
    }
    let p = &p_owned;
    let mut known = KnownPrefix::new(arch.input_dim());
    known.layers = state.hidden_layers()?;
    if !known.layers.is_empty() {
        tracing::info!(
            layers = known.layers.len(),
            queries = state.queries,
            "resuming: finished hidden layers loaded from the checkpoint"
        );
    }
    let hidden = arch.hidden().to_vec();
    for (li, &width) in hidden.iter().enumerate().skip(known.layers.len()) {
        let layer_no = li + 1;
        let mut rng = ChaCha20Rng::seed_from_u64(
            p.seed ^ (0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(layer_no as u64)),
        );
        progress(ProgressEvent::LayerStart {
            layer: layer_no,
            width,
        });
        let (t0, target0) = (Instant::now(), co.target_seconds());
        let last_hidden = layer_no == hidden.len();
        let sig = recover_layer(
            &co,
            &known,
            width,
            last_hidden,
            p,
            &mut rng,
            |done, width| progress(ProgressEvent::Neurons { done, width }),
        )
        .map_err(|e| at_layer(e, layer_no, &known))?;
        let sig_secs = t0.elapsed().as_secs_f64();
        let dim = known.out_dim();
        let mut weight = Mat::<f64>::zeros(width, dim);
        let mut bias = vec![0.0; width];
        for (r, n) in sig.neurons.iter().enumerate() {
            for c in 0..dim {
                weight[(r, c)] = n.w[c];
            }
            bias[r] = n.b;
        }
        let mut layer = Layer { weight, bias };
        progress(ProgressEvent::Stage("signs"));
        let t1 = Instant::now();
        let mut found = sig.neurons.len();
        let live_rows = |layer: &Layer, found: usize| Layer {
            weight: Mat::from_fn(found, dim, |r, c| layer.weight[(r, c)]),
            bias: layer.bias[..found].to_vec(),
        };
        // Which recovered neuron each row holds (rows past `found` are zero).
        let mut kept: Vec<usize> = (0..found).collect();
        // A last-layer neuron that never switches off has no boundary to find; it shows as a linear
        // part of the output (see `last_layer::always_on`). Its slot may have been taken by the best
        // unvalidated estimate (a deeper unit's local piece), so only validated neurons count here;
        // when the output is exactly explained without the others, they are dropped.
        let trusted: Vec<usize> = (0..found).filter(|&k| sig.neurons[k].validated).collect();
        let always_on =
            if li + 1 == hidden.len() && !trusted.is_empty() && trusted.len() + 1 == width {
                let rows = Layer {
                    weight: Mat::from_fn(trusted.len(), dim, |r, c| layer.weight[(trusted[r], c)]),
                    bias: trusted.iter().map(|&k| layer.bias[k]).collect(),
                };
                last_layer::always_on(&co, &known, &rows, 1, p.origin_scale, &mut rng)
                    .map_err(|e| at_layer(e, layer_no, &known))?
            } else {
                None
            };
        let mut always_on_neurons = Vec::new();
        if let Some(a) = &always_on {
            let t = trusted.len();
            tracing::info!(
                layer = layer_no,
                neuron = t,
                dropped_unvalidated = found - t,
                "always-on neuron recovered from the output's linear part"
            );
            let mut weight = Mat::<f64>::zeros(width, dim);
            let mut bias = vec![0.0; width];
            for (r, &k) in trusted.iter().enumerate() {
                for c in 0..dim {
                    weight[(r, c)] = layer.weight[(k, c)];
                }
                bias[r] = layer.bias[k];
            }
            for c in 0..dim {
                weight[(t, c)] = a.row.0[c];
            }
            bias[t] = a.row.1;
            layer = Layer { weight, bias };
            kept = trusted;
            always_on_neurons.push(t);
            found = t + 1;
        }
        let live = live_rows(&layer, found);
        let signs = if let Some(a) = always_on {
            a.signs
        } else if found > 0 {
            sign_layer(&co, &known, &live, li + 1 == hidden.len(), p, &mut rng)
                .map_err(|e| at_layer(e, layer_no, &known))?
        } else {
            SignOutcome {
                method: "none (no live neurons)",
                signs: vec![],
                confidence: vec![],
                queries: 0,
            }
        };
        let mut signs = signs;
        let mut brute_check = if p.brute_check && found > 0 && found <= brute::MAX_WIDTH {
            brute::cross_check(
                &co,
                &known,
                &live,
                &signs.signs,
                2 * found + 8,
                p.origin_scale,
                p.linearity_rel_tol,
                p.noise_floor,
                &mut rng,
            )
            .map_err(|e| at_layer(e, layer_no, &known))?
        } else {
            None
        };
        if let Some(c) = &brute_check
            && !c.disagree.is_empty()
            && !c.decisive()
        {
            // A disagreement without a verdict: a neuron that matters at few probe points separates
            // the patterns only weakly. Four times the points (fresh ones) give it more chances.
            let (queries, first) = (c.queries, c.clone());
            let again = brute::cross_check(
                &co,
                &known,
                &live,
                &signs.signs,
                4 * (2 * found + 8),
                p.origin_scale,
                p.linearity_rel_tol,
                p.noise_floor,
                &mut rng,
            )
            .map_err(|e| at_layer(e, layer_no, &known))?;
            brute_check = Some(again.map_or(first, |mut a| {
                a.queries += queries;
                a
            }));
        }
        let mut brute_flagged = Vec::new();
        if let Some(c) = &brute_check
            && c.decisive()
        {
            // A decisive brute force confirms the signs it can observe.
            for &k in &c.confirmed {
                signs.confidence[k] = 1.0;
            }
        }
        if let Some(c) = brute_check.as_mut()
            && !c.disagree.is_empty()
        {
            if c.decisive() {
                tracing::warn!(layer = layer_no, neurons = ?c.disagree, "brute-force sign check disagrees decisively; its signs are adopted");
                for &k in &c.disagree {
                    signs.signs[k] = c.best_signs[k];
                    signs.confidence[k] = 1.0;
                }
                signs.method = corrected_by_brute_force(signs.method);
                c.adopted = true;
            } else {
                // Settle the neurons whose sign alone is established; flag the rest.
                let (settled, open): (Vec<usize>, Vec<usize>) =
                    c.disagree.iter().partition(|&&k| c.decisive_for(k));
                if !settled.is_empty() {
                    tracing::warn!(layer = layer_no, neurons = ?settled, "brute-force sign check is decisive for some disagreeing neurons; their signs are adopted");
                    for &k in &settled {
                        signs.signs[k] = c.best_signs[k];
                        signs.confidence[k] = 1.0;
                    }
                    signs.method = corrected_by_brute_force(signs.method);
                    c.adopted = true;
                }
                if !open.is_empty() && c.refutes_chosen() {
                    // The chosen signs cannot explain the gradients while the best pattern does: the
                    // best is the better guess even though no single neuron is settled. Still flagged.
                    tracing::warn!(layer = layer_no, neurons = ?open, "brute-force sign check refutes the chosen signs; the best pattern's are used, flagged as low confidence");
                    for &k in &open {
                        signs.signs[k] = c.best_signs[k];
                    }
                    signs.method = corrected_by_brute_force(signs.method);
                    c.adopted = true;
                } else if !open.is_empty() {
                    tracing::warn!(layer = layer_no, neurons = ?open, "brute-force sign check disagrees; flagged as low confidence");
                }
                brute_flagged = open;
            }
        }
        let mut lowc = signs.low_confidence(p.sign_confidence_min);
        for k in brute_flagged {
            if !lowc.contains(&k) {
                lowc.push(k);
            }
        }
        lowc.sort_unstable();
        for r in 0..found {
            if signs.signs[r] < 0.0 {
                for c in 0..dim {
                    layer.weight[(r, c)] = -layer.weight[(r, c)];
                }
                layer.bias[r] = -layer.bias[r];
            }
        }
        state
            .low_confidence_signs
            .extend(lowc.iter().map(|&k| (layer_no, k)));
        let report = LayerReport {
            layer: layer_no,
            width,
            neurons_found: found,
            dead: (found..width).collect(),
            always_on: always_on_neurons,
            critical_points: sig.critical_points,
            measured_witnesses: sig.measured_witnesses,
            attached_points: sig.attached_points,
            lines: sig.lines,
            queries: StageQueries {
                search: sig.search_queries,
                signature: sig.signature_queries,
                refine: sig.refine_queries,
                sign: signs.queries + brute_check.as_ref().map_or(0, |c| c.queries),
            },
            seconds: StageSeconds {
                signatures: sig_secs,
                sign: t1.elapsed().as_secs_f64(),
                target: co.target_seconds() - target0,
            },
            sign_method: signs.method.to_string(),
            brute_check,
            sign_confidence: signs.confidence.clone(),
            low_confidence: lowc,
            max_null_residual: kept
                .iter()
                .map(|&k| sig.neurons[k].residual)
                .fold(0.0, f64::max),
            partially_constrained: (0..kept.len())
                .filter(|&r| !sig.neurons[kept[r]].unconstrained.is_empty())
                .collect(),
        };
        tracing::info!(
            layer = layer_no,
            found,
            width,
            queries = co.queries(),
            "layer recovered"
        );
        if !report.partially_constrained.is_empty() {
            // The run goes on (the deeper layers' costs are still worth measuring), but the
            // extraction will be refused as incomplete at the end: say so now, not hours later.
            tracing::warn!(
                layer = layer_no,
                neurons = ?report.partially_constrained,
                "neurons accepted with unconstrained inputs (set to 0): the extraction will be incomplete"
            );
        }
        state.push_layer(&layer, report);
        known.layers.push(layer);
        if let (Some(d), StageOracle::Journal(j)) = (&dir, &stage_oracle) {
            state.queries = co.queries();
            state.wall_seconds = earlier_seconds + start.elapsed().as_secs_f64();
            state.target_seconds = earlier_target_seconds + co.target_seconds();
            d.commit(&state)?;
            j.begin_stage(known.layers.len() as u64)?;
        }
        progress(ProgressEvent::LayerDone);
    }
    progress(ProgressEvent::Stage("output layer"));
    let mut rng = ChaCha20Rng::seed_from_u64(p.seed ^ 0x5151_5151);
    let q0 = co.queries();
    let (out_layer, resid) = fit_output(&co, &known, p.origin_scale, &mut rng)
        .map_err(|e| at_layer(e, hidden.len() + 1, &known))?;
    let output_queries = co.queries() - q0;
    let mut layers = known.layers.clone();
    layers.push(out_layer);
    let network = Network::new(layers)?;
    // Verification on fresh queries: never hand back a silently wrong model.
    progress(ProgressEvent::Stage("verify"));
    let q0 = co.queries();
    let verify_rel_error =
        verify(&co, &network, p, &mut rng).map_err(|e| at_layer(e, hidden.len() + 1, &known))?;
    let verify_queries = co.queries() - q0;
    let resume_info = match &stage_oracle {
        StageOracle::Journal(j) => {
            let (rows, batches) = j.replayed();
            Some(ResumeInfo {
                runs: state.runs,
                queries_before_this_run: resumed_queries,
                replayed_queries: rows,
                replayed_batches: batches,
                journal_diverged: j.diverged(),
            })
        }
        StageOracle::Plain(_) => None,
    };
    let report = ExtractionReport {
        schema: 1,
        arch: arch.to_string(),
        params: p.clone(),
        total_queries: co.queries(),
        wall_seconds: earlier_seconds + start.elapsed().as_secs_f64(),
        target_seconds: earlier_target_seconds + co.target_seconds(),
        layers: state.reports.clone(),
        output_queries,
        output_fit_residual: resid,
        low_confidence_signs: state.low_confidence_signs.clone(),
        verify_queries,
        verify_rel_error,
        resume: resume_info,
        precision: PrecisionReport {
            requested,
            used: p.precision,
            probe: state.precision_probe.clone(),
            reached_bits: -verify_rel_error.max(f64::MIN_POSITIVE).log2(),
        },
    };
    // NaN counts as a failure too.
    if verify_rel_error.is_nan() || verify_rel_error > p.verify_rel_tol {
        return Err(ExtractError::VerificationFailed {
            rel_error: verify_rel_error,
            extraction: Box::new(Extraction { network, report }),
        });
    }
    if let Some(l) = report
        .layers
        .iter()
        .find(|l| !l.partially_constrained.is_empty())
    {
        return Err(ExtractError::Incomplete {
            layer: l.layer,
            neurons: l.partially_constrained.clone(),
            extraction: Box::new(Extraction { network, report }),
        });
    }
    Ok(Extraction { network, report })
}

fn at_layer(e: ExtractError, layer: usize, known: &KnownPrefix) -> ExtractError {
    match e {
        ExtractError::Oracle(OracleError::BudgetExhausted { budget, used }) => {
            ExtractError::BudgetExhausted {
                by_target: false,
                layer,
                budget,
                used,
                recovered: known.layers.clone(),
            }
        }
        ExtractError::Oracle(OracleError::TargetBudgetSpent { budget, used }) => {
            ExtractError::BudgetExhausted {
                by_target: true,
                layer,
                budget,
                used,
                recovered: known.layers.clone(),
            }
        }
        other => other,
    }
}

/// The report's sign method once the brute-force check changed some of its signs.
fn corrected_by_brute_force(method: &'static str) -> &'static str {
    match method {
        "last-layer-lstsq" => "last-layer-lstsq, corrected by brute force",
        "soe-exact" => "soe-exact, corrected by brute force",
        "neuron-wiggle" => "neuron-wiggle, corrected by brute force",
        "soe-exact + neuron-wiggle" => "soe-exact + neuron-wiggle, corrected by brute force",
        "neuron-wiggle + isolated wiggle" => {
            "neuron-wiggle + isolated wiggle, corrected by brute force"
        }
        "soe-exact + neuron-wiggle + isolated wiggle" => {
            "soe-exact + neuron-wiggle + isolated wiggle, corrected by brute force"
        }
        m if m.ends_with(", corrected by brute force") => m,
        _ => "polynomial methods, corrected by brute force",
    }
}
