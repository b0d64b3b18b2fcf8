# serval-node image: serval-node, serval-cni and servalctl on a slim Debian runtime. The agent
# drives iptables-restore, ipset and (for diagnostics) iproute2, so the runtime carries those
# and nothing else; a distroless image cannot, as they are not in any distroless base.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p serval-agent --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iptables ipset iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/serval-node /src/target/release/serval-cni \
    /src/target/release/servalctl /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/serval-node"]
CMD ["run"]
