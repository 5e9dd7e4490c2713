#!/usr/bin/env bash
# Regenerates the cache-aware routing trade-off plots and table in docs/
# from a calibrated synthetic trace. Run after building (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MOE_ROUTER_BIN:-build/cli/moe-router}
"$bin" sweep --svg docs/routing-tradeoff | tee docs/routing-tradeoff.txt
