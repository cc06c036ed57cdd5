#!/usr/bin/env bash
# Builds Docker Compose v2, pinned at v2.40.3, from the Go module in docker/compose into
# .compose-bin/docker-compose (git-ignored): Debian packages no compose v2 plugin, and
# `go install github.com/docker/compose/v2/cmd@v2.40.3` refuses (compose's go.mod has `exclude`
# lines). Does nothing when it is already there at that version.
#
#   scripts/build-compose.sh                 # prints the binary's path
#   COMPOSE_BIN_DIR=/some/dir scripts/build-compose.sh
#
# The binary is a Docker CLI plugin: put it (or a link to it) in $DOCKER_CONFIG/cli-plugins/ or
# ~/.docker/cli-plugins/ and `docker compose` runs it. scripts/docker-e2e.sh does that in a
# private DOCKER_CONFIG.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${COMPOSE_BIN_DIR:-$root/.compose-bin}
version=v2.40.3
build="$version static"

if [ -x "$out/docker-compose" ] && [ -f "$out/.version" ] && [ "$(cat "$out/.version")" = "$build" ]; then
  echo "$out/docker-compose"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-compose: the Go toolchain (go 1.24 or newer) is needed to build Docker Compose $version; install it and run again" >&2
  exit 1
fi
echo "build-compose: building Docker Compose $version into $out (first time only; a few minutes)" >&2
mkdir -p "$out"
cd "$root/docker/compose"
# -X …internal.Version: what `docker compose version` prints (else "dev").
CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$version" \
  -o "$out/docker-compose" tool
echo "$build" >"$out/.version"
got=$("$out/docker-compose" version --short)
[ "$got" = "${version#v}" ] || { echo "build-compose: built binary reports version $got, expected $version" >&2; exit 1; }
echo "$out/docker-compose"
