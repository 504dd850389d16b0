# Images for the simulator and the processor. NOTE: no Docker engine runs where
# paydedup is developed, so this file is not built by CI; it is the recipe the
# README and docker-compose.yml refer to.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p paydedup-processor -p paydedup-simulator

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/paydedup paydedup && mkdir -p /var/lib/paydedup && chown paydedup /var/lib/paydedup
COPY --from=build /src/target/release/paydedup-processor /src/target/release/paydedup-simulator /usr/local/bin/
USER paydedup
WORKDIR /var/lib/paydedup

FROM runtime AS processor
EXPOSE 9464
ENTRYPOINT ["paydedup-processor"]
CMD ["run"]

FROM runtime AS simulator
ENTRYPOINT ["paydedup-simulator"]
