#!/usr/bin/env bash
# Runs every test of nsq-suite: formatting and lints, unit and integration tests, end-to-end
# tests of the real binaries against real NSQ v1.3.0 daemons, and the Python interop tests.
# Installs what it needs that is missing: the pinned NSQ and Consul binaries, the Python virtualenv,
# the browser test's playwright-core, and (as root) Debian's docker-compose and chromium.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/system-deps.sh
scripts/build-nsq.sh

target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target"
# Tests that cannot run on this machine (e.g. tests/tests/netns.rs without CAP_SYS_ADMIN) pass
# but record why in this file (test_support::skip); the list is printed at the end, pass or fail.
NSQ_SUITE_SKIPS_FILE="$target/test-skips.txt"
export NSQ_SUITE_SKIPS_FILE
: >"$NSQ_SUITE_SKIPS_FILE"

# The Docker test (scripts/docker-e2e.sh: a Docker engine, the images built from the Dockerfile,
# the README's "With Docker" section run for real) runs beside the others from here on, at a
# lower CPU priority: most of its time is an image build and waits on containers, which would
# add about 10 minutes in series. Its output goes to a file, printed when it ends.
# NSQ_SUITE_DOCKER=0 leaves it out (recorded as skipped, below).
docker_log="$target/docker-e2e.log"
# Appears once the Rust tests are compiled: the Docker test builds its images from then on.
docker_go="$target/docker-e2e.go"
rm -f "$docker_go"
docker_pid=
if [ "${NSQ_SUITE_DOCKER:-1}" = 0 ]; then
  echo "scripts/docker-e2e.sh: not run, NSQ_SUITE_DOCKER=0" >>"$NSQ_SUITE_SKIPS_FILE"
else
  echo "== docker (scripts/docker-e2e.sh, in the background; its log: $docker_log)" >&2
  # It prepares at once (engine, compose, base images) and builds the images once the Rust
  # tests are compiled (this file appears), while they run.
  export DOCKER_E2E_WAIT_FOR="$docker_go"
  # Its own process group (setsid), so that a failure elsewhere can stop all of it at once.
  setsid nice -n 10 scripts/docker-e2e.sh >"$docker_log" 2>&1 &
  docker_pid=$!
fi

finish() {
  # A failure elsewhere stops the Docker test too (it stops its containers and its dockerd).
  if [ -n "$docker_pid" ] && kill -0 "$docker_pid" 2>/dev/null; then
    kill -TERM -- "-$docker_pid" 2>/dev/null || true
    wait "$docker_pid" 2>/dev/null || true
  fi
  if [ -s "$NSQ_SUITE_SKIPS_FILE" ]; then
    echo "== SKIPPED tests ($(wc -l <"$NSQ_SUITE_SKIPS_FILE")): they passed without checking anything here" >&2
    sed 's/^/   /' "$NSQ_SUITE_SKIPS_FILE" >&2
  else
    echo "== no test was skipped" >&2
  fi
}
trap finish EXIT

scripts/build-consul.sh
NSQ_SUITE_PYTHON=$(scripts/python-env.sh)
export NSQ_SUITE_PYTHON
scripts/browser-env.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (unit, integration, end-to-end)" >&2
# `cargo test --workspace` also builds the service binaries the end-to-end tests run.
cargo test --workspace --locked --no-run
touch "$docker_go"
cargo test --workspace --locked
echo "== pytest (interop from Python)" >&2
"$NSQ_SUITE_PYTHON" -m pytest -q tests/python
if [ -n "$docker_pid" ]; then
  echo "== docker: waiting for scripts/docker-e2e.sh" >&2
  status=0
  wait "$docker_pid" || status=$?
  docker_pid=
  # The journey's steps and timings; all of it when it failed.
  if [ "$status" -ne 0 ]; then
    cat "$docker_log" >&2
    echo "== docker: scripts/docker-e2e.sh FAILED (exit $status)" >&2
    exit "$status"
  fi
  grep -E '^(docker-e2e|\[docker-e2e)' "$docker_log" >&2
fi
