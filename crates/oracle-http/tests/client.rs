//! The HTTP oracle against the real server and against scripted fakes: exact answers in row order,
//! exact counts, token, budget, unreachable servers, retries, `Retry-After`, bad answers, rounding.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use faer::Mat;
use netxray_extract::{Oracle, OracleError};
use netxray_oracle_http::{
    ClientConfig, HttpOracle, RoundingGuard, Server, ServerConfig, ServerInfo,
};
use netxray_relu::{Arch, InitRecipe, Network};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn net() -> Network {
    Network::random(
        &"6-16-8-3".parse::<Arch>().unwrap(),
        InitRecipe::Balanced,
        3,
    )
}

fn inputs(n: usize, d: usize, seed: u64) -> Mat<f64> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    Mat::from_fn(n, d, |_, _| rng.sample::<f64, _>(StandardNormal))
}

fn spawn(cfg: ServerConfig) -> netxray_oracle_http::RunningServer {
    Server::new(net(), cfg)
        .spawn("127.0.0.1:0".parse().unwrap())
        .unwrap()
}

/// Fast retries so that failure paths take milliseconds.
fn quick() -> netxray_oracle_http::ClientConfigBuilder {
    ClientConfig::builder()
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(4))
}

#[test]
fn answers_match_the_local_model_in_row_order_and_counts_agree() {
    let server = spawn(ServerConfig::builder().max_batch_rows(7).build().unwrap());
    let oracle = HttpOracle::connect(&server.url(), ClientConfig::default()).unwrap();
    assert_eq!((oracle.input_dim(), oracle.output_dim()), (6, 3));
    assert_eq!(
        oracle.rows_per_request(),
        7,
        "lowered to the server's row limit"
    );
    let xs = inputs(100, 6, 1);
    let got = oracle.query_batch(xs.as_ref()).unwrap();
    let truth = net().forward(xs.as_ref()).unwrap();
    for i in 0..100 {
        for j in 0..3 {
            // Each request is a 7-row forward pass, the local one a 100-row pass: same math, maybe a
            // different summation order in the GEMM kernel.
            let (a, b) = (got[(i, j)], truth[(i, j)]);
            assert!(
                (a - b).abs() <= 1e-13 * (1.0 + b.abs()),
                "row {i}: {a} vs {b}"
            );
        }
    }
    // A single-request batch goes through the exact same forward pass as locally: bit-identical.
    let small = inputs(5, 6, 2);
    let got = oracle.query_batch(small.as_ref()).unwrap();
    let truth = net().forward(small.as_ref()).unwrap();
    for i in 0..5 {
        for j in 0..3 {
            assert_eq!(got[(i, j)].to_bits(), truth[(i, j)].to_bits());
        }
    }
    let stats = oracle.stats();
    assert_eq!(stats.requests, 1 + 15 + 1, "info + ceil(100/7) + 1");
    assert_eq!(stats.rows_answered, 105);
    assert_eq!(stats.retries, 0);
    assert_eq!(server.queries_used(), 105);
    assert_eq!(oracle.fetch_info().unwrap().queries_used, 105);
    // Shape and value checks happen before anything is sent.
    assert!(matches!(
        oracle.query_batch(inputs(2, 5, 3).as_ref()),
        Err(OracleError::BadShape {
            got: 5,
            expected: 6
        })
    ));
    let mut nan = inputs(2, 6, 3);
    nan[(1, 2)] = f64::NAN;
    assert_eq!(
        oracle.query_batch(nan.as_ref()),
        Err(OracleError::NonFinite)
    );
    assert_eq!(
        oracle
            .query_batch(inputs(0, 6, 3).as_ref())
            .unwrap()
            .nrows(),
        0
    );
    assert_eq!(server.queries_used(), 105);
}

#[test]
fn info_hides_the_architecture_unless_exposed() {
    let hidden = spawn(ServerConfig::default());
    let o = HttpOracle::connect(&hidden.url(), ClientConfig::default()).unwrap();
    assert_eq!(o.info().arch, None);
    let shown = spawn(ServerConfig::builder().expose_arch(true).build().unwrap());
    let o = HttpOracle::connect(&shown.url(), ClientConfig::default()).unwrap();
    assert_eq!(o.info().arch.as_deref(), Some("6-16-8-3"));
}

