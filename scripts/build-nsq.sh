#!/usr/bin/env bash
# Builds NSQ's own binaries, pinned at v1.3.0, from the Go module in nsq/daemons into
# .nsq-bin/ (git-ignored). Does nothing when they are already there at that version and built
# the same way. Statically linked (CGO_ENABLED=0): the same binaries run on any Linux, in a
# `FROM scratch` image too.
#
#   scripts/build-nsq.sh            # build if missing
#   NSQ_BIN_DIR=/some/dir scripts/build-nsq.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${NSQ_BIN_DIR:-$root/.nsq-bin}
version=v1.3.0
# What .version records: the version and how it was built, so that binaries built another way
# (e.g. dynamically linked, by an older copy of this script) are built again.
build="$version static"
tools=(nsqd nsqlookupd nsqadmin nsq_tail to_nsq nsq_to_nsq nsq_stat nsq_to_file bench_writer bench_reader)

have_all() {
  [ -f "$out/.version" ] && [ "$(cat "$out/.version")" = "$build" ] || return 1
  for t in "${tools[@]}"; do [ -x "$out/$t" ] || return 1; done
}

if have_all; then
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build-nsq: the Go toolchain (go 1.24 or newer) is needed to build NSQ $version; install it and run again" >&2
  exit 1
fi

echo "build-nsq: building NSQ $version into $out (first time only)" >&2
mkdir -p "$out"
cd "$root/nsq/daemons"
# `tool` builds every tool directive of nsq/daemons/go.mod.
CGO_ENABLED=0 go build -trimpath -o "$out/" tool
echo "$build" > "$out/.version"
have_all || { echo "build-nsq: some binaries are missing in $out after the build" >&2; exit 1; }
echo "build-nsq: done: $(ls "$out" | tr '\n' ' ')" >&2
