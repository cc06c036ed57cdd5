#!/usr/bin/env bash
# Builds Consul, pinned at v1.13.9 (the last MPL-2.0 release line whose modules this
# machine's Go proxy serves; >= 1.17 is BSL), from the Go module in consul/daemon into
# .consul-bin/consul (git-ignored). Does nothing when it is already there at that version.
#
#   scripts/build-consul.sh            # build if missing
#   CONSUL_BIN_DIR=/some/dir scripts/build-consul.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${CONSUL_BIN_DIR:-$root/.consul-bin}
version=v1.13.9

have_it() {
  [ -f "$out/.version" ] && [ "$(cat "$out/.version")" = "$version" ] && [ -x "$out/consul" ]
}

if have_it; then
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build-consul: the Go toolchain (go 1.24 or newer) is needed to build Consul $version; install it and run again" >&2
  exit 1
fi

echo "build-consul: building Consul $version into $out (first time only, a few minutes)" >&2
mkdir -p "$out"
cd "$root/consul/daemon"
# `tool` builds the one tool directive of consul/daemon/go.mod: github.com/hashicorp/consul.
go build -trimpath -o "$out/" tool
echo "$version" > "$out/.version"
have_it || { echo "build-consul: $out/consul is missing after the build" >&2; exit 1; }
echo "build-consul: done: $("$out/consul" version | head -1)" >&2
