#!/usr/bin/env bash
# The CPU recipe of issue 7: vgg-small on Fashion-MNIST, T = 4, 25 % global magnitude pruning per
# round for 13 prunes (97.6 % sparsity), late rewinding to epoch 1 of a 2-epoch dense round,
# 1 epoch per later round, 12,000 training / 2,000 test images, 16 PEs; LTH, u-Ticket (random
# balancer, reference-code mask carry) and u-Ticket with the `magnitude` balancer. All runs are
# resumable: rerunning this script after they finished only re-reads their records
# (results/uticket/{lth,uticket,uticket-magnitude}) and prints the table.
# Set OUT to write elsewhere, DATA_DIR for the Fashion-MNIST folder. On 2 cores each run takes about
# 33 minutes alone; two run side by side here, the third after them.
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
"$BIN" lth --method uticket --balancer magnitude "${common[@]}" --out-dir "$OUT/uticket-magnitude"
# Plots with both runs (the finished u-Ticket run only re-reads its state).
"$BIN" lth --method uticket "${common[@]}" --out-dir "$OUT/uticket" --compare "$OUT/lth" >/dev/null
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
lth = json.load(open(f"{out}/lth/rounds.json"))[-1]
ut = json.load(open(f"{out}/uticket/rounds.json"))[-1]
mg = json.load(open(f"{out}/uticket-magnitude/rounds.json"))[-1]
def row(name, a, b, c, paper, fmt="{:.3g}"):
    print(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {fmt.format(c)} | {paper} |")
print("| final round (vgg-small, FMNIST, 16 PEs) | LTH | u-Ticket (random) | u-Ticket (magnitude) | paper (VGG-16, FMNIST) LTH → u-Ticket |")
print("|---|---:|---:|---:|---|")
def hw(k):
    return lth["hw"][k], ut["hw"][k], mg["hw"][k]
row("weight sparsity (%)", lth["sparsity"] * 100, ut["sparsity"] * 100, mg["sparsity"] * 100, "98.2 → 98.5", "{:.2f}")
row("test accuracy (%)", lth["test_accuracy"] * 100, ut["test_accuracy"] * 100, mg["test_accuracy"] * 100, "94.6 → 94.0", "{:.2f}")
row("utilization (weighted)", *hw("utilization_weighted"), "0.57 → 1.00", "{:.3f}")
row("utilization (unweighted)", *hw("utilization_unweighted"), "—", "{:.3f}")
row("work cycles", *hw("work_cycles"), "1.10e8 → 0.81e8", "{:.3e}")
row("idle cycles", *hw("idle_cycles"), "0.42e8 → 0.00", "{:.3e}")
row("latency (cycles)", *hw("latency_cycles"), "0.10e8 → 0.05e8", "{:.3e}")
row("input spike sparsity", lth["spike_sparsity"], ut["spike_sparsity"], mg["spike_sparsity"], "0.839 → 0.814", "{:.3f}")
def cut(r, k):
    return (1 - r["hw"][k] / lth["hw"][k]) * 100
print(f"| latency cut | | {cut(ut, 'latency_cycles'):.1f} % | {cut(mg, 'latency_cycles'):.1f} % | 50 % |")
print(f"| PE energy cut (Eq. 3, E_l/E_d = 0.21) | | {cut(ut, 'energy'):.1f} % | {cut(mg, 'energy'):.1f} % | 35.4 % |")
acc = lambda r: (r["test_accuracy"] - lth["test_accuracy"]) * 100
print(f"| accuracy change | | {acc(ut):+.2f} pp | {acc(mg):+.2f} pp | -0.6 pp |")
# Accuracy at comparable sparsity: the rounds of each u-Ticket run next to LTH's last round.
for name, run in (("random", "uticket"), ("magnitude", "uticket-magnitude")):
    rs = json.load(open(f"{out}/{run}/rounds.json"))
    print(f"u-Ticket ({name}) per round (sparsity %, accuracy %): " + ", ".join(
        f"r{r['round']} {r['sparsity'] * 100:.2f}/{r['test_accuracy'] * 100:.2f}" for r in rs[-3:]))
PY
