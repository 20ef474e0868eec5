#!/usr/bin/env bash
# The main job on a built-in default: make a random 40-20-10-10-1 ReLU network, steal it back through
# black-box queries only, and compare the stolen copy with the truth.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
cargo build --quiet --release -p netxray
BIN="$CARGO_TARGET_DIR/release/netxray"
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT"
"$BIN" model new --arch 40-20-10-10-1 --init balanced --seed 1 --out "$OUT/target.safetensors"
"$BIN" extract --target "$OUT/target.safetensors" --out "$OUT/stolen.safetensors" --report "$OUT/report.json" --seed 1
"$BIN" model compare --truth "$OUT/target.safetensors" --candidate "$OUT/stolen.safetensors"
echo "files in $OUT (report.json holds queries and time per layer and stage)"
