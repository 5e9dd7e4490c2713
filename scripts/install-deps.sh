#!/usr/bin/env bash
# Installs the Debian bookworm packages moe-router builds and tests with.
# Idempotent: installs only what is missing.
set -euo pipefail
packages=(
  cmake ninja-build g++ pkg-config
  libabsl-dev libxxhash-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev prometheus
  haproxy  # the scale-out test runs deploy/haproxy/haproxy.cfg
  libcivetweb-dev  # /readyz and /livez on the metrics port
  python3-grpcio python3-protobuf python3-yaml
  libzip-dev  # trace import reads numpy .npz archives (ZIP)
  python3-xxhash  # the Python client verifies fetched experts (XXH3-64)
  pybind11-dev python3-dev python3-numpy  # the native in-process engine for Python
  libssl-dev  # verifying admin client certificates
  openssl  # test certificates for the TLS tests
  clang-format  # the format check (tests/format)
  clang-14 libclang-rt-14-dev  # the sanitizer build and its libFuzzer targets
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
