//! Hostile traffic: well over 1,000 malformed or hostile requests (seeded), each answered with a 4xx,
//! while the server keeps giving exact predictions and counts only the rows it answered.

mod common;

use common::{body_of, inputs_json, request, send_raw, send_raw_with, status_of};
use faer::Mat;
use netxray_oracle_http::{ErrorBody, Server, ServerConfig, ServerInfo};
use netxray_relu::{Arch, InitRecipe, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use std::net::SocketAddr;

const TOKEN: &str = "s3cret-t0ken";
const AUTH: &str = "Authorization: Bearer s3cret-t0ken";
const JSON: &str = "Content-Type: application/json";
const D_IN: usize = 6;
const MAX_ROWS: usize = 1000;
const MAX_BODY: usize = 16 << 20;

/// A request that must be refused, and the statuses that are right for it.
struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    ok: &'static [u16],
}

fn predict(body: &[u8]) -> Vec<u8> {
    request("POST", "/v1/predict", &[AUTH, JSON], body)
}

fn case(what: &'static str, bytes: Vec<u8>, ok: &'static [u16]) -> Case {
    Case { what, bytes, ok }
}

const BAD_JSON: &[u16] = &[400, 422];

fn random_row(rng: &mut ChaCha20Rng, d: usize) -> Vec<f64> {
    (0..d)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect()
}

fn numbers(rng: &mut ChaCha20Rng, d: usize) -> String {
    let v: Vec<String> = random_row(rng, d)
        .iter()
        .map(|x| format!("{x:?}"))
        .collect();
    v.join(",")
}

/// JSON-ish token soup: every piece the parser and the visitors must handle, in random order.
fn soup(rng: &mut ChaCha20Rng) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"inputs\"",
        "\"outputs\"",
        "\"x\"",
        "1",
        "-0",
        "2.5e3",
        "1e999",
        "-1e400",
        "NaN",
        "Infinity",
        "-Infinity",
        "\"NaN\"",
        "null",
        "true",
        "false",
        "\"\\u0000\"",
        "\"\\ud800\"",
        " ",
        "\n",
        "0x10",
        "+1",
        ".5",
        "1.",
        "01",
        "\u{feff}",
        "\"inputs",
        "[[",
        "]]",
        "{\"inputs\":",
        "[[1,2,3,4,5,6]]",
    ];
    let n = rng.random_range(1..40);
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(TOKENS[rng.random_range(0..TOKENS.len())]);
    }
    s.into_bytes()
}

