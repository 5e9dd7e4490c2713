#ifndef MOE_ROUTER_CORE_MODEL_MODEL_CONFIG_H_
#define MOE_ROUTER_CORE_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/cache/worker_cache_set.h"
#include "core/metrics/metrics.h"
#include "core/model/precision.h"
#include "core/paging/paging_options.h"
#include "core/routing/affinity.h"
#include "core/routing/router.h"

namespace moe_router {

/// Limits on a model's shape, checked by ModelConfig::Validate. They hold the
/// largest MoE models released (58 MoE layers x 256 experts, 61 x 384,
/// 94 x 128) many times over; what a shape within them costs is then
/// weighed against the server's memory limit.
inline constexpr uint32_t kMaxModelLayers = 1024;
inline constexpr uint32_t kMaxModelExperts = 4096;
/// The eviction policy a model gets unless its spec names one.
inline constexpr char kDefaultEvictionPolicy[] = "layer_reuse";

/// Everything that defines one hosted model.
struct ModelConfig {
  std::string name;
  uint32_t num_layers = 32;
  /// num_experts, top_k and the routing rule live here.
  RouterConfig router;
  /// The rule's choice bias (router.rule.choice_bias): num_layers x
  /// num_experts, row-major; empty when the rule has none.
  std::vector<float> choice_bias;
  AffinityConfig affinity;
  uint64_t budget_bytes = 0;
  std::string eviction_policy = kDefaultEvictionPolicy;
  PrecisionConfig precision;
  PagingPoolOptions paging;
  /// After routing layer l, prefetch this many experts of layer l+1
  /// predicted by co-activation (0: none).
  uint32_t prefetch_next_layer = 2;
  Targets targets;
  WorkerCacheLimits worker_caches;

  absl::Status Validate() const;
  /// Layer `layer`'s choice biases (empty when the rule has none).
  absl::Span<const float> LayerChoiceBias(uint32_t layer) const {
    if (choice_bias.empty()) return {};
    return absl::MakeConstSpan(choice_bias)
        .subspan(size_t{layer} * router.num_experts, router.num_experts);
  }
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_MODEL_MODEL_CONFIG_H_
