#!/usr/bin/env bash
# The routing rules' figures: each family's rule against the default
# (softmax) at the same shape, ns per routed token (BM_RouteToken, medians
# of 5, one core), and a DeepSeek-V3 workload's hit rates at 10/25/50% of
# its experts routed as softmax (as before rules) and by its own rule.
# Usage: bench/routing_rules.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-test}
taskset -c 1 "$build/bench/moe_core_bench" --benchmark_filter='BM_RouteToken/' \
  --benchmark_min_time=0.2 --benchmark_repetitions=5 --benchmark_report_aggregates_only=true |
  grep median
taskset -c 1 "$build/bench/moe_in_process_bench" --benchmark_filter='BM_InProcessRoute/58/256/8/1' \
  --benchmark_min_time=0.3 --benchmark_repetitions=5 --benchmark_report_aggregates_only=true |
  grep median
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for rule in mixtral deepseek_v3; do
  "$build/cli/moe-router" tracegen --preset deepseek-v3 --rule "$rule" --sequences 4 \
    --out "$dir/$rule.trace" 2>/dev/null
  echo "deepseek-v3 workload routed by $rule:"
  "$build/cli/moe-router" replay "$dir/$rule.trace" --budgets 10%,25%,50% --policy layer_reuse \
    --policy lru 2>/dev/null
done
