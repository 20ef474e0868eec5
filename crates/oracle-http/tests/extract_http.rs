//! The acceptance run: extracting the CRYPTO 2020 reference model 40-20-10-10-1 through the HTTP API on
//! loopback gives the same parameters as the local run with the same seed, and the server counted
//! exactly the queries the attack reports.

use netxray_extract::{ExtractParams, NetworkOracle, extract};
use netxray_oracle_http::{ClientConfig, HttpOracle, RoundingGuard, Server, ServerConfig};
use netxray_relu::compare::{CompareOptions, compare};
use netxray_relu::format::load_network;
use std::path::Path;
use std::time::Instant;

#[test]
fn extraction_over_http_matches_the_local_run_and_the_server_count() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/models/extraction/cjm_40-20-10-10-1_seed42.npz");
    if !path.exists() {
        println!("skipped: {} is absent", path.display());
        return;
    }
    let truth = load_network(&path).unwrap();
    let arch = truth.arch();
    let p = ExtractParams::builder().seed(1).build().unwrap();

    let t = Instant::now();
    let local = extract(&NetworkOracle::new(truth.clone()), &arch, &p, |_| {}).unwrap();
    let local_s = t.elapsed().as_secs_f64();

    let server = Server::new(truth.clone(), ServerConfig::default())
        .spawn("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let t = Instant::now();
    let http = HttpOracle::connect(&server.url(), ClientConfig::default()).unwrap();
    // As the CLI does: the rounding guard watches the first answers without spending queries.
    let guarded = RoundingGuard::new(&http);
    let remote = extract(&guarded, &arch, &p, |_| {}).unwrap();
    let http_s = t.elapsed().as_secs_f64();

    let opts = CompareOptions {
        samples: 20_000,
        seed: 3,
    };
    let same = compare(&local.network, &remote.network, &opts).unwrap();
    assert!(
        same.max_param_error <= 2f64.powi(-30),
        "local vs HTTP: max |dtheta| = {:e}",
        same.max_param_error
    );
    let vs_truth = compare(&truth, &remote.network, &opts).unwrap();
    assert!(
        vs_truth.max_param_error <= 2f64.powi(-30),
        "{:e}",
        vs_truth.max_param_error
    );

    let stats = http.stats();
    let server_count = server.queries_used();
    assert_eq!(server_count, remote.report.total_queries);
    assert_eq!(stats.rows_answered, remote.report.total_queries);
    assert_eq!(http.fetch_info().unwrap().queries_used, server_count);
    assert_eq!(stats.retries, 0);
    let same_desc = if same.max_param_error == 0.0 {
        "0 (bit-identical)".to_string()
    } else {
        format!("2^{:.1}", -same.param_bits)
    };
    println!(
        "local: {} queries in {local_s:.2}s; HTTP: {} queries (server counted {server_count}) in {} requests, {http_s:.2}s; local vs HTTP max |dtheta| = {same_desc}, HTTP vs truth 2^{:.1}",
        local.report.total_queries,
        remote.report.total_queries,
        stats.requests,
        -vs_truth.param_bits,
    );
}
