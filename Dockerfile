# pgsluice: a small, non-root image (docs/deployment.md).
# Build:  docker build -t pgsluice .
# Run:    docker run -v $PWD/pgsluice.toml:/etc/pgsluice/pgsluice.toml:ro \
#           -e PGSLUICE_DB_PASSWORD=... -p 5432:5432 -p 6543:6543 -p 9090:9090 --read-only pgsluice

# The build stage: the release binary, exactly as CI builds it (.ci/run).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
RUN cargo build --release --locked --bin pgsluice \
    && strip target/release/pgsluice

# The runtime: distroless (glibc, CA certificates, no shell, no package manager), as the
# non-root user 65532. A dynamically linked binary on glibc keeps the system resolver
# (/etc/hosts, DNS) that upstream host names need.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/pgsluice /usr/local/bin/pgsluice
USER 65532:65532
# Session-mode and transaction-mode ports (Supabase's), and HTTP (/health, /ready, /metrics).
EXPOSE 5432 6543 9090
# The configuration is mounted; secrets come from the environment through ${NAME} in it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/pgsluice", "--config", "/etc/pgsluice/pgsluice.toml", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgsluice"]
CMD ["--config", "/etc/pgsluice/pgsluice.toml"]
