//! Cost of measuring the critical points of one search line on a deeper layer of a wide net: the
//! offline local geometry (stencil directions through the known prefix) dominates it, not the oracle
//! (a resumed run that answered every query from its journal screened a line of the 3072-256×8-10's
//! second layer in the same 3.3 minutes as the live run).
//!
//! Balanced 3072-256-256-256-10; the known prefix is the target's own first one or two hidden layers
//! (a bench of offline work: the attack itself never sees them). One random line, its critical
//! points found through the oracle, then every point probed on 32 units (`--probe-units 32`, the
//! screening of layer 2 and 3) and the first 16 measured in full. Prints the median of 3 repetitions.
//!
//! `ARCH` [3072-256-256-256-10] picks another balanced net on 3072 inputs and `DEPTHS` [1,2] the
//! known depths, comma-separated: `ARCH=3072-256-256-256-256-256-256-256-256-10 DEPTHS=5` screens a
//! line of the 3072-256×8-10's sixth layer.
//!
//! `cargo bench -p netxray-extract --bench deep_geometry` (about 3 minutes on 2 cores).

use netxray_extract::critical::{Line, find_critical_points};
use netxray_extract::known::KnownPrefix;
use netxray_extract::layer::{free_segments, random_line};
use netxray_extract::signature::{measure, measure_on};
use netxray_extract::{CountingOracle, ExtractParams, NetworkOracle};
use netxray_relu::{Arch, InitRecipe, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::time::Instant;

const REPS: usize = 3;
const PROBE_UNITS: usize = 32;
const FULL_POINTS: usize = 16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arch: Arch = std::env::var("ARCH")
        .unwrap_or_else(|_| "3072-256-256-256-10".to_string())
        .parse()
        .expect("ARCH");
    let depths: Vec<usize> = std::env::var("DEPTHS")
        .unwrap_or_else(|_| "1,2".to_string())
        .split(',')
        .map(|d| d.parse().expect("DEPTHS"))
        .collect();
    let net = Network::random(&arch, InitRecipe::Balanced, 7);
    let p = ExtractParams::default();
    let d0 = 3072;
    let sigma = p.origin_scale;
    let half = p.line_half_length * sigma * (d0 as f64).sqrt();
    let stencil = p.stencil();
    let search_tol = p.search_tol();
    let target = NetworkOracle::new(net.clone());
    let oracle = CountingOracle::new(&target, None);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for depth in depths {
        let known = KnownPrefix {
            layers: net.layers()[..depth].to_vec(),
            input_dim: d0,
        };
        let lines: Vec<Line> = vec![random_line(&mut rng, d0, sigma)];
        let segments = free_segments(&known, &lines[0], 0, half);
        let cps = find_critical_points(&oracle, &lines, &segments, search_tol).expect("search");
        let units: Vec<usize> = (0..PROBE_UNITS).map(|k| k * 256 / PROBE_UNITS).collect();
        let (mut probe_s, mut full_s) = (Vec::new(), Vec::new());
        let (mut probes_ok, mut full_ok, mut probe_q, mut full_q) = (0, 0, 0, 0);
        for _ in 0..REPS {
            let (q0, t0) = (oracle.queries(), Instant::now());
            let w =
                measure_on(&oracle, &known, &lines, &cps, stencil, Some(&units)).expect("probe");
            probe_s.push(t0.elapsed().as_secs_f64());
            probes_ok = w.iter().flatten().count();
            probe_q = oracle.queries() - q0;
            let few = &cps[..FULL_POINTS.min(cps.len())];
            let (q0, t0) = (oracle.queries(), Instant::now());
            let w = measure(&oracle, &known, &lines, few, stencil).expect("full");
            full_s.push(t0.elapsed().as_secs_f64());
            full_ok = w.iter().flatten().count();
            full_q = oracle.queries() - q0;
        }
        // The target's own share: as many forward passes as the probes asked for.
        let pts: Vec<Vec<f64>> = (0..probe_q.min(20_000))
            .map(|i| lines[0].at(i as f64 * 1e-3))
            .collect();
        let t0 = Instant::now();
        oracle.query_points(&pts).expect("forward");
        let forward_s = t0.elapsed().as_secs_f64() * probe_q as f64 / pts.len().max(1) as f64;
        println!(
            "layer {}: {} critical points on one line; probe on {PROBE_UNITS} units: median {:.1} s \
             ({:.1} ms/point, {probes_ok} usable, {probe_q} queries, of which the target's forward passes \
             {forward_s:.1} s); full measurement of {}: \
             median {:.2} s ({:.0} ms/point, {full_ok} usable, {full_q} queries)",
            depth + 1,
            cps.len(),
            median(probe_s.clone()),
            1e3 * median(probe_s) / cps.len().max(1) as f64,
            FULL_POINTS.min(cps.len()),
            median(full_s.clone()),
            1e3 * median(full_s) / FULL_POINTS.min(cps.len()).max(1) as f64,
        );
    }
}
