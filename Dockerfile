# The kassa binary, for docker-compose.yml. Local work without Docker uses scripts/dev instead.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kassa

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kassa /usr/local/bin/kassa
ENTRYPOINT ["kassa"]
