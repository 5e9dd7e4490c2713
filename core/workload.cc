#include "core/workload.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace moe_router {

absl::Status WorkloadShape::Validate() const {
  if (num_layers == 0 || num_experts == 0 || top_k == 0 || top_k > num_experts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "workload shape needs layers > 0 and 0 < top_k <= experts (got %d layers, %d "
        "experts, top_k %d)",
        num_layers, num_experts, top_k));
  }
  for (const auto& [name, v] : {std::pair{"skew", skew}, std::pair{"topic", topic},
                                std::pair{"noise", noise},
                                std::pair{"layer_variation", layer_variation}}) {
    if (!(v >= 0) || !std::isfinite(v)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("workload %s must be finite and >= 0, got %g", name, v));
    }
  }
  if (!(persistence >= 0 && persistence < 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("workload persistence must be in [0, 1), got %g", persistence));
  }
  return absl::OkStatus();
}

SyntheticRouting::SyntheticRouting(const WorkloadShape& shape, uint64_t seed)
    : shape_(shape),
      rng_(seed),
      base_(size_t{shape.num_layers} * shape.num_experts),
      persistence_(shape.num_layers),
      topic_(base_.size()),
      logits_(base_.size()) {
  std::uniform_real_distribution<double> vary(1 - shape.layer_variation,
                                              1 + shape.layer_variation);
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    const double skew = shape.skew * vary(rng_);
    for (uint32_t e = 0; e < shape.num_experts; ++e) {
      base_[size_t{l} * shape.num_experts + e] = skew * normal_(rng_);
    }
    persistence_[l] = std::min(0.99, shape.persistence * vary(rng_));
  }
  StartSequence();
}

void SyntheticRouting::StartSequence() {
  for (double& x : topic_) x = shape_.topic * normal_(rng_);
}

const std::vector<float>& SyntheticRouting::NextToken() {
  const uint32_t n = shape_.num_experts;
  for (uint32_t l = 0; l < shape_.num_layers; ++l) {
    const double rho = persistence_[l];
    const double innovation = shape_.topic * std::sqrt(1 - rho * rho);
    for (uint32_t e = 0; e < n; ++e) {
      const size_t i = size_t{l} * n + e;
      topic_[i] = rho * topic_[i] + innovation * normal_(rng_);
      logits_[i] = static_cast<float>(base_[i] + topic_[i] + shape_.noise * normal_(rng_));
    }
  }
  return logits_;
}

}  // namespace moe_router
