#!/usr/bin/env bash
# Benchmarks (not tests): fio against the host disk, a repl=1 and a repl=2 pxd volume (and
# GlusterFS beside them with --peers), then a shared volume's FUSE client against the ext4
# of the node serving it, in one run. Sets itself up like the tests do; prints tables and
# writes bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
# `--peers`: GlusterFS beside pxd in the main bench; its packages only then.
for a in "$@"; do
  if [ "$a" = --peers ]; then scripts/peers-setup.sh; break; fi
done
# `bench.sh layers|link|shared|resync|snapshots|secure|scale [flags]`: one of the smaller benchmarks (bench/<name>.ts).
case "${1:-}" in
  layers|link|shared|resync|snapshots|secure|scale) script="$1"; shift; exec node dist/bench/"$script".js "$@" ;;
esac
# `bench.sh ... --resync ...` / `bench.sh ... --scale ...`: only that benchmark, with the other flags.
for a in "$@"; do
  if [ "$a" = --resync ] || [ "$a" = --scale ]; then
    rest=()
    for b in "$@"; do [ "$b" = "$a" ] || rest+=("$b"); done
    exec node dist/bench/"${a#--}".js "${rest[@]}"
  fi
done

# Run a benchmark in the background and wait for it, so that a SIGINT or SIGTERM sent to
# this script reaches it at once (bash would act on it only once the benchmark ended).
run_bench() {
  node "$@" &
  local pid=$! rc=0
  trap 'kill -INT "$pid" 2>/dev/null || true' INT
  trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
  while :; do
    wait "$pid" && rc=0 || rc=$?
    # wait returns early for a trapped signal while the benchmark cleans up.
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - INT TERM
  return "$rc"
}

# The shared bench after the main one, with the main bench's flags that mean the same there.
shared_flags=()
skip_shared=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  a=${args[i]}
  case "$a" in
    --quick|--runtime=*|--ramp=*) shared_flags+=("$a") ;;
    --runtime|--ramp) shared_flags+=("$a" "${args[i + 1]:-}"); i=$((i + 1)) ;;
    --repeat) shared_flags+=(--rounds "${args[i + 1]:-}"); i=$((i + 1)) ;;
    --repeat=*) shared_flags+=("--rounds=${a#*=}") ;;
    --size|--volume-size|--crc-runs|--fuse-server) i=$((i + 1)) ;;
    --crc-only) skip_shared=1 ;;
    -h|--help) node dist/bench/run.js --help; echo; exec node dist/bench/shared.js --help ;;
  esac
done

rc=0
run_bench dist/bench/run.js "$@" || rc=$?
# Interrupted (130) or bad flags (2): stop here.
if [ "$rc" -eq 130 ] || [ "$rc" -eq 2 ] || [ "$skip_shared" -eq 1 ]; then exit "$rc"; fi
shared_rc=0
run_bench dist/bench/shared.js "${shared_flags[@]}" || shared_rc=$?
if [ "$shared_rc" -ne 0 ]; then exit "$shared_rc"; fi
exit "$rc"
