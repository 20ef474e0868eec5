//! `netxray serve`: a model file behind the JSON prediction API of `netxray-oracle-http`.

use anyhow::{Context, Result};
use clap::Args;
use netxray_oracle_http::{Predictor, Server, ServerConfig};
use netxray_relu::format::load_network;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model file to serve (.safetensors, .npz, or .onnx — answered by the tract ONNX runtime).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on. Loopback by default; port 0 picks a free port (the bound address is
    /// printed on stdout as `listening on http://ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Bearer token required on every request (default: $NETXRAY_TOKEN when set; none otherwise).
    #[arg(long)]
    pub token: Option<String>,
    /// Queries (rows) answered in the server's lifetime; then every request gets 429 budget_exhausted.
    #[arg(long)]
    pub max_queries: Option<u64>,
    /// Round every output to this many decimal digits (a common defence; at most 15).
    #[arg(long)]
    pub round_digits: Option<u32>,
    /// Reveal the architecture string in GET /v1/info (hidden by default).
    #[arg(long)]
    pub expose_arch: bool,
    /// Most rows per request (default 65536).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Largest request body in bytes (default 33554432 = 32 MiB).
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
}

/// Runs `serve` until SIGINT or SIGTERM.
pub fn run(a: ServeArgs) -> Result<()> {
    let net = if netxray_onnx::is_onnx_path(&a.model) {
        // Answered by the ONNX runtime (float32), as the deployed file would be.
        Model::Onnx(netxray_onnx::OnnxMlp::load(&a.model)?)
    } else {
        Model::Relu(
            load_network(&a.model)
                .with_context(|| format!("cannot load model {}", a.model.display()))?,
        )
    };
    let token = a.token.or_else(|| {
        std::env::var("NETXRAY_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    let defaults = ServerConfig::default();
    let cfg = ServerConfig::builder()
        .token(token)
        .max_queries(a.max_queries)
        .round_digits(a.round_digits)
        .expose_arch(a.expose_arch)
        .max_batch_rows(a.max_batch.unwrap_or(defaults.max_batch_rows))
        .max_body_bytes(a.max_body_bytes.unwrap_or(defaults.max_body_bytes))
        .build()?;
    if !a.addr.ip().is_loopback() && cfg.token.is_none() {
        eprintln!(
            "warning: serving on {} without --token: anyone who can reach it can query the model",
            a.addr
        );
    }
    let (d_in, d_out) = (net.input_dim(), net.output_dim());
    let server = match net {
        Model::Relu(n) => Server::new(n, cfg),
        Model::Onnx(m) => Server::new(OnnxPredictor(m), cfg),
    };
    let handle = server.clone();
    server.run_until_signal(a.addr, |addr| {
        // Tests and scripts read this line to learn the port.
        println!("listening on http://{addr} (input width {d_in}, output width {d_out})");
        let _ = std::io::stdout().flush();
    })?;
    println!("stopped after answering {} queries", handle.queries_used());
    Ok(())
}

/// The model file being served.
enum Model {
    Relu(netxray_relu::Network),
    Onnx(netxray_onnx::OnnxMlp),
}

impl Model {
    fn input_dim(&self) -> usize {
        match self {
            Model::Relu(n) => n.input_dim(),
            Model::Onnx(m) => m.input_dim(),
        }
    }
    fn output_dim(&self) -> usize {
        match self {
            Model::Relu(n) => n.output_dim(),
            Model::Onnx(m) => m.output_dim(),
        }
    }
}

/// An ONNX file served through the tract runtime.
struct OnnxPredictor(netxray_onnx::OnnxMlp);

impl Predictor for OnnxPredictor {
    fn input_dim(&self) -> usize {
        self.0.input_dim()
    }
    fn output_dim(&self) -> usize {
        self.0.output_dim()
    }
    fn arch(&self) -> String {
        self.0.network().arch().to_string()
    }
    fn predict(&self, xs: faer::MatRef<'_, f64>) -> Result<faer::Mat<f64>, String> {
        self.0.forward(xs).map_err(|e| e.to_string())
    }
}
