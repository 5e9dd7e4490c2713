#ifndef MOE_ROUTER_CORE_ROUTING_CHOICE_SCORES_H_
#define MOE_ROUTER_CORE_ROUTING_CHOICE_SCORES_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "core/routing/routing_rule.h"
#include "core/routing/top_select.h"

namespace moe_router {

/// 1 / (1 + e^-x), within 4 ulp of the exact value (e^-|x| by ExpNonPositive,
/// one division); branch-free and vectorisable, so a row and the scalar
/// reference give the same bits. Below -87 it returns e^-87 / (1 + e^-87)
/// where the exact value is smaller still.
[[gnu::always_inline]] inline float Sigmoid(float x) {
  const float t = ExpNonPositive(x < 0 ? x : -x);
  return (x < 0 ? t : 1.0f) / (1.0f + t);
}

/// The sum of x[0, n) in a fixed order: eight running sums over the
/// elements by index mod 8 (whole blocks of 8), added as
/// ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), then the rest in
/// order. Vectorisable without reassociating, so every caller gets the same
/// bits.
float SumInBlocksOfEight(const float* x, uint32_t n);

/// sum over the row of e^(row[e] - top), top >= every value: a softmax's
/// denominator, in SumInBlocksOfEight's order.
float SoftmaxDenominator(const float* row, uint32_t n, float top);

/// The choice scores of a rule that chooses on something other than the
/// logits (sigmoid or softmax scores, plus a bias, limited to groups): for a
/// chunk of tokens, each row's choice scores (what top-k runs over, masked
/// groups included), its unbiased scores (what the weights are made of) and
/// its range (best minus worst choice score before the group mask, what the
/// relative bonus scales with). Not thread-safe: one per layer router.
class ChoiceScorer {
 public:
  /// `bias`: this layer's num_experts biases, or empty.
  ChoiceScorer(const RoutingRule& rule, uint32_t num_experts, absl::Span<const float> bias);

  /// The value a masked expert takes: 0.0 as in Transformers, or a value
  /// below any real score when masked groups are excluded.
  float masked_value() const { return masked_value_; }

  /// For `tokens` rows of finite logits (row-major, num_experts each).
  void Score(const float* logits, uint32_t tokens, float* choice, float* scores,
             float* range) const;

 private:
  // The rule's score of each logit into `scores`.
  void ScoreRow(const float* logits, float* scores) const;
  // Masks the groups not kept, in place.
  void LimitGroups(float* choice) const;

  const RoutingRule rule_;
  const uint32_t n_;
  const std::vector<float> bias_;
  const uint32_t group_size_;
  const float masked_value_;
  mutable std::vector<float> group_scores_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ROUTING_CHOICE_SCORES_H_
