#!/usr/bin/env bash
# First-layer screening (`extract --probe-coords K`) against the default on a balanced 784-64-64-10:
# queries, wall time, peak RSS and precision with and without it (README, "First-layer screening").
# About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
cargo build --quiet --release -p netxray
BIN="$CARGO_TARGET_DIR/release/netxray"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$BIN" model new --arch 784-64-64-10 --init balanced --seed 7 --out "$work/t.safetensors" >/dev/null
for k in 0 24; do
  /usr/bin/time -f "%M" -o "$work/rss" "$BIN" extract --target "$work/t.safetensors" --seed 1 \
    --probe-coords "$k" --out "$work/s$k.safetensors" --report "$work/r$k.json" >/dev/null
  bits="$("$BIN" model compare --truth "$work/t.safetensors" --candidate "$work/s$k.safetensors" \
    | sed -n 's/^max |dtheta|: .*(\(.*\) bits).*/\1/p')"
  python3 - "$work/r$k.json" "$k" "$(cat "$work/rss")" "$bits" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"probe-coords {sys.argv[2]}: {r['total_queries']} queries, {r['wall_seconds']:.0f} s, "
      f"peak RSS {int(sys.argv[3]) // 1024} MiB, max |dtheta| 2^-{sys.argv[4]}, "
      f"verification {r['verify_rel_error']:.2e}")
PY
done
