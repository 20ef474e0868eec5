//! `netxray hw [report] | balance | sweep`: the PE-array hardware model and one-shot u-Ticket
//! balancing on any masked checkpoint (layout: docs/hardware-model.md).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use netxray_uticket::checkpoint::{
    BALANCE_METADATA_KEY, Checkpoint, CheckpointLayer, GeometrySource, LAYERS_METADATA_KEY,
    geometry_to_json, load_checkpoint, read_geometry_file,
};
use netxray_uticket::hw::{HwReport, SweepBalance, SweepReport};
use netxray_uticket::{
    BalanceParams, BalanceSummary, Balancer, HwParams, LayerWeights, Mapping, TAvgMode,
    UticketError, analyze, balance, sweep,
};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Arguments of `hw`: a subcommand, or (without one) the arguments of `hw report`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct HwArgs {
    // Boxed to keep the top-level command enum small (clippy::large_enum_variant).
    #[command(subcommand)]
    command: Option<Box<HwCommand>>,
    #[command(flatten)]
    report: Box<ReportArgs>,
}

#[derive(Debug, Subcommand)]
enum HwCommand {
    /// Utilization, work/idle/latency cycles and energy of a masked checkpoint (the default).
    Report(ReportArgs),
    /// Balance every PE group of a masked checkpoint (u-Ticket, one shot) and save it.
    Balance(BalanceArgs),
    /// Measure the checkpoint with several PE counts (the paper's Table III).
    Sweep(SweepArgs),
}

/// The checkpoint and its geometry.
#[derive(Debug, Args)]
struct ModelArgs {
    /// Masked checkpoint (safetensors: `<path>.weight` [+ `<path>.weight_mask`], layer list in the
    /// `netxray.layers` metadata; see docs/hardware-model.md).
    // An Option only so that `hw <subcommand>` can leave the flattened default `hw --model` empty;
    // clap still requires it wherever it applies.
    #[arg(long, required = true)]
    model: Option<PathBuf>,
    /// JSON file with the layer list and output maps, `[{"name", "kind": "conv"|"linear", "out_h",
    /// "out_w"}, ...]` in network order; replaces the checkpoint's `netxray.layers` metadata.
    #[arg(long)]
    geometry: Option<PathBuf>,
}

impl ModelArgs {
    /// The `--model` path (clap guarantees it is present).
    fn path(&self) -> &Path {
        self.model.as_deref().expect("clap requires --model")
    }
}

/// Hardware-model settings shared by every `hw` command (defaults in docs/hardware-model.md).
#[derive(Debug, Args)]
struct ArrayArgs {
    /// Timesteps T (every weight is applied once per timestep). Default 4.
    #[arg(long)]
    timesteps: Option<usize>,
    /// Also count (and balance) the first conv layer (skipped by default: analog input).
    #[arg(long)]
    include_first: bool,
    /// Also count (and balance) linear layers (skipped by default).
    #[arg(long)]
    include_linear: bool,
    /// Weight-to-PE mapping: filter-per-pe (the paper's, default) or input-channel-split.
    #[arg(long)]
    mapping: Option<Mapping>,
    /// T_avg in the utilization formula: ceil (reference code, default) or exact (mean).
    #[arg(long)]
    t_avg: Option<TAvgMode>,
    /// Dynamic energy per input spike E_d. Default 1 (energies in units of E_d).
    #[arg(long)]
    e_dynamic: Option<f64>,
    /// Leakage energy per PE cycle E_l. Default 0.21 (calibrated on the paper's energy savings).
    #[arg(long)]
    e_leak: Option<f64>,
    /// Input spike sparsity for layers without a measured value in the checkpoint. Default 0.
    #[arg(long)]
    spike_sparsity: Option<f64>,
    /// Clock in MHz for the wall-clock estimate. Default 400.
    #[arg(long)]
    clock_mhz: Option<f64>,
}

impl ArrayArgs {
    fn params(&self, pes: Option<usize>) -> Result<HwParams> {
        let mut b = HwParams::builder()
            .include_first_conv(self.include_first)
            .include_linear(self.include_linear);
        if let Some(v) = pes {
            b = b.pes(v);
        }
        if let Some(v) = self.timesteps {
            b = b.timesteps(v);
        }
        if let Some(v) = self.mapping {
            b = b.mapping(v);
        }
        if let Some(v) = self.t_avg {
            b = b.t_avg(v);
        }
        if let Some(v) = self.e_dynamic {
            b = b.e_dynamic(v);
        }
        if let Some(v) = self.e_leak {
            b = b.e_leak(v);
        }
        if let Some(v) = self.spike_sparsity {
            b = b.spike_sparsity(v);
        }
        if let Some(v) = self.clock_mhz {
            b = b.clock_hz(v * 1e6);
        }
        Ok(b.build()?)
    }
}

