#ifndef MOE_ROUTER_CORE_ROUTING_ROUTING_RULE_H_
#define MOE_ROUTER_CORE_ROUTING_ROUTING_RULE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace moe_router {

/// How a model's router turns one token's gate logits into its experts and
/// their weights, described by a few orthogonal steps. Every MoE family
/// varies the same steps; the presets (RoutingRulePreset) name them, each
/// read from the family's modeling file in Hugging Face Transformers (v5.2.0,
/// commit 7d9754a05193eb79b1d86aa744b622b8068008cd, unless stated):
///
///   score      softmax (float32) | sigmoid | the logits themselves (with
///              selection top-k: scores a worker computed as its model does,
///              e.g. LFM2-MoE's sigmoid taken in bfloat16, given in place of
///              logits)
///   choice     score + a per-(layer, expert) bias (`choice_bias`), for
///              choosing only
///   groups     `num_groups` groups of consecutive experts, the best
///              `kept_groups` kept (a group scored by the sum of its two best
///              choice scores, or by its best one); the others' experts are
///              masked to 0.0, as Transformers does, or excluded outright, as
///              vLLM and SGLang do
///   selection  the top-k of the choice scores, weights the unbiased scores
///              | the top-k of the logits, weights a softmax over those k
///              | the top-k of the logits, weights their sigmoid
///   weights    normalised by nothing | their sum | their sum plus an epsilon
///              | their sum clamped from below | their p-norm; then times
///              `scaling`
///
/// Ties, at the top-k boundary and between groups, go to the lower index:
/// torch.topk on CUDA does the same (aten/src/ATen/native/cuda/TensorTopK.cu,
/// gatherTopK takes the values equal to the k-th in index order); on the
/// CPU its heap-based selection breaks ties in no fixed order.
enum class ScoreFunction : uint8_t { kSoftmax, kSigmoid, kLogits };
enum class Selection : uint8_t { kTopK, kTopKThenSoftmax, kTopKThenSigmoid };
enum class GroupScore : uint8_t { kTopTwoSum, kMax };
enum class MaskedGroups : uint8_t { kZero, kExcluded };
enum class Normalization : uint8_t { kNone, kSum, kSumPlusEpsilon, kSumClamped, kPNorm };

struct RoutingRule {
  ScoreFunction score = ScoreFunction::kSoftmax;
  /// The choice adds one float per (layer, expert), given with the model.
  bool choice_bias = false;
  Selection selection = Selection::kTopK;
  /// 1: no group limit.
  uint32_t num_groups = 1;
  uint32_t kept_groups = 1;
  GroupScore group_score = GroupScore::kTopTwoSum;
  MaskedGroups masked_groups = MaskedGroups::kZero;
  Normalization normalization = Normalization::kSum;
  /// kSumPlusEpsilon: the epsilon; kSumClamped: the floor; kPNorm: p.
  double normalization_param = 0;
  double scaling = 1;

  /// Checks the rule against a shape; errors name the field
  /// (`routing.<field>`).
  absl::Status Validate(uint32_t num_experts, uint32_t top_k) const;
  /// Candidates are the top of the raw logits: the choice is made on them or
  /// on a monotone function of them with nothing added.
  bool ChoosesOnLogits() const;
  bool HasGroups() const { return num_groups > 1; }
  /// The weights change if every unnormalised weight is scaled alike, so a
  /// softmax needs its full denominator.
  bool NeedsSoftmaxDenominator() const;
  /// Today's rule (Mixtral): softmax, top-k, renormalised, no scaling.
  bool IsDefault() const;

  friend bool operator==(const RoutingRule&, const RoutingRule&) = default;
};

/// The named presets, and the rule of one. Names: mixtral (the default),
/// qwen, qwen_no_norm, deepseek_v3, deepseek_v2, glm4_moe, minimax_m2,
/// gpt_oss, llama4, ernie4_5, dbrx.
absl::StatusOr<RoutingRule> RoutingRulePreset(absl::string_view name);
std::vector<std::string> RoutingRulePresetNames();
/// Routing rules of released models that the engine does not implement,
/// refused by name with why: LongCat-Flash's zero-computation experts,
/// Phi-3.5-MoE's sparsemixer.
absl::Status CheckRoutingRuleImplemented(absl::string_view name);

/// The names the API and the files use for each step, and back.
absl::string_view ScoreFunctionName(ScoreFunction f);
absl::string_view SelectionName(Selection s);
absl::string_view GroupScoreName(GroupScore g);
absl::string_view MaskedGroupsName(MaskedGroups m);
absl::string_view NormalizationName(Normalization n);
absl::StatusOr<ScoreFunction> ParseScoreFunction(absl::string_view name);
absl::StatusOr<Selection> ParseSelection(absl::string_view name);
absl::StatusOr<GroupScore> ParseGroupScore(absl::string_view name);
absl::StatusOr<MaskedGroups> ParseMaskedGroups(absl::string_view name);
absl::StatusOr<Normalization> ParseNormalization(absl::string_view name);
/// One line for tables and logs, e.g. "sigmoid+bias, 8 groups keep 4
/// (top2), top-k, sum+1e-20, x2.5".
std::string DescribeRoutingRule(const RoutingRule& rule);

/// The largest choice bias magnitude accepted: scores are at most 1, and a
/// bound keeps every sum of a score and a bias far from overflow.
inline constexpr double kMaxChoiceBias = 1e6;

/// A model's choice biases, num_layers x num_experts row-major (empty when
/// the rule has none): checks the count and that every value is finite and
/// within kMaxChoiceBias.
absl::Status ValidateChoiceBias(const RoutingRule& rule, absl::Span<const float> bias,
                                uint32_t num_layers, uint32_t num_experts);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ROUTING_ROUTING_RULE_H_
