#!/usr/bin/env bash
# Extraction benchmark: one table row per target (queries, wall time, peak RSS, parameter and output error).
# Usage: scripts/bench-extract.sh [MODELS_DIR] [DATA_DIR]
#   MODELS_DIR: folder with the reference targets cjm_*.npz (default ../shared/models/extraction)
#   DATA_DIR:   Fashion-MNIST IDX folder for the trained target (default ../shared/datasets/fashion-mnist)
# Set ONLY="name1 name2" to run a subset (names as in the first column).
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
MODELS="${1:-../shared/models/extraction}"
DATA="${2:-../shared/datasets/fashion-mnist}"
SEED="${SEED:-1}"
# Query budget per target, so that a target out of reach ends with a clear "budget exhausted" row.
MAX_QUERIES="${MAX_QUERIES:-3000000}"
cargo build --quiet --release -p netxray
BIN="$CARGO_TARGET_DIR/release/netxray"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

targets=()
for m in 10-15-15-1 40-20-10-10-1 784-32-1; do
  [ -f "$MODELS/cjm_${m}_seed42.npz" ] && targets+=("ref:$m|$MODELS/cjm_${m}_seed42.npz")
done
for spec in "10-20-20-1 balanced" "10-20-20-1 cjm" "20-40-40-10 balanced" "20-40-40-10 he" "40-20-10-10-1 he" \
  "64-32-32-32-10 balanced" \
  "64-128-128-10 balanced" "64-128-128-128-10 balanced" "784-64-64-64-10 balanced"; do
  set -- $spec
  "$BIN" model new --arch "$1" --init "$2" --seed 7 --out "$WORK/$1-$2.safetensors" >/dev/null
  targets+=("$2:$1|$WORK/$1-$2.safetensors")
done
if [ -f "$DATA/train-images-idx3-ubyte.gz" ] || [ -f "$DATA/train-images-idx3-ubyte" ]; then
  "$BIN" model train --arch 784-64-32-10 --dataset fashion-mnist --data-dir "$DATA" --epochs 3 --seed 1 \
    --out "$WORK/fmnist.safetensors" >/dev/null 2>&1 && targets+=("fmnist:784-64-32-10|$WORK/fmnist.safetensors")
fi

printf '| target | queries | wall s | peak RSS MiB | max abs dtheta (bits) | max abs f-f^ (bits) | label agreement | verified |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---|\n'
for t in "${targets[@]}"; do
  name="${t%%|*}"; file="${t#*|}"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  out="$WORK/stolen.safetensors"; rep="$WORK/report.json"; rm -f "$out" "$rep"
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$BIN" extract --target "$file" --out "$out" --report "$rep" --seed "$SEED" --max-queries "$MAX_QUERIES" \
    >"$WORK/log" 2>&1
  status=$?
  read -r wall rss < <(tail -n 1 "$WORK/time") || { wall=NA; rss=0; }
  if [ -f "$rep" ]; then
    q=$(python3 -c "import json;print(json.load(open('$rep'))['total_queries'])")
  else q=NA; fi
  if [ -f "$out" ]; then
    cmp=$("$BIN" model compare --truth "$file" --candidate "$out" --json --samples 100000 2>/dev/null)
    pb=$(echo "$cmp" | python3 -c "import json,sys;r=json.load(sys.stdin);print('%.1f'%r['param_bits'])")
    ob=$(echo "$cmp" | python3 -c "import json,sys;r=json.load(sys.stdin);print('%.1f'%r['output_bits'])")
    la=$(echo "$cmp" | python3 -c "import json,sys;r=json.load(sys.stdin);print('%.4f'%r['label_agreement'])")
  else pb=NA; ob=NA; la=NA; fi
  ok=$([ $status -eq 0 ] && echo yes || echo "no: $(tail -1 "$WORK/log" | cut -c1-60)")
  printf '| %s | %s | %s | %d | %s | %s | %s | %s |\n' "$name" "$q" "$wall" $((rss / 1024)) "$pb" "$ob" "$la" "$ok"
done