/// Arguments of `hw report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Number of PEs n. Default 16.
    #[arg(long)]
    pes: Option<usize>,
    #[command(flatten)]
    array: ArrayArgs,
    /// Print the full report (per layer and per PE group) as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `hw balance`.
#[derive(Debug, Args)]
pub struct BalanceArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where to write the balanced checkpoint (weights ⊙ new masks, masks as `<path>.weight_mask`).
    #[arg(long)]
    out: PathBuf,
    /// Number of PEs n (group width). Default 16.
    #[arg(long)]
    pes: Option<usize>,
    /// random (the paper: random regrow/remove) or magnitude (regrow the largest |w| of --reference,
    /// remove the smallest |w| of the model).
    #[arg(long, default_value = "random")]
    balancer: Balancer,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint whose weights rank regrowth for the magnitude balancer (e.g. the rewind point);
    /// default: the model's own weights.
    #[arg(long)]
    reference: Option<PathBuf>,
    #[command(flatten)]
    array: ArrayArgs,
    /// Print the balancing summary and the utilization before/after as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `hw sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// PE counts, comma-separated; energy and latency are normalised to the first.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32,64")]
    pes: Vec<usize>,
    /// Balance the masks for each PE count before measuring it (as in the paper's Table III).
    #[arg(long)]
    balance: Option<Balancer>,
    /// Seed of the balancer.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    array: ArrayArgs,
    /// Print the sweep as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `hw`.
pub fn run(a: HwArgs) -> Result<()> {
    match a.command.map(|c| *c) {
        None => report(*a.report),
        Some(HwCommand::Report(r)) => report(r),
        Some(HwCommand::Balance(b)) => run_balance(b),
        Some(HwCommand::Sweep(s)) => run_sweep(s),
    }
}

/// Loads the checkpoint. Its warnings are printed by [`warn`] once the command has succeeded, so that
/// a failing command prints exactly one line.
fn load(m: &ModelArgs) -> Result<Checkpoint> {
    let geometry = m.geometry.as_deref().map(read_geometry_file).transpose()?;
    load_checkpoint(m.path(), geometry).map_err(|e| with_file(e, m.path()))
}

/// Prints the checkpoint's warnings to stderr.
fn warn(ck: &Checkpoint) {
    for w in &ck.warnings {
        eprintln!("warning: {w}");
    }
}

/// Prefixes errors that do not name the file with it.
fn with_file(e: UticketError, file: &Path) -> anyhow::Error {
    match e {
        UticketError::Io { .. } | UticketError::BadFile { .. } => anyhow::Error::new(e),
        other => anyhow::Error::new(other).context(file.display().to_string()),
    }
}

/// The `hw report --json` document: the model report plus where it came from.
#[derive(Serialize)]
struct ReportJson<'a> {
    model: String,
    geometry_source: GeometrySource,
    warnings: &'a [String],
    #[serde(flatten)]
    report: &'a HwReport,
}

