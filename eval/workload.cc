#include "eval/workload.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe_router {

absl::Status WorkloadShape::Validate() const {
  if (num_layers == 0 || num_experts == 0 || top_k == 0 || top_k > num_experts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "workload shape needs layers > 0 and 0 < top_k <= experts (got %d layers, %d "
        "experts, top_k %d)",
        num_layers, num_experts, top_k));
  }
  for (const auto& [name, v] :
       {std::pair{"skew", skew}, std::pair{"topic", topic}, std::pair{"noise", noise},
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
  std::uniform_real_distribution<double> vary(1 - shape.layer_variation, 1 + shape.layer_variation);
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

namespace {

struct PresetShape {
  const char* name;
  uint32_t layers, experts, top_k, tokens;
};
// The generator parameters are WorkloadShape's defaults (calibrated on
// Mixtral); the larger presets take Mixtral's dynamics at their own shape.
constexpr PresetShape kPresets[] = {
    {"mixtral", 32, 8, 2, 124},        {"qwen3-30b-a3b", 48, 128, 8, 256},
    {"deepseek-v3", 58, 256, 8, 256},  {"qwen3-235b-a22b", 94, 128, 8, 256},
    {"gpt-oss-120b", 36, 128, 4, 256}, {"kimi-k2", 60, 384, 8, 256},
};

}  // namespace

absl::StatusOr<WorkloadPreset> GetWorkloadPreset(absl::string_view name) {
  for (const PresetShape& p : kPresets) {
    if (name != p.name) continue;
    WorkloadPreset preset;
    preset.shape.num_layers = p.layers;
    preset.shape.num_experts = p.experts;
    preset.shape.top_k = p.top_k;
    preset.tokens = p.tokens;
    return preset;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown workload preset '%s' (expected one of: %s)", name,
                      absl::StrJoin(WorkloadPresetNames(), ", ")));
}

std::vector<std::string> WorkloadPresetNames() {
  std::vector<std::string> names;
  for (const PresetShape& p : kPresets) names.push_back(p.name);
  return names;
}

RoutingTrace GenerateTrace(const WorkloadShape& shape, uint32_t sequences, uint32_t tokens,
                           uint64_t seed, const std::function<void(uint64_t, uint64_t)>& progress) {
  RoutingTrace trace;
  trace.num_layers = shape.num_layers;
  trace.num_experts = shape.num_experts;
  trace.top_k = shape.top_k;
  // One generator: the per-layer preferences are the model's, shared by
  // every sequence; each sequence starts a new topic.
  SyntheticRouting generator(shape, seed);
  uint64_t done = 0;
  for (uint32_t s = 0; s < sequences; ++s) {
    generator.StartSequence();
    RoutingTrace::Run run;
    run.name = absl::StrFormat("seq%d", s);
    run.tokens = tokens;
    run.logits.reserve(size_t{tokens} * shape.num_layers * shape.num_experts);
    for (uint32_t t = 0; t < tokens; ++t) {
      const std::vector<float>& logits = generator.NextToken();
      run.logits.insert(run.logits.end(), logits.begin(), logits.end());
      for (uint32_t l = 0; l < shape.num_layers; ++l) run.steps.push_back({t, l});
      if (progress) progress(++done, uint64_t{sequences} * tokens);
    }
    trace.runs.push_back(std::move(run));
  }
  FillTopKFromLogits(trace);
  return trace;
}

}  // namespace moe_router
