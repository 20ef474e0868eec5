//! Dev helper: extract a random network and print the functional error.
//! `cargo run --release -p netxray-extract --example try_extract -- 10-15-15-1 balanced 1`
use faer::Mat;
use netxray_extract::{ExtractParams, NetworkOracle, extract};
use netxray_relu::{Arch, InitRecipe, Network};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arch: Arch = args
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or("10-15-15-1")
        .parse()
        .unwrap();
    let init: InitRecipe = args
        .get(2)
        .map(|s| s.as_str())
        .unwrap_or("balanced")
        .parse()
        .unwrap();
    let seed: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1);
    let net = Network::random(&arch, init, seed);
    let arch = net.arch();
    let o = NetworkOracle::new(net.clone());
    let p = ExtractParams::builder().seed(seed).build().unwrap();
    let t = std::time::Instant::now();
    let ex = match extract(&o, &arch, &p, |_| {}) {
        Ok(e) => e,
        Err(netxray_extract::ExtractError::VerificationFailed {
            extraction,
            rel_error,
        }) => {
            println!("VERIFICATION FAILED rel {rel_error:.3e}");
            *extraction
        }
        Err(e) => panic!("{e}"),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&ex.report.layers).unwrap()
    );
    // Diagnostics: best |cos| of each recovered (w, b) row against the truth, per hidden layer.
    for (li, (lt, lr)) in net
        .layers()
        .iter()
        .zip(ex.network.layers())
        .enumerate()
        .take(arch.hidden().len())
    {
        let mut worst: f64 = 1.0;
        for r in 0..lr.fan_out() {
            let a: Vec<f64> = (0..lr.fan_in())
                .map(|c| lr.weight[(r, c)])
                .chain([lr.bias[r]])
                .collect();
            let mut best: f64 = 0.0;
            for t in 0..lt.fan_out() {
                let b: Vec<f64> = (0..lt.fan_in())
                    .map(|c| lt.weight[(t, c)])
                    .chain([lt.bias[t]])
                    .collect();
                let d: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
                best = best.max(if std::env::var("ABS").is_ok() {
                    (d / (na * nb)).abs()
                } else {
                    d / (na * nb)
                });
            }
            worst = worst.min(best);
        }
        println!("layer {} worst signed cos {:.12}", li + 1, worst);
        if li == 0 {
            break;
        }
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let n = 20000;
    let x = Mat::<f64>::from_fn(n, arch.input_dim(), |_, _| {
        rng.sample::<f64, _>(StandardNormal)
    });
    let a = net.forward(x.as_ref()).unwrap();
    let b = ex.network.forward(x.as_ref()).unwrap();
    let mut err: f64 = 0.0;
    let mut sc: f64 = 0.0;
    for i in 0..n {
        for j in 0..a.ncols() {
            err = err.max((a[(i, j)] - b[(i, j)]).abs());
            sc = sc.max(a[(i, j)].abs());
        }
    }
    println!(
        "arch {arch} queries {} time {:.2}s  max|f-f^| {:.3e} (2^{:.1}) rel {:.3e} out_resid {:.2e} low_conf {:?}",
        ex.report.total_queries,
        t.elapsed().as_secs_f64(),
        err,
        err.log2(),
        err / sc,
        ex.report.output_fit_residual,
        ex.report.low_confidence_signs
    );
}
