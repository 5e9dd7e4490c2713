#include "core/routing/routing_rule.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace moe_router {

namespace {

struct NamedRule {
  const char* name;
  RoutingRule rule;
};

// Each preset's steps, from the family's modeling file in Transformers
// v5.2.0 (commit 7d9754a05193eb79b1d86aa744b622b8068008cd), path
// src/transformers/models/<family>/modeling_<family>.py; the numbers
// (groups, scaling, epsilon) from the released configs where they differ
// from Transformers' defaults, as noted.
const NamedRule kPresets[] = {
    // MixtralTopKRouter.forward: softmax(logits.float()), topk, divided by
    // the sum.
    {"mixtral", RoutingRule{}},
    // Qwen3MoeTopKRouter.forward (also Qwen2-MoE, Qwen3-Next, OLMoE): as
    // Mixtral, divided by the sum only when config.norm_topk_prob, which
    // Qwen3-MoE's releases set...
    {"qwen", RoutingRule{}},
    // ...and Qwen2-MoE's and OLMoE's do not (Transformers' default, False).
    {"qwen_no_norm", RoutingRule{.normalization = Normalization::kNone}},
    // DeepseekV3MoE.route_tokens_to_experts: sigmoid; choice on score +
    // gate.e_score_correction_bias; group score = sum of the top 2 choice
    // scores; topk_group groups kept, the rest masked_fill(0.0); topk of the
    // masked choice scores; weights gathered from the unbiased sigmoid,
    // divided by (sum + 1e-20) when norm_topk_prob, times
    // routed_scaling_factor. Numbers: configuration_deepseek_v3.py's
    // defaults, DeepSeek-V3's (n_group 8, topk_group 4, scaling 2.5,
    // norm_topk_prob True). Kimi K2 is this rule with one group and scaling
    // 2.827 (NVIDIA Megatron-Bridge KimiK2Provider).
    {"deepseek_v3", RoutingRule{.score = ScoreFunction::kSigmoid,
                                .choice_bias = true,
                                .num_groups = 8,
                                .kept_groups = 4,
                                .normalization = Normalization::kSumPlusEpsilon,
                                .normalization_param = 1e-20,
                                .scaling = 2.5}},
    // DeepseekV2Moe.route_tokens_to_experts, topk_method
    // group_limited_greedy: softmax in float32; a group's score is its best
    // probability; topk_group kept, the rest masked_fill(0.0); topk; no
    // normalisation; times routed_scaling_factor. deepseek-ai/DeepSeek-V2's
    // config.json (commit 4c2b2d14) has n_group 8 and scaling 16.0; kept
    // groups 3 is the paper's device limit M = 3.
    {"deepseek_v2", RoutingRule{.num_groups = 8,
                                .kept_groups = 3,
                                .group_score = GroupScore::kMax,
                                .normalization = Normalization::kNone,
                                .scaling = 16}},
    // Glm4MoeMoE.route_tokens_to_experts: DeepSeek-V3's rule; GLM-4.5 and
    // 4.6 use one group and scaling 2.5 (NVIDIA Megatron-Bridge's GLM 4.5
    // page: 160 experts, top-8, "2.5x scaling factor").
    {"glm4_moe", RoutingRule{.score = ScoreFunction::kSigmoid,
                             .choice_bias = true,
                             .normalization = Normalization::kSumPlusEpsilon,
                             .normalization_param = 1e-20,
                             .scaling = 2.5}},
    // MiniMaxM2TopKRouter.forward: sigmoid(logits.float()); choice on score
    // + e_score_correction_bias; topk; weights the unbiased scores divided by
    // their sum (no epsilon); no scaling.
    {"minimax_m2", RoutingRule{.score = ScoreFunction::kSigmoid, .choice_bias = true}},
    // GptOssTopKRouter.forward: logits = linear(x, weight, bias) (the bias
    // is the worker's: it is in the logits routed); topk of the logits;
    // softmax over those k.
    {"gpt_oss",
     RoutingRule{.score = ScoreFunction::kLogits, .selection = Selection::kTopKThenSoftmax}},
    // Llama4Router.forward: topk of the logits (num_experts_per_tok 1);
    // weight sigmoid(logit), applied to the expert's input by the block.
    {"llama4", RoutingRule{.score = ScoreFunction::kLogits,
                           .selection = Selection::kTopKThenSigmoid,
                           .normalization = Normalization::kNone}},
    // Ernie4_5_MoeTopKRouter.forward: softmax in float32; choice on
    // moe_statics(probabilities), which adds
    // moe_statics.e_score_correction_bias; weights the unbiased
    // probabilities divided by clamp(sum, min=moe_norm_min), 1e-12 by
    // default.
    {"ernie4_5", RoutingRule{.choice_bias = true,
                             .normalization = Normalization::kSumClamped,
                             .normalization_param = 1e-12}},
    // DbrxFFN.route_tokens_to_experts: softmax; topk; divided by the p-norm
    // of the top-k with p = moe_normalize_expert_weights (1 by default).
    {"dbrx", RoutingRule{.normalization = Normalization::kPNorm, .normalization_param = 1}},
};

struct Refused {
  const char* name;
  const char* why;
};
const Refused kRefused[] = {
    {"longcat_flash",
     "LongCat-Flash routes to zero-computation experts (indices past the routed experts that "
     "return the input), which have no bytes to cache"},
    {"phimoe",
     "Phi-3.5-MoE routes by sparsemixer (a second-choice mask that depends on the first), "
     "which the engine does not implement"},
    {"sparsemixer",
     "Phi-3.5-MoE's sparsemixer (a second-choice mask that depends on the first) is not "
     "implemented"},
};

template <typename E, size_t N>
absl::StatusOr<E> ParseName(absl::string_view what, absl::string_view name,
                            const std::pair<const char*, E> (&names)[N]) {
  std::vector<std::string> known;
  for (const auto& [text, value] : names) {
    if (name == text) return value;
    known.push_back(text);
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("routing.%s '%s' is not one of: %s", what, name, absl::StrJoin(known, ", ")));
}

template <typename E, size_t N>
absl::string_view NameOf(E value, const std::pair<const char*, E> (&names)[N]) {
  for (const auto& [text, v] : names) {
    if (v == value) return text;
  }
  return "unknown";
}

constexpr std::pair<const char*, ScoreFunction> kScoreNames[] = {
    {"softmax", ScoreFunction::kSoftmax},
    {"sigmoid", ScoreFunction::kSigmoid},
    {"logits", ScoreFunction::kLogits}};
constexpr std::pair<const char*, Selection> kSelectionNames[] = {
    {"top_k", Selection::kTopK},
    {"top_k_then_softmax", Selection::kTopKThenSoftmax},
    {"top_k_then_sigmoid", Selection::kTopKThenSigmoid}};
constexpr std::pair<const char*, GroupScore> kGroupScoreNames[] = {
    {"top_two_sum", GroupScore::kTopTwoSum}, {"max", GroupScore::kMax}};
constexpr std::pair<const char*, MaskedGroups> kMaskedNames[] = {
    {"zero", MaskedGroups::kZero}, {"excluded", MaskedGroups::kExcluded}};
constexpr std::pair<const char*, Normalization> kNormalizationNames[] = {
    {"none", Normalization::kNone},
    {"sum", Normalization::kSum},
    {"sum_plus_epsilon", Normalization::kSumPlusEpsilon},
    {"sum_clamped", Normalization::kSumClamped},
    {"p_norm", Normalization::kPNorm}};

}  // namespace

