//! Cost of one deeper layer of a wide, deep net, measured on its own: the known prefix is the target's
//! own first `LAYER − 1` hidden layers (a development bench: the attack itself never sees them, and an
//! end-to-end run must recover them first), so the signatures or the signs of layer `LAYER` of the
//! balanced 3072-256×8-10 can be timed in minutes instead of after an hour of earlier layers.
//!
//! Balanced init has unit-norm rows, the attack's own gauge, so the true prefix is what a perfect
//! recovery of the earlier layers would hand over (up to a permutation, which does not matter here).
//!
//! Environment (defaults in brackets):
//! - `ARCH` [3072-256-256-256-256-256-256-256-256-10], `MODEL_SEED` [7], `SEED` [1] (attack seed);
//! - `LAYER` [2]: the 1-based hidden layer to recover;
//! - `STAGE` [signs]: `signs` (the true rows of the layer with random sign flips, through
//!   `pipeline::sign_layer`), `signatures` (`layer::recover_layer`, scored against the true rows) or
//!   `both`, or `polish` (hyperplane polishing alone: the true rows of `NEURONS` [32] neurons of the
//!   layer, each perturbed by `ROW_PERTURB` [1e-8] of its norm as a signature-based deep-layer
//!   estimate comes out, polished behind the prefix as `recover_layer` polishes a screened layer;
//!   prints queries, time and the row errors before and after);
//! - `POLISH_WINDOW`, `STENCIL_KINK_FRACTION`, `POLISH_KEPT`, `POLISH_POINTS`, `POLISH_TRIM` [the
//!   f64 preset's]: `ExtractParams::projected_polish_window` (every layer behind a prefix is placed
//!   by projection here), `ExtractParams::stencil_kink_fraction`,
//!   `ExtractParams::polish_kept_per_unknown`, `ExtractParams::polish_points_per_unknown`,
//!   `ExtractParams::polish_trim_fraction`; `PROJECTED_POLISH_POINTS` [3.2]:
//!   `ExtractParams::projected_polish_points_per_unknown` (0: the schedule of unscreened layers);
//! - `PROBE_COORDS` [24], `PROBE_UNITS` [32]: the screening flags of `scripts/bench-scale.sh`;
//! - `POLISH_ROUNDS` [2]: hyperplane polishing rounds after the signatures (0 skips polishing, which
//!   on a deep 256-wide layer takes longer than the rest of the layer);
//! - `CLUSTER_TOL` [1e-7], `RESIDUAL_MAX` [1e-8], `PLANE_TOL` [1e-8]: the clustering tolerances
//!   before scaling; `DEEP_TOL_SCALE` [100]: their factor from layer 4 on (`deep_tol_scale`);
//! - `RUST_LOG` [warn]: the attack's log (e.g. `info,netxray_extract::sign=debug`);
//! - `PERTURB` [0]: Gaussian noise added to every known and signed row (weights and bias), of about
//!   this fraction of the row's norm in all, to stand in for the recovery error of real earlier
//!   layers (session 14 measured layer 1 of the 3072-256×8-10 at a median 9e-11 and worst 3e-7 of
//!   the row norm).
//!
//! `LAYER=2 STAGE=signs cargo bench -p netxray-extract --bench deep_layers`

