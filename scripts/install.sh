#!/usr/bin/env bash
# Install pxd as a host service from this checkout: set-up (packages, build), `pxd` and
# `pxctl` on the PATH (links into PREFIX/bin), the systemd unit, and a commented config file
# that is never overwritten once it exists.
#   scripts/install.sh [--prefix DIR] [--etc DIR] [--no-setup]
#     --prefix DIR  where bin/pxd and bin/pxctl links go (default /usr/local)
#     --etc DIR     where systemd/system/pxd.service and pxd/pxd.conf go (default /etc)
#     --no-setup    skip scripts/setup.sh (the checkout is already built)
# Then: systemctl enable --now pxd
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr/local
etc=/etc
setup=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --etc) etc=${2:?--etc needs a directory}; shift 2 ;;
    --no-setup) setup=0; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then echo "install.sh: run as root (pxd runs as root)" >&2; exit 1; fi
say() { printf '[install] %s\n' "$*"; }
. "$repo/scripts/lib/host-layout.sh"

[ "$setup" = 1 ] && "$repo/scripts/setup.sh" run
mkdir -p "$prefix/bin" "$etc/systemd/system" "$etc/pxd"
chmod 0755 "$etc/pxd"
for b in pxd pxctl; do
  ln -sfn "$repo/bin/$b" "$prefix/bin/$b"
  say "$prefix/bin/$b -> $repo/bin/$b"
done
unit="$etc/systemd/system/pxd.service"
write_unit "$repo" "$prefix/bin" "$unit"
say "wrote $unit"
if [ -e "$etc/pxd/pxd.conf" ]; then
  say "kept $etc/pxd/pxd.conf as it is"
else
  write_config "$repo" "$etc/pxd/pxd.conf"
  say "wrote $etc/pxd/pxd.conf (every setting commented out: the defaults)"
fi
if [ -d /run/systemd/system ] && [ "$etc" = /etc ]; then
  systemctl daemon-reload
  say "start it with: systemctl enable --now pxd"
else
  say "systemd is not running here: start pxd with $prefix/bin/pxd"
fi
