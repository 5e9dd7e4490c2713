#!/usr/bin/env bash
# Installs the Debian bookworm packages moe-router needs, as root or with
# sudo. Idempotent: installs only what is missing.
#   install-deps.sh         building and running the daemon, the CLI and the
#                           Python package (the README's run command)
#   install-deps.sh --torch that, and Debian's PyTorch for moe_router.torch
#   install-deps.sh --test  that, and what the test suite and the
#                           benchmarks need (scripts/test.sh)
set -euo pipefail
packages=(
  cmake ninja-build g++ pkg-config
  libabsl-dev libxxhash-dev nlohmann-json3-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev
  libcivetweb-dev  # /readyz and /livez on the metrics port
  libzip-dev  # trace import reads numpy .npz archives (ZIP)
  libssl-dev  # verifying admin client certificates
  python3-grpcio python3-protobuf  # the Python package's client
  python3-xxhash  # the Python client verifies fetched experts (XXH3-64)
  pybind11-dev python3-dev python3-numpy  # the native in-process engine for Python
)
# moe_router.torch (Debian's 1.13). Its CPU matmuls call libblas.so.3,
# Debian's reference BLAS unless OpenBLAS takes that alternative (ten times
# faster here: the demo's training step went from 11 s to 1 s).
torch=(python3-torch libopenblas0-pthread)
case "${1:-}" in
  "") ;;
  --torch) packages+=("${torch[@]}") ;;
  --test)
    packages+=("${torch[@]}"
      python3-pytest  # moe_router.torch's tests
      python3-venv  # pip install ./python into a fresh venv (tests/python)
      libgtest-dev libgmock-dev libbenchmark-dev
      prometheus  # promtool checks the deploy's alert and recording rules
      haproxy  # the scale-out test runs deploy/haproxy/haproxy.cfg
      python3-yaml  # the deploy manifests' test
      openssl  # test certificates for the TLS tests
      clang-format  # the format check (tests/format)
      clang-14 libclang-rt-14-dev  # the sanitizer build and its libFuzzer targets
      valgrind  # bench/route_cost.py counts instructions
    )
    ;;
  *)
    echo "usage: $0 [--torch | --test]" >&2
    exit 2
    ;;
esac
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
