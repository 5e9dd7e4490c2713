# moe-routerd and the moe-router CLI on Debian bookworm.
#   docker build -t moe-router .
#   docker run --rm -p 50051:50051 -p 50052:50052 -p 9464:9464 moe-router
# Stage 1 builds with the README's commands; stage 2 carries only the two
# binaries and the shared libraries they load.
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
 && cmake --build build --target moe-routerd moe-router

FROM debian:bookworm-slim
# The runtime halves of the -dev packages the build used (ldd of both binaries).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libabsl20220623 libgrpc++1.51 libgrpc29 libprotobuf32 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1 libzip4 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/moe-router --create-home moe-router
COPY --from=build /src/build/server/moe-routerd /src/build/cli/moe-router /usr/local/bin/
USER 10001
# gRPC, the health-only port (probes), Prometheus /metrics.
EXPOSE 50051 50052 9464
VOLUME ["/var/lib/moe-router"]
# The embedded default model; mount a config and pass --config for others.
# Learned state goes to the volume and survives container restarts.
ENTRYPOINT ["/usr/local/bin/moe-routerd"]
CMD ["--state_dir=/var/lib/moe-router"]
