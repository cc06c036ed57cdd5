#!/usr/bin/env bash
# Installs (once) the Debian packages the tests use, when they are missing:
#   docker-compose  validates docker-compose.yml offline (no Docker engine is installed)
#   chromium        the nsqadmin browser test (driven by playwright-core, no browser download)
# Needs root (or sudo) the first time; does nothing when both are there.
set -euo pipefail
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ -x "${NSQ_SUITE_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "system-deps: the tests need the Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]} (first time only)" >&2
"${as_root[@]}" apt-get update -qq >/dev/null
# --no-install-recommends: docker-compose would otherwise pull in a Docker engine.
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
