#!/usr/bin/env bash
# Benchmarks (not tests): fio against the host disk, a repl=1 and a repl=2 pxd volume, in
# one run. Sets itself up like the tests do; prints a table and writes bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# `bench.sh layers|link [flags]`: the smaller benchmarks (bench/layers.ts, bench/link.ts).
case "${1:-}" in
  layers|link) script="$1"; shift; exec node dist/bench/"$script".js "$@" ;;
esac
exec node dist/bench/run.js "$@"
