//! [`HttpOracle`]: a remote prediction API behind the attack's [`Oracle`] trait.
//!
//! A batch is split into requests of at most [`HttpOracle::rows_per_request`] rows, sent with at most
//! [`ClientConfig::max_in_flight`] requests in flight (over all callers), and reassembled in row order.
//! Failures the server cannot have counted (connection refused, 5xx, 408, 429 `rate_limited`) are retried
//! with exponential backoff (or after `Retry-After`) up to [`ClientConfig::max_attempts`] times; refusals
//! that retrying cannot fix (401, other 4xx, 429 `budget_exhausted`) fail at once with a clear
//! [`OracleError`].
//!
//! Counting: the server counts a row only when it answers it with 200, and so does
//! [`ClientStats::rows_answered`]; with no retries, or only retries of failures that never reached the
//! model, both counts are equal. A timeout or a connection lost after the request was sent is still
//! retried (the attack needs the answer), but the server may have counted the first try: such retries
//! are reported in [`ClientStats::ambiguous_retries`] so that a mismatch can be explained.

use crate::config::ClientConfig;
use crate::wire::{self, ErrorBody, ServerInfo, code};
use faer::{Mat, MatRef};
use netxray_extract::{Oracle, OracleError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Upper bound of the JSON length of one `f64` plus its separator (`-1.2345678901234567e-308,`).
const MAX_VALUE_BYTES: usize = 25;

/// Counters of one [`HttpOracle`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Rows answered with 200: what the server counted for us in normal operation.
    pub rows_answered: u64,
    /// Retried requests.
    pub retries: u64,
    /// Retries after the request may have reached the model (timeouts, connections lost after
    /// sending); each may have been counted twice by the server.
    pub ambiguous_retries: u64,
}

/// What one try of a request came to.
enum Attempt<T> {
    Done(T),
    Fail(OracleError),
    Retry {
        reason: String,
        wait: Option<Duration>,
        ambiguous: bool,
    },
}

/// A counting semaphore (std only): bounds the requests in flight over every thread using the oracle.
struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }
    fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().expect("permit lock");
        while *free == 0 {
            free = self.cv.wait(free).expect("permit lock");
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("permit lock") += 1;
        self.0.cv.notify_one();
    }
}

/// A remote model reached over HTTP (a `netxray serve` API or anything speaking its protocol).
pub struct HttpOracle {
    base: String,
    predict_url: String,
    info_url: String,
    agent: ureq::Agent,
    cfg: ClientConfig,
    info: ServerInfo,
    rows_per_request: usize,
    permits: Permits,
    requests: AtomicU64,
    rows_answered: AtomicU64,
    retries: AtomicU64,
    ambiguous_retries: AtomicU64,
}

impl std::fmt::Debug for HttpOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("HttpOracle")
            .field("url", &self.base)
            .field("info", &self.info)
            .field("rows_per_request", &self.rows_per_request)
            .finish()
    }
}

