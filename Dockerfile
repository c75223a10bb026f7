# wasmhook in a container: the release binary (bundled plugins inside) on a
# slim Debian, as an unprivileged user, the data directory a volume.
#
#   docker build -t wasmhook .
#   docker run -p 8080:8080 -v wasmhook-data:/data --stop-timeout 30 \
#     -e WASMHOOK_ADMIN_TOKEN=<at least 32 characters> wasmhook
#
# Not built in this project's CI: the CI machines have a Docker client but
# no engine, and podman needs user namespaces they do not give.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# host/build.rs adds the wasm32-wasip2 target itself when it is missing.
COPY . .
RUN cargo build --release --locked -p wasmhook \
 && install -m 0755 target/release/wasmhook /usr/local/bin/wasmhook

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin wasmhook \
 && install -d -m 0700 -o wasmhook -g wasmhook /data
COPY --from=build /usr/local/bin/wasmhook /usr/local/bin/wasmhook
USER wasmhook
VOLUME ["/data"]
EXPOSE 8080
ENV WASMHOOK_SERVER_LISTEN=0.0.0.0:8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD curl --noproxy "*" -fsS -o /dev/null "http://127.0.0.1:${WASMHOOK_SERVER_LISTEN##*:}/healthz" || exit 1
# `docker run IMAGE` serves; `docker run IMAGE deliveries list …` is the CLI.
# Give in-flight attempts their grace at stop: docker stop --time 30.
ENTRYPOINT ["/usr/local/bin/wasmhook"]
CMD ["serve", "--data", "/data"]
