# The kassa binary, for docker-compose.yml. Local work without Docker uses scripts/dev instead.
# The rust image has what the build needs besides Rust: a C toolchain for librdkafka, and OpenSSL's
# headers with pkg-config (Kafka's TLS and SASL, and HTTPS to the schema registry).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kassa

FROM debian:bookworm-slim
# OpenSSL's library (librdkafka and the registry client link it) and the system's CAs.
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kassa /usr/local/bin/kassa
ENTRYPOINT ["kassa"]
