#!/usr/bin/env bash
# Float32 deployments: each MLP is written twice with the same weights — an f32 safetensors file
# (answered in f32 arithmetic, `--target-arith auto`) and an ONNX file (answered by the tract ONNX
# runtime) — and extracted with `--precision auto`. One table row per target (issue 4).
# Usage: scripts/bench-f32.sh        Set ONLY="arch1 arch2" to run a subset.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
SEED="${SEED:-1}"
MAX_QUERIES="${MAX_QUERIES:-20000000}"
cargo build --quiet --release -p netxray
BIN="$CARGO_TARGET_DIR/release/netxray"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

printf '| target | format | queries | wall s | peak RSS MiB | max rel f-f^ | label agreement | verified |\n'
printf '|---|---|---:|---:|---:|---:|---:|---|\n'
for arch in 20-10-10-1 24-12-12-4 64-32-32-10 40-20-10-10-10; do
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $arch "* ]]; then continue; fi
  "$BIN" model new --arch "$arch" --init balanced --seed 5 --f32 --out "$WORK/m.safetensors" >/dev/null
  "$BIN" model new --arch "$arch" --init balanced --seed 5 --out "$WORK/m.onnx" >/dev/null
  for file in "$WORK/m.safetensors" "$WORK/m.onnx"; do
    out="$WORK/stolen.safetensors"; rep="$WORK/report.json"; rm -f "$out" "$rep"
    /usr/bin/time -f '%e %M' -o "$WORK/time" "$BIN" extract --target "$file" --target-arith auto \
      --precision auto --out "$out" --report "$rep" --seed "$SEED" --max-queries "$MAX_QUERIES" >"$WORK/log" 2>&1
    status=$?
    read -r wall rss < <(tail -n 1 "$WORK/time") || { wall=NA; rss=0; }
    if [ -f "$rep" ]; then
      q=$(python3 -c "import json;print(json.load(open('$rep'))['total_queries'])")
    else q=NA; fi
    if [ -f "$out" ]; then
      cmp=$("$BIN" model compare --truth "$file" --candidate "$out" --json --samples 100000 2>/dev/null)
      rel=$(echo "$cmp" | python3 -c "import json,sys;r=json.load(sys.stdin);print('%.2e'%r['max_output_error_rel'])")
      la=$(echo "$cmp" | python3 -c "import json,sys;r=json.load(sys.stdin);print('%.4f %s'%(r['label_agreement'],r['agreement_kind']))")
    else rel=NA; la=NA; fi
    ok=$([ $status -eq 0 ] && echo yes || echo "no: $(tail -1 "$WORK/log" | cut -c1-60)")
    printf '| %s | %s | %s | %s | %d | %s | %s | %s |\n' "$arch" "${file##*.}" "$q" "$wall" $((rss / 1024)) "$rel" "$la" "$ok"
  done
done
