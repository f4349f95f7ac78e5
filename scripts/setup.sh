#!/usr/bin/env bash
# Bring a fresh Debian machine (root, Node 20) to where pxd runs or its tests run:
# system packages, npm dependencies, the native addon and the TypeScript build. Each step
# runs only when its result is missing or stale, so calling this every time is cheap.
#   scripts/setup.sh run    what the daemon needs
#   scripts/setup.sh test   that, plus what the test suite needs (docker.io, busybox, ...)
# It installs only what is missing and never removes a package (apt-get --no-remove): FUSE
# tools come from `fuse` (2.x) or `fuse3`, whichever the host has; they conflict, so `fuse`
# is installed only when neither is. PXD_SETUP_DRY_RUN=1 prints the packages it would
# install and stops there.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-run}
. scripts/lib/host-layout.sh
# What the daemon runs with (host-layout.sh), what building its addon takes (set-up builds it), what the tests use.
run_pkgs=("${run_packages[@]}")
build_pkgs=(libxxhash-dev)
test_pkgs=(xfsprogs fio docker.io busybox-static iproute2 iptables procps etcd-server python3 systemd)
case "$profile" in
  run) pkgs=("${run_pkgs[@]}" "${build_pkgs[@]}") ;;
  test) pkgs=("${run_pkgs[@]}" "${build_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac

say() { printf '[setup] %s\n' "$*"; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done
# FUSE tools (fusermount or fusermount3): pxd mounts and unmounts as root on its own, they are
# for whoever cleans up by hand.
installed "${fuse_tools[0]}" || installed "${fuse_tools[1]}" || missing+=("${fuse_tools[0]}")
if [ "${PXD_SETUP_DRY_RUN:-0}" = 1 ]; then
  echo "would install: ${missing[*]}"
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "[setup] missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}" >/dev/null
fi

# npm dependencies: reinstall when the lock file changed since the last install.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f node_modules/.pxd-lock-sum ] || [ "$(cat node_modules/.pxd-lock-sum)" != "$lock_sum" ]; then
  say "npm ci"
  npm ci --no-audit --no-fund --ignore-scripts
  echo "$lock_sum" > node_modules/.pxd-lock-sum
fi

# Native addon: rebuild when any source is newer than the built module.
addon=build/Release/pxd_native.node
if [ ! -f "$addon" ] || [ -n "$(find native binding.gyp -newer "$addon" -print -quit)" ]; then
  say "building the native addon"
  npx --no-install node-gyp rebuild >/dev/null
fi

# TypeScript: tsc is quick when nothing changed; always run it so dist/ matches src/.
say "compiling TypeScript"
rm -rf dist
npx --no-install tsc -p tsconfig.json
