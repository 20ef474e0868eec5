#!/usr/bin/env bash
# Batched f64 forward throughput of the ReLU network (queries/second), median of repetitions, at batch
# sizes 1, 64 and 1024.
# Usage: scripts/bench-forward.sh [ARCH]   (default 3072-256-256-256-256-256-256-256-256-10)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netxray-target}"
cargo run --quiet --release -p netxray-relu --example bench_forward -- "$@"
