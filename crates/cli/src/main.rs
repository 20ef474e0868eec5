//! `netxray`: the command line. Parses arguments, calls the libraries, prints. No logic of its own.

mod extract;
mod hw;
mod lth;
mod model;
mod serve;
mod snn;
mod train;

use clap::{Parser, Subcommand};

/// Look inside deployed neural networks: black-box parameter extraction of ReLU networks, and
/// (coming) sparse spiking networks with u-Ticket balancing on a PE-array hardware model.
#[derive(Debug, Parser)]
#[command(name = "netxray", version, about, long_about = None)]
struct Cli {
    /// Log level filter (e.g. `info`, `debug`, `netxray_extract=debug`); also read from RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, compare and train ReLU networks.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Recover every weight and bias of a ReLU network from black-box queries.
    Extract(extract::ExtractArgs),
    /// Serve a model file as a JSON prediction API (POST /v1/predict, GET /v1/info) until Ctrl-C.
    Serve(serve::ServeArgs),
    /// PE-array hardware model (utilization, cycles, latency, energy) and u-Ticket balancing of
    /// masked checkpoints: `hw [report] | balance | sweep`.
    Hw(hw::HwArgs),
    /// Spiking neural networks: train (checkpointed, resumable) and evaluate.
    #[command(subcommand)]
    Snn(snn::SnnCommand),
    /// Lottery-ticket pruning (LTH) or u-Ticket of a spiking network, with the hardware model
    /// every round; resumable (rerun the same command).
    Lth(lth::LthArgs),
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Create a random network and save it (canonical safetensors).
    New(model::NewArgs),
    /// Print the architecture, parameter count and per-layer statistics of a model file.
    Inspect(model::InspectArgs),
    /// Align two networks up to neuron permutation and positive scaling and report their distance.
    Compare(model::CompareArgs),
    /// Train a ReLU MLP classifier on a dataset and save it.
    Train(train::TrainArgs),
}

fn main() {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Model(ModelCommand::New(a)) => model::new(a),
        Command::Model(ModelCommand::Inspect(a)) => model::inspect(a),
        Command::Model(ModelCommand::Compare(a)) => model::compare(a),
        Command::Model(ModelCommand::Train(a)) => train::run(a),
        Command::Extract(a) => extract::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Hw(a) => hw::run(a),
        Command::Snn(c) => snn::run(c),
        Command::Lth(a) => lth::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
