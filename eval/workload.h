#ifndef MOE_ROUTER_EVAL_WORKLOAD_H_
#define MOE_ROUTER_EVAL_WORKLOAD_H_

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/routing/routing_rule.h"
#include "eval/trace.h"

namespace moe_router {

/// Parameters of the generative routing model behind synthetic traces.
///
/// The gate logit of expert e at layer l for token t of a sequence is
///   skew_l * base_l[e] + topic_{l,t}[e] + noise * N(0, 1)
/// where base_l is a fixed per-layer preference (some experts are busier),
/// and topic is an AR(1) process over the tokens of a sequence (persistence
/// rho): consecutive tokens tend to reuse experts, as real routers do.
struct WorkloadShape {
  uint32_t num_layers = 32;
  uint32_t num_experts = 8;
  uint32_t top_k = 2;
  // Defaults calibrated to the real Mixtral-8x7B trace (moe-router tracegen
  // --compare): hit rates within 0.03 and statistics within 0.05 of it on
  // 7 of seeds 1-10, all at seed 1.
  double skew = 0.53;         // spread of the per-layer base preference
  double topic = 1.47;        // spread of the per-sequence topic component
  double persistence = 0.46;  // AR(1) coefficient of the topic across tokens
  double noise = 1.82;        // per-token noise
  /// Layers differ: skew and persistence vary by up to this fraction.
  double layer_variation = 0.37;
  /// How the model routes these logits. A rule with a choice bias gets
  /// biases that balance the experts' loads as DeepSeek-V3's
  /// auxiliary-loss-free balancing does (BalancedChoiceBias).
  RoutingRule rule = {};

  absl::Status Validate() const;
};

/// Generates gate logits token by token and layer by layer, deterministic
/// for a seed.
///
///   SyntheticRouting gen(shape, /*seed=*/1);
///   gen.StartSequence();
///   const float* logits = gen.NextToken();  // num_layers x num_experts
class SyntheticRouting {
 public:
  SyntheticRouting(const WorkloadShape& shape, uint64_t seed);

  /// Resets the topic: the next token starts a new sequence.
  void StartSequence();
  /// Draws the tokens from here on from `seed`, the model (per-layer
  /// preferences) kept: other traffic for the same model.
  void ReseedTokens(uint64_t seed) { rng_.seed(seed); }
  /// The next token's logits for every layer, row-major layers x experts.
  const std::vector<float>& NextToken();
  /// The logits of the latest token.
  const std::vector<float>& current() const { return logits_; }

  const WorkloadShape& shape() const { return shape_; }

 private:
  WorkloadShape shape_;
  std::mt19937_64 rng_;
  std::normal_distribution<double> normal_{0.0, 1.0};
  std::vector<double> base_;         // layers x experts
  std::vector<double> persistence_;  // per layer
  std::vector<double> topic_;        // layers x experts
  std::vector<float> logits_;
};

/// Choice biases for `shape`'s rule, num_layers x num_experts: from zero,
/// every `batch` tokens of the seed's model (its tokens drawn apart, so a
/// trace's logits do not depend on the rule) each expert's bias moves up by `step`
/// if it took fewer than the mean of its layer's choices and down if more:
/// the bias update DeepSeek-V3's report describes for its auxiliary-loss-free
/// balancing (arXiv:2412.19437, section 2.1.2), run for `tokens` tokens.
/// No released model's biases were found to calibrate the result against.
/// Empty when the rule has no choice bias.
std::vector<float> BalancedChoiceBias(const WorkloadShape& shape, uint64_t seed,
                                      uint32_t tokens = 4096, uint32_t batch = 64,
                                      float step = 0.002f);

/// A named workload: a model's shape, the generator calibrated for it, and
/// the trace size tracegen writes by default.
struct WorkloadPreset {
  WorkloadShape shape;
  uint32_t sequences = 2;
  uint32_t tokens = 124;  // per sequence
};

/// mixtral (32 layers, 8 experts, top-2; calibrated to the real Mixtral
/// trace), qwen3-30b-a3b (48, 128, top-8), qwen3-235b-a22b (94, 128, top-8),
/// gpt-oss-120b (36, 128, top-4), deepseek-v3 (58 MoE layers, 256, top-8),
/// kimi-k2 (60 MoE layers, 384, top-8), glm-4.5 (89 MoE layers, 160, top-8),
/// llama4-maverick (24 MoE layers, 128, top-1); each routed by its family's
/// rule (workload.cc says which, and where the shape comes from).
absl::StatusOr<WorkloadPreset> GetWorkloadPreset(absl::string_view name);
std::vector<std::string> WorkloadPresetNames();

/// A logits trace of `sequences` runs of `tokens` tokens, deterministic for
/// the seed, routed by the shape's rule (with BalancedChoiceBias of the
/// seed when it has a choice bias). `progress(done, total)` is called per
/// token.
RoutingTrace GenerateTrace(const WorkloadShape& shape, uint32_t sequences, uint32_t tokens,
                           uint64_t seed,
                           const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_WORKLOAD_H_
