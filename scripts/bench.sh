#!/usr/bin/env bash
# Benchmarks the suite against NSQ's own Go tools on this machine and regenerates the figures
# and plots in docs/bench/ (results.json, throughput.png, latency.png).
#
#   scripts/bench.sh             # default run, under 3 minutes
#   scripts/bench.sh --long      # longer runs
#   scripts/bench.sh --modes pipeline --workers 2
#   scripts/bench.sh --modes rest   # the talk's REST version against the suite (a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-nsq.sh
cargo build --release --locked --bins -p sensor -p worker -p logger -p rest -p bench
exec target/release/bench --out docs/bench "$@"
