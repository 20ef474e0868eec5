//! `netxray extract`: black-box extraction of a ReLU network.

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use netxray_extract::pipeline::ProgressEvent;
use netxray_extract::{
    ExtractError, ExtractParams, NetworkOracle, Oracle, OracleError, Precision, extract_resumable,
};
use netxray_oracle_http::{ClientConfig, HttpOracle, RoundingGuard};
use netxray_relu::Arch;
use netxray_relu::format::{SaveDtype, load_network, save_network};
use std::path::PathBuf;

/// Arguments of `extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Target: a model file (.safetensors, .npz, or .onnx — evaluated by the tract ONNX runtime in
    /// float32), or the URL of a prediction API (`http://host:port`, e.g. one started by `netxray
    /// serve`). The attack only queries it through the oracle interface; a file is read to serve
    /// answers, never shown to the attack.
    #[arg(long)]
    pub target: PathBuf,
    /// Architecture of the target (e.g. 784-128-10); defaults to the widths the model file declares,
    /// or for a URL to the architecture its /v1/info exposes (the threat model assumes a known
    /// architecture).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Bearer token for an http:// target (default: $NETXRAY_TOKEN when set).
    #[arg(long)]
    pub token: Option<String>,
    /// Where to write the recovered network (canonical safetensors, f64).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the JSON report (queries and time per layer and stage, signs and confidences).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Seed of every random choice; the same seed gives the same result.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop with an error once this many queries have been spent.
    #[arg(long)]
    pub max_queries: Option<u64>,
    /// Checkpoint directory: every finished layer is committed there and the answers of the layer in
    /// progress are journaled, so that rerunning the same command after a crash or kill continues
    /// without asking a query twice (only the batch in flight is lost) and gives the same result.
    /// Created when missing; refused if it belongs to another architecture or seed.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// First-layer screening: probe each critical point on K input coordinates before measuring it in
    /// full, so that kinks of deeper layers cost 4K+2 queries instead of 4·d0+2. Use 24 on deep nets
    /// with wide inputs (784-16×8-1: layer 1 in 0.63 M instead of 8.7 M queries); on shallow nets it
    /// costs queries and precision. 0 = off.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub probe_coords: usize,
    /// Deeper-layer screening: probe each critical point of layers 2+ on the active ones among K
    /// fixed units of the previous layer before measuring it in full, so that kinks of still deeper
    /// layers cost ~2K+2 queries instead of 4·|active|+2. For wide hidden layers (≥ 4K units; 32 on
    /// the 3072-256×8-10). 0 = off.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub probe_units: usize,
    /// With --probe-units: the agreement tolerances of layers behind three or more recovered layers
    /// are multiplied by this factor, because the recovered prefix's own errors (~1e-8 of a row by the
    /// third layer) then set how well two witnesses of one neuron agree. 1 = no scaling.
    #[arg(long, value_name = "F", default_value_t = 100.0)]
    pub deep_tol_scale: f64,
    /// With --probe-units: how many recovered layers must stand in front of a layer before
    /// --deep-tol-scale applies to it. Default: the library's (3, layer 4 onwards).
    #[arg(long, value_name = "N")]
    pub deep_tol_from: Option<usize>,
    /// First finite-difference step of a signature, as a fraction of the distance from the stencil's
    /// centre to the kink it measures (in (0, 1]). Default: the precision preset's (f64 1/4, f32 1).
    #[arg(long, value_name = "F")]
    pub stencil_kink_fraction: Option<f64>,
    /// Isolated-wiggle probes per neuron and pass on expansive layers (0 = off): each neuron is
    /// wiggled where every other active unit of its layer can stay exactly still, so that a vote is
    /// clean proof of the active side.
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub isolated_wiggles: usize,
    /// Largest pool of random inputs on which the output is fitted from the last hidden layer's
    /// neurons found so far; search lines are aimed through the inputs it explains worst, where a
    /// rarely active (or almost-always-on) neuron is still missing. 0 = off.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub residual_aim_points: usize,
    /// Rounds of hyperplane polishing per layer: every neuron's hyperplane refitted through about
    /// 2·(width+1) predicted crossings on fresh lines per round (0 = off). Default: the precision
    /// preset's (f64 2, f32 3). Needs an explicit --precision f64|f32.
    #[arg(long, value_name = "N")]
    pub polish_rounds: Option<usize>,
    /// Predicted crossings per neuron and polishing round, per unknown of its hyperplane (≥ 1).
    /// Default: the precision preset's (2). Needs an explicit --precision f64|f32.
    #[arg(long, value_name = "F")]
    pub polish_points_per_unknown: Option<f64>,
    /// Polishing of layers screened with --probe-units (crossings placed by projection): one round
    /// of this many crossings per unknown, then top-ups of only the points a neuron still lacks (0 or
    /// ≥ 2; 0 = the rounds of --polish-points-per-unknown). Default: the precision preset's (f64
    /// 3.2, f32 0). Needs an explicit --precision f64|f32.
    #[arg(long, value_name = "F")]
    pub projected_polish_points_per_unknown: Option<f64>,
    /// Fraction of a neuron's polishing points its trimmed fit goes through before the outlier cut
    /// (in (0, 1]). Default: the precision preset's (0.5). Needs an explicit --precision f64|f32.
    #[arg(long, value_name = "F")]
    pub polish_trim_fraction: Option<f64>,
    /// Skip the brute-force sign cross-check of hidden layers of width ≤ 16 (by default all 2^w sign
    /// patterns are scored against measured gradients; a decisive disagreement corrects the signs,
    /// an indecisive one flags the neurons as low confidence).
    #[arg(long)]
    pub no_brute_check: bool,
    /// Standard deviation of the inputs the attack probes with (the target's natural input scale).
    #[arg(long, default_value_t = 1.0)]
    pub input_scale: f64,
    /// Arithmetic the attack's tolerances are set for: `f64` (the 2^-30 presets), `f32` (float32
    /// deployments; experimental, see docs/extraction.md), or `auto` (96 queries first measure the
    /// answers' noise and choose). Default f64.
    #[arg(long, default_value = "f64", value_parser = parse_precision)]
    pub precision: Precision,
    /// For a model-file target: the arithmetic the simulated deployment answers in. `f64` (default:
    /// the reference targets store f32-valued weights but are attacked in f64 arithmetic, as the
    /// papers do), `f32` (what a float32 deployment computes), or `auto` (f32 when every stored
    /// parameter is an f32 value, e.g. a PyTorch export, else f64).
    #[arg(long, default_value = "f64", value_parser = parse_precision)]
    pub target_arith: Precision,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse()
}

