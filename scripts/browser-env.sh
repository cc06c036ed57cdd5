#!/usr/bin/env bash
# Installs (once) the Node side of the browser test: playwright-core from
# tests/browser/package-lock.json, without any browser download (the test drives Debian's
# chromium package at /usr/bin/chromium, which .ci/run installs). Re-installs when the lock
# file changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/tests/browser"
stamp="$dir/node_modules/.package-lock.stamp"
if ! cmp -s "$dir/package-lock.json" "$stamp"; then
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$dir/package-lock.json" "$stamp"
fi
chromium=${NSQ_SUITE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "warning: $chromium is missing (apt-get install chromium): the nsqadmin browser test will fail" >&2
fi
