//! `netxray serve`: a model file behind the JSON prediction API of `netxray-oracle-http`.

use anyhow::{Context, Result};
use clap::Args;
use netxray_oracle_http::{Server, ServerConfig};
use netxray_relu::format::load_network;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model file to serve (.safetensors or .npz).
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
    if netxray_onnx::is_onnx_path(&a.model) {
        // The server answers with its own f64 forward pass; an ONNX file must be answered by the
        // ONNX runtime, which the server does not embed yet.
        anyhow::bail!(
            "{}: serve reads .safetensors and .npz models; attack an ONNX file directly with `netxray extract --target {}`",
            a.model.display(),
            a.model.display()
        );
    }
    let net = load_network(&a.model)
        .with_context(|| format!("cannot load model {}", a.model.display()))?;
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
    let server = Server::new(net, cfg);
    let handle = server.clone();
    server.run_until_signal(a.addr, |addr| {
        // Tests and scripts read this line to learn the port.
        println!("listening on http://{addr} (input width {d_in}, output width {d_out})");
        let _ = std::io::stdout().flush();
    })?;
    println!("stopped after answering {} queries", handle.queries_used());
    Ok(())
}