use netxray_extract::known::KnownPrefix;
use netxray_extract::layer::recover_layer;
use netxray_extract::pipeline::sign_layer;
use netxray_extract::{CountingOracle, ExtractParams, NetworkOracle};
use netxray_relu::{Arch, InitRecipe, Layer, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use std::time::Instant;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let arch_s: String = env_or(
        "ARCH",
        "3072-256-256-256-256-256-256-256-256-10".to_string(),
    );
    let arch: Arch = arch_s.parse().expect("ARCH");
    let model_seed: u64 = env_or("MODEL_SEED", 7);
    let seed: u64 = env_or("SEED", 1);
    let layer_no: usize = env_or("LAYER", 2);
    let stage: String = env_or("STAGE", "signs".to_string());
    let hidden = arch.hidden().len();
    assert!(
        (1..=hidden).contains(&layer_no),
        "LAYER must be a hidden layer (1..={hidden})"
    );
    let net = Network::random(&arch, InitRecipe::Balanced, model_seed);
    let p = ExtractParams::builder()
        .seed(seed)
        .probe_coords(env_or("PROBE_COORDS", 24))
        .probe_units(env_or("PROBE_UNITS", 32))
        .polish_rounds(env_or("POLISH_ROUNDS", 2))
        .cluster_tol(env_or("CLUSTER_TOL", 1e-7))
        .null_residual_max(env_or("RESIDUAL_MAX", 1e-8))
        .plane_tol(env_or("PLANE_TOL", 1e-8))
        .deep_tol_scale(env_or("DEEP_TOL_SCALE", 100.0))
        .build()
        .expect("params");
    // Unset: the preset's value.
    let mut p = p;
    p.projected_polish_window = env_or("POLISH_WINDOW", p.projected_polish_window);
    p.stencil_kink_fraction = env_or("STENCIL_KINK_FRACTION", p.stencil_kink_fraction);
    p.polish_kept_per_unknown = env_or("POLISH_KEPT", p.polish_kept_per_unknown);
    p.polish_points_per_unknown = env_or("POLISH_POINTS", p.polish_points_per_unknown);
    p.projected_polish_points_per_unknown = env_or(
        "PROJECTED_POLISH_POINTS",
        p.projected_polish_points_per_unknown,
    );
    p.polish_trim_fraction = env_or("POLISH_TRIM", p.polish_trim_fraction);
    let p = p;
    let target = NetworkOracle::new(net.clone());
    let oracle = CountingOracle::new(&target, None);
    let perturb: f64 = env_or("PERTURB", 0.0);
    let mut noise_rng = ChaCha20Rng::seed_from_u64(seed ^ 0x0153);
    let mut noisy = |l: &Layer| -> Layer {
        let mut l = l.clone();
        if perturb > 0.0 {
            for r in 0..l.fan_out() {
                let norm = (0..l.fan_in())
                    .map(|c| l.weight[(r, c)].powi(2))
                    .sum::<f64>()
                    .sqrt();
                // Per entry, so that the whole row (bias included) is off by ~`perturb` of its norm.
                let s = perturb * norm / ((l.fan_in() + 1) as f64).sqrt();
                for c in 0..l.fan_in() {
                    l.weight[(r, c)] += s * noise_rng.sample::<f64, _>(StandardNormal);
                }
                l.bias[r] += s * noise_rng.sample::<f64, _>(StandardNormal);
            }
        }
        l
    };
    let known = KnownPrefix {
        layers: net.layers()[..layer_no - 1]
            .iter()
            .map(&mut noisy)
            .collect(),
        input_dim: arch.input_dim(),
    };
    let truth = &net.layers()[layer_no - 1];
    let truth_noisy = noisy(truth);
    let last_hidden = layer_no == hidden;
    let mut rng = ChaCha20Rng::seed_from_u64(
        seed ^ (0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(layer_no as u64)),
    );
    println!(
        "{arch_s} (balanced, seed {model_seed}), layer {layer_no} of {hidden}, attack seed {seed}, \
         known prefix: the target's own {} layer(s)",
        layer_no - 1
    );
    if stage == "signatures" || stage == "both" {
        let (q0, t0, target0) = (oracle.queries(), Instant::now(), oracle.target_seconds());
        let sig = recover_layer(
            &oracle,
            &known,
            truth.fan_out(),
            last_hidden,
            &p,
            &mut rng,
            |_, _| {},
        )
        .expect("recover_layer");
        let secs = t0.elapsed().as_secs_f64();
        let (mut matched, mut worst) = (vec![false; truth.fan_out()], 0.0_f64);
        // Row error against the truth: the recovered (w, b) scaled to the true row's norm and sign.
        let mut row_err: Vec<f64> = Vec::new();
        for n in &sig.neurons {
            let (best, cos) = (0..truth.fan_out())
                .map(|r| {
                    let c: f64 = (0..truth.fan_in())
                        .map(|c| truth.weight[(r, c)] * n.w[c])
                        .sum();
                    (r, c.abs())
                })
                .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
            matched[best] = true;
            worst = worst.max(1.0 - cos);
            let mut theta = n.w.clone();
            theta.push(n.b);
            row_err.push(row_error(truth, best, &theta));
        }
        row_err.sort_by(f64::total_cmp);
        if !row_err.is_empty() {
            println!(
                "row error vs truth (max entry / row norm): median {:.2e}, max {:.2e}",
                row_err[row_err.len() / 2],
                row_err[row_err.len() - 1]
            );
        }
        println!(
            "signatures: {} of {} neurons ({} validated, {} distinct true rows), worst 1-|cos| {:.2e}, \
             {} queries (search {}, signatures {}, refine {}), {:.1} s ({:.1} s in the target), {} lines, \
             {} critical points",
            sig.neurons.len(),
            truth.fan_out(),
            sig.neurons.iter().filter(|n| n.validated).count(),
            matched.iter().filter(|&&m| m).count(),
            worst,
            oracle.queries() - q0,
            sig.search_queries,
            sig.signature_queries,
            sig.refine_queries,
            secs,
            oracle.target_seconds() - target0,
            sig.lines,
            sig.critical_points,
        );
    }
    if stage == "polish" {
        polish_stage(&oracle, &known, truth, &p, &mut rng, layer_no);
    }
    if stage == "signs" || stage == "both" {
        // The recovered rows come with an unknown sign each: flip a random half of the true ones.
        let mut flip_rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5167);
        let flips: Vec<f64> = (0..truth.fan_out())
            .map(|_| if flip_rng.random::<bool>() { -1.0 } else { 1.0 })
            .collect();
        let mut unsigned: Layer = truth_noisy.clone();
        for (r, &s) in flips.iter().enumerate() {
            for c in 0..unsigned.fan_in() {
                unsigned.weight[(r, c)] *= s;
            }
            unsigned.bias[r] *= s;
        }
        let (q0, t0, target0) = (oracle.queries(), Instant::now(), oracle.target_seconds());
        let out =
            sign_layer(&oracle, &known, &unsigned, last_hidden, &p, &mut rng).expect("sign_layer");
        let secs = t0.elapsed().as_secs_f64();
        let wrong: Vec<usize> = (0..flips.len())
            .filter(|&k| out.signs[k] * flips[k] < 0.0)
            .collect();
        let low = out.low_confidence(p.sign_confidence_min);
        let wrong_unflagged = wrong.iter().filter(|k| !low.contains(k)).count();
        for &k in &wrong {
            println!(
                "wrong sign: neuron {k}, confidence {:.3}",
                out.confidence[k]
            );
        }
        println!(
            "signs ({}): {} wrong of {} ({} of them not flagged), {} low-confidence, {} queries, {:.1} s \
             ({:.1} s in the target)",
            out.method,
            wrong.len(),
            flips.len(),
            wrong_unflagged,
            low.len(),
            oracle.queries() - q0,
            secs,
            oracle.target_seconds() - target0
        );
    }
}

