# The kassa binary in a small image, for docker-compose.yml and the Helm chart (deploy/helm/kassa).
# Local work without Docker uses scripts/dev instead. Base images: RUST_IMAGE_VERSION and
# DEBIAN_RELEASE in scripts/versions.env (a test checks that they agree).
ARG RUST_IMAGE_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# The rust image has what the build needs besides Rust: a C toolchain for librdkafka, and OpenSSL's
# headers with pkg-config (Kafka's TLS and SASL, and HTTPS to the schema registry).
FROM rust:${RUST_IMAGE_VERSION}-${DEBIAN_RELEASE} AS chef
# cargo-chef builds the dependencies alone, from a recipe of the manifests: a change to kassa's
# own code then rebuilds kassa's crates only, not the hundreds under them (a cached layer).
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin kassa
COPY . .
RUN cargo build --release --locked --bin kassa

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# OpenSSL's library (librdkafka and the registry client link it) and the system's CAs; a user
# without a home or a shell to run as.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin kassa
COPY --from=build /src/target/release/kassa /usr/local/bin/kassa
USER 10001:10001
# In a container the listeners take every interface of the container's own network; publish
# their ports with care. 8080: the API (`kassa run api`); 9464: a processor's /metrics, /health
# and /ready (`kassa run <processor>`).
ENV KASSA_HTTP_ADDR=0.0.0.0:8080 \
    KASSA_OPS_ADDR=0.0.0.0:9464
EXPOSE 8080 9464
# A processor's /health; the API's container asks its own address instead (`kassa health --api`).
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 CMD ["kassa", "health"]
ENTRYPOINT ["kassa"]
