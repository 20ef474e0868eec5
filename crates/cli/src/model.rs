//! `netxray model new | inspect | compare`.

use anyhow::{Context, Result};
use clap::Args;
use netxray_relu::compare::{CompareOptions, compare as compare_nets};
use netxray_relu::format::{SaveDtype, load_network, save_network};
use netxray_relu::{Arch, InitRecipe, Network, ReluError};
use serde::Serialize;
use std::path::PathBuf;

/// Arguments of `model new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Architecture, input width first (e.g. 784-128-128-10).
    #[arg(long)]
    pub arch: Arch,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Init recipe: he (He-normal, zero bias), cjm (N(0,1)/sqrt(fan_out), zero bias) or balanced
    /// (unit-norm rows, each neuron active on about half of the standard-normal inputs).
    #[arg(long, default_value = "he")]
    pub init: InitRecipe,
    /// Output file: canonical safetensors, or an ONNX MLP (`Gemm`/`Relu`, f32 weights) when it ends
    /// in `.onnx`.
    #[arg(long)]
    pub out: PathBuf,
    /// Store f32 instead of f64.
    #[arg(long)]
    pub f32: bool,
}

/// Arguments of `model inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model file (.safetensors or .npz).
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `model compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The true network.
    #[arg(long)]
    pub truth: PathBuf,
    /// The network to compare with it.
    #[arg(long)]
    pub candidate: PathBuf,
    /// Sampled inputs for the output error.
    #[arg(long, default_value_t = 100_000)]
    pub samples: usize,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also compare on a dataset's test images (mnist, fashion-mnist, cifar10), preprocessed as
    /// `model train` does: x/255, then standardised with the training split's per-channel mean and
    /// std. Needs --data-dir.
    #[arg(long, value_parser = parse_dataset, requires = "data_dir")]
    pub dataset: Option<netxray_data::DatasetKind>,
    /// Folder with the dataset's files (IDX or CIFAR-10 binary).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

fn parse_dataset(s: &str) -> Result<netxray_data::DatasetKind, String> {
    s.parse()
        .map_err(|e: netxray_data::DataError| e.to_string())
}

/// Test images of `kind`, standardised with the training split's statistics (as `model train`).
fn test_inputs(kind: netxray_data::DatasetKind, dir: &std::path::Path) -> Result<faer::Mat<f64>> {
    use netxray_data::Split;
    let mut train = netxray_data::load(kind, dir, Split::Train)
        .with_context(|| format!("loading the {kind} training split (for its mean and std)"))?;
    let mut test = netxray_data::load(kind, dir, Split::Test)
        .with_context(|| format!("loading the {kind} test split"))?;
    let (mean, std) = train.standardise();
    test.normalise(&mean, &std)?;
    let d = test.feature_dim();
    Ok(faer::Mat::from_fn(test.len(), d, |i, j| {
        f64::from(test.sample(i)[j])
    }))
}

/// Loads a model file: safetensors, npz, or ONNX (its weights, read from the validated graph).
pub(crate) fn load(p: &std::path::Path) -> Result<Network> {
    if netxray_onnx::is_onnx_path(p) {
        return Ok(netxray_onnx::OnnxMlp::load(p)?.network().clone());
    }
    load_network(p).map_err(|e| match e {
        // These already name the file.
        ReluError::BadFile { .. } | ReluError::Io { .. } => anyhow::Error::new(e),
        other => anyhow::anyhow!("{}: {other}", p.display()),
    })
}

/// `model new`.
pub fn new(a: NewArgs) -> Result<()> {
    let net = Network::random(&a.arch, a.init, a.seed);
    let dtype = if a.f32 {
        SaveDtype::F32
    } else {
        SaveDtype::F64
    };
    if netxray_onnx::is_onnx_path(&a.out) {
        // ONNX deployments are float32: the file holds the weights rounded to f32.
        netxray_onnx::save_onnx(&a.out, &net)?;
    } else {
        save_network(&a.out, &net, dtype)
            .with_context(|| format!("cannot write {}", a.out.display()))?;
    }
    println!(
        "wrote {} ({}, {} parameters)",
        a.out.display(),
        net.arch(),
        net.num_params()
    );
    Ok(())
}

/// Summary statistics of a list of values.
#[derive(Debug, Serialize)]
struct Stats {
    min: f64,
    max: f64,
    mean_abs: f64,
    max_abs: f64,
    zeros: usize,
    count: usize,
}

fn stats(values: impl Iterator<Item = f64>) -> Stats {
    let mut s = Stats {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        mean_abs: 0.0,
        max_abs: 0.0,
        zeros: 0,
        count: 0,
    };
    let mut sum_abs = 0.0;
    for v in values {
        s.min = s.min.min(v);
        s.max = s.max.max(v);
        s.max_abs = s.max_abs.max(v.abs());
        sum_abs += v.abs();
        s.zeros += usize::from(v == 0.0);
        s.count += 1;
    }
    if s.count == 0 {
        s.min = 0.0;
        s.max = 0.0;
    } else {
        s.mean_abs = sum_abs / s.count as f64;
    }
    s
}

/// One layer of `model inspect`.
#[derive(Debug, Serialize)]
struct LayerInfo {
    layer: usize,
    weight: String,
    bias: String,
    /// `[out, in]`.
    shape: [usize; 2],
    activation: &'static str,
    weight_stats: Stats,
    bias_stats: Stats,
}

/// The output of `model inspect --json`.
#[derive(Debug, Serialize)]
struct InspectReport {
    schema: u32,
    file: String,
    architecture: String,
    parameters: usize,
    layers: Vec<LayerInfo>,
}

/// `model inspect`.
pub fn inspect(a: InspectArgs) -> Result<()> {
    let net = load(&a.file)?;
    let n = net.layers().len();
    let layers: Vec<LayerInfo> = net
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| LayerInfo {
            layer: i,
            weight: format!("layers.{i}.weight"),
            bias: format!("layers.{i}.bias"),
            shape: [l.fan_out(), l.fan_in()],
            activation: if i + 1 < n { "relu" } else { "linear" },
            weight_stats: stats(
                (0..l.fan_out()).flat_map(|r| (0..l.fan_in()).map(move |c| l.weight[(r, c)])),
            ),
            bias_stats: stats(l.bias.iter().copied()),
        })
        .collect();
    let report = InspectReport {
        schema: 1,
        file: a.file.display().to_string(),
        architecture: net.arch().to_string(),
        parameters: net.num_params(),
        layers,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("file: {}", report.file);
    println!("architecture: {}", report.architecture);
    println!("parameters: {}", report.parameters);
    println!(
        "{:<18} {:>12} {:>7} | {:>10} {:>10} {:>10} {:>6} | {:>10} {:>10} {:>10} {:>6}",
        "tensor",
        "[out, in]",
        "act",
        "w min",
        "w max",
        "w mean|.|",
        "w=0",
        "b min",
        "b max",
        "b mean|.|",
        "b=0"
    );
    for l in &report.layers {
        let (w, b) = (&l.weight_stats, &l.bias_stats);
        println!(
            "{:<18} {:>12} {:>7} | {:>10.4e} {:>10.4e} {:>10.4e} {:>6} | {:>10.4e} {:>10.4e} {:>10.4e} {:>6}",
            format!("layers.{}", l.layer),
            format!("[{}, {}]", l.shape[0], l.shape[1]),
            l.activation,
            w.min,
            w.max,
            w.mean_abs,
            w.zeros,
            b.min,
            b.max,
            b.mean_abs,
            b.zeros
        );
    }
    Ok(())
}

/// `model compare`.
pub fn compare(a: CompareArgs) -> Result<()> {
    let (t, c) = (load(&a.truth)?, load(&a.candidate)?);
    let r = compare_nets(
        &t,
        &c,
        &CompareOptions {
            samples: a.samples,
            seed: a.seed,
        },
    )
    .context("cannot compare")?;
    let on_data = match (&a.dataset, &a.data_dir) {
        (Some(kind), Some(dir)) => {
            let xs = test_inputs(*kind, dir)?;
            if xs.ncols() != t.input_dim() {
                anyhow::bail!(
                    "{kind} test images have {} features but the networks take {} inputs",
                    xs.ncols(),
                    t.input_dim()
                );
            }
            Some((
                kind.to_string(),
                netxray_relu::compare::compare_on_inputs(&t, &c, xs.as_ref())?,
            ))
        }
        _ => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some((name, d)) = &on_data {
            v["dataset"] = serde_json::json!({ "name": name, "test": d });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("architecture: {}", r.arch);
    println!(
        "max |dtheta|: {:.3e} ({:.1} bits) at {}{:?}",
        r.max_param_error, r.param_bits, r.worst_tensor, r.worst_index
    );
    println!(
        "max |f - f^|: {:.3e} ({:.1} bits); relative to max |f| = {:.3e}: {:.3e} ({:.1} bits); {} inputs (seed {})",
        r.max_output_error,
        r.output_bits,
        r.max_abs_output,
        r.max_output_error_rel,
        r.output_rel_bits,
        r.samples,
        r.seed
    );
    println!(
        "label agreement ({}): {:.4}",
        r.agreement_kind, r.label_agreement
    );
    if let Some((name, d)) = &on_data {
        println!(
            "{name} test images: {} inputs, label agreement {:.4} ({} differ), max |f - f^| {:.3e} (relative {:.3e})",
            d.samples,
            d.label_agreement,
            d.label_disagreements,
            d.max_output_error,
            d.max_output_error_rel
        );
    }
    println!();
    println!(
        "{:<18} {:>12} {:>8} {:>14} {:>10}",
        "tensor", "max |dtheta|", "bits", "at", "compared"
    );
    for t in &r.tensors {
        println!(
            "{:<18} {:>12.3e} {:>8.1} {:>14} {:>10}",
            t.tensor,
            t.max_abs_error,
            t.bits,
            format!("{:?}", t.index),
            t.compared
        );
    }
    if r.dead.is_empty() {
        println!("dead neurons excluded: none");
    } else {
        println!("dead neurons excluded ({}):", r.dead.len());
        for d in &r.dead {
            println!(
                "  hidden layer {} neuron {} (candidate {}): {:?}",
                d.layer, d.neuron, d.candidate, d.reason
            );
        }
    }
    Ok(())
}