/// Row error against the truth: `theta` (weights then bias) scaled to the true row's norm and sign,
/// largest entry error over the true row's norm.
fn row_error(truth: &Layer, r: usize, theta: &[f64]) -> f64 {
    let n = truth.fan_in();
    let tn = (0..n)
        .map(|c| truth.weight[(r, c)].powi(2))
        .sum::<f64>()
        .sqrt();
    let dot: f64 = (0..n).map(|c| truth.weight[(r, c)] * theta[c]).sum();
    let en = theta[..n].iter().map(|v| v * v).sum::<f64>().sqrt();
    let s = tn / en * dot.signum();
    let e = (0..n)
        .map(|c| (s * theta[c] - truth.weight[(r, c)]).abs())
        .fold((s * theta[n] - truth.bias[r]).abs(), f64::max);
    e / tn
}

/// Median and largest of `v`.
fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

/// `STAGE=polish`: the cost and effect of hyperplane polishing on its own, for estimates as precise
/// as a deep layer's signatures leave them.
fn polish_stage(
    oracle: &CountingOracle<'_, NetworkOracle>,
    known: &KnownPrefix,
    truth: &Layer,
    p: &ExtractParams,
    rng: &mut ChaCha20Rng,
    layer_no: usize,
) {
    use netxray_extract::cluster::NeuronEstimate;
    let neurons: usize = env_or("NEURONS", 32_usize).min(truth.fan_out());
    let row_perturb: f64 = env_or("ROW_PERTURB", 1e-8);
    // As `recover_layer` sees them on a screened deeper layer.
    let scaled = if layer_no > p.deep_tol_from && p.deep_tol_scale > 1.0 {
        p.with_scaled_tolerances(p.deep_tol_scale)
    } else {
        p.clone()
    };
    let n = truth.fan_in();
    let mut noise_rng = ChaCha20Rng::seed_from_u64(0x9011_5400 ^ layer_no as u64);
    let mut est: Vec<NeuronEstimate> = (0..neurons)
        .map(|r| {
            let mut theta: Vec<f64> = (0..n).map(|c| truth.weight[(r, c)]).collect();
            theta.push(truth.bias[r]);
            let norm = theta[..n].iter().map(|v| v * v).sum::<f64>().sqrt();
            let s = row_perturb / ((n + 1) as f64).sqrt();
            for v in theta.iter_mut() {
                *v = *v / norm + s * noise_rng.sample::<f64, _>(StandardNormal);
            }
            NeuronEstimate::with_row(theta, scaled.hyperplane_weight)
        })
        .collect();
    let before = median_max(
        (0..neurons)
            .map(|r| row_error(truth, r, &est[r].theta))
            .collect(),
    );
    let half = scaled.line_half_length * scaled.origin_scale * (known.input_dim as f64).sqrt();
    let (q0, t0, target0) = (oracle.queries(), Instant::now(), oracle.target_seconds());
    let stats = netxray_extract::polish::polish(
        oracle,
        known,
        &mut est,
        &vec![false; neurons],
        &scaled,
        rng,
        half,
        scaled.search_tol(),
        true,
    )
    .expect("polish");
    let secs = t0.elapsed().as_secs_f64();
    let after = median_max(
        (0..neurons)
            .map(|r| row_error(truth, r, &est[r].theta))
            .collect(),
    );
    let queries = oracle.queries() - q0;
    println!(
        "polish ({neurons} neurons, window {:e}, rows perturbed by {row_perturb:e}): \
         {queries} queries ({:.1} per placed crossing), {secs:.1} s ({:.1} s in the target; placing \
         {:.1} s, searching {:.1} s, fitting {:.1} s), placed {}, used {}, \
         row error median / max {:.2e} / {:.2e} before, {:.2e} / {:.2e} after",
        scaled.projected_polish_window,
        queries as f64 / stats.placed.max(1) as f64,
        oracle.target_seconds() - target0,
        stats.place_s,
        stats.search_s,
        stats.fit_s,
        stats.placed,
        stats.used,
        before.0,
        before.1,
        after.0,
        after.1,
    );
}
