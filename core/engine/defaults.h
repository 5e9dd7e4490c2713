#ifndef MOE_ROUTER_CORE_ENGINE_DEFAULTS_H_
#define MOE_ROUTER_CORE_ENGINE_DEFAULTS_H_

#include "core/engine/model_engine.h"
#include "core/store/synthetic_store.h"

namespace moe_router {

/// The name of the embedded default model: what a bare moe-routerd serves
/// and what the CLI's --model means when not given.
inline constexpr char kDefaultModelName[] = "mixtral-8x7b";

/// Bytes per expert of the embedded default's synthetic store.
inline constexpr uint64_t kDefaultExpertBytes = 1 << 20;

/// The embedded default model: Mixtral-8x7B's shape (32 MoE layers, 8
/// experts, top-2) with half of its experts budgeted, so it pages.
inline ModelConfig DefaultModelConfig() {
  ModelConfig config;
  config.name = kDefaultModelName;
  config.num_layers = 32;
  config.router.num_experts = 8;
  config.router.top_k = 2;
  config.budget_bytes = 32 * 8 / 2 * kDefaultExpertBytes;
  return config;
}

/// The synthetic store that goes with DefaultModelConfig().
inline SyntheticStoreOptions DefaultStoreOptions() {
  return {.num_layers = 32, .num_experts = 8, .variants = {{"default", kDefaultExpertBytes}}};
}

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ENGINE_DEFAULTS_H_
