//! The prediction server: `POST /v1/predict` and `GET /v1/info` over a [`Network`], with every input
//! validated, a bearer token, a query budget, output rounding and graceful shutdown.
//!
//! Order of checks on `/v1/predict` (cheapest and least revealing first): token (401), concurrency
//! (429 `rate_limited`), spent budget (429 `budget_exhausted`), `Content-Type` (415), declared length
//! (413), body with size limit and timeout (413, 408), JSON shape and values (400, 422, 413), budget
//! for this batch (429), forward pass, finite outputs (422), rounding, answer. Parsing and the forward
//! pass run on a blocking thread so that a large batch never stalls the connections of other clients.
//! A request is counted only when it is answered with 200.

use crate::Error;
use crate::config::ServerConfig;
use crate::wire::{self, DecodeError, ErrorBody, ServerInfo, code};
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use netxray_relu::Network;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What the server answers with: a batched forward pass and its widths. Implemented for
/// [`Network`] (our f64 forward pass); other runtimes (an ONNX file) plug in through it.
pub trait Predictor: Send + Sync + 'static {
    /// Input width.
    fn input_dim(&self) -> usize;
    /// Output width.
    fn output_dim(&self) -> usize;
    /// Architecture string (shown in `/v1/info` only with `expose_arch`).
    fn arch(&self) -> String;
    /// One output row per input row; the message of an error is sent back with a 422.
    fn predict(&self, xs: faer::MatRef<'_, f64>) -> Result<faer::Mat<f64>, String>;
}

impl Predictor for Network {
    fn input_dim(&self) -> usize {
        Network::input_dim(self)
    }
    fn output_dim(&self) -> usize {
        Network::output_dim(self)
    }
    fn arch(&self) -> String {
        Network::arch(self).to_string()
    }
    fn predict(&self, xs: faer::MatRef<'_, f64>) -> Result<faer::Mat<f64>, String> {
        self.forward(xs).map_err(|e| e.to_string())
    }
}

struct AppState {
    net: Box<dyn Predictor>,
    cfg: ServerConfig,
    arch: String,
    used: AtomicU64,
    in_flight: AtomicUsize,
}

