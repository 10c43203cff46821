# xgate container image: a multi-stage build, a small runtime image, a non-root user.
#
#   docker build -t xgate .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/my-proxy.toml:/etc/xgate/proxy.toml:ro" \
#     -v "$PWD/secrets:/run/secrets:ro" -v xgate-state:/var/lib/xgate xgate
#
# For a published port, my-proxy.toml listens on 0.0.0.0:8080 (and keys its clients);
# deploy/proxy.toml listens on loopback, for an app sharing the container's network
# namespace (deploy/docker-compose.yml, deploy/kubernetes/sidecar.yaml).
#
# The image is not built in CI (no container engine runs there); it uses only the official
# Rust and Debian images and the crates of Cargo.lock.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# The whole source tree (.dockerignore leaves out target/ and .git/): Cargo.toml names the
# benches and the test binary, so cargo wants their files present even to build the binary.
# The official image has the C compiler that ring and SQLite (rusqlite's `bundled`) need.
COPY . .
RUN cargo build --release --locked --bin xgate \
    && strip target/release/xgate

FROM debian:bookworm-slim
# CA roots for api.x.com come compiled in (webpki-roots); nothing else is needed at run time.
RUN useradd --system --uid 10001 --home-dir /var/lib/xgate --shell /usr/sbin/nologin xgate \
    && mkdir -p /etc/xgate /var/lib/xgate && chown xgate /var/lib/xgate
COPY --from=build /src/target/release/xgate /usr/local/bin/xgate
USER 10001
WORKDIR /var/lib/xgate
# 8080: the proxy; 9090: /healthz /readyz /metrics. Both must listen on 0.0.0.0 in a
# container: see deploy/proxy.toml.
EXPOSE 8080 9090
VOLUME ["/var/lib/xgate"]
ENV XGATE_CONFIG=/etc/xgate/proxy.toml
ENTRYPOINT ["/usr/local/bin/xgate"]
CMD ["serve"]