fn report(a: ReportArgs) -> Result<()> {
    let params = a.array.params(a.pes)?;
    let ck = load(&a.model)?;
    let report = analyze(&ck.masked_layers(), &params).map_err(|e| with_file(e, a.model.path()))?;
    warn(&ck);
    if a.json {
        let doc = ReportJson {
            model: a.model.path().display().to_string(),
            geometry_source: ck.geometry_source,
            warnings: &ck.warnings,
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_report(a.model.path(), &ck, &report);
    }
    Ok(())
}

fn print_report(model: &Path, ck: &Checkpoint, r: &HwReport) {
    let p = &r.params;
    println!(
        "model: {} (geometry: {})",
        model.display(),
        match ck.geometry_source {
            GeometrySource::Metadata => "netxray.layers metadata",
            GeometrySource::File => "geometry file",
            GeometrySource::PerPixel => "none: 1x1 maps, cycles per output pixel",
        }
    );
    println!(
        "array: {} PEs, {} mapping, T = {}, T_avg {}, E_d = {}, E_l = {}, S_in default {}, clock {} MHz",
        p.pes,
        p.mapping,
        p.timesteps,
        p.t_avg,
        p.e_dynamic,
        p.e_leak,
        p.spike_sparsity,
        p.clock_hz / 1e6
    );
    println!(
        "{:<24} {:<6} {:<18} {:>7} {:>6} {:>9} {:>7} {:>6} {:>6} {:>14} {:>14} {:>14} {:>11}",
        "layer",
        "kind",
        "shape",
        "out",
        "groups",
        "nnz",
        "density",
        "util",
        "min",
        "work",
        "idle",
        "latency",
        "energy"
    );
    for l in &r.layers {
        let shape: Vec<String> = l.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "{:<24} {:<6} {:<18} {:>7} {:>6} {:>9} {:>7.4} {:>6.4} {:>6.4} {:>14} {:>14} {:>14} {:>11.4e}",
            l.name,
            l.kind.to_string(),
            shape.join("x"),
            format!("{}x{}", l.out_h, l.out_w),
            l.groups.len(),
            l.nnz,
            l.density,
            l.utilization,
            l.utilization_min,
            l.work_cycles,
            l.idle_cycles,
            l.latency_cycles,
            l.energy
        );
    }
    if !r.skipped.is_empty() {
        let s: Vec<String> = r
            .skipped
            .iter()
            .map(|s| format!("{} ({})", s.name, s.reason))
            .collect();
        println!("not counted: {}", s.join(", "));
    }
    let t = &r.totals;
    println!(
        "network: {} layers, {} weights, {} kept (density {:.4})",
        t.counted_layers,
        t.params,
        t.nnz,
        t.nnz as f64 / t.params as f64
    );
    println!(
        "  utilization     {:.4} (parameter-weighted), {:.4} (unweighted)",
        t.utilization_weighted, t.utilization_unweighted
    );
    println!("  work cycles     {}", t.work_cycles);
    println!("  idle cycles     {}", t.idle_cycles);
    println!(
        "  latency cycles  {} ({:.6} ms at {} MHz)",
        t.latency_cycles,
        t.wall_time_s * 1e3,
        p.clock_hz / 1e6
    );
    println!(
        "  energy          {:.6e} (dynamic {:.6e}, leakage {:.6e}; units of E_d)",
        t.energy, t.energy_dynamic, t.energy_leakage
    );
}

/// Weights for the magnitude balancer: the model's current weights and the reference weights
/// (another checkpoint's, matched by layer name and shape, or the model's own).
fn reference_weights(ck: &Checkpoint, reference: Option<&Path>) -> Result<Vec<Vec<f32>>> {
    let Some(path) = reference else {
        return Ok(ck.layers.iter().map(|l| l.weights.clone()).collect());
    };
    let rf = load_checkpoint(path, None).map_err(|e| with_file(e, path))?;
    let by_name: HashMap<&str, &CheckpointLayer> =
        rf.layers.iter().map(|l| (l.layer.name(), l)).collect();
    ck.layers
        .iter()
        .map(|l| {
            let name = l.layer.name();
            let Some(r) = by_name.get(name) else {
                bail!(
                    "{}: no layer '{name}' (needed as reference)",
                    path.display()
                );
            };
            if r.layer.shape() != l.layer.shape() {
                bail!(
                    "{}: layer '{name}' has shape {:?}, the model's has {:?}",
                    path.display(),
                    r.layer.shape().dims(),
                    l.layer.shape().dims()
                );
            }
            Ok(r.weights.clone())
        })
        .collect()
}

/// The `hw balance --json` document.
#[derive(Serialize)]
struct BalanceJson<'a> {
    schema: u32,
    model: String,
    out: String,
    summary: &'a BalanceSummary,
    before: &'a HwReport,
    after: &'a HwReport,
}

