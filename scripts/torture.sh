#!/usr/bin/env bash
# A long randomized fault campaign (test/faults/campaign.ts): npm run torture -- --rounds N --seed S
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test >&2
exec node dist/test/faults/torture.js "$@"
