#!/usr/bin/env bash
# The README's "With Docker" section, for real: a Docker engine, the images built from the
# Dockerfile by `docker compose build`, and the user's journey (tests/docker/e2e.py).
#
#   scripts/docker-e2e.sh
#
# What it sets up, each only when missing:
#   - Debian's docker.io (the engine) and debootstrap, as root with apt-get;
#   - a Docker daemon: it starts `dockerd` and stops it at the end. It refuses to use a daemon
#     it did not start (it tags local stand-ins as nsqio/nsq:v1.3.0 and hashicorp/consul:1.13.9
#     there), unless DOCKER_E2E_USE_RUNNING=1;
#   - Docker Compose v2.40.3, built from source (scripts/build-compose.sh) and installed as the
#     `docker compose` CLI plugin in a private DOCKER_CONFIG;
#   - the base images, as local stand-ins (docker/standins/README.md): Docker Hub and gcr.io are
#     not reachable from CI.
# Fails, with the reason, when the engine cannot start: it never passes without running.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t0=$(date +%s)
log() { echo "docker-e2e [$(( $(date +%s) - t0 )) s]: $*" >&2; }

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then as_root=(sudo); fi
fi

# --- the engine ---
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && [ ${#as_root[@]} -eq 0 ]; then
    log "needs the Debian packages ${missing[*]}; install them as root (apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]}"
  "${as_root[@]}" apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project's containers and volumes in every profile, gone (best effort).
remove_project() {
  docker compose --profile archive --profile consul down -v --remove-orphans >/dev/null 2>&1 || true
}

work=$(mktemp -d)
dockerd_pid=
cleanup() {
  local rc=$?
  if [ -n "$dockerd_pid" ]; then
    remove_project
    log "stopping the dockerd it started (pid $dockerd_pid)"
    "${as_root[@]}" kill -TERM "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do "${as_root[@]}" kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -rf "$work"
  log "exit $rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if docker info >/dev/null 2>&1; then
  if [ "${DOCKER_E2E_USE_RUNNING:-0}" != 1 ]; then
    log "a Docker daemon is already running. This test starts its own, because it tags local stand-ins as nsqio/nsq:v1.3.0 and hashicorp/consul:1.13.9 in it; stop that daemon first, or set DOCKER_E2E_USE_RUNNING=1 to use it anyway"
    exit 1
  fi
  log "using the running Docker daemon (DOCKER_E2E_USE_RUNNING=1)"
else
  [ "$(id -u)" -eq 0 ] || [ ${#as_root[@]} -gt 0 ] || { log "starting dockerd needs root"; exit 1; }
  log "starting dockerd (its log: $work/dockerd.log)"
  # Lower priority than the rest of the test run, which may run beside it (scripts/test.sh):
  # the image build yields the CPU to timing-sensitive tests. Containers inherit it.
  "${as_root[@]}" nice -n "${DOCKER_E2E_NICE:-10}" dockerd >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    if ! kill -0 "$dockerd_pid" 2>/dev/null; then
      dockerd_pid=
      log "dockerd exited at start; the end of its log:"; tail -20 "$work/dockerd.log" >&2; exit 1
    fi
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not answer within 60 s; the end of its log:"; tail -20 "$work/dockerd.log" >&2; exit 1; }
  log "dockerd $(docker version -f '{{.Server.Version}}') is up"
fi

# --- docker compose v2, as a CLI plugin in a private DOCKER_CONFIG ---
compose=$(scripts/build-compose.sh)
export DOCKER_CONFIG=$work/docker-config
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -s "$compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
log "$(docker compose version)"

# --- the base images ---
while IFS='=' read -r key value; do
  case $key in
    RUST_IMAGE | RUNTIME_IMAGE) export "$key=$value" ;;
    NSQ_IMAGE) nsq_image=$value ;;
    CONSUL_IMAGE) consul_image=$value ;;
  esac
done < <(docker/standins/build.sh)
# The compose file names the official images; in this daemon only, those names are stand-ins.
docker tag "$nsq_image" nsqio/nsq:v1.3.0
docker tag "$consul_image" hashicorp/consul:1.13.9
log "stand-ins: RUST_IMAGE=$RUST_IMAGE RUNTIME_IMAGE=$RUNTIME_IMAGE nsqio/nsq:v1.3.0=$nsq_image hashicorp/consul:1.13.9=$consul_image"

# scripts/test.sh starts this script early, so that the downloads above overlap its Rust build,
# and holds the image build (minutes of CPU) until its own compiling is done: on 2 cores the two
# builds side by side slowed each other more than they overlapped.
if [ -n "${DOCKER_E2E_WAIT_FOR:-}" ]; then
  log "waiting for $DOCKER_E2E_WAIT_FOR before building the images"
  while [ ! -e "$DOCKER_E2E_WAIT_FOR" ]; do sleep 1; done
  log "building"
fi

# --- the journey ---
# A run interrupted earlier may have left the project's containers and volumes.
remove_project
python3 tests/docker/e2e.py
log "passed"
