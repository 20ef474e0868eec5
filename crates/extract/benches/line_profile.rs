//! Cost of [`KnownPrefix::line_profile`] on a wide, deep prefix: every predicted crossing of
//! validation, refinement and polishing profiles one whole search line (its known kinks and the
//! prefix's output at each), and polishing a 256-wide layer places ~1,000 per neuron.
//!
//! The prefix is the first `DEPTH` hidden layers of the balanced 3072-256×8-10 (`MODEL_SEED` 7), the
//! lines are random search lines of the attack's default length. Prints the median time per profile
//! over `REPEATS` runs of `LINES` lines, and the breakpoints per line.
//!
//! `DEPTH=3 LINES=20 REPEATS=5 cargo bench -p netxray-extract --bench line_profile`

use netxray_extract::ExtractParams;
use netxray_extract::known::KnownPrefix;
use netxray_extract::layer::random_line;
use netxray_relu::{Arch, InitRecipe, Network};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::time::Instant;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let arch: Arch = env_or(
        "ARCH",
        "3072-256-256-256-256-256-256-256-256-10".to_string(),
    )
    .parse()
    .expect("ARCH");
    let depth: usize = env_or("DEPTH", 3);
    let lines: usize = env_or("LINES", 20);
    let repeats: usize = env_or("REPEATS", 5);
    let net = Network::random(&arch, InitRecipe::Balanced, env_or("MODEL_SEED", 7));
    assert!(
        (1..=arch.hidden().len()).contains(&depth),
        "DEPTH must be 1..={}",
        arch.hidden().len()
    );
    let known = KnownPrefix {
        layers: net.layers()[..depth].to_vec(),
        input_dim: arch.input_dim(),
    };
    let p = ExtractParams::default();
    let d0 = known.input_dim;
    let half = p.line_half_length * p.origin_scale * (d0 as f64).sqrt();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let ls: Vec<_> = (0..lines)
        .map(|_| random_line(&mut rng, d0, p.origin_scale))
        .collect();
    let mut times = Vec::new();
    let mut breakpoints = 0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        breakpoints = 0;
        for l in &ls {
            let (ts, _) = known.line_profile(&l.origin, &l.dir, -half, half);
            breakpoints += ts.len();
        }
        times.push(t0.elapsed().as_secs_f64() / lines as f64);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "depth {depth}: median {:.2} ms per line profile ({} breakpoints per line, {lines} lines, {repeats} repeats)",
        1e3 * times[times.len() / 2],
        breakpoints / lines
    );
}
