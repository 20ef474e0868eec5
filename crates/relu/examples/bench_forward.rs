//! Batched f64 forward throughput (queries/second) of a 3072-256×8-10 network at several batch sizes.
//! Run through `scripts/bench-forward.sh`. Prints the median of the repetitions.
use faer::Mat;
use netxray_relu::{Arch, InitRecipe, Network};
use std::time::Instant;

fn main() {
    let arch: Arch = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "3072-256-256-256-256-256-256-256-256-10".into())
        .parse()
        .expect("architecture");
    let net = Network::random(&arch, InitRecipe::Balanced, 1);
    println!("architecture {arch} ({} parameters)", net.num_params());
    println!("| batch | median time per batch | queries/second |");
    println!("|---:|---:|---:|");
    for batch in [1usize, 64, 1024] {
        let x = Mat::<f64>::from_fn(batch, arch.input_dim(), |i, j| ((i * 31 + j * 17) % 97) as f64 / 97.0 - 0.5);
        let reps = if batch == 1 { 2000 } else if batch == 64 { 200 } else { 20 };
        let mut times = Vec::with_capacity(reps);
        let mut sink = 0.0;
        for _ in 0..reps {
            let t = Instant::now();
            let y = net.forward(x.as_ref()).expect("shape");
            times.push(t.elapsed().as_secs_f64());
            sink += y[(0, 0)];
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!("| {batch} | {:.3} ms | {:.0} |", med * 1e3, batch as f64 / med);
        std::hint::black_box(sink);
    }
}