fn hostile_cases(rng: &mut ChaCha20Rng) -> Vec<Case> {
    let mut cases = Vec::new();
    // Random bytes as the body of an otherwise correct request.
    for _ in 0..200 {
        let n = rng.random_range(0..3000);
        let body: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        cases.push(case("random body bytes", predict(&body), BAD_JSON));
    }
    // Printable random text.
    for _ in 0..100 {
        let n = rng.random_range(1..500);
        let body: Vec<u8> = (0..n).map(|_| rng.random_range(0x20u8..0x7f)).collect();
        cases.push(case("random printable body", predict(&body), BAD_JSON));
    }
    // JSON-ish token soup.
    for _ in 0..300 {
        cases.push(case("token soup", predict(&soup(rng)), BAD_JSON));
    }
    // Wrong dimensions.
    for _ in 0..60 {
        let mut w = rng.random_range(0..2 * D_IN + 2);
        if w == D_IN {
            w += 1;
        }
        let rows = rng.random_range(1..5);
        let mut rs: Vec<String> = (0..rows)
            .map(|_| format!("[{}]", numbers(rng, D_IN)))
            .collect();
        let k = rng.random_range(0..rows);
        rs[k] = format!("[{}]", numbers(rng, w));
        let body = format!("{{\"inputs\":[{}]}}", rs.join(","));
        cases.push(case("wrong row width", predict(body.as_bytes()), &[422]));
    }
    // Wrong types.
    let wrong: &[&str] = &[
        "{\"inputs\": \"1,2,3\"}",
        "{\"inputs\": 5}",
        "{\"inputs\": {\"0\": [1,2,3,4,5,6]}}",
        "{\"inputs\": [1,2,3,4,5,6]}",
        "{\"inputs\": [[1,2,3,4,5,\"6\"]]}",
        "{\"inputs\": [[1,2,3,4,5,null]]}",
        "{\"inputs\": [[1,2,3,4,5,true]]}",
        "{\"inputs\": [[1,2,3,4,5,[6]]]}",
        "{\"inputs\": [[1,2,3,4,5,{}]]}",
        "{\"inputs\": [null]}",
        "{\"inputs\": null}",
        "[[1,2,3,4,5,6]]",
        "\"inputs\"",
        "42",
        "{\"Inputs\": [[1,2,3,4,5,6]]}",
        "{\"inputs\": [[1,2,3,4,5,6]], \"extra\": 1}",
        "{\"inputs\": [[1,2,3,4,5,6]], \"inputs\": [[1,2,3,4,5,6]]}",
    ];
    for _ in 0..4 {
        for w in wrong {
            cases.push(case("wrong types", predict(w.as_bytes()), BAD_JSON));
        }
    }
    // NaN-ish spellings and huge numbers.
    let nanish: &[&str] = &[
        "NaN",
        "nan",
        "-NaN",
        "Infinity",
        "-Infinity",
        "inf",
        "\"NaN\"",
        "\"Infinity\"",
        "1e309",
        "-1e400",
        "1e99999999999",
        "2e308",
    ];
    for _ in 0..5 {
        for v in nanish {
            let body = format!("{{\"inputs\":[[{v},1,2,3,4,5]]}}");
            cases.push(case("NaN-ish or huge", predict(body.as_bytes()), BAD_JSON));
        }
    }
    let long_int = format!("{{\"inputs\":[[1{},1,2,3,4,5]]}}", "0".repeat(400));
    cases.push(case(
        "400-digit integer",
        predict(long_int.as_bytes()),
        BAD_JSON,
    ));
    // Finite inputs whose outputs overflow f64: refused, not answered with null.
    for _ in 0..10 {
        let body = inputs_json(&[vec![1e308; D_IN], vec![-1.7e308; D_IN]]);
        cases.push(case("outputs overflow", predict(body.as_bytes()), &[422]));
    }
    // Deep nesting in every position.
    for _ in 0..30 {
        let depth = rng.random_range(100..200_000);
        let body = match rng.random_range(0..4) {
            0 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
            1 => format!("{{\"inputs\":{}", "[".repeat(depth)),
            2 => "{\"a\":".repeat(depth),
            _ => format!("{{\"inputs\":[[{}]]}}", "[".repeat(depth)),
        };
        cases.push(case("deep nesting", predict(body.as_bytes()), BAD_JSON));
    }
    // Empty things.
    for body in [
        "",
        "{}",
        "{\"inputs\": []}",
        "{\"inputs\": [[]]}",
        " ",
        "null",
    ] {
        for _ in 0..4 {
            cases.push(case("empty", predict(body.as_bytes()), BAD_JSON));
        }
    }
    // Oversized batch (row limit) and oversized bodies (byte limit).
    for extra in [1, 2, 500] {
        let rows: Vec<Vec<f64>> = (0..MAX_ROWS + extra).map(|_| vec![0.5; D_IN]).collect();
        cases.push(case(
            "too many rows",
            predict(inputs_json(&rows).as_bytes()),
            &[413],
        ));
    }
    for _ in 0..5 {
        let lie = format!(
            "Content-Length: {}",
            rng.random_range(MAX_BODY as u64 + 1..1 << 40)
        );
        let bytes = format!(
            "POST /v1/predict HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n{JSON}\r\n{lie}\r\n\r\n{{\"inputs\":"
        )
        .into_bytes();
        cases.push(case("declared body over the limit", bytes, &[413]));
    }
    {
        // A chunked body that only turns out too large while it is read.
        let mut b = format!(
            "POST /v1/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{AUTH}\r\n{JSON}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..17 {
            b.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            b.extend_from_slice(&chunk);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        cases.push(case("chunked body over the limit", b, &[413]));
    }
    // 10 MB bodies below the byte limit: read whole, then refused by the parser.
    let ten_mb = 10 << 20;
    let mut spaces = vec![b' '; ten_mb];
    spaces.extend_from_slice(b"x");
    cases.push(case("10 MB of spaces", predict(&spaces), &[400]));
    cases.push(case("10 MB of [", predict(&vec![b'['; ten_mb]), BAD_JSON));
    let mut digits = b"{\"inputs\":[[".to_vec();
    digits.extend(std::iter::repeat_n(b'7', ten_mb));
    digits.extend_from_slice(b"]]}");
    cases.push(case("10 MB number", predict(&digits), BAD_JSON));
    let mut random10: Vec<u8> = (0..ten_mb).map(|_| rng.random()).collect();
    random10[0] = b'{';
    cases.push(case("10 MB random bytes", predict(&random10), BAD_JSON));
    let rows: Vec<Vec<f64>> = (0..ten_mb / (D_IN * 20))
        .map(|_| random_row(rng, D_IN))
        .collect();
    cases.push(case(
        "10 MB of valid rows, too many",
        predict(inputs_json(&rows).as_bytes()),
        &[413],
    ));
    // Missing, wrong or malformed tokens.
    let good = inputs_json(&[vec![0.1; D_IN]]);
    let bad_auth: &[&str] = &[
        "Authorization: Bearer wrong",
        "Authorization: Bearer s3cret-t0ke",
        "Authorization: Bearer s3cret-t0ken0",
        "Authorization: Basic czNjcmV0LXQwa2Vu",
        "Authorization: s3cret-t0ken",
        "Authorization: Bearer",
        "Authorization: ",
        "X-Token: s3cret-t0ken",
    ];
    for _ in 0..8 {
        for a in bad_auth {
            cases.push(case(
                "bad token",
                request("POST", "/v1/predict", &[a, JSON], good.as_bytes()),
                &[401],
            ));
        }
        cases.push(case(
            "no token",
            request("POST", "/v1/predict", &[JSON], good.as_bytes()),
            &[401],
        ));
        cases.push(case(
            "no token (info)",
            request("GET", "/v1/info", &[], b""),
            &[401],
        ));
    }
    // Wrong methods and paths.
    for _ in 0..5 {
        for m in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            cases.push(case(
                "wrong method",
                request(m, "/v1/predict", &[AUTH, JSON], good.as_bytes()),
                &[405],
            ));
        }
        for m in ["POST", "PUT", "DELETE"] {
            cases.push(case(
                "wrong method (info)",
                request(m, "/v1/info", &[AUTH, JSON], b"{}"),
                &[405],
            ));
        }
        for p in [
            "/",
            "/v1",
            "/v2/predict",
            "/v1/predict/x",
            "/v1/predict/",
            "/admin",
            "/%2e%2e/etc/passwd",
            "/v1/info?x=1/../",
        ] {
            cases.push(case(
                "wrong path",
                request("POST", p, &[AUTH, JSON], good.as_bytes()),
                &[404, 405],
            ));
        }
    }
    let long_path = format!("/{}", "a".repeat(20_000));
    cases.push(case(
        "very long path",
        request("GET", &long_path, &[AUTH], b""),
        &[404, 414, 431],
    ));
    // Wrong content types.
    for ct in [
        "Content-Type: text/plain",
        "Content-Type: application/x-www-form-urlencoded",
        "Content-Type: application/jsonx",
        "Content-Type: multipart/form-data; boundary=x",
    ] {
        for _ in 0..6 {
            cases.push(case(
                "wrong content type",
                request("POST", "/v1/predict", &[AUTH, ct], good.as_bytes()),
                &[415],
            ));
        }
    }
    for _ in 0..6 {
        cases.push(case(
            "no content type",
            request("POST", "/v1/predict", &[AUTH], good.as_bytes()),
            &[415],
        ));
    }
    // Broken HTTP framing.
    let framing: Vec<Vec<u8>> = vec![
        format!("POST /v1/predict HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n{JSON}\r\nContent-Length: abc\r\n\r\n{good}").into_bytes(),
        format!("POST /v1/predict HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n{JSON}\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{good}").into_bytes(),
        format!("POST /v1/predict HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n{JSON}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes(),
        format!("POST /v1/predict HTTP/1.1\r\nHost: t\r\n{AUTH}\r\n{JSON}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"inp\r\n0\r\n\r\n").into_bytes(),
        b"POST /v1/predict HTTP/9.9\r\nHost: t\r\n\r\n".to_vec(),
        format!("POST /v1/predict HTTP/1.1\r\n{}\r\n\r\n", (0..200).map(|i| format!("X-H{i}: v")).collect::<Vec<_>>().join("\r\n")).into_bytes(),
        format!("POST /v1/predict HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "v".repeat(200_000)).into_bytes(),
        b"POST\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost t\r\n\r\n".to_vec(),
    ];
    for _ in 0..3 {
        for f in &framing {
            cases.push(case(
                "broken framing",
                f.clone(),
                &[400, 401, 413, 414, 415, 422, 431, 505],
            ));
        }
    }
    cases
}

fn check_prediction(addr: SocketAddr, net: &Network, rng: &mut ChaCha20Rng, rows: usize) -> u64 {
    let xs: Vec<Vec<f64>> = (0..rows).map(|_| random_row(rng, D_IN)).collect();
    let resp = send_raw(addr, &predict(inputs_json(&xs).as_bytes()));
    assert_eq!(
        status_of(&resp),
        Some(200),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    let v: serde_json::Value = serde_json::from_slice(body_of(&resp)).unwrap();
    let outs = v["outputs"].as_array().unwrap();
    let m = Mat::from_fn(rows, D_IN, |i, j| xs[i][j]);
    let truth = net.forward(m.as_ref()).unwrap();
    assert_eq!(outs.len(), rows);
    for i in 0..rows {
        let row = outs[i].as_array().unwrap();
        assert_eq!(row.len(), truth.ncols());
        for j in 0..truth.ncols() {
            let got = row[j].as_f64().unwrap();
            assert!(
                (got - truth[(i, j)]).abs() <= 1e-12 * (1.0 + truth[(i, j)].abs()),
                "row {i} col {j}: {got} vs {}",
                truth[(i, j)]
            );
        }
    }
    rows as u64
}

#[test]
fn hostile_requests_get_4xx_and_the_server_keeps_answering_correctly() {
    let t0 = std::time::Instant::now();
    let net = Network::random(
        &"6-16-8-3".parse::<Arch>().unwrap(),
        InitRecipe::Balanced,
        5,
    );
    let cfg = ServerConfig::builder()
        .token(Some(TOKEN.into()))
        .max_batch_rows(MAX_ROWS)
        .max_body_bytes(MAX_BODY)
        .build()
        .unwrap();
    let server = Server::new(net.clone(), cfg)
        .spawn("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let addr = server.addr();
    let mut rng = ChaCha20Rng::seed_from_u64(2024);
    let mut answered = check_prediction(addr, &net, &mut rng, 3);
    let cases = hostile_cases(&mut rng);
    // Plus raw garbage that is not HTTP at all: a 4xx, or (for bytes hyper cannot even frame) a closed
    // connection; either way the server must live on.
    let mut garbage = Vec::new();
    for _ in 0..40 {
        let n = rng.random_range(1..2000);
        garbage.push((0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>());
    }
    assert!(cases.len() >= 1000, "only {} hostile requests", cases.len());
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let mut time_by_kind = std::collections::BTreeMap::<&str, f64>::new();
    for (k, c) in cases.iter().enumerate() {
        let tc = std::time::Instant::now();
        let resp = send_raw(addr, &c.bytes);
        let dt = tc.elapsed().as_secs_f64();
        *time_by_kind.entry(c.what).or_default() += dt;
        let status = status_of(&resp);
        let Some(s) = status else {
            panic!(
                "case {k} ({}): no HTTP answer: {:?}",
                c.what,
                String::from_utf8_lossy(&resp[..resp.len().min(200)])
            );
        };
        assert!(
            c.ok.contains(&s),
            "case {k} ({}): status {s}, expected one of {:?}: {}",
            c.what,
            c.ok,
            String::from_utf8_lossy(&resp[..resp.len().min(400)])
        );
        *by_status.entry(s).or_default() += 1;
        // The JSON error body is part of the contract wherever the request reached the API.
        let body = body_of(&resp);
        if !matches!(s, 400 | 414 | 431 | 505) || !body.is_empty() {
            if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
                assert!(!e.error.is_empty() && !e.code.is_empty(), "case {k}");
            } else {
                assert!(
                    matches!(s, 400 | 413 | 414 | 431 | 505),
                    "case {k} ({}): {s} without a JSON error body: {:?}",
                    c.what,
                    String::from_utf8_lossy(body)
                );
            }
        }
        if k % 100 == 99 {
            answered += check_prediction(addr, &net, &mut rng, 1 + k % 7);
        }
    }
    let mut garbage_closed = 0;
    for g in &garbage {
        match status_of(&send_raw_with(addr, g, true)) {
            Some(s) => assert!((400..500).contains(&s), "garbage answered {s}"),
            None => garbage_closed += 1,
        }
    }
    answered += check_prediction(addr, &net, &mut rng, 50);
    // Only answered rows were counted: no hostile request cost the budget anything.
    let info = send_raw(addr, &request("GET", "/v1/info", &[AUTH], b""));
    assert_eq!(status_of(&info), Some(200));
    let info: ServerInfo = serde_json::from_slice(body_of(&info)).unwrap();
    assert_eq!(info.queries_used, answered);
    assert_eq!(server.queries_used(), answered);
    assert_eq!(info.arch, None, "architecture hidden by default");
    let mut kinds: Vec<(&str, f64)> = time_by_kind.into_iter().collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    kinds.truncate(4);
    println!(
        "{} hostile requests + {} raw garbage streams ({} closed without an answer) in {:.2}s (slowest kinds, total seconds: {:?}); statuses {:?}",
        cases.len(),
        garbage.len(),
        garbage_closed,
        t0.elapsed().as_secs_f64(),
        kinds,
        by_status
    );
    server.shutdown().unwrap();
}
