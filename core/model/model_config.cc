#include "core/model/model_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/base/resource_name.h"

namespace moe_router {

absl::Status ModelConfig::Validate() const {
  if (absl::Status s = CheckResourceName("model.name", name); !s.ok()) return s;
  if (num_layers == 0 || num_layers > kMaxModelLayers) {
    return absl::InvalidArgumentError(absl::StrFormat("model.num_layers must be in [1, %d], got %d",
                                                      kMaxModelLayers, num_layers));
  }
  if (router.num_experts > kMaxModelExperts) {
    return absl::InvalidArgumentError(absl::StrFormat("model.num_experts must be <= %d, got %d",
                                                      kMaxModelExperts, router.num_experts));
  }
  if (budget_bytes == 0) return absl::InvalidArgumentError("model.budget_bytes must be > 0");
  if (absl::Status s = router.Validate(); !s.ok()) return s;
  if (absl::Status s = ValidateChoiceBias(router.rule, choice_bias, num_layers, router.num_experts);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = affinity.Validate(); !s.ok()) return s;
  if (absl::Status s = precision.Validate(); !s.ok()) return s;
  if (!(targets.min_hit_rate >= 0 && targets.min_hit_rate <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model.targets.min_hit_rate must be in [0, 1], got %g", targets.min_hit_rate));
  }
  if (!(targets.max_route_us_per_token >= 0) || !std::isfinite(targets.max_route_us_per_token)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model.targets.max_route_us_per_token must be finite and >= 0, got %g",
                        targets.max_route_us_per_token));
  }
  if (prefetch_next_layer > router.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model.prefetch_next_layer (%d) must be <= num_experts (%d)",
                        prefetch_next_layer, router.num_experts));
  }
  if (absl::Status s = CheckEvictionPolicyName(eviction_policy); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model.eviction_policy: ", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace moe_router
