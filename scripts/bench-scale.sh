#!/usr/bin/env bash
# Scale benchmark (issue 5): deep and wide targets, one table row each, then the per-layer costs.
# Usage: scripts/bench-scale.sh [DATA_DIR]
#   DATA_DIR: Fashion-MNIST IDX folder for the trained 784-128-128-128-10 (default ../shared/datasets/fashion-mnist)
# Set ONLY="name1 name2" to run a subset (names as in the first column), MAX_QUERIES to cap each run,
# KEEP=DIR to keep the targets, stolen models and reports.
# RESUME=1 (with KEEP) checkpoints each extraction in KEEP/<name>.ck and continues it when rerun: the
# 3072-256×8-10 takes longer than one sitting. The wall and RSS columns are then of the last process
# only; the checkpoint's `wall_seconds` holds the committed layers' total.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
DATA="${1:-../shared/datasets/fashion-mnist}"
SEED="${SEED:-1}"
MAX_QUERIES="${MAX_QUERIES:-200000000}"
if [ -n "${RESUME:-}" ] && [ -z "${KEEP:-}" ]; then
  echo "RESUME needs KEEP (the checkpoints live there)" >&2; exit 2
fi
cargo build --quiet --release -p netxray
BIN="$CARGO_TARGET_DIR/release/netxray"
if [ -n "${KEEP:-}" ]; then WORK="$KEEP"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
targets=()
# Random targets as in the EUROCRYPT 2024 paper: balanced init, every neuron active on about half the inputs.
for arch in 784-16-16-16-16-16-16-16-16-1 3072-256-256-256-256-256-256-256-256-10; do
  want "balanced:$arch" || continue
  "$BIN" model new --arch "$arch" --init balanced --seed 7 --out "$WORK/$arch.safetensors" >/dev/null
  xa="--probe-coords 24"
  # Deeper-layer screening needs layers of >= 4*32 units: only the 256-wide net has them.
  [[ "$arch" == 3072-* ]] && xa="$xa --probe-units 32"
  targets+=("balanced:$arch|$WORK/$arch.safetensors||$xa")
done
if want "fmnist:784-128-128-128-10" && { [ -f "$DATA/train-images-idx3-ubyte.gz" ] || [ -f "$DATA/train-images-idx3-ubyte" ]; }; then
  "$BIN" model train --arch 784-128-128-128-10 --dataset fashion-mnist --data-dir "$DATA" --epochs 3 --seed 1 \
    --out "$WORK/fmnist-128.safetensors" >/dev/null 2>&1 &&
    targets+=("fmnist:784-128-128-128-10|$WORK/fmnist-128.safetensors|--dataset fashion-mnist --data-dir $DATA|--probe-coords 24")
fi

printf '| target | queries | wall s | peak RSS MiB | max rel f-f^ bits (1e5 inputs) | max abs f-f^ bits | label agreement (1e5 inputs) | test-set label agreement | low-confidence signs | verified |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
for t in "${targets[@]}"; do
  IFS='|' read -r name file cmpargs xargs <<<"$t"
  tag="${name//[:]/-}"
  out="$WORK/$tag.stolen.safetensors"; rep="$WORK/$tag.report.json"; rm -f "$out" "$rep"
  resume=()
  if [ -n "${RESUME:-}" ]; then
    resume=(--resume "$WORK/$tag.ck") # the log of every sitting is kept, appended
  else
    rm -f "$WORK/$tag.log"
  fi
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$BIN" extract --target "$file" --out "$out" --report "$rep" \
    --seed "$SEED" --max-queries "$MAX_QUERIES" $xargs "${resume[@]}" --log info >>"$WORK/$tag.log" 2>&1
  status=$?
  read -r wall rss < <(tail -n 1 "$WORK/time") || { wall=NA; rss=0; }
  q=NA; low=NA
  if [ -f "$rep" ]; then
    read -r q low < <(python3 -c "
import json;r=json.load(open('$rep'))
print(r['total_queries'], len(r.get('low_confidence_signs',[])))")
  fi
  rb=NA; ob=NA; la=NA; ta=NA
  if [ -f "$out" ]; then
    # 1e5 random inputs for every target; the trained one also on its own test images.
    cmp=$("$BIN" model compare --truth "$file" --candidate "$out" --json --samples 100000 $cmpargs 2>/dev/null)
    read -r rb ob la ta < <(echo "$cmp" | python3 -c "
import json,sys;r=json.load(sys.stdin);d=r.get('dataset')
print('%.1f'%r['output_rel_bits'], '%.1f'%r['output_bits'], '%.4f'%r['label_agreement'],
      '%.4f'%d['test']['label_agreement'] if d else '-')")
  fi
  ok=$([ $status -eq 0 ] && echo yes || echo "no (exit $status): $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/$tag.log" | tr '\r' '\n' | grep -v ' INFO \| WARN \| DEBUG \|^\s*$' | tail -1 | cut -c1-60)")
  printf '| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s |\n' "$name" "$q" "$wall" $((rss / 1024)) "$rb" "$ob" "$la" "$ta" "$low" "$ok"
done

echo
echo "Per-layer costs (queries by stage, seconds):"
for t in "${targets[@]}"; do
  IFS='|' read -r name file cmpargs xargs <<<"$t"
  rep="$WORK/${name//[:]/-}.report.json"
  [ -f "$rep" ] || continue
  echo "$name"
  python3 -c "
import json;r=json.load(open('$rep'))
for l in r['layers']:
    q=l['queries'];s=l['seconds']
    print('  layer %d: %d/%d neurons, search %d, signature %d, refine %d, sign %d queries (%s); signatures %.1f s, signs %.1f s' % (
        l['layer'], l['neurons_found'], l['width'], q['search'], q['signature'], q['refine'], q['sign'], l['sign_method'], s['signatures'], s['sign']))
print('  output layer: %d queries' % r['output_queries'])"
done