/// Runs `extract`.
pub fn run(a: ExtractArgs) -> Result<()> {
    let url = a
        .target
        .to_str()
        .filter(|t| t.starts_with("http://") || t.starts_with("https://"));
    let mut remote: Option<&HttpOracle> = None;
    // Declared here so that the chosen oracle outlives the borrow below; only one is initialised.
    let http: HttpOracle;
    let local: NetworkOracle;
    let onnx: OnnxOracle;
    let (oracle, arch): (&dyn Oracle, Arch) = match url {
        Some(url) => {
            let token = a.token.clone().or_else(|| {
                std::env::var("NETXRAY_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
            });
            let cfg = ClientConfig::builder().token(token).build()?;
            http = HttpOracle::connect(url, cfg)?;
            let arch = match (&a.arch, &http.info().arch) {
                (Some(arch), _) => arch.clone(),
                (None, Some(s)) => s.parse().with_context(|| {
                    format!("{url} exposes an unreadable architecture '{s}'; pass --arch")
                })?,
                (None, None) => bail!(
                    "{url} does not expose its architecture ({} inputs, {} outputs); pass --arch, e.g. --arch {}-...-{}",
                    http.input_dim(),
                    http.output_dim(),
                    http.input_dim(),
                    http.output_dim()
                ),
            };
            remote = Some(&http);
            (&http, arch)
        }
        None if netxray_onnx::is_onnx_path(&a.target) => {
            let model = netxray_onnx::OnnxMlp::load(&a.target)?;
            let arch = a.arch.clone().unwrap_or_else(|| model.network().arch());
            tracing::info!("ONNX target: answered by the tract runtime in f32 arithmetic");
            onnx = OnnxOracle(model);
            (&onnx, arch)
        }
        None => {
            let net = load_network(&a.target)
                .with_context(|| format!("cannot load target {}", a.target.display()))?;
            let arch = a.arch.clone().unwrap_or_else(|| net.arch());
            let f32_file = net.layers().iter().all(|l| {
                l.bias.iter().all(|&v| f64::from(v as f32) == v)
                    && (0..l.fan_out()).all(|r| {
                        (0..l.fan_in())
                            .all(|c| f64::from(l.weight[(r, c)] as f32) == l.weight[(r, c)])
                    })
            });
            let in_f32 = match a.target_arith {
                Precision::F32 => true,
                Precision::F64 => false,
                Precision::Auto => f32_file,
            };
            if in_f32 {
                tracing::info!("the target answers in f32 arithmetic (float32 deployment)");
                local = NetworkOracle::new_f32(&net);
            } else {
                local = NetworkOracle::new(net);
            }
            (&local, arch)
        }
    };
    if arch.input_dim() != oracle.input_dim() || arch.output_dim() != oracle.output_dim() {
        bail!(
            "--arch {arch} does not match the target's {} inputs and {} outputs",
            oracle.input_dim(),
            oracle.output_dim()
        );
    }
    // Watches the first answers: a target that rounds its outputs stops the attack early with a clear
    // message (exact extraction is impossible there) instead of ending in a wrong model.
    let oracle = RoundingGuard::new(oracle);
    // With auto the probe picks the preset, which sets these, only once the attack runs.
    for (set, flag) in [
        (a.polish_rounds.is_some(), "--polish-rounds"),
        (a.stencil_kink_fraction.is_some(), "--stencil-kink-fraction"),
        (
            a.polish_points_per_unknown.is_some(),
            "--polish-points-per-unknown",
        ),
        (a.polish_trim_fraction.is_some(), "--polish-trim-fraction"),
        (
            a.projected_polish_points_per_unknown.is_some(),
            "--projected-polish-points-per-unknown",
        ),
    ] {
        if set && a.precision == Precision::Auto {
            bail!("{flag} needs --precision f64 or f32 (with auto the chosen preset sets it)");
        }
    }
    let mut params = ExtractParams::builder()
        .seed(a.seed)
        .threads(a.threads)
        .max_queries(a.max_queries)
        .origin_scale(a.input_scale)
        .probe_coords(a.probe_coords)
        .probe_units(a.probe_units)
        .deep_tol_scale(a.deep_tol_scale)
        .precision(a.precision)
        .brute_check(!a.no_brute_check)
        .isolated_wiggles(a.isolated_wiggles)
        .residual_aim_points(a.residual_aim_points);
    // Optional flags: unset keeps the library's (or the precision preset's) value.
    if let Some(n) = a.deep_tol_from {
        params = params.deep_tol_from(n);
    }
    if let Some(n) = a.polish_rounds {
        params = params.polish_rounds(n);
    }
    if let Some(f) = a.stencil_kink_fraction {
        params = params.stencil_kink_fraction(f);
    }
    if let Some(f) = a.polish_points_per_unknown {
        params = params.polish_points_per_unknown(f);
    }
    if let Some(f) = a.polish_trim_fraction {
        params = params.polish_trim_fraction(f);
    }
    if let Some(f) = a.projected_polish_points_per_unknown {
        params = params.projected_polish_points_per_unknown(f);
    }
    let params = params.build()?;
    if let Some(t) = a.threads {
        // A second initialisation (e.g. in tests) is harmless: keep the existing pool.
        let _ = rayon_pool(t);
    }
    let bar = ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {pos}/{len} neurons {msg} ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let result = extract_resumable(
        &oracle,
        &arch,
        &params,
        a.resume.as_deref(),
        |ev| match ev {
            ProgressEvent::LayerStart { layer, width } => {
                bar.set_prefix(format!("layer {layer}"));
                bar.set_length(width as u64);
                bar.set_position(0);
                bar.set_message("");
            }
            ProgressEvent::Neurons { done, .. } => bar.set_position(done as u64),
            ProgressEvent::Stage(s) => bar.set_message(s.to_string()),
            ProgressEvent::LayerDone => {}
        },
    );
    bar.finish_and_clear();
    let (ex, failure) = match result {
        Ok(ex) => (ex, None),
        Err(ExtractError::VerificationFailed {
            rel_error,
            extraction,
        }) => (
            *extraction,
            Some(format!(
                "extraction did not verify (relative error {rel_error:.3e})"
            )),
        ),
        Err(e @ ExtractError::Incomplete { .. }) => {
            let msg = e.to_string();
            let ExtractError::Incomplete { extraction, .. } = e else {
                unreachable!("matched above")
            };
            (*extraction, Some(msg))
        }
        Err(ExtractError::BudgetExhausted {
            by_target,
            layer,
            budget,
            used,
            recovered,
        }) => {
            let msg = if by_target {
                format!(
                    "server query budget spent: the target answers at most {budget} queries and has answered {used} (while recovering hidden layer {layer})"
                )
            } else {
                format!(
                    "query budget of {budget} exhausted after {used} queries while recovering hidden layer {layer}"
                )
            };
            let hint = match &a.resume {
                Some(d) if by_target => format!(
                    "; rerun with --resume {} once the server answers again to continue",
                    d.display()
                ),
                Some(d) => format!(
                    "; rerun with --resume {} and a larger --max-queries to continue",
                    d.display()
                ),
                None => String::new(),
            };
            if recovered.is_empty() {
                bail!("{msg}; no layer was complete{hint}");
            }
            // Save what was recovered: the finished hidden layers (the last one stored as a plain
            // affine layer), so that the work is not lost.
            let partial = a.out.with_extension("partial.safetensors");
            let net = netxray_relu::Network::new(recovered)?;
            save_network(&partial, &net, SaveDtype::F64)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            bail!(
                "{msg}; the {} finished hidden layer(s) were saved to {}{hint}",
                net.layers().len(),
                partial.display()
            );
        }
        Err(ExtractError::Oracle(e @ OracleError::RoundedOutputs { .. })) => bail!("{e}"),
        Err(e) => return Err(e.into()),
    };
    save_network(&a.out, &ex.network, SaveDtype::F64)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&ex.report)?;
        write_atomic(path, json.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let r = &ex.report;
    println!("architecture: {}", r.arch);
    for l in &r.layers {
        println!(
            "layer {}: {}/{} neurons, {} dead, queries search {} signature {} refine {} sign {} ({}), {:.2}s ({:.2}s in the target)",
            l.layer,
            l.neurons_found,
            l.width,
            l.dead.len(),
            l.queries.search,
            l.queries.signature,
            l.queries.refine,
            l.queries.sign,
            l.sign_method,
            l.seconds.signatures + l.seconds.sign,
            l.seconds.target
        );
        if !l.always_on.is_empty() {
            println!(
                "  always-on neurons {:?}: no boundary to meet; recovered from the output's linear part (bias not identifiable)",
                l.always_on
            );
        }
        if let Some(c) = &l.brute_check {
            println!(
                "  brute-force sign check: {} patterns on {} points, chosen score {:.1e}, second best {:.1e}, {}",
                c.patterns,
                c.points,
                c.chosen_score,
                c.second_score,
                if c.disagree.is_empty() {
                    "agrees".to_string()
                } else if c.adopted {
                    format!(
                        "disagreed on neurons {:?}: decisive, its signs adopted",
                        c.disagree
                    )
                } else {
                    format!("DISAGREES on neurons {:?} (flagged)", c.disagree)
                }
            );
        }
    }
    println!(
        "output layer: {} queries, fit residual {:.3e}",
        r.output_queries, r.output_fit_residual
    );
    println!("total queries: {}", r.total_queries);
    if let Some(ri) = &r.resume
        && ri.runs > 1
    {
        println!(
            "resumed (run {}): {} queries committed before, {} answered from the journal of the interrupted stage",
            ri.runs, ri.queries_before_this_run, ri.replayed_queries
        );
    }
    if let Some(h) = remote {
        let s = h.stats();
        println!(
            "HTTP: {} requests, {} rows answered, {} retries ({} possibly counted twice by the server)",
            s.requests, s.rows_answered, s.retries, s.ambiguous_retries
        );
    }
    println!(
        "wall time: {:.2}s ({:.2}s waiting for the target's answers)",
        r.wall_seconds, r.target_seconds
    );
    println!(
        "verification (fresh queries): max |f - f^| / max |f| = {:.3e} ({:.1} bits)",
        r.verify_rel_error, r.precision.reached_bits
    );
    let pr = &r.precision;
    match &pr.probe {
        Some(p) => println!(
            "precision: {} tolerances ({} asked; answers' noise {:.1e} relative, {})",
            pr.used.name(),
            pr.requested.name(),
            p.noise_rel,
            if p.f32_answers {
                "every answer an f32 value"
            } else {
                "answers wider than f32"
            }
        ),
        None => println!("precision: {} tolerances", pr.used.name()),
    }
    if !r.low_confidence_signs.is_empty() {
        println!(
            "low-confidence signs (layer, neuron): {:?}",
            r.low_confidence_signs
        );
    }
    if let Some(why) = failure {
        bail!(
            "{why}; the result was written to {} for inspection",
            a.out.display()
        );
    }
    Ok(())
}

fn rayon_pool(threads: usize) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    Ok(())
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("report")
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// An ONNX file behind the [`Oracle`] trait: answers come from the ONNX runtime; the weights it
/// holds stay private to this wrapper.
struct OnnxOracle(netxray_onnx::OnnxMlp);

impl Oracle for OnnxOracle {
    fn input_dim(&self) -> usize {
        self.0.input_dim()
    }
    fn output_dim(&self) -> usize {
        self.0.output_dim()
    }
    fn query_batch(&self, xs: faer::MatRef<'_, f64>) -> Result<faer::Mat<f64>, OracleError> {
        self.0.forward(xs).map_err(|e| match e {
            netxray_onnx::OnnxError::BadInput(m) if m.contains("non-finite") => {
                OracleError::NonFinite
            }
            netxray_onnx::OnnxError::BadInput(m) => OracleError::BadAnswer(m),
            other => OracleError::Unavailable(other.to_string()),
        })
    }
}
