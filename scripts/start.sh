#!/usr/bin/env bash
# Start a single-node pxd with the embedded metadata store and the Docker plugin socket
# at /run/docker/plugins/pxd.sock. Extra arguments go to pxd (see: scripts/start.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run >&2
# Node flags: see src/cli/node-flags.ts.
exec node --initial-old-space-size=128 bin/pxd "$@"
