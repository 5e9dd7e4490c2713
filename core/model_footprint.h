#ifndef MOE_ROUTER_CORE_MODEL_FOOTPRINT_H_
#define MOE_ROUTER_CORE_MODEL_FOOTPRINT_H_

#include <cstdint>
#include <string>

#include "core/model_engine.h"

namespace moe_router {

/// Limits on a model's shape, checked by ModelConfig::Validate. They hold the
/// largest MoE models released (58 MoE layers x 256 experts, 61 x 384,
/// 94 x 128) many times over; what a shape within them costs is then
/// weighed against the server's memory limit.
inline constexpr uint32_t kMaxModelLayers = 1024;
inline constexpr uint32_t kMaxModelExperts = 4096;

/// What hosting a model costs in memory, known from its config before
/// anything is allocated.
struct ModelFootprint {
  uint64_t budget_bytes = 0;         // the server's expert cache, full
  uint64_t learned_state_bytes = 0;  // routers, affinity, co-activation, cache and metrics state
  uint64_t store_bytes = 0;          // what the store holds besides experts
  uint64_t worker_views_bytes = 0;   // views of the most worker caches the model may open

  /// The sum, saturating.
  uint64_t Total() const;
  /// "1.5 GiB (budget 1 GiB + learned state ... + worker cache views ...)".
  std::string ToString() const;
};

/// An upper bound on what ModelEngine::Create(config) and its full cache
/// hold, plus `store_bytes` for the store. `config` must be valid.
ModelFootprint EstimateFootprint(const ModelConfig& config, uint64_t store_bytes);

/// Bytes for people: "512 B", "3.0 KiB", "1.5 GiB".
std::string FormatBytes(uint64_t bytes);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_MODEL_FOOTPRINT_H_
