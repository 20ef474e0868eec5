//! `netxray model new | inspect | compare`.

use anyhow::{Context, Result};
use clap::Args;
use netxray_relu::compare::{CompareOptions, compare as compare_nets};
use netxray_relu::format::{SaveDtype, load_network, save_network};
use netxray_relu::{Arch, InitRecipe, Network};
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
    /// Output file (canonical safetensors).
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
}

fn load(p: &std::path::Path) -> Result<Network> {
    load_network(p).with_context(|| format!("cannot load {}", p.display()))
}

/// `model new`.
pub fn new(a: NewArgs) -> Result<()> {
    let net = Network::random(&a.arch, a.init, a.seed);
    let dtype = if a.f32 {
        SaveDtype::F32
    } else {
        SaveDtype::F64
    };
    save_network(&a.out, &net, dtype)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    println!(
        "wrote {} ({}, {} parameters)",
        a.out.display(),
        net.arch(),
        net.num_params()
    );
    Ok(())
}

/// `model inspect`.
pub fn inspect(a: InspectArgs) -> Result<()> {
    let net = load(&a.file)?;
    let layers: Vec<serde_json::Value> = net
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let ws: Vec<f64> = (0..l.fan_out())
                .flat_map(|r| (0..l.fan_in()).map(move |c| (r, c)))
                .map(|(r, c)| l.weight[(r, c)])
                .collect();
            let maxabs = ws.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
            let meanabs = ws.iter().map(|v| v.abs()).sum::<f64>() / ws.len() as f64;
            let zeros = ws.iter().filter(|v| **v == 0.0).count();
            serde_json::json!({
                "layer": i, "shape": [l.fan_out(), l.fan_in()],
                "weight_max_abs": maxabs, "weight_mean_abs": meanabs, "weight_zeros": zeros,
                "bias_max_abs": l.bias.iter().fold(0.0_f64, |m, v| m.max(v.abs())),
            })
        })
        .collect();
    if a.json {
        let v = serde_json::json!({"architecture": net.arch().to_string(), "parameters": net.num_params(), "layers": layers});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("file: {}", a.file.display());
    println!("architecture: {}", net.arch());
    println!("parameters: {}", net.num_params());
    for l in layers {
        println!(
            "  layers.{}: [{}, {}]  |w| max {:.4} mean {:.4}  zeros {}  |b| max {:.4}",
            l["layer"],
            l["shape"][0],
            l["shape"][1],
            l["weight_max_abs"].as_f64().unwrap_or(0.0),
            l["weight_mean_abs"].as_f64().unwrap_or(0.0),
            l["weight_zeros"],
            l["bias_max_abs"].as_f64().unwrap_or(0.0)
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
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("architecture: {}", r.arch);
    println!(
        "max |dtheta|: {:.3e} ({:.1} bits) at {}",
        r.max_param_error, r.param_bits, r.worst_tensor
    );
    println!(
        "max |f - f^|: {:.3e} ({:.1} bits), relative {:.3e}, on {} inputs",
        r.max_output_error, r.output_bits, r.max_output_error_rel, r.samples
    );
    println!("label agreement: {:.4}", r.label_agreement);
    if !r.dead.is_empty() {
        println!("dead neurons excluded (layer, neuron): {:?}", r.dead);
    }
    Ok(())
}
