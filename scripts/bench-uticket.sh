#!/usr/bin/env bash
# The CPU recipe of issue 7: vgg-small on Fashion-MNIST, T = 4, 25 % global magnitude pruning per
# round for 13 prunes (97.6 % sparsity), late rewinding to epoch 1 of a 2-epoch dense round,
# 1 epoch per later round, 12,000 training / 2,000 test images, 16 PEs; LTH and u-Ticket (random
# balancer, reference-code mask carry). Both runs are resumable: rerunning this script after they
# finished only re-reads their records (results/uticket/{lth,uticket}) and prints the table.
# Set OUT to write elsewhere, DATA_DIR for the Fashion-MNIST folder. On 2 cores both runs take
# about 30 minutes together.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
DATA_DIR="${DATA_DIR:-../shared/datasets/fashion-mnist}"
OUT="${OUT:-results/uticket}"
cargo build --quiet --release -p netxray
BIN="$CARGO_TARGET_DIR/release/netxray"
common=(--arch vgg-small --dataset fashion-mnist --data-dir "$DATA_DIR" --rounds 14
  --round0-epochs 2 --rewind-epoch 1 --epochs-per-round 1 --train-limit 12000 --test-limit 2000
  --seed 1)
"$BIN" lth --method lth "${common[@]}" --out-dir "$OUT/lth" &
"$BIN" lth --method uticket "${common[@]}" --out-dir "$OUT/uticket" &
wait
# Plots with both runs (the finished u-Ticket run only re-reads its state).
"$BIN" lth --method uticket "${common[@]}" --out-dir "$OUT/uticket" --compare "$OUT/lth" >/dev/null
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
lth = json.load(open(f"{out}/lth/rounds.json"))[-1]
ut = json.load(open(f"{out}/uticket/rounds.json"))[-1]
def row(name, a, b, paper, fmt="{:.3g}"):
    print(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {paper} |")
print("| final round (vgg-small, FMNIST, 16 PEs) | LTH | u-Ticket | paper (VGG-16, FMNIST) LTH → u-Ticket |")
print("|---|---:|---:|---|")
row("weight sparsity (%)", lth["sparsity"] * 100, ut["sparsity"] * 100, "98.2 → 98.5", "{:.2f}")
row("test accuracy (%)", lth["test_accuracy"] * 100, ut["test_accuracy"] * 100, "94.6 → 94.0", "{:.2f}")
row("utilization (weighted)", lth["hw"]["utilization_weighted"], ut["hw"]["utilization_weighted"], "0.57 → 1.00", "{:.3f}")
row("utilization (unweighted)", lth["hw"]["utilization_unweighted"], ut["hw"]["utilization_unweighted"], "—", "{:.3f}")
row("work cycles", lth["hw"]["work_cycles"], ut["hw"]["work_cycles"], "1.10e8 → 0.81e8", "{:.3e}")
row("idle cycles", lth["hw"]["idle_cycles"], ut["hw"]["idle_cycles"], "0.42e8 → 0.00", "{:.3e}")
row("latency (cycles)", lth["hw"]["latency_cycles"], ut["hw"]["latency_cycles"], "0.10e8 → 0.05e8", "{:.3e}")
row("input spike sparsity", lth["spike_sparsity"], ut["spike_sparsity"], "0.839 → 0.814", "{:.3f}")
lat = 1 - ut["hw"]["latency_cycles"] / lth["hw"]["latency_cycles"]
en = 1 - ut["hw"]["energy"] / lth["hw"]["energy"]
print(f"| latency cut | | {lat * 100:.1f} % | 50 % |")
print(f"| PE energy cut (Eq. 3, E_l/E_d = 0.21) | | {en * 100:.1f} % | 35.4 % |")
print(f"| accuracy change | | {(ut['test_accuracy'] - lth['test_accuracy']) * 100:+.2f} pp | -0.6 pp |")
PY
