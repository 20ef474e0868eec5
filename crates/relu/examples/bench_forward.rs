//! Batched f64 forward throughput (queries/second) of a ReLU network, by default
//! 3072-256×8-10, at batch sizes 1, 64 and 1024. Run through `scripts/bench-forward.sh [ARCH]`.
//! Prints the median over the repetitions (at least 5, more for small batches) after one warm-up pass.

use faer::Mat;
use netxray_relu::{Arch, InitRecipe, Network};
use std::time::Instant;

fn main() {
    let arch_txt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "3072-256-256-256-256-256-256-256-256-10".into());
    let arch: Arch = match arch_txt.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let net = Network::random(&arch, InitRecipe::Balanced, 1);
    println!(
        "architecture {arch} ({} parameters), f64, {} threads available",
        net.num_params(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| batch | repetitions | median time per batch | queries/second |");
    println!("|---:|---:|---:|---:|");
    for batch in [1usize, 64, 1024] {
        let x = Mat::<f64>::from_fn(batch, arch.input_dim(), |i, j| {
            ((i * 31 + j * 17) % 97) as f64 / 97.0 - 0.5
        });
        let reps = match batch {
            1 => 2000,
            64 => 200,
            _ => 21,
        };
        let mut sink = net.forward(x.as_ref()).expect("shape")[(0, 0)]; // warm-up
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            let y = net.forward(x.as_ref()).expect("shape");
            times.push(t.elapsed().as_secs_f64());
            sink += y[(0, 0)];
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "| {batch} | {reps} | {:.3} ms | {:.0} |",
            med * 1e3,
            batch as f64 / med
        );
        std::hint::black_box(sink);
    }
}