/// A model behind the prediction API. Cheap to clone (shared state): keep a clone to read the query
/// count while the server runs.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Serves `net` under the limits of `cfg`.
    pub fn new(net: impl Predictor, cfg: ServerConfig) -> Self {
        let arch = net.arch();
        Self {
            state: Arc::new(AppState {
                net: Box::new(net),
                cfg,
                arch,
                used: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Queries (rows) answered so far: exactly the rows of the 200 answers.
    pub fn queries_used(&self) -> u64 {
        self.state.used.load(Ordering::SeqCst)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.state.cfg
    }

    /// The axum router (for embedding in another server or in tests).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/predict", post(predict))
            .route("/v1/info", get(info))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then lets in-flight requests finish for at most
    /// [`ServerConfig::shutdown_grace`].
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let grace = self.state.cfg.shutdown_grace;
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let serve = axum::serve(listener, self.router()).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        tokio::select! {
            r = serve.into_future() => r.map_err(Error::Io),
            _ = async {
                // A dropped sender (server already finished) also ends the wait.
                let _ = rx.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("shutdown grace of {grace:?} expired with requests still in flight");
                Ok(())
            }
        }
    }

    /// Binds `addr`, calls `on_ready` with the bound address (port 0 picks a free port), and serves until
    /// SIGINT or SIGTERM. Blocks; builds its own runtime.
    pub fn run_until_signal(
        self,
        addr: SocketAddr,
        on_ready: impl FnOnce(SocketAddr),
    ) -> Result<(), Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let signal = shutdown_signal()?;
            on_ready(listener.local_addr()?);
            self.run(listener, signal).await
        })
    }

    /// Starts serving on `addr` in a background thread with its own small runtime and returns at once
    /// (the socket is bound before this returns, so the address is immediately usable). For tests and
    /// embedding; stop with [`RunningServer::shutdown`] or by dropping the handle.
    pub fn spawn(self, addr: SocketAddr) -> Result<RunningServer, Error> {
        let std_listener = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = self.clone();
        let thread = std::thread::Builder::new()
            .name("netxray-serve".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener)?;
                    server
                        .run(listener, async move {
                            let _ = stop_rx.await;
                        })
                        .await
                })
            })?;
        Ok(RunningServer {
            addr: local,
            server: self,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A server started by [`Server::spawn`]. Dropping it shuts the server down and waits for it.
pub struct RunningServer {
    addr: SocketAddr,
    server: Server,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queries answered so far.
    pub fn queries_used(&self) -> u64 {
        self.server.queries_used()
    }

    /// Stops accepting, lets in-flight requests finish (within the grace period) and waits.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Io(std::io::Error::other("server thread panicked")))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. Handlers are installed before it is returned so that an
/// installation failure is reported up front rather than as a server that cannot be stopped.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    })
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    refuse_body(
        status,
        ErrorBody {
            error: message.into(),
            code: code.to_string(),
            budget: None,
            used: None,
        },
    )
}

fn refuse_body(status: StatusCode, body: ErrorBody) -> Response {
    tracing::debug!(status = status.as_u16(), code = %body.code, "refused: {}", body.error);
    let bytes = serde_json::to_vec(&body).expect("an error body always serializes");
    json_response(status, bytes)
}

fn budget_refusal(budget: u64, used: u64, needed: Option<usize>) -> Response {
    let error = match needed {
        Some(n) => format!(
            "query budget of {budget} exhausted: {used} queries answered, this request needs {n} more (a batch that does not fit is refused whole)"
        ),
        None => format!("query budget of {budget} exhausted: {used} queries answered"),
    };
    refuse_body(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorBody {
            error,
            code: code::BUDGET_EXHAUSTED.to_string(),
            budget: Some(budget),
            used: Some(used),
        },
    )
}

/// Compares without an early exit, so that the response time does not reveal how many leading bytes
/// of a guessed token are right (only its length can leak).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for (i, &x) in a.iter().enumerate() {
        diff |= u64::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The refusal to send when the token is missing or wrong; None when the request may proceed.
fn token_refusal(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.cfg.token else {
        return None;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, tok) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim())
        });
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
    if ok {
        return None;
    }
    let msg = if given.is_some() {
        "wrong bearer token"
    } else {
        "missing bearer token: send 'Authorization: Bearer <token>'"
    };
    let mut r = refuse(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, msg);
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

async fn info(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = token_refusal(&state, &headers) {
        return r;
    }
    let doc = ServerInfo {
        input_dim: state.net.input_dim(),
        output_dim: state.net.output_dim(),
        queries_used: state.used.load(Ordering::SeqCst),
        max_queries: state.cfg.max_queries,
        max_batch_rows: state.cfg.max_batch_rows,
        max_body_bytes: state.cfg.max_body_bytes,
        arch: state.cfg.expose_arch.then(|| state.arch.clone()),
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&doc).expect("info always serializes"),
    )
}

async fn not_found(uri: Uri) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        code::NOT_FOUND,
        format!(
            "no endpoint {}; the API is POST /v1/predict and GET /v1/info",
            uri.path()
        ),
    )
}

async fn method_not_allowed(uri: Uri) -> Response {
    let allow = if uri.path() == "/v1/predict" {
        "POST"
    } else {
        "GET, HEAD"
    };
    let mut r = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        code::METHOD_NOT_ALLOWED,
        format!("{} accepts only {allow}", uri.path()),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A request slot; released on drop, whatever path the request takes.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn acquire(counter: &'a AtomicUsize, max: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(counter))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Budget reserved for one batch; given back on drop unless the answer was produced (so that a
/// refused output or a panic in the forward pass never counts).
struct Reservation<'a> {
    used: &'a AtomicU64,
    n: u64,
    committed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.used.fetch_sub(self.n, Ordering::SeqCst);
        }
    }
}

/// Reserves `n` queries of the budget, or returns the count that leaves too little room.
fn reserve(state: &AppState, n: u64) -> Result<Reservation<'_>, u64> {
    let max = state.cfg.max_queries;
    state
        .used
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
            let after = u.checked_add(n)?;
            match max {
                Some(m) if after > m => None,
                _ => Some(after),
            }
        })
        .map(|_| Reservation {
            used: &state.used,
            n,
            committed: false,
        })
}

