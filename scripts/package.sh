#!/usr/bin/env bash
# Build the Debian package of this checkout: dist/pxd_<version>_<arch>.deb (npm run package).
#   scripts/package.sh [--out DIR] [--no-build]
#     --out DIR    where the .deb goes (default dist/)
#     --no-build   package the tree as it is built now (skip npm run build)
# The package holds the built project under /usr/lib/pxd, pxd and pxctl in /usr/bin, the
# systemd unit in /lib/systemd/system and /etc/pxd/pxd.conf as a conffile. Installing it
# reloads systemd's units; it never enables or starts pxd: systemctl enable --now pxd.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/dist
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in dpkg-deb dpkg npm; do
  command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (a Debian host has dpkg-deb)" >&2; exit 1; }
done
. "$repo/scripts/lib/host-layout.sh"
say() { printf '[package] %s\n' "$*"; }
umask 022

# A fresh dist/src: tsc leaves behind the output of sources that are gone.
[ "$build" = 1 ] && (cd "$repo" && rm -rf dist/src && npm run --silent build >/dev/null)
version=$(node -p 'require(process.argv[1]).version' "$repo/package.json")
node_min=$(node -p 'require(process.argv[1]).engines.node.replace(/^>=\s*/, "")' "$repo/package.json")
arch=$(dpkg --print-architecture)
root=$(mktemp -d "${TMPDIR:-/tmp}/pxd-package.XXXXXX")
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

stage_tree "$repo" "$root/usr/lib/pxd"
mkdir -p "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/pxd" "$root/DEBIAN"
for b in pxd pxctl; do ln -s "../lib/pxd/bin/$b" "$root/usr/bin/$b"; done
write_unit "$repo" /usr/bin "$root/lib/systemd/system/pxd.service"
write_config "$repo" "$root/etc/pxd/pxd.conf"

depends="nodejs (>= $node_min)"
for p in "${run_packages[@]}"; do depends+=", $p"; done
depends+=", $(IFS='|'; echo "${fuse_tools[*]}" | sed 's/|/ | /g')"
cat > "$root/DEBIAN/control" <<CONTROL
Package: pxd
Version: $version
Architecture: $arch
Maintainer: pxd maintainers <pxd@localhost>
Section: admin
Priority: optional
Depends: $depends
Suggests: xfsprogs, docker.io, etcd-server
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Homepage: https://github.com/pxd/pxd
Description: storage node for container hosts
 Replicated block volumes served over FUSE to containers through the Docker
 volume plugin API, with pxctl to manage them. The pxd service is installed
 but not enabled: systemctl enable --now pxd.
CONTROL
echo /etc/pxd/pxd.conf > "$root/DEBIAN/conffiles"
for script in postinst postrm; do
  cat > "$root/DEBIAN/$script" <<'SCRIPT'
#!/bin/sh
# Let systemd see the new (or removed) unit; pxd is never started or stopped from here.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
exit 0
SCRIPT
  chmod 0755 "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/pxd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
say "built $deb"
