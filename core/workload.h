#ifndef MOE_ROUTER_CORE_WORKLOAD_H_
#define MOE_ROUTER_CORE_WORKLOAD_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"

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
  double skew = 0.35;        // spread of the per-layer base preference
  double topic = 1.0;        // spread of the per-sequence topic component
  double persistence = 0.6;  // AR(1) coefficient of the topic across tokens
  double noise = 1.0;        // per-token noise
  /// Layers differ: skew and persistence vary by up to this fraction.
  double layer_variation = 0.3;

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

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_WORKLOAD_H_