enum BodyError {
    TooLarge,
    Broken(String),
}

async fn read_body(mut body: Body, limit: usize, hint: usize) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::with_capacity(hint.min(limit));
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

async fn predict(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    if let Some(r) = token_refusal(&state, &headers) {
        return r;
    }
    let cfg = &state.cfg;
    let Some(slot) = Slot::acquire(&state.in_flight, cfg.max_in_flight) else {
        let mut r = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            code::RATE_LIMITED,
            format!(
                "too many requests in flight (at most {}); retry later",
                cfg.max_in_flight
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    if let Some(m) = cfg.max_queries {
        let u = state.used.load(Ordering::SeqCst);
        if u >= m {
            return budget_refusal(m, u, None);
        }
    }
    // Requiring JSON also makes a browser send a CORS preflight (which this API never approves), so a
    // web page cannot make a visitor's browser spend the budget of a server on their loopback.
    if !is_json(&headers) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::TOO_LARGE,
            format!(
                "request body over the limit of {} bytes",
                cfg.max_body_bytes
            ),
        )
    };
    if declared.is_some_and(|n| n > cfg.max_body_bytes as u64) {
        return too_large();
    }
    let hint = declared.unwrap_or(0) as usize;
    let bytes =
        match tokio::time::timeout(cfg.body_timeout, read_body(body, cfg.max_body_bytes, hint))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(BodyError::TooLarge)) => return too_large(),
            Ok(Err(BodyError::Broken(e))) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    code::MALFORMED_JSON,
                    format!("could not read the request body: {e}"),
                );
            }
            Err(_) => {
                return refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    code::TIMEOUT,
                    format!("request body not received within {:?}", cfg.body_timeout),
                );
            }
        };
    let st = state.clone();
    let answer = tokio::task::spawn_blocking(move || answer_batch(&st, &bytes)).await;
    drop(slot);
    match answer {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("forward pass failed: {e}");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::INTERNAL,
                "internal error while answering; the request was not counted",
            )
        }
    }
}

/// Parses, counts, runs the model and encodes the answer. Blocking (CPU-bound).
fn answer_batch(state: &AppState, bytes: &[u8]) -> Response {
    let cfg = &state.cfg;
    let xs = match wire::decode_matrix(bytes, "inputs", state.net.input_dim(), cfg.max_batch_rows) {
        Ok(m) => m,
        Err(e) => {
            let (status, c) = match e {
                DecodeError::Malformed(_) => (StatusCode::BAD_REQUEST, code::MALFORMED_JSON),
                DecodeError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_INPUT),
                DecodeError::TooManyRows(_) => (StatusCode::PAYLOAD_TOO_LARGE, code::TOO_LARGE),
            };
            return refuse(status, c, e.to_string());
        }
    };
    let n = xs.nrows();
    let mut reservation = match reserve(state, n as u64) {
        Ok(r) => r,
        Err(used) => return budget_refusal(cfg.max_queries.unwrap_or(u64::MAX), used, Some(n)),
    };
    let mut ys = match state.net.predict(xs.as_ref()) {
        Ok(y) => y,
        // Unreachable after decode_matrix checked the width; kept as a refusal rather than a panic.
        Err(e) => {
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, code::INVALID_INPUT, e);
        }
    };
    for j in 0..ys.ncols() {
        if let Some(i) = ys.col(j).iter().position(|v| !v.is_finite()) {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                code::NON_FINITE_OUTPUT,
                format!(
                    "the model's output for row {i} is not finite (inputs too large for f64); the request was not counted"
                ),
            );
        }
    }
    if let Some(d) = cfg.round_digits {
        for j in 0..ys.ncols() {
            for v in ys.col_mut(j).iter_mut() {
                *v = wire::round_to_digits(*v, d);
            }
        }
    }
    let body = wire::encode_matrix("outputs", ys.as_ref());
    reservation.committed = true;
    json_response(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
