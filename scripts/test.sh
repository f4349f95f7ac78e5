#!/usr/bin/env bash
# Run the whole test suite: set-up first, then unit tests (in parallel), then integration
# tests (one at a time: they share loop devices, FUSE and /run/docker/plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
npx --no-install ava --config ava.unit.config.cjs "$@"
npx --no-install ava --config ava.integration.config.cjs "$@"