absl::string_view ScoreFunctionName(ScoreFunction f) { return NameOf(f, kScoreNames); }
absl::string_view SelectionName(Selection s) { return NameOf(s, kSelectionNames); }
absl::string_view GroupScoreName(GroupScore g) { return NameOf(g, kGroupScoreNames); }
absl::string_view MaskedGroupsName(MaskedGroups m) { return NameOf(m, kMaskedNames); }
absl::string_view NormalizationName(Normalization n) { return NameOf(n, kNormalizationNames); }
absl::StatusOr<ScoreFunction> ParseScoreFunction(absl::string_view name) {
  return ParseName("score", name, kScoreNames);
}
absl::StatusOr<Selection> ParseSelection(absl::string_view name) {
  return ParseName("selection", name, kSelectionNames);
}
absl::StatusOr<GroupScore> ParseGroupScore(absl::string_view name) {
  return ParseName("group_score", name, kGroupScoreNames);
}
absl::StatusOr<MaskedGroups> ParseMaskedGroups(absl::string_view name) {
  return ParseName("masked_groups", name, kMaskedNames);
}
absl::StatusOr<Normalization> ParseNormalization(absl::string_view name) {
  return ParseName("normalization", name, kNormalizationNames);
}

absl::Status RoutingRule::Validate(uint32_t num_experts, uint32_t top_k) const {
  const auto bad = [](auto&&... args) {
    return absl::InvalidArgumentError(absl::StrCat("routing.", args...));
  };
  const bool on_logits = selection != Selection::kTopK;
  if (on_logits && score != ScoreFunction::kLogits) {
    return bad("selection ", SelectionName(selection),
               " chooses on the logits: its score must be logits, not ", ScoreFunctionName(score));
  }
  if (on_logits && (choice_bias || num_groups > 1)) {
    return bad("selection ", SelectionName(selection),
               " takes the top-k of the raw logits: no choice_bias or groups");
  }
  if (selection == Selection::kTopKThenSoftmax && normalization != Normalization::kSum) {
    return bad("selection top_k_then_softmax normalises by the sum (a softmax); normalization ",
               NormalizationName(normalization), " does not apply");
  }
  if (num_groups == 0) return bad("num_groups must be >= 1");
  if (num_groups > 1) {
    if (num_experts % num_groups != 0) {
      return bad(
          absl::StrFormat("num_groups (%d) must divide num_experts (%d)", num_groups, num_experts));
    }
    if (kept_groups == 0 || kept_groups > num_groups) {
      return bad(absl::StrFormat("kept_groups (%d) must be in [1, num_groups (%d)]", kept_groups,
                                 num_groups));
    }
    const uint32_t group_size = num_experts / num_groups;
    if (group_score == GroupScore::kTopTwoSum && group_size < 2) {
      return bad(absl::StrFormat(
          "group_score top_two_sum needs at least 2 experts per group, got %d", group_size));
    }
    if (uint64_t{kept_groups} * group_size < top_k) {
      return bad(absl::StrFormat("kept_groups (%d) x %d experts per group is fewer than top_k (%d)",
                                 kept_groups, group_size, top_k));
    }
  }
  if (!std::isfinite(scaling) || scaling <= 0) {
    return bad(absl::StrFormat("scaling must be finite and > 0, got %g", scaling));
  }
  const double p = normalization_param;
  switch (normalization) {
    case Normalization::kNone:
    case Normalization::kSum:
      break;
    case Normalization::kSumPlusEpsilon:
    case Normalization::kSumClamped:
      if (!std::isfinite(p) || p < 0) {
        return bad(absl::StrFormat("normalization_param of %s must be finite and >= 0, got %g",
                                   NormalizationName(normalization), p));
      }
      break;
    case Normalization::kPNorm:
      if (!std::isfinite(p) || p <= 0) {
        return bad(
            absl::StrFormat("normalization_param (p of p_norm) must be finite and > 0, got %g", p));
      }
      break;
  }
  return absl::OkStatus();
}

