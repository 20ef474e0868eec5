//! # netxray-oracle-http
//!
//! Owns black-box access over HTTP, from both sides:
//!
//! - [`Server`]: serves any model `netxray_relu::format::load_network` reads as a JSON prediction API
//!   (`POST /v1/predict`, `GET /v1/info`), the way a defender would deploy it: every input validated
//!   (4xx with a JSON `{"error", "code"}`, never a crash), optional bearer token, per-server query
//!   budget, optional output rounding, bounded bodies, batches and concurrency, graceful shutdown.
//! - [`HttpOracle`]: the attacker's side, a remote API behind `netxray_extract::Oracle`: batching,
//!   bounded concurrency, retries with backoff, `Retry-After`, exact query counting, clear errors.
//! - [`rounding`]: detection of rounded outputs, so that an attack on a rounding target stops early
//!   with a clear message instead of returning a wrong model.
//!
//! The wire format is in [`wire`]; limits and retry policy, with their defaults, in [`config`]. The API
//! is described for users in `docs/serve.md`.

pub mod client;
pub mod config;
pub mod rounding;
pub mod server;
pub mod wire;

pub use client::{ClientStats, HttpOracle};
pub use config::{ClientConfig, ClientConfigBuilder, ServerConfig, ServerConfigBuilder};
pub use rounding::{RoundingDetector, RoundingGuard, Verdict, detect_rounding};
pub use server::{Predictor, RunningServer, Server};
pub use wire::{ErrorBody, ServerInfo};

/// Errors of configuring and running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("invalid setting '{name}': {reason}")]
    InvalidConfig {
        /// Field name as in the config builders.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why it failed (address in use, permission denied, ...).
        source: std::io::Error,
    },
    /// Another I/O failure of the server (runtime, signal handlers, listener).
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}
