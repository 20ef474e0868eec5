//! Limits of the server and retry policy of the client, each with its default and the reason for it.
//!
//! Build with [`ServerConfig::builder`] / [`ClientConfig::builder`]; `build` validates every value and
//! names the first invalid one.

use crate::Error;
use std::time::Duration;

/// Checked limits and options of the prediction server. Construct through [`ServerConfigBuilder`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Most rows (queries) one request may carry. Default 65,536: large enough that a client is never
    /// bottlenecked by round trips, small enough that one request's forward pass stays well under a second
    /// for the models this project handles.
    pub max_batch_rows: usize,
    /// Largest request body in bytes; larger bodies get 413 before being read whole. Default 32 MiB: a
    /// full-precision row of 784 inputs is ~17 KB of JSON, so this admits batches of ~1,900 such rows,
    /// and bounds the memory of one request (body plus at most 4 bytes of parsed `f64` per body byte) to
    /// ~160 MiB.
    pub max_body_bytes: usize,
    /// Requests processed at once (reading, parsing, forward pass); more get 429 `rate_limited` with
    /// `Retry-After`. Default 8: with the body limit this caps the server's request memory at ~1.3 GiB
    /// and is twice the client's default concurrency, so a single well-behaved client is never refused.
    pub max_in_flight: usize,
    /// Time allowed to receive a request body. Default 30 s; a slower sender gets 408 so that it cannot
    /// hold a request slot forever.
    pub body_timeout: Duration,
    /// Queries (rows) the server answers in its lifetime (None: unlimited). A batch that does not fit in
    /// what remains is refused whole (429 `budget_exhausted`), never answered in part.
    pub max_queries: Option<u64>,
    /// Round every output to this many decimal digits (None: raw `f64`). At most 15 (beyond that `f64`
    /// has no digits left to round).
    pub round_digits: Option<u32>,
    /// Bearer token every request must carry (None: no authentication). Visible ASCII, no spaces.
    pub token: Option<String>,
    /// Whether `GET /v1/info` reveals the architecture string. Default false: a defender normally
    /// publishes the input and output widths only.
    pub expose_arch: bool,
    /// After a shutdown signal, how long in-flight requests may take before the server stops anyway.
    /// Default 10 s.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// A builder with the documented defaults.
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder::default()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfigBuilder::default()
            .build()
            .expect("defaults are valid")
    }
}

/// Builder for [`ServerConfig`]; setters take raw values and [`ServerConfigBuilder::build`] checks them.
#[derive(Debug, Clone)]
pub struct ServerConfigBuilder {
    c: ServerConfig,
}

impl Default for ServerConfigBuilder {
    fn default() -> Self {
        Self {
            c: ServerConfig {
                max_batch_rows: 65_536,
                max_body_bytes: 32 << 20,
                max_in_flight: 8,
                body_timeout: Duration::from_secs(30),
                max_queries: None,
                round_digits: None,
                token: None,
                expose_arch: false,
                shutdown_grace: Duration::from_secs(10),
            },
        }
    }
}

macro_rules! setter {
    ($cfg:ident, $name:ident, $t:ty) => {
        #[doc = concat!("Sets `", stringify!($name), "` (see [`", stringify!($cfg), "`]).")]
        pub fn $name(mut self, v: $t) -> Self {
            self.c.$name = v;
            self
        }
    };
}

fn bad(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        name,
        reason: reason.into(),
    }
}

/// Tokens travel in an HTTP header: visible ASCII only, so that nothing can be smuggled or mangled.
pub(crate) fn check_token(name: &'static str, t: &Option<String>) -> Result<(), Error> {
    if let Some(t) = t {
        if t.is_empty() {
            return Err(bad(name, "must not be empty when set"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                name,
                "must be visible ASCII without spaces (it is sent in the Authorization header)",
            ));
        }
    }
    Ok(())
}

impl ServerConfigBuilder {
    setter!(ServerConfig, max_batch_rows, usize);
    setter!(ServerConfig, max_body_bytes, usize);
    setter!(ServerConfig, max_in_flight, usize);
    setter!(ServerConfig, body_timeout, Duration);
    setter!(ServerConfig, max_queries, Option<u64>);
    setter!(ServerConfig, round_digits, Option<u32>);
    setter!(ServerConfig, token, Option<String>);
    setter!(ServerConfig, expose_arch, bool);
    setter!(ServerConfig, shutdown_grace, Duration);

    /// Validates every value and returns the checked configuration.
    pub fn build(self) -> Result<ServerConfig, Error> {
        let c = self.c;
        if c.max_batch_rows == 0 {
            return Err(bad("max_batch_rows", "must be at least 1"));
        }
        // Smaller than this and not even a one-row request of a tiny model fits.
        if c.max_body_bytes < 1024 {
            return Err(bad("max_body_bytes", "must be at least 1024"));
        }
        if c.max_in_flight == 0 {
            return Err(bad("max_in_flight", "must be at least 1"));
        }
        if c.body_timeout.is_zero() {
            return Err(bad("body_timeout", "must be positive"));
        }
        if c.max_queries == Some(0) {
            return Err(bad("max_queries", "must be at least 1 when set"));
        }
        if let Some(d) = c.round_digits
            && d > 15
        {
            return Err(bad(
                "round_digits",
                format!("must be at most 15 (f64 holds ~16 significant digits), got {d}"),
            ));
        }
        check_token("token", &c.token)?;
        Ok(c)
    }
}

