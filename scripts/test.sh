#!/usr/bin/env bash
# The test command (README, .ci/run):
# 1. the release build (in build-test, without LTO: linking ~40 test
#    binaries with LTO would take most of a CI run) and its whole suite;
# 2. the sanitizer build (scripts/configure-sanitize.sh: clang,
#    AddressSanitizer + UndefinedBehaviorSanitizer, any report fatal, also in
#    the daemons and CLIs the tests spawn) with the core, server and client
#    suites, and each libFuzzer target for a few seconds from its seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF \
  -DMOE_ROUTER_TESTS=ON -DMOE_ROUTER_BENCH=ON
cmake --build build-test
ctest --test-dir build-test --output-on-failure -j2

bash scripts/configure-sanitize.sh
cmake --build build-sanitize --target sanitizer_tests fuzzers
# Children inherit these: a report in a spawned moe-routerd aborts it, and
# the test that spawned it fails.
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ctest --test-dir build-sanitize --output-on-failure -j2 -E '_NOT_BUILT$|^DeployTest$|^FormatTest$'
