# (No `# syntax=` line: it makes BuildKit fetch a frontend image, which fails offline; the
# built-in frontend reads this file.)
#
# Images of the nsq-suite services, one target per service:
#
#   docker build --target sensor -t nsq-suite/sensor .
#   docker build --target worker -t nsq-suite/worker .
#   docker build --target logger -t nsq-suite/logger .
#
# (`docker compose build` builds all three from docker-compose.yml; with BuildKit the shared
# build stage runs once.) Every setting of a service comes from its environment variables
# (SENSOR_*, WORKER_*, LOGGER_*; `<service> --help` lists them).
#
# Stages:
#   chef     Rust on Alpine (musl) plus cargo-chef.
#   planner  reduces the workspace to a dependency recipe (recipe.json). It changes only when
#            a Cargo.toml or Cargo.lock does.
#   build    compiles the dependencies from the recipe first (a layer that stays cached while
#            only the suite's own sources change), then the three service binaries.
#   runtime  distroless/static: no shell, no package manager, no libc (the binaries are
#            static musl executables), runs as the unprivileged user `nonroot` (65532).
#
# Size, measured by scripts/docker-e2e.sh, which builds this file on local stand-ins for the
# base images (docker/standins: glibc, not musl): 12.0 MB (sensor), 11.5 MB (worker), 12.9 MB
# (logger), of which 3.5 MB is the stand-in runtime with glibc. With the official bases each
# image is its static binary plus distroless/static (about 2 MB); that build is not run in CI.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.78
# The base images, as build arguments so that a machine that cannot pull them can name its own
# (CI builds local stand-ins: docker/standins/README.md). Set them for `docker compose build`
# in the environment: compose passes RUST_IMAGE and RUNTIME_IMAGE through when they are set.
ARG RUST_IMAGE=rust:${RUST_VERSION}-alpine
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION
# musl-dev: the C runtime that ring's C and assembly parts (rustls' crypto) are built against,
# on Alpine. A glibc-based Rust image (a stand-in) has its C runtime already.
# cargo-chef is built unoptimised (--debug): it only reads manifests and runs cargo, and the
# release build of it took about 2 of the build's 7 minutes on 2 cores from an empty cache.
# hadolint ignore=DL3018
RUN if command -v apk >/dev/null; then apk add --no-cache musl-dev; fi \
 && cargo install cargo-chef --debug --locked --version "${CARGO_CHEF_VERSION}"
# Release builds for the images: no debug info and stripped symbols (the workspace profile
# keeps line tables for local backtraces; a panic message still names its file and line).
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json \
      -p sensor -p worker -p logger
COPY . .
RUN cargo build --release --locked --bins -p sensor -p worker -p logger \
 && mkdir -p /out/bin /out/data \
 && cp target/release/sensor target/release/worker target/release/logger /out/bin/

# Common to the three images.
FROM ${RUNTIME_IMAGE} AS runtime
# The image's `nonroot` user, by number so that a runtime can check it is not root without
# reading /etc/passwd (e.g. Kubernetes' runAsNonRoot).
USER 65532:65532
# Only logs on stdout/stderr; no working files.
WORKDIR /home/nonroot

FROM runtime AS sensor
COPY --from=build /out/bin/sensor /usr/local/bin/sensor
# In a container the HTTP port must listen on every interface (the default is 127.0.0.1).
ENV SENSOR_HTTP_ADDRESS=0.0.0.0:4190
EXPOSE 4190
# `sensor healthcheck` probes GET /health on the configured SENSOR_HTTP_ADDRESS (0.0.0.0 is
# probed on 127.0.0.1): exit 0 when it answers 200, else 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/sensor", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sensor"]

FROM runtime AS worker
COPY --from=build /out/bin/worker /usr/local/bin/worker
ENV WORKER_HTTP_ADDRESS=0.0.0.0:4191
EXPOSE 4191
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/worker"]

FROM runtime AS logger
COPY --from=build /out/bin/logger /usr/local/bin/logger
# /data holds the results file. It is created here, owned by nonroot, so that a named volume
# mounted on it starts with that owner and the unprivileged logger can write to it.
COPY --from=build --chown=65532:65532 /out/data /data
ENV LOGGER_HTTP_ADDRESS=0.0.0.0:4192 \
    LOGGER_OUTPUT=/data/results.jsonl
EXPOSE 4192
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/logger", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/logger"]
