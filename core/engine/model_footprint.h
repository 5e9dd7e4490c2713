#ifndef MOE_ROUTER_CORE_ENGINE_MODEL_FOOTPRINT_H_
#define MOE_ROUTER_CORE_ENGINE_MODEL_FOOTPRINT_H_

#include <cstdint>
#include <string>

#include "core/engine/model_engine.h"

namespace moe_router {

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

#endif  // MOE_ROUTER_CORE_ENGINE_MODEL_FOOTPRINT_H_
