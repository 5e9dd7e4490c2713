#include "eval/workload.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/routing/router.h"

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
  return rule.Validate(num_experts, top_k);
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
  const char* rule;
  // Overrides of the rule's preset where the model's config differs.
  uint32_t num_groups = 0;  // 0: the preset's
  double scaling = 0;       // 0: the preset's
};
// The generator parameters are WorkloadShape's defaults (calibrated on
// Mixtral); the larger presets take Mixtral's dynamics at their own shape
// and route by their family's rule (core/routing/routing_rule.cc says where
// each rule comes from). Shapes: the models' configs as Transformers'
// configuration files, the release notes or the serving engines' pages
// give them: DeepSeek-V3 61 layers of which the first 3 dense (58 MoE), 256
// experts, top-8 (configuration_deepseek_v3.py); Kimi K2 61 layers, 1
// dense, 384 experts, top-8, one group, scaling 2.827 (NVIDIA
// Megatron-Bridge KimiK2Provider); GLM-4.5 92 layers, the first 3 dense,
// 160 experts, top-8, scaling 2.5 (Megatron-Bridge's GLM 4.5 page); Llama 4
// Maverick 48 layers with an MoE layer every second
// (interleave_moe_layer_step 2), 128 experts, top-1 (its GGUF metadata as
// ollama.com lists it); gpt-oss-120b 36 layers, 128 experts, top-4
// (configuration_gpt_oss.py).
constexpr PresetShape kPresets[] = {
    {"mixtral", 32, 8, 2, 124, "mixtral"},
    {"qwen3-30b-a3b", 48, 128, 8, 256, "qwen"},
    {"deepseek-v3", 58, 256, 8, 256, "deepseek_v3"},
    {"qwen3-235b-a22b", 94, 128, 8, 256, "qwen"},
    {"gpt-oss-120b", 36, 128, 4, 256, "gpt_oss"},
    {"kimi-k2", 60, 384, 8, 256, "deepseek_v3", /*num_groups=*/1, /*scaling=*/2.827},
    {"glm-4.5", 89, 160, 8, 256, "glm4_moe"},
    {"llama4-maverick", 24, 128, 1, 256, "llama4"},
};

}  // namespace

absl::StatusOr<WorkloadPreset> GetWorkloadPreset(absl::string_view name) {
  for (const PresetShape& p : kPresets) {
    if (name != p.name) continue;
    WorkloadPreset preset;
    preset.shape.num_layers = p.layers;
    preset.shape.num_experts = p.experts;
    preset.shape.top_k = p.top_k;
    preset.shape.rule = *RoutingRulePreset(p.rule);
    if (p.num_groups != 0) {
      preset.shape.rule.num_groups = p.num_groups;
      preset.shape.rule.kept_groups = std::min(preset.shape.rule.kept_groups, p.num_groups);
    }
    if (p.scaling != 0) preset.shape.rule.scaling = p.scaling;
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

std::vector<float> BalancedChoiceBias(const WorkloadShape& shape, uint64_t seed, uint32_t tokens,
                                      uint32_t batch, float step) {
  if (!shape.rule.choice_bias) return {};
  const uint32_t layers = shape.num_layers, n = shape.num_experts;
  std::vector<float> bias(size_t{layers} * n, 0.0f);
  SyntheticRouting generator(shape, seed);
  generator.ReseedTokens(seed ^ 0x9e3779b97f4a7c15ull);
  RouterConfig config;
  config.num_experts = n;
  config.top_k = shape.top_k;
  config.rule = shape.rule;
  config.memory_aware = false;
  config.prefetch_threshold = 0;
  std::vector<std::vector<float>> rows(layers);
  std::vector<uint32_t> load(n);
  RouteResult out;
  for (uint32_t t = 1; t <= tokens; ++t) {
    // A new sequence every 256 tokens, as traces have.
    if (t % 256 == 1) generator.StartSequence();
    const std::vector<float>& logits = generator.NextToken();
    for (uint32_t l = 0; l < layers; ++l) {
      rows[l].insert(rows[l].end(), logits.begin() + size_t{l} * n,
                     logits.begin() + size_t{l + 1} * n);
    }
    if (t % batch != 0) continue;
    for (uint32_t l = 0; l < layers; ++l) {
      const auto layer_bias = absl::MakeConstSpan(bias).subspan(size_t{l} * n, n);
      auto router = LayerRouter::Create(config, AffinityConfig{}, layer_bias);
      if (!router.ok() || !router->Route(rows[l], nullptr, &out).ok()) return {};
      std::fill(load.begin(), load.end(), 0);
      for (uint32_t e : out.experts) ++load[e];
      const double mean = static_cast<double>(batch) * shape.top_k / n;
      for (uint32_t e = 0; e < n; ++e) {
        float& b = bias[size_t{l} * n + e];
        b += load[e] < mean ? step : load[e] > mean ? -step : 0.0f;
      }
      rows[l].clear();
    }
  }
  return bias;
}

RoutingTrace GenerateTrace(const WorkloadShape& shape, uint32_t sequences, uint32_t tokens,
                           uint64_t seed, const std::function<void(uint64_t, uint64_t)>& progress) {
  RoutingTrace trace;
  trace.num_layers = shape.num_layers;
  trace.num_experts = shape.num_experts;
  trace.top_k = shape.top_k;
  trace.rule = shape.rule;
  trace.choice_bias = BalancedChoiceBias(shape, seed);
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
  // Finite logits and a validated rule route.
  (void)FillTopKFromLogits(trace);
  return trace;
}

}  // namespace moe_router