impl HttpOracle {
    /// Connects to `url` (`http://host:port`, optionally with a path prefix): fetches `/v1/info` for the
    /// dimensions and limits. Fails with [`OracleError::Unavailable`] ("cannot reach …") when nothing
    /// answers, [`OracleError::Http`] on 401 and other refusals.
    pub fn connect(url: &str, cfg: ClientConfig) -> Result<Self, OracleError> {
        let base = url.trim_end_matches('/').to_string();
        let rest = if let Some(rest) = base.strip_prefix("http://") {
            rest
        } else if base.starts_with("https://") {
            return Err(OracleError::Unavailable(format!(
                "{base}: https targets are not supported by this build (no TLS); use http:// or a local TLS-terminating proxy"
            )));
        } else {
            return Err(OracleError::Unavailable(format!(
                "{url}: not an http:// URL"
            )));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(OracleError::Unavailable(format!("{url}: no host in URL")));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_global(Some(cfg.request_timeout))
            .max_idle_connections_per_host(cfg.max_in_flight.max(1))
            .user_agent(concat!("netxray/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let mut me = Self {
            predict_url: format!("{base}/v1/predict"),
            info_url: format!("{base}/v1/info"),
            base,
            agent,
            permits: Permits::new(cfg.max_in_flight),
            cfg,
            info: ServerInfo {
                input_dim: 0,
                output_dim: 0,
                queries_used: 0,
                max_queries: None,
                max_batch_rows: 1,
                max_body_bytes: 0,
                arch: None,
            },
            rows_per_request: 1,
            requests: AtomicU64::new(0),
            rows_answered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            ambiguous_retries: AtomicU64::new(0),
        };
        let info = me.fetch_info()?;
        let by_body = info
            .max_body_bytes
            .saturating_sub(64)
            .checked_div(MAX_VALUE_BYTES * info.input_dim + 4)
            .unwrap_or(1);
        me.rows_per_request = me
            .cfg
            .batch_rows
            .min(info.max_batch_rows)
            .min(by_body)
            .max(1);
        me.info = info;
        Ok(me)
    }

    /// The server's `/v1/info` as fetched at connection.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Fetches `/v1/info` again (e.g. to read the server's current query count).
    pub fn fetch_info(&self) -> Result<ServerInfo, OracleError> {
        let info: ServerInfo = self.with_retries(|| {
            let mut req = self.agent.get(&self.info_url);
            if let Some(t) = &self.cfg.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            self.finish(req.call(), |bytes| {
                serde_json::from_slice::<ServerInfo>(bytes).map_err(|e| {
                    OracleError::BadAnswer(format!(
                        "{} is not a netxray prediction API (bad /v1/info: {e})",
                        self.base
                    ))
                })
            })
        })?;
        if info.input_dim == 0 || info.output_dim == 0 || info.max_batch_rows == 0 {
            return Err(OracleError::BadAnswer(format!(
                "{}: /v1/info declares a zero dimension or limit: {info:?}",
                self.base
            )));
        }
        Ok(info)
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Rows sent per request: the configured batch size, lowered to the server's row and body limits.
    pub fn rows_per_request(&self) -> usize {
        self.rows_per_request
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::SeqCst),
            rows_answered: self.rows_answered.load(Ordering::SeqCst),
            retries: self.retries.load(Ordering::SeqCst),
            ambiguous_retries: self.ambiguous_retries.load(Ordering::SeqCst),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.cfg
            .initial_backoff
            .saturating_mul(factor)
            .min(self.cfg.max_backoff)
    }

    /// Runs `once` until it succeeds, fails for good, or runs out of attempts.
    fn with_retries<T>(&self, mut once: impl FnMut() -> Attempt<T>) -> Result<T, OracleError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = {
                let _permit = self.permits.acquire();
                self.requests.fetch_add(1, Ordering::SeqCst);
                once()
            };
            match outcome {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry {
                    reason,
                    wait,
                    ambiguous,
                } => {
                    if attempt >= self.cfg.max_attempts {
                        return Err(OracleError::Unavailable(format!(
                            "cannot reach {}: {reason} (gave up after {attempt} attempt{})",
                            self.base,
                            if attempt == 1 { "" } else { "s" }
                        )));
                    }
                    self.retries.fetch_add(1, Ordering::SeqCst);
                    if ambiguous {
                        self.ambiguous_retries.fetch_add(1, Ordering::SeqCst);
                    }
                    let wait = wait.unwrap_or_else(|| self.backoff(attempt));
                    tracing::debug!(url = %self.base, attempt, ?wait, "retrying: {reason}");
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Turns the result of one exchange into an [`Attempt`]; `ok` decodes a 200 body.
    fn finish<T>(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        ok: impl FnOnce(&[u8]) -> Result<T, OracleError>,
    ) -> Attempt<T> {
        let mut resp = match r {
            Ok(r) => r,
            Err(e) => return transport_failure(e),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match resp
            .body_mut()
            .with_config()
            .limit(self.cfg.max_response_bytes)
            .read_to_vec()
        {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Retry {
                    reason: format!("reading the answer failed: {e}"),
                    wait: None,
                    // The status line arrived: the server may have counted the request.
                    ambiguous: status == 200,
                };
            }
        };
        if status == 200 {
            return match ok(&bytes) {
                Ok(v) => Attempt::Done(v),
                Err(e) => Attempt::Fail(e),
            };
        }
        let parsed = serde_json::from_slice::<ErrorBody>(&bytes).ok();
        let message = match &parsed {
            Some(b) => b.error.clone(),
            None => {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                if text.trim().is_empty() {
                    "(no explanation)".to_string()
                } else {
                    text
                }
            }
        };
        let code = parsed.as_ref().map(|b| b.code.as_str()).unwrap_or("");
        match status {
            429 if code == code::BUDGET_EXHAUSTED => {
                let b = parsed.as_ref().expect("code came from a parsed body");
                Attempt::Fail(OracleError::TargetBudgetSpent {
                    budget: b.budget.unwrap_or(0),
                    used: b.used.unwrap_or(0),
                })
            }
            429 => match retry_after {
                Some(w) if w > self.cfg.max_retry_after => Attempt::Fail(OracleError::Http {
                    status,
                    message: format!(
                        "{message}; the server asks to retry after {}s, more than the {}s this client waits",
                        w.as_secs(),
                        self.cfg.max_retry_after.as_secs()
                    ),
                }),
                w => Attempt::Retry {
                    reason: format!("rate limited (HTTP 429: {message})"),
                    wait: w,
                    ambiguous: false,
                },
            },
            401 | 403 => Attempt::Fail(OracleError::Http {
                status,
                message: format!(
                    "{message} (give the server's token with --token or NETXRAY_TOKEN)"
                ),
            }),
            408 => Attempt::Retry {
                reason: format!("HTTP 408: {message}"),
                wait: None,
                ambiguous: false,
            },
            500..=599 => Attempt::Retry {
                reason: format!("HTTP {status}: {message}"),
                wait: retry_after.filter(|w| *w <= self.cfg.max_retry_after),
                // A gateway timeout may hide an upstream that did answer (and count).
                ambiguous: status == 504,
            },
            _ => Attempt::Fail(OracleError::Http { status, message }),
        }
    }

    /// One request of at most `rows_per_request` rows, with retries.
    fn post_chunk(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        let body = wire::encode_matrix("inputs", xs);
        let rows = xs.nrows();
        let out = self.with_retries(|| {
            let mut req = self
                .agent
                .post(&self.predict_url)
                .header("Content-Type", "application/json");
            if let Some(t) = &self.cfg.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            }
            self.finish(req.send(&body[..]), |bytes| {
                let m = wire::decode_matrix(bytes, "outputs", self.info.output_dim, rows).map_err(
                    |e| OracleError::BadAnswer(format!("{} answered {e}", self.predict_url)),
                )?;
                if m.nrows() != rows {
                    return Err(OracleError::BadAnswer(format!(
                        "{} answered {} rows for {rows} queries",
                        self.predict_url,
                        m.nrows()
                    )));
                }
                Ok(m)
            })
        })?;
        self.rows_answered.fetch_add(rows as u64, Ordering::SeqCst);
        Ok(out)
    }
}

fn transport_failure<T>(e: ureq::Error) -> Attempt<T> {
    use std::io::ErrorKind;
    use ureq::Timeout;
    let (reason, ambiguous) = match &e {
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => ("connection refused".to_string(), false),
            ErrorKind::AddrNotAvailable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::HostUnreachable => (io.to_string(), false),
            _ => (format!("connection failed: {io}"), true),
        },
        ureq::Error::Timeout(t @ (Timeout::Connect | Timeout::Resolve)) => {
            (format!("timed out ({t})"), false)
        }
        ureq::Error::Timeout(t) => (format!("timed out ({t})"), true),
        ureq::Error::HostNotFound => ("host not found".to_string(), false),
        ureq::Error::ConnectionFailed => ("connection failed".to_string(), false),
        // Malformed URLs and protocol violations will not get better by retrying.
        _ => return Attempt::Fail(OracleError::Unavailable(e.to_string())),
    };
    Attempt::Retry {
        reason,
        wait: None,
        ambiguous,
    }
}

impl Oracle for HttpOracle {
    fn input_dim(&self) -> usize {
        self.info.input_dim
    }

    fn output_dim(&self) -> usize {
        self.info.output_dim
    }

    fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        let n = xs.nrows();
        if n == 0 {
            return Ok(Mat::zeros(0, self.output_dim()));
        }
        if xs.ncols() != self.input_dim() {
            return Err(OracleError::BadShape {
                got: xs.ncols(),
                expected: self.input_dim(),
            });
        }
        // JSON cannot carry NaN/inf (serde_json would send null); refuse before the wire does.
        for j in 0..xs.ncols() {
            if xs.col(j).iter().any(|v| !v.is_finite()) {
                return Err(OracleError::NonFinite);
            }
        }
        let per = self.rows_per_request;
        if n <= per {
            return self.post_chunk(xs);
        }
        let chunks: Vec<(usize, usize)> =
            (0..n).step_by(per).map(|s| (s, per.min(n - s))).collect();
        let results: Vec<Mutex<Option<Mat<f64>>>> =
            chunks.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let first_error: Mutex<Option<(usize, OracleError)>> = Mutex::new(None);
        let workers = self.cfg.max_in_flight.min(chunks.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(&(start, len)) = chunks.get(i) else {
                            break;
                        };
                        match self.post_chunk(xs.subrows(start, len)) {
                            Ok(m) => *results[i].lock().expect("result lock") = Some(m),
                            Err(e) => {
                                stop.store(true, Ordering::SeqCst);
                                let mut fe = first_error.lock().expect("error lock");
                                // Report the failure of the earliest chunk, whatever thread saw it.
                                if fe.as_ref().is_none_or(|(k, _)| i < *k) {
                                    *fe = Some((i, e));
                                }
                            }
                        }
                    }
                });
            }
        });
        if let Some((_, e)) = first_error.into_inner().expect("error lock") {
            return Err(e);
        }
        let mut out = Mat::<f64>::zeros(n, self.output_dim());
        for ((start, len), r) in chunks.iter().zip(results) {
            let m = r
                .into_inner()
                .expect("result lock")
                .expect("every chunk answered when none failed");
            out.as_mut().subrows_mut(*start, *len).copy_from(m.as_ref());
        }
        Ok(out)
    }
}
