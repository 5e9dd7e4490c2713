#!/usr/bin/env bash
# Runs every libFuzzer target for a long time (default an hour each, two at
# a time), growing its corpus in build-sanitize/tests/fuzz/found/ and
# leaving crash inputs in fuzz-artifacts/. ctest runs them for seconds only.
#
#   bash scripts/fuzz.sh [SECONDS_EACH]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-3600}"
bash scripts/configure-sanitize.sh
cmake --build build-sanitize --target fuzzers
mkdir -p fuzz-artifacts
export ASAN_OPTIONS=abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
for fuzzer in build-sanitize/tests/fuzz/*_fuzz; do
  name=$(basename "$fuzzer" _fuzz)
  mkdir -p "build-sanitize/tests/fuzz/found/$name"
  echo "fuzzing $name for ${seconds}s"
  "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz-artifacts/$name-" \
    "build-sanitize/tests/fuzz/found/$name" "tests/fuzz/corpus/$name" \
    > "fuzz-artifacts/$name.log" 2>&1 &
  # Two at a time: one per core.
  while (($(jobs -r | wc -l) >= 2)); do wait -n; done
done
wait
grep -H "stat::number_of_executed_units\|ERROR" fuzz-artifacts/*.log || true
