# Images for the processor and the simulator:
#   docker build --target processor -t paydedup/processor .
#   docker build --target simulator -t paydedup/simulator .
#
# Binaries built elsewhere instead of by the `build` stage (the tests on a machine
# with no registry to pull a Rust image from): a build context named `build` replaces
# the stage of that name (documented for BuildKit; podman/buildah do the same), so
# nothing is compiled and only the runtime stages below are built:
#   podman build --format docker --build-context build=DIR --build-arg BASE=... --target processor .
# DIR holds out/paydedup-processor and out/paydedup-simulator (scripts/build-images.sh
# stages them, debug info stripped). --format docker: podman's default OCI format
# has no HEALTHCHECK and would drop it.
ARG BASE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The release profile keeps line tables for backtraces in tests (~450 MB for the
# processor); the image ships without them.
RUN cargo build --release --locked -p paydedup-processor -p paydedup-simulator \
 && mkdir /out \
 && strip --strip-debug -o /out/paydedup-processor target/release/paydedup-processor \
 && strip --strip-debug -o /out/paydedup-simulator target/release/paydedup-simulator

# No compiler, no cargo: only what the binaries load at run time. ca-certificates
# because the BigQuery gRPC client trusts the system's roots (tonic's
# tls-native-roots). A fixed numeric UID/GID: Kubernetes' runAsNonRoot can only
# verify a numeric USER, and a pod's fsGroup or a host directory can be given to it.
FROM ${BASE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 paydedup \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/paydedup \
      --shell /usr/sbin/nologin paydedup \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/paydedup
USER 10001:10001
WORKDIR /var/lib/paydedup
# The only place either program writes (state, file-sink output, the manifest), so
# the root filesystem can be read-only (Kubernetes readOnlyRootFilesystem).
VOLUME /var/lib/paydedup

FROM runtime AS simulator
# A batch producer: it serves nothing and listens on no port, so there is nothing to
# probe while it runs; its exit status (and the manifest it writes) says whether it
# worked.
HEALTHCHECK NONE
ENTRYPOINT ["paydedup-simulator"]
COPY --from=build /out/paydedup-simulator /usr/local/bin/

# Last, so a plain `docker build .` gives the processor.
FROM runtime AS processor
# The metrics/health address comes from the environment, not a flag, because the
# HEALTHCHECK below reads the same variable to find the server (0.0.0.0 is probed on
# loopback). Change it with PAYDEDUP_METRICS_ADDR, not --metrics-addr.
ENV PAYDEDUP_METRICS_ADDR=0.0.0.0:9464 \
    PAYDEDUP_STATE_DIR=/var/lib/paydedup/state
EXPOSE 9464
# Liveness only (/healthz): the HTTP thread answers while the process is alive. A
# long restore from the warehouse at start is still alive, hence no /readyz here.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["paydedup-processor", "healthcheck"]
ENTRYPOINT ["paydedup-processor"]
CMD ["run"]
COPY --from=build /out/paydedup-processor /usr/local/bin/
