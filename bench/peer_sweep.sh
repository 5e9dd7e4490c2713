#!/usr/bin/env bash
# Hit rate at 10/25/50/75% of the experts for our policies, the engines'
# own caches (--peers) and Belady: on the shared Mixtral trace (cold runs,
# and back to back as one worker's cache) and on calibrated synthetic
# workloads of 8, 60, 128, 256 and 384 experts, one token a step and at
# batch 8; ms per token on the shared trace.
# Tables to stdout, plots to docs/replay-peers-*.svg and docs/replay-time-*.svg.
#   bench/peer_sweep.sh [SHARED_TRACE]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MOE_ROUTER_BIN:-build/cli/moe-router}
shared=${1:-../shared/traces/mixtral-8x7b-gsm8k.jsonl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
budgets=10%,25%,50%,75%

sweep() {  # name trace [replay flags]
  local name=$1 trace=$2
  shift 2
  echo "== $name"
  "$bin" replay "$trace" --budgets "$budgets" --peers --plot "docs/replay-peers-$name.svg" "$@"
}

sweep mixtral-shared "$shared"
# Time per token with 4-bit Mixtral experts (88 MB) on PCIe 4.0 x16.
echo "== mixtral-shared, ms per token on pcie4-x16"
"$bin" replay "$shared" --budgets "$budgets" --peers --hardware pcie4-x16 \
  --expert-bytes 88000000 --compute-us 300 --time-plot docs/replay-time-mixtral-shared.svg
sweep mixtral-shared-one-run "$shared" --as-one-run
sweep mixtral-shared-batch-8 "$shared" --batch 8
# name: tracegen flags; one token at a time over 4 sequences of 256 tokens,
# and 16 sequences of 128 tokens decoded 8 at a time.
while read -r name flags; do
  # shellcheck disable=SC2086
  "$bin" tracegen $flags --sequences 4 --tokens 256 --seed 7 --out "$work/$name.trace" 2>/dev/null
  sweep "$name" "$work/$name.trace"
  # shellcheck disable=SC2086
  "$bin" tracegen $flags --sequences 16 --tokens 128 --seed 8 --out "$work/$name-b.trace" \
    2>/dev/null
  sweep "$name-batch-8" "$work/$name-b.trace" --batch 8
done <<'WORKLOADS'
synthetic-8 --preset mixtral
synthetic-60 --preset qwen3-30b-a3b --layers 24 --experts 60 --top-k 4
synthetic-128 --preset qwen3-30b-a3b
synthetic-256 --preset deepseek-v3
synthetic-384 --preset kimi-k2
WORKLOADS
