#!/usr/bin/env bash
# Builds the local stand-ins for the public base images the Dockerfile and docker-compose.yml
# use, into the Docker daemon that DOCKER_HOST (or the default socket) names. See README.md here.
#
#   docker/standins/build.sh
#
# Images (each built only when missing; `docker rmi` one to rebuild it):
#   nsq-suite-standin/debian:bookworm    debootstrap (minbase + gcc, libc6-dev, ca-certificates,
#                                        busybox-static) from Debian's mirror, docker import
#   nsq-suite-standin/rust:<host rustc>  the above plus the host's Rust toolchain
#   nsq-suite-standin/runtime:nonroot    FROM scratch: glibc, CA certificates, user nonroot
#   nsq-suite-standin/nsq:v1.3.0         FROM scratch: static busybox and NSQ v1.3.0
#   nsq-suite-standin/consul:1.13.9      the Debian one plus Consul v1.13.9 (scripts/build-consul.sh)
#
# Prints the build arguments that select them, one per line (RUST_IMAGE=…, RUNTIME_IMAGE=…),
# and the NSQ and Consul stand-ins (NSQ_IMAGE=…, CONSUL_IMAGE=…).
# Needs root (debootstrap) and the `debootstrap` package; the Debian rootfs is cached in
# target/standins/ (DEBIAN_MIRROR picks the mirror, default deb.debian.org).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${NSQ_SUITE_STANDIN_CACHE:-$root/target/standins}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
log() { echo "standins: $*" >&2; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null || { log "the docker CLI is missing (apt-get install docker.io)"; exit 1; }
docker info >/dev/null 2>&1 || { log "no Docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-default}); start dockerd first"; exit 1; }

# The toolchain: the host's rustc, whose version tags the Rust stand-in.
sysroot=$(rustc --print sysroot) || { log "rustc is needed (the Rust stand-in carries the host's toolchain)"; exit 1; }
rust_version=$(rustc --version | awk '{print $2}')
rust_image=nsq-suite-standin/rust:$rust_version
runtime_image=nsq-suite-standin/runtime:nonroot
nsq_image=nsq-suite-standin/nsq:v1.3.0
consul_image=nsq-suite-standin/consul:1.13.9
debian_image=nsq-suite-standin/debian:$suite

rootfs=$cache/rootfs-$suite
# The rootfs is needed for any image made from its files: the Debian one (on which the Rust and
# Consul ones build), the runtime (glibc) and NSQ's (busybox).
if [ ! -f "$rootfs/.complete" ] && ! { has_image "$debian_image" && has_image "$runtime_image" && has_image "$nsq_image"; }; then
  command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  [ "$(id -u)" -eq 0 ] || { log "debootstrap needs root"; exit 1; }
  log "debootstrap $suite from $mirror into $rootfs (about 1-2 min, first time only)"
  rm -rf "$rootfs"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates,busybox-static \
    "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { log "debootstrap failed; its log: $cache/debootstrap.log"; tail -5 "$cache/debootstrap.log" >&2; exit 1; }
  touch "$rootfs/.complete"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

if ! has_image "$debian_image"; then
  log "importing $debian_image"
  tar -C "$rootfs" --exclude=./.complete --exclude=./proc/* --exclude=./sys/* -c . \
    | docker import -c 'CMD ["/bin/bash"]' - "$debian_image" >/dev/null
fi

if ! has_image "$rust_image"; then
  log "building $rust_image (the host's toolchain, $sysroot, without its docs)"
  mkdir -p "$stage/rust/toolchain"
  cp "$here/rust/Dockerfile" "$stage/rust/"
  mkdir -p "$stage/rust/host-ca"
  cp /usr/local/share/ca-certificates/*.crt "$stage/rust/host-ca/" 2>/dev/null || true
  (cd "$sysroot" && tar --exclude=./share/doc -c .) | tar -C "$stage/rust/toolchain" -x
  docker build -q -t "$rust_image" "$stage/rust" >/dev/null
fi

if ! has_image "$runtime_image"; then
  log "building $runtime_image"
  r=$stage/runtime/rootfs
  lib=usr/lib/x86_64-linux-gnu
  mkdir -p "$r/$lib" "$r/lib64" "$r/etc/ssl/certs" "$r/tmp" "$stage/runtime/home/nonroot"
  chmod 1777 "$r/tmp"
  # glibc and libgcc (what a Rust binary for x86_64-unknown-linux-gnu links against).
  for so in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1 libdl.so.2 libpthread.so.0 \
    librt.so.1 libutil.so.1 libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    cp -L "$rootfs/$lib/$so" "$r/$lib/"
  done
  ln -s ../$lib/ld-linux-x86-64.so.2 "$r/lib64/ld-linux-x86-64.so.2"
  ln -s usr/lib "$r/lib"
  cp -L "$rootfs/etc/ssl/certs/ca-certificates.crt" "$r/etc/ssl/certs/"
  cp "$rootfs/etc/nsswitch.conf" "$r/etc/"
  # distroless' users: root, nobody and nonroot (65532).
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$r/etc/group"
  cp "$here/runtime/Dockerfile" "$stage/runtime/"
  docker build -q -t "$runtime_image" "$stage/runtime" >/dev/null
fi

if ! has_image "$nsq_image"; then
  log "building $nsq_image"
  n=$stage/nsq
  mkdir -p "$n/bin" "$n/etc"
  "$root/scripts/build-nsq.sh"
  bins=${NSQ_BIN_DIR:-$root/.nsq-bin}
  cp "$bins"/nsq* "$bins"/to_nsq "$n/bin/"
  cp "$rootfs/bin/busybox" "$n/"
  printf '%s\n' 'hosts: files dns' >"$n/etc/nsswitch.conf"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/:/bin/false' >"$n/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$n/etc/group"
  cp "$here/nsq/Dockerfile" "$n/"
  docker build -q -t "$nsq_image" "$n" >/dev/null
fi

if ! has_image "$consul_image"; then
  log "building $consul_image"
  c=$stage/consul
  mkdir -p "$c"
  "$root/scripts/build-consul.sh"
  cp "${CONSUL_BIN_DIR:-$root/.consul-bin}/consul" "$c/"
  cp "$here/consul/Dockerfile" "$here/consul/docker-entrypoint.sh" "$c/"
  docker build -q -t "$consul_image" "$c" >/dev/null
fi

echo "RUST_IMAGE=$rust_image"
echo "RUNTIME_IMAGE=$runtime_image"
echo "NSQ_IMAGE=$nsq_image"
echo "CONSUL_IMAGE=$consul_image"
