# What a host install of pxd is made of, shared by scripts/install.sh (links to a checkout)
# and scripts/package.sh (a Debian package). Source it; every function takes its paths as
# arguments and changes nothing else.

# stage_tree REPO DEST: the built project as it runs, without sources, tests or dev tools:
# dist/src, the native addon, bin/, package.json and the production npm dependencies.
stage_tree() {
  local repo=$1 dest=$2
  local addon=$repo/build/Release/pxd_native.node
  if [ ! -f "$repo/dist/src/cli/pxd.js" ] || [ ! -f "$addon" ]; then
    echo "stage_tree: $repo is not built (no dist/src/cli/pxd.js or $addon): run npm run build" >&2
    return 1
  fi
  mkdir -p "$dest/dist" "$dest/build/Release" "$dest/bin"
  cp -a "$repo/dist/src" "$dest/dist/src"
  install -m 0755 "$addon" "$dest/build/Release/pxd_native.node"
  install -m 0755 "$repo/bin/pxd" "$repo/bin/pxctl" "$dest/bin/"
  install -m 0644 "$repo/package.json" "$repo/package-lock.json" "$dest/"
  # node_modules may be a link to another checkout's: copy what it points to, then drop the dev tools.
  cp -a -L "$repo/node_modules" "$dest/node_modules"
  rm -f "$dest/node_modules/.pxd-lock-sum"
  (cd "$dest" && npm prune --omit=dev --offline --ignore-scripts --no-audit --no-fund >/dev/null)
}

# write_unit REPO BINDIR FILE: the systemd unit, starting BINDIR/pxd.
write_unit() {
  local repo=$1 bindir=$2 file=$3
  sed "s#@BINDIR@#$bindir#g" "$repo/packaging/pxd.service.in" > "$file.tmp"
  chmod 0644 "$file.tmp"
  mv "$file.tmp" "$file"
}

# write_config REPO FILE: the commented config file (every setting at its default).
write_config() {
  install -m 0644 "$1/packaging/pxd.conf" "$2"
}

# Debian packages the daemon runs with (scripts/setup.sh installs the missing ones; the
# Debian package depends on them). FUSE tools come from `fuse` (2.x) or `fuse3`, either one.
run_packages=(libfuse2 e2fsprogs util-linux mount)
fuse_tools=(fuse fuse3)
