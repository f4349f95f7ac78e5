#!/usr/bin/env bash
# What `npm run bench -- --peers` needs beyond the tests' set-up: Debian's GlusterFS server
# and FUSE client. Installs them only when missing, and only when apt would remove nothing
# for it (checked with a simulated install first). It starts no service: the bench runs a
# glusterd of its own and stops it at the end (bench/gluster.ts).
set -euo pipefail

pkgs=(glusterfs-server glusterfs-client)
say() { printf '[setup] %s\n' "$*"; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "[setup] missing Debian packages for --peers: ${missing[*]}; run as root or install them" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
simulated=$(apt-get install -s --no-install-recommends "${missing[@]}")
if grep -q '^Remv ' <<<"$simulated"; then
  echo "[setup] installing ${missing[*]} would remove packages; not installing:" >&2
  grep '^Remv ' <<<"$simulated" >&2
  exit 1
fi
say "installing Debian packages for --peers: ${missing[*]}"
apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}" >/dev/null
