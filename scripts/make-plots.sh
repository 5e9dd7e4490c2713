#!/usr/bin/env bash
# Regenerates the cache-aware routing trade-off plots and tables in docs/
# from calibrated synthetic traces: Mixtral's, and each family's preset
# routed by its own rule. Run after building (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MOE_ROUTER_BIN:-build/cli/moe-router}
"$bin" sweep --svg docs/routing-tradeoff | tee docs/routing-tradeoff.txt
for preset in deepseek-v3 kimi-k2 glm-4.5 gpt-oss-120b llama4-maverick; do
  "$bin" sweep --preset "$preset" --sequences 4 --svg "docs/routing-tradeoff-$preset" |
    tee "docs/routing-tradeoff-$preset.txt"
done
# DeepSeek-V3 with its group limit lifted: what a bonus placed before the
# limit could reach at most (README, "Routing rules").
"$bin" sweep --preset deepseek-v3 --sequences 4 --groups 1 |
  tee docs/routing-tradeoff-deepseek-v3-no-group-limit.txt