#[test]
fn missing_or_wrong_token_is_a_clear_401() {
    let server = spawn(
        ServerConfig::builder()
            .token(Some("tok-123".into()))
            .build()
            .unwrap(),
    );
    for token in [None, Some("tok-12"), Some("tok-1234")] {
        let cfg = ClientConfig::builder()
            .token(token.map(String::from))
            .build()
            .unwrap();
        let e = HttpOracle::connect(&server.url(), cfg).unwrap_err();
        let OracleError::Http { status, .. } = &e else {
            panic!("unexpected {e}");
        };
        assert_eq!(*status, 401);
        let msg = e.to_string();
        assert!(msg.contains("401") && msg.contains("token"), "{msg}");
    }
    let cfg = ClientConfig::builder()
        .token(Some("tok-123".into()))
        .build()
        .unwrap();
    let o = HttpOracle::connect(&server.url(), cfg).unwrap();
    o.query_batch(inputs(3, 6, 1).as_ref()).unwrap();
    assert_eq!(server.queries_used(), 3);
}

#[test]
fn spent_server_budget_is_a_clear_error_and_batches_are_never_answered_in_part() {
    let server = spawn(
        ServerConfig::builder()
            .max_queries(Some(10))
            .build()
            .unwrap(),
    );
    let o = HttpOracle::connect(&server.url(), quick().build().unwrap()).unwrap();
    assert_eq!(o.info().max_queries, Some(10));
    o.query_batch(inputs(6, 6, 1).as_ref()).unwrap();
    let e = o.query_batch(inputs(6, 6, 2).as_ref()).unwrap_err();
    assert_eq!(
        e,
        OracleError::TargetBudgetSpent {
            budget: 10,
            used: 6
        }
    );
    assert!(e.to_string().contains("server query budget spent"), "{e}");
    assert_eq!(
        server.queries_used(),
        6,
        "the refused batch was not answered in part"
    );
    o.query_batch(inputs(4, 6, 3).as_ref()).unwrap();
    assert_eq!(server.queries_used(), 10);
    let e = o.query_batch(inputs(1, 6, 4).as_ref()).unwrap_err();
    assert_eq!(
        e,
        OracleError::TargetBudgetSpent {
            budget: 10,
            used: 10
        }
    );
    assert_eq!(o.stats().retries, 0, "a spent budget is not retried");
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let t = std::time::Instant::now();
    let e = HttpOracle::connect(&url, quick().max_attempts(3).build().unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cannot reach {url}: connection refused")),
        "{msg}"
    );
    assert!(msg.contains("3 attempts"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5));
    for bad in [
        "https://127.0.0.1:1",
        "ftp://x",
        "127.0.0.1:8080",
        "http://",
    ] {
        let e = HttpOracle::connect(bad, quick().build().unwrap()).unwrap_err();
        assert!(matches!(e, OracleError::Unavailable(_)), "{bad}: {e}");
    }
}

/// A scripted fake server: `/v1/info` for a 2-input, 1-output model; `/v1/predict` plays `script` (one
/// entry per call, the last repeating), where "ok" answers the row sums.
fn fake(script: Vec<&'static str>) -> (String, Arc<AtomicUsize>, std::thread::JoinHandle<()>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let info = ServerInfo {
        input_dim: 2,
        output_dim: 1,
        queries_used: 0,
        max_queries: None,
        max_batch_rows: 1000,
        max_body_bytes: 1 << 20,
        arch: None,
    };
    let router = Router::new()
        .route(
            "/v1/info",
            get(move || async move { serde_json::to_string(&info).unwrap() }),
        )
        .route(
            "/v1/predict",
            post(move |body: String| async move {
                let k = c2.fetch_add(1, Ordering::SeqCst);
                let step = script[k.min(script.len() - 1)];
                respond(step, &body)
            }),
        );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            // Runs until the test process ends.
            axum::serve(l, router).await.unwrap();
        });
    });
    (url, calls, handle)
}

fn respond(step: &str, body: &str) -> Response {
    let json = |s: StatusCode, b: String| {
        let mut r = (s, b).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    match step {
        "503" => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"warming up","code":"internal"}"#.into(),
        ),
        "500-text" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "429" => {
            let mut r = json(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"slow down","code":"rate_limited"}"#.into(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
            r
        }
        "429-long" => {
            let mut r = json(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"slow down","code":"rate_limited"}"#.into(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
            r
        }
        "400" => json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"nope","code":"invalid_input"}"#.into(),
        ),
        "null" => json(StatusCode::OK, r#"{"outputs":[[null]]}"#.into()),
        "short" => json(StatusCode::OK, r#"{"outputs":[]}"#.into()),
        "garbage" => json(StatusCode::OK, "<html>".into()),
        _ => {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let outs: Vec<Vec<f64>> = v["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    vec![
                        r.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap())
                            .sum(),
                    ]
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({ "outputs": outs }).to_string(),
            )
        }
    }
}