fn run_balance(a: BalanceArgs) -> Result<()> {
    let hw = a.array.params(a.pes)?;
    let bp = BalanceParams::builder()
        .pes(hw.pes)
        .balancer(a.balancer)
        .seed(a.seed)
        .mapping(hw.mapping)
        .selection(hw.selection)
        .build()?;
    let ck = load(&a.model)?;
    let layers = ck.masked_layers();
    let model = a.model.path();
    let before = analyze(&layers, &hw).map_err(|e| with_file(e, model))?;
    if a.balancer == Balancer::Magnitude && a.reference.is_none() {
        eprintln!(
            "note: no --reference: regrowth ranks the model's own weights (pruned weights stored as 0 \
             tie, so regrowth among them is random)"
        );
    }
    let refs = reference_weights(&ck, a.reference.as_deref())?;
    let weights: Vec<LayerWeights<'_>> = ck
        .layers
        .iter()
        .zip(&refs)
        .map(|(l, r)| LayerWeights {
            current: &l.weights,
            reference: r,
        })
        .collect();
    let outcome = balance(&layers, Some(&weights), &bp).map_err(|e| with_file(e, model))?;
    let after = analyze(&outcome.apply(&layers)?, &hw)?;
    let mut meta = vec![(
        BALANCE_METADATA_KEY.to_string(),
        serde_json::json!({
            "balancer": bp.balancer,
            "seed": bp.seed,
            "pes": bp.pes,
            "mapping": bp.mapping,
            "selection": bp.selection,
            "regrown": outcome.summary.regrown,
            "removed": outcome.summary.removed,
            "source": model.display().to_string(),
        })
        .to_string(),
    )];
    if ck.geometry_source == GeometrySource::File {
        // Keep the user's geometry with the balanced file so later reports need no --geometry.
        meta.push((
            LAYERS_METADATA_KEY.to_string(),
            geometry_to_json(&ck.geometry()),
        ));
    }
    ck.save_with_masks(&a.out, &outcome.masks, &meta)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    warn(&ck);
    if a.json {
        let doc = BalanceJson {
            schema: 1,
            model: model.display().to_string(),
            out: a.out.display().to_string(),
            summary: &outcome.summary,
            before: &before,
            after: &after,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "balanced {} with {} PEs ({} balancer, seed {}, {} mapping)",
        model.display(),
        bp.pes,
        bp.balancer,
        bp.seed,
        bp.mapping
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "layer", "util", "-> util", "regrown", "removed", "nnz", "-> nnz"
    );
    let after_util: HashMap<&str, f64> = after
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.utilization))
        .collect();
    for (l, s) in before.layers.iter().zip(
        outcome
            .summary
            .layers
            .iter()
            .filter(|s| s.skipped.is_none()),
    ) {
        println!(
            "{:<24} {:>9.4} {:>9.4} {:>9} {:>9} {:>10} {:>10}",
            l.name,
            l.utilization,
            after_util[l.name.as_str()],
            s.regrown,
            s.removed,
            s.nnz_before,
            s.nnz_after
        );
    }
    let (b, f) = (&before.totals, &after.totals);
    println!(
        "network utilization {:.4} -> {:.4} (parameter-weighted), {:.4} -> {:.4} (unweighted)",
        b.utilization_weighted,
        f.utilization_weighted,
        b.utilization_unweighted,
        f.utilization_unweighted
    );
    println!(
        "latency cycles {} -> {}, idle cycles {} -> {}, energy {:.6e} -> {:.6e}",
        b.latency_cycles, f.latency_cycles, b.idle_cycles, f.idle_cycles, b.energy, f.energy
    );
    println!(
        "regrown {}, removed {}; wrote {}",
        outcome.summary.regrown,
        outcome.summary.removed,
        a.out.display()
    );
    Ok(())
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    let base = a.array.params(None)?;
    let ck = load(&a.model)?;
    let layers = ck.masked_layers();
    let weights: Vec<LayerWeights<'_>> = ck
        .layers
        .iter()
        .map(|l| LayerWeights {
            current: &l.weights,
            reference: &l.weights,
        })
        .collect();
    let sb = match a.balance {
        Some(balancer) => Some(SweepBalance {
            params: BalanceParams::builder()
                .balancer(balancer)
                .seed(a.seed)
                .build()?,
            weights: Some(&weights),
        }),
        None => None,
    };
    let r: SweepReport =
        sweep(&layers, &base, &a.pes, sb.as_ref()).map_err(|e| with_file(e, a.model.path()))?;
    warn(&ck);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "sweep of {}{}; energy and latency normalised to {} PEs",
        a.model.path().display(),
        match r.balanced_with {
            Some(b) => format!(" (balanced with {b} for each PE count)"),
            None => String::new(),
        },
        r.rows[0].pes
    );
    println!(
        "{:>5} {:>8} {:>8} {:>14} {:>14} {:>14} {:>12} {:>8} {:>8}",
        "PEs", "util", "util_u", "work", "idle", "latency", "energy", "E norm", "lat norm"
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    for row in &r.rows {
        println!(
            "{:>5} {:>8.4} {:>8.4} {:>14} {:>14} {:>14} {:>12.4e} {:>8} {:>8}",
            row.pes,
            row.utilization_weighted,
            row.utilization_unweighted,
            row.work_cycles,
            row.idle_cycles,
            row.latency_cycles,
            row.energy,
            fmt(row.energy_normalized),
            fmt(row.latency_normalized)
        );
    }
    Ok(())
}