/// Checked batching and retry policy of [`crate::HttpOracle`]. Construct through [`ClientConfigBuilder`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Bearer token sent with every request (None: none).
    pub token: Option<String>,
    /// Most rows per request. Default 4,096; lowered automatically to the server's advertised
    /// `max_batch_rows` and to what fits in its `max_body_bytes`.
    pub batch_rows: usize,
    /// Requests in flight at once, over all callers of one oracle. Default 4: enough to hide loopback
    /// and LAN latency, half the server's default `max_in_flight`.
    pub max_in_flight: usize,
    /// Attempts per request before giving up (1 = no retry). Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one. Default 50 ms.
    pub initial_backoff: Duration,
    /// Cap of the exponential backoff. Default 5 s.
    pub max_backoff: Duration,
    /// Longest `Retry-After` the client is willing to honour; a server asking for more makes the request
    /// fail with a clear error instead of stalling the attack. Default 60 s.
    pub max_retry_after: Duration,
    /// TCP connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// Whole-exchange timeout of one request. Default 120 s (a large batch on a slow model).
    pub request_timeout: Duration,
    /// Largest response body accepted. Default 256 MiB.
    pub max_response_bytes: u64,
}

impl ClientConfig {
    /// A builder with the documented defaults.
    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder::default()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfigBuilder::default()
            .build()
            .expect("defaults are valid")
    }
}

/// Builder for [`ClientConfig`]; setters take raw values and [`ClientConfigBuilder::build`] checks them.
#[derive(Debug, Clone)]
pub struct ClientConfigBuilder {
    c: ClientConfig,
}

impl Default for ClientConfigBuilder {
    fn default() -> Self {
        Self {
            c: ClientConfig {
                token: None,
                batch_rows: 4096,
                max_in_flight: 4,
                max_attempts: 5,
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(5),
                max_retry_after: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(120),
                max_response_bytes: 256 << 20,
            },
        }
    }
}

impl ClientConfigBuilder {
    setter!(ClientConfig, token, Option<String>);
    setter!(ClientConfig, batch_rows, usize);
    setter!(ClientConfig, max_in_flight, usize);
    setter!(ClientConfig, max_attempts, u32);
    setter!(ClientConfig, initial_backoff, Duration);
    setter!(ClientConfig, max_backoff, Duration);
    setter!(ClientConfig, max_retry_after, Duration);
    setter!(ClientConfig, connect_timeout, Duration);
    setter!(ClientConfig, request_timeout, Duration);
    setter!(ClientConfig, max_response_bytes, u64);

    /// Validates every value and returns the checked configuration.
    pub fn build(self) -> Result<ClientConfig, Error> {
        let c = self.c;
        check_token("token", &c.token)?;
        if c.batch_rows == 0 {
            return Err(bad("batch_rows", "must be at least 1"));
        }
        if c.max_in_flight == 0 {
            return Err(bad("max_in_flight", "must be at least 1"));
        }
        if c.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1"));
        }
        if c.initial_backoff.is_zero() {
            return Err(bad("initial_backoff", "must be positive"));
        }
        if c.max_backoff < c.initial_backoff {
            return Err(bad("max_backoff", "must be at least initial_backoff"));
        }
        if c.connect_timeout.is_zero() {
            return Err(bad("connect_timeout", "must be positive"));
        }
        if c.request_timeout.is_zero() {
            return Err(bad("request_timeout", "must be positive"));
        }
        if c.max_response_bytes < 1024 {
            return Err(bad("max_response_bytes", "must be at least 1024"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(e: Error) -> &'static str {
        match e {
            Error::InvalidConfig { name, .. } => name,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        ServerConfig::builder().build().unwrap();
        ClientConfig::builder().build().unwrap();
    }

    #[test]
    fn each_invalid_server_value_is_rejected_by_name() {
        let b = ServerConfig::builder;
        let cases: Vec<(ServerConfigBuilder, &str)> = vec![
            (b().max_batch_rows(0), "max_batch_rows"),
            (b().max_body_bytes(100), "max_body_bytes"),
            (b().max_in_flight(0), "max_in_flight"),
            (b().body_timeout(Duration::ZERO), "body_timeout"),
            (b().max_queries(Some(0)), "max_queries"),
            (b().round_digits(Some(16)), "round_digits"),
            (b().token(Some(String::new())), "token"),
            (b().token(Some("has space".into())), "token"),
            (b().token(Some("nl\n".into())), "token"),
        ];
        for (builder, expected) in cases {
            assert_eq!(name_of(builder.build().unwrap_err()), expected);
        }
    }

    #[test]
    fn each_invalid_client_value_is_rejected_by_name() {
        let b = ClientConfig::builder;
        let cases: Vec<(ClientConfigBuilder, &str)> = vec![
            (b().token(Some("é".into())), "token"),
            (b().batch_rows(0), "batch_rows"),
            (b().max_in_flight(0), "max_in_flight"),
            (b().max_attempts(0), "max_attempts"),
            (b().initial_backoff(Duration::ZERO), "initial_backoff"),
            (
                b().initial_backoff(Duration::from_secs(2))
                    .max_backoff(Duration::from_secs(1)),
                "max_backoff",
            ),
            (b().connect_timeout(Duration::ZERO), "connect_timeout"),
            (b().request_timeout(Duration::ZERO), "request_timeout"),
            (b().max_response_bytes(10), "max_response_bytes"),
        ];
        for (builder, expected) in cases {
            assert_eq!(name_of(builder.build().unwrap_err()), expected);
        }
    }
}