#[test]
fn transient_failures_are_retried_and_retry_after_is_respected() {
    let (url, calls, _h) = fake(vec!["503", "500-text", "429", "ok"]);
    let o = HttpOracle::connect(&url, quick().build().unwrap()).unwrap();
    let xs = Mat::from_fn(3, 2, |i, j| (i * 2 + j) as f64);
    let ys = o.query_batch(xs.as_ref()).unwrap();
    assert_eq!((ys[(0, 0)], ys[(1, 0)], ys[(2, 0)]), (1.0, 5.0, 9.0));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let s = o.stats();
    assert_eq!((s.retries, s.ambiguous_retries, s.rows_answered), (3, 0, 3));
}

#[test]
fn persistent_or_permanent_failures_give_up_with_a_clear_error() {
    let (url, calls, _h) = fake(vec!["503"]);
    let o = HttpOracle::connect(&url, quick().max_attempts(4).build().unwrap()).unwrap();
    let e = o.query_batch(Mat::zeros(1, 2).as_ref()).unwrap_err();
    assert!(
        e.to_string().contains("HTTP 503: warming up") && e.to_string().contains("4 attempts"),
        "{e}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    let (url, calls, _h) = fake(vec!["400"]);
    let o = HttpOracle::connect(&url, quick().build().unwrap()).unwrap();
    let e = o.query_batch(Mat::zeros(1, 2).as_ref()).unwrap_err();
    assert_eq!(
        e,
        OracleError::Http {
            status: 400,
            message: "nope".into()
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "4xx is not retried");

    let (url, _, _h) = fake(vec!["429-long"]);
    let o = HttpOracle::connect(&url, quick().build().unwrap()).unwrap();
    let e = o.query_batch(Mat::zeros(1, 2).as_ref()).unwrap_err();
    assert!(e.to_string().contains("retry after 3600s"), "{e}");

    for bad in ["null", "short", "garbage"] {
        let (url, _, _h) = fake(vec![bad]);
        let o = HttpOracle::connect(&url, quick().build().unwrap()).unwrap();
        let e = o.query_batch(Mat::zeros(1, 2).as_ref()).unwrap_err();
        assert!(matches!(e, OracleError::BadAnswer(_)), "{bad}: {e}");
    }
}

#[test]
fn large_batches_are_split_sent_concurrently_and_reassembled_in_order() {
    let (url, calls, _h) = fake(vec!["ok"]);
    let o = HttpOracle::connect(&url, quick().batch_rows(10).build().unwrap()).unwrap();
    let xs = Mat::from_fn(1001, 2, |i, j| (i as f64) * if j == 0 { 1.0 } else { 0.5 });
    let ys = o.query_batch(xs.as_ref()).unwrap();
    for i in 0..1001 {
        assert_eq!(ys[(i, 0)], 1.5 * i as f64);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 101);
    assert_eq!(o.stats().rows_answered, 1001);
}

#[test]
fn a_rounding_server_is_detected_from_the_first_answers() {
    let server = spawn(
        ServerConfig::builder()
            .round_digits(Some(4))
            .build()
            .unwrap(),
    );
    let o = HttpOracle::connect(&server.url(), ClientConfig::default()).unwrap();
    let guard = RoundingGuard::new(&o);
    let e = guard.query_batch(inputs(64, 6, 1).as_ref()).unwrap_err();
    assert_eq!(e, OracleError::RoundedOutputs { digits: 4 });
    assert!(
        e.to_string()
            .contains("rounds its outputs to 4 decimal digits")
    );
    // The probe was the attack's own query: nothing extra was spent.
    assert_eq!(server.queries_used(), 64);

    let raw = spawn(ServerConfig::default());
    let o = HttpOracle::connect(&raw.url(), ClientConfig::default()).unwrap();
    let guard = RoundingGuard::new(&o);
    for k in 0..4 {
        guard.query_batch(inputs(64, 6, k).as_ref()).unwrap();
    }
}