bool RoutingRule::ChoosesOnLogits() const {
  if (selection != Selection::kTopK) return true;
  return score == ScoreFunction::kSoftmax && !choice_bias && num_groups <= 1;
}

bool RoutingRule::NeedsSoftmaxDenominator() const {
  const bool softmax = score == ScoreFunction::kSoftmax;
  return softmax && normalization != Normalization::kSum && normalization != Normalization::kPNorm;
}

bool RoutingRule::IsDefault() const { return *this == RoutingRule{}; }

absl::StatusOr<RoutingRule> RoutingRulePreset(absl::string_view name) {
  for (const NamedRule& p : kPresets) {
    if (name == p.name) return p.rule;
  }
  if (absl::Status s = CheckRoutingRuleImplemented(name); !s.ok()) return s;
  return absl::InvalidArgumentError(absl::StrFormat("routing.preset '%s' is not one of: %s", name,
                                                    absl::StrJoin(RoutingRulePresetNames(), ", ")));
}

std::vector<std::string> RoutingRulePresetNames() {
  std::vector<std::string> names;
  for (const NamedRule& p : kPresets) names.push_back(p.name);
  return names;
}

absl::Status CheckRoutingRuleImplemented(absl::string_view name) {
  for (const Refused& r : kRefused) {
    if (name == r.name) {
      return absl::UnimplementedError(absl::StrFormat("routing.preset '%s': %s", name, r.why));
    }
  }
  return absl::OkStatus();
}

std::string DescribeRoutingRule(const RoutingRule& rule) {
  std::string out(ScoreFunctionName(rule.score));
  if (rule.choice_bias) absl::StrAppend(&out, "+bias");
  if (rule.num_groups > 1) {
    absl::StrAppendFormat(&out, ", %d groups keep %d (%s%s)", rule.num_groups, rule.kept_groups,
                          GroupScoreName(rule.group_score),
                          rule.masked_groups == MaskedGroups::kExcluded ? ", others excluded" : "");
  }
  absl::StrAppend(&out, ", ", SelectionName(rule.selection), ", ",
                  NormalizationName(rule.normalization));
  if (rule.normalization == Normalization::kSumPlusEpsilon ||
      rule.normalization == Normalization::kSumClamped ||
      rule.normalization == Normalization::kPNorm) {
    absl::StrAppendFormat(&out, " %g", rule.normalization_param);
  }
  if (rule.scaling != 1) absl::StrAppendFormat(&out, ", x%g", rule.scaling);
  return out;
}

absl::Status ValidateChoiceBias(const RoutingRule& rule, absl::Span<const float> bias,
                                uint32_t num_layers, uint32_t num_experts) {
  if (!rule.choice_bias) {
    if (!bias.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("routing.choice_bias has %d values but the rule takes none (set "
                          "choice_bias in the rule, or send no biases)",
                          bias.size()));
    }
    return absl::OkStatus();
  }
  const size_t want = size_t{num_layers} * num_experts;
  if (bias.size() != want) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "routing.choice_bias has %d values, the model needs num_layers x num_experts = %d x %d "
        "= %d",
        bias.size(), num_layers, num_experts, want));
  }
  for (size_t i = 0; i < bias.size(); ++i) {
    if (!std::isfinite(bias[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("routing.choice_bias of layer %d, expert %d is %s", i / num_experts,
                          i % num_experts, std::isnan(bias[i]) ? "NaN" : "infinite"));
    }
    if (std::fabs(bias[i]) > kMaxChoiceBias) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "routing.choice_bias of layer %d, expert %d is %g, beyond +-%g (a bias corrects scores "
          "of at most 1)",
          i / num_experts, i % num_experts, bias[i], kMaxChoiceBias));
    }
  }
  return absl::OkStatus();
}

}  // namespace moe_router
