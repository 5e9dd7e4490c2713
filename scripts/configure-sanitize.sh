#!/usr/bin/env bash
# Configures build-sanitize: clang with AddressSanitizer and
# UndefinedBehaviorSanitizer (any report fatal), LTO off, at -O1, with the
# libFuzzer targets. Used by scripts/test.sh and scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-sanitize -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE=-O1 \
  -DMOE_ROUTER_ASAN=ON -DMOE_ROUTER_FUZZ=ON -DMOE_ROUTER_TESTS=ON -DMOE_ROUTER_BENCH=OFF > /dev/null
