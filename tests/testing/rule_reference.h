#ifndef MOE_ROUTER_TESTS_TESTING_RULE_REFERENCE_H_
#define MOE_ROUTER_TESTS_TESTING_RULE_REFERENCE_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "core/routing/routing_rule.h"

namespace moe_router::testing {

/// One token routed by a rule, brute force.
struct RuleChoice {
  /// The rule's top-k in its own order (descending choice score, ties to the
  /// lower id), and their weights.
  std::vector<uint32_t> experts;
  std::vector<float> weights;
  /// Every expert the rule may rank, best first (the groups' masked experts
  /// included when masked to 0.0, left out when excluded).
  std::vector<uint32_t> ranking;
  /// Experts in the groups the rule keeps (all of them without groups).
  std::vector<bool> allowed;
};

/// Routes one token of `n` logits by `rule` as its modeling file writes it,
/// step by step with sorts: scores, bias, group scores and the kept groups,
/// the masked ranking, the top k, the weights. Elementary functions are the
/// engine's (Sigmoid, ExpNonPositive, SumInBlocksOfEight: same bits on
/// every path), and a softmax whose denominator cancels weighs its
/// numerators relative to the top logit, as the engine does; sums run in
/// the ranking's order.
RuleChoice RouteByRule(const RoutingRule& rule, uint32_t top_k, absl::Span<const float> logits,
                       absl::Span<const float> bias);

/// The rule's weights for a given chosen set, in the order given.
std::vector<float> RuleWeights(const RoutingRule& rule, absl::Span<const float> logits,
                               absl::Span<const uint32_t> chosen);

/// Logits with many ties (values on a grid of 0.5) when `ties`, else normal.
std::vector<float> RuleTestLogits(std::mt19937& rng, uint32_t tokens, uint32_t n, bool ties);

/// Every preset, and variants that exercise each step: one group, a masked
/// 0.0 winning, excluded groups, a group's best one, p-norm with p = 2.
struct NamedTestRule {
  std::string name;
  RoutingRule rule;
  uint32_t num_experts;
  uint32_t top_k;
};
std::vector<NamedTestRule> RuleTestCases();

}  // namespace moe_router::testing

#endif  // MOE_ROUTER_TESTS_TESTING_RULE_REFERENCE_H_
