#!/usr/bin/env bash
# SNN training-step speed: median ms/step, samples/s and peak RSS (VmHWM) of the spiking MLP
# 784-512-512-10 (batch 128), the small spiking conv net (batch 32) — the two networks of
# ../shared/research/torch-baseline.md, same shapes, T = 4, Adam, 50 % masks — and vgg-small at
# batch 128; then the wall time of one full Fashion-MNIST epoch of vgg-small (skip it with
# SKIP_EPOCH=1; set DATA_DIR to the Fashion-MNIST folder).
# Each network runs REPEATS times (default 3) as a fresh process; the line printed last per
# network is the median run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
REPEATS="${REPEATS:-3}"
STEPS="${STEPS:-20}"
DATA_DIR="${DATA_DIR:-../shared/datasets/fashion-mnist}"
cargo build --quiet --release -p netxray-snn --example bench_snn
cargo build --quiet --release -p netxray
BIN="$CARGO_TARGET_DIR/release/examples/bench_snn"
for net in mlp convnet vgg-small; do
  steps="$STEPS"
  [ "$net" = vgg-small ] && steps=$((STEPS / 2))
  lines=()
  for _ in $(seq "$REPEATS"); do
    lines+=("$("$BIN" "$net" "$steps")")
  done
  # Median run by step time.
  printf '%s\n' "${lines[@]}" | sort -t= -k6 -g | awk -v n="${#lines[@]}" 'NR == int((n + 1) / 2) { print "median:", $0 }'
done
echo "PyTorch 2.13 eager on this CPU (torch-baseline.md, 2 threads): mlp 40.0 ms/step, convnet 142.1 ms/step"
if [ "${SKIP_EPOCH:-0}" != 1 ]; then
  out="$(mktemp -d)"
  start=$(date +%s.%N)
  "$CARGO_TARGET_DIR/release/netxray" snn train --arch vgg-small --dataset fashion-mnist \
    --data-dir "$DATA_DIR" --epochs 1 --out "$out" --seed 1 >/dev/null 2>&1
  end=$(date +%s.%N)
  python3 - "$out/report.json" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e = r["epochs"][0]
print(f"vgg-small Fashion-MNIST epoch (60k images, T=4, batch 128): train {e['train_seconds']:.0f} s "
      f"({e['samples_per_second']:.0f} samples/s), with evaluation {float(sys.argv[3]) - float(sys.argv[2]):.0f} s, "
      f"test accuracy {e['test_accuracy'] * 100:.2f}%")
PY
  rm -rf "$out"
fi
