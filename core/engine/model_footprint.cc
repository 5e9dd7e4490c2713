#include "core/engine/model_footprint.h"

#include <limits>
#include <set>

#include "absl/strings/str_format.h"
#include "core/base/resource_name.h"
#include "core/cache/worker_cache_set.h"

namespace moe_router {
namespace {

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

uint64_t SaturatingAdd(uint64_t a, uint64_t b) { return a > kMax - b ? kMax : a + b; }

uint64_t SaturatingMul(uint64_t a, uint64_t b) { return b != 0 && a > kMax / b ? kMax : a * b; }

// Measured with mallinfo2 over ModelEngine::Create for shapes from 32 x 8
// to 8 x 1024 (tests/core/model_footprint_test.cc keeps this an upper
// bound): co-activation is a matrix of doubles per layer after the first;
// each expert costs its router, affinity, cache and size-table entries;
// each layer its locks, counters and histograms.
constexpr uint64_t kBytesPerCoactivationCell = 8;
constexpr uint64_t kBytesPerExpert = 192;
constexpr uint64_t kBytesPerExpertPerVariant = 8;
constexpr uint64_t kBytesPerLayer = 2048;
constexpr uint64_t kBytesPerModel = 128 << 10;
// A rule with choice scores: per expert its bias (the config's copy and the
// router's), threshold and one token's scratch, and a 64-token chunk of
// whole rows (two floats); per layer the shortlist's pools (64 x 32 of a
// float, an id and a score) and counters.
constexpr uint64_t kBytesPerExpertChoiceScores = 64 * 8 + 64;
constexpr uint64_t kBytesPerLayerChoiceScores = 64 * 32 * 12 + 64 * 10 * 8 + 4096;

}  // namespace

uint64_t ModelFootprint::Total() const {
  return SaturatingAdd(SaturatingAdd(budget_bytes, learned_state_bytes),
                       SaturatingAdd(store_bytes, worker_views_bytes));
}

std::string ModelFootprint::ToString() const {
  return absl::StrFormat("%s (budget %s + learned state %s + store %s + worker cache views %s)",
                         FormatBytes(Total()), FormatBytes(budget_bytes),
                         FormatBytes(learned_state_bytes), FormatBytes(store_bytes),
                         FormatBytes(worker_views_bytes));
}

ModelFootprint EstimateFootprint(const ModelConfig& config, uint64_t store_bytes) {
  const uint64_t layers = config.num_layers;
  const uint64_t experts = config.router.num_experts;
  // The store may hold a variant per precision class besides the default.
  const std::set<std::string> variants = {"default", config.precision.hot_precision,
                                          config.precision.warm_precision,
                                          config.precision.cold_precision};
  const uint64_t per_expert = kBytesPerExpert + kBytesPerExpertPerVariant * variants.size();
  const uint64_t coactivation = (layers - 1) * experts * (experts + 1) * kBytesPerCoactivationCell;
  ModelFootprint f;
  f.budget_bytes = config.budget_bytes;
  f.learned_state_bytes =
      coactivation + layers * experts * per_expert + layers * kBytesPerLayer + kBytesPerModel;
  if (!config.router.rule.ChoosesOnLogits()) {
    f.learned_state_bytes +=
        layers * (experts * kBytesPerExpertChoiceScores + kBytesPerLayerChoiceScores);
  }
  f.store_bytes = store_bytes;
  f.worker_views_bytes =
      SaturatingMul(config.worker_caches.max_caches,
                    WorkerCacheView::FootprintBytes(config.num_layers, config.router.num_experts,
                                                    kMaxResourceNameLength));
  return f;
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrFormat("%d B", bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit < 5) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, units[unit]);
}

}  // namespace moe_router
