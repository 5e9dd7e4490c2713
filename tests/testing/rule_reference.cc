#include "tests/testing/rule_reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/routing/choice_scores.h"
#include "core/routing/top_select.h"

namespace moe_router::testing {

namespace {

float RowMax(absl::Span<const float> logits) {
  return *std::max_element(logits.begin(), logits.end());
}

// The rule's score of every expert (softmax: probabilities).
std::vector<float> Scores(const RoutingRule& rule, absl::Span<const float> logits) {
  const uint32_t n = static_cast<uint32_t>(logits.size());
  std::vector<float> s(n);
  switch (rule.score) {
    case ScoreFunction::kSigmoid:
      for (uint32_t e = 0; e < n; ++e) s[e] = Sigmoid(logits[e]);
      break;
    case ScoreFunction::kSoftmax: {
      const float top = RowMax(logits);
      for (uint32_t e = 0; e < n; ++e) s[e] = ExpNonPositive(logits[e] - top);
      const float sum = SumInBlocksOfEight(s.data(), n);
      for (float& x : s) x = x / sum;
      break;
    }
    case ScoreFunction::kLogits:
      std::copy(logits.begin(), logits.end(), s.begin());
      break;
  }
  return s;
}

// Each expert's unnormalised weight.
std::vector<float> Unnormalised(const RoutingRule& rule, absl::Span<const float> logits) {
  const uint32_t n = static_cast<uint32_t>(logits.size());
  const float top = RowMax(logits);
  std::vector<float> u(n);
  const bool numerators = rule.selection == Selection::kTopKThenSoftmax ||
                          (rule.ChoosesOnLogits() && rule.score == ScoreFunction::kSoftmax &&
                           !rule.NeedsSoftmaxDenominator());
  if (numerators) {
    for (uint32_t e = 0; e < n; ++e) u[e] = ExpNonPositive(logits[e] - top);
  } else if (rule.selection == Selection::kTopKThenSigmoid) {
    for (uint32_t e = 0; e < n; ++e) u[e] = Sigmoid(logits[e]);
  } else {
    u = Scores(rule, logits);
  }
  return u;
}

}  // namespace

std::vector<float> RuleWeights(const RoutingRule& rule, absl::Span<const float> logits,
                               absl::Span<const uint32_t> chosen) {
  const std::vector<float> u = Unnormalised(rule, logits);
  float sum = 0;
  for (uint32_t e : chosen) sum += u[e];
  float denominator = sum;
  const float param = static_cast<float>(rule.normalization_param);
  switch (rule.normalization) {
    case Normalization::kNone:
      denominator = 1;
      break;
    case Normalization::kSum:
      break;
    case Normalization::kSumPlusEpsilon:
      denominator = sum + param;
      break;
    case Normalization::kSumClamped:
      denominator = std::max(sum, param);
      break;
    case Normalization::kPNorm:
      if (param != 1.0f) {
        float powers = 0;
        for (uint32_t e : chosen) powers += std::pow(u[e], param);
        denominator = std::pow(powers, 1.0f / param);
      }
      break;
  }
  const float inv = 1.0f / denominator;
  std::vector<float> w;
  for (uint32_t e : chosen) {
    float x = u[e] * inv;
    if (rule.scaling != 1) x *= static_cast<float>(rule.scaling);
    w.push_back(x);
  }
  return w;
}

RuleChoice RouteByRule(const RoutingRule& rule, uint32_t top_k, absl::Span<const float> logits,
                       absl::Span<const float> bias) {
  const uint32_t n = static_cast<uint32_t>(logits.size());
  std::vector<float> choice = Scores(rule, logits);
  if (rule.choice_bias) {
    for (uint32_t e = 0; e < n; ++e) choice[e] += bias[e];
  }
  RuleChoice out;
  out.allowed.assign(n, true);
  std::vector<bool> excluded(n, false);
  if (rule.num_groups > 1) {
    const uint32_t size = n / rule.num_groups;
    std::vector<float> group(rule.num_groups);
    for (uint32_t j = 0; j < rule.num_groups; ++j) {
      std::vector<float> v(choice.begin() + j * size, choice.begin() + (j + 1) * size);
      std::sort(v.begin(), v.end(), std::greater<float>());
      group[j] = rule.group_score == GroupScore::kTopTwoSum ? v[0] + v[1] : v[0];
    }
    std::vector<uint32_t> order(rule.num_groups);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return group[a] > group[b]; });
    std::vector<bool> kept(rule.num_groups, false);
    for (uint32_t i = 0; i < rule.kept_groups; ++i) kept[order[i]] = true;
    for (uint32_t e = 0; e < n; ++e) {
      if (kept[e / size]) continue;
      out.allowed[e] = false;
      // Transformers: masked_fill(~mask, 0.0); vLLM, SGLang: -inf.
      if (rule.masked_groups == MaskedGroups::kZero) {
        choice[e] = 0.0f;
      } else {
        excluded[e] = true;
      }
    }
  }
  for (uint32_t e = 0; e < n; ++e) {
    if (!excluded[e]) out.ranking.push_back(e);
  }
  std::stable_sort(out.ranking.begin(), out.ranking.end(),
                   [&](uint32_t a, uint32_t b) { return choice[a] > choice[b]; });
  out.experts.assign(out.ranking.begin(), out.ranking.begin() + top_k);
  out.weights = RuleWeights(rule, logits, out.experts);
  return out;
}

std::vector<float> RuleTestLogits(std::mt19937& rng, uint32_t tokens, uint32_t n, bool ties) {
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(size_t{tokens} * n);
  for (float& x : logits) {
    x = normal(rng);
    if (ties) x = std::round(x * 2) / 2;
  }
  return logits;
}

std::vector<NamedTestRule> RuleTestCases() {
  std::vector<NamedTestRule> cases;
  const auto preset = [](const char* name) { return *RoutingRulePreset(name); };
  cases.push_back({"mixtral", preset("mixtral"), 8, 2});
  cases.push_back({"qwen", preset("qwen"), 64, 8});
  cases.push_back({"qwen_no_norm", preset("qwen_no_norm"), 60, 4});
  cases.push_back({"deepseek_v3", preset("deepseek_v3"), 256, 8});
  RoutingRule kimi = preset("deepseek_v3");
  kimi.num_groups = 1;
  kimi.scaling = 2.827;
  cases.push_back({"kimi_k2_one_group", kimi, 384, 8});
  cases.push_back({"deepseek_v2", preset("deepseek_v2"), 160, 6});
  cases.push_back({"glm4_moe", preset("glm4_moe"), 160, 8});
  cases.push_back({"minimax_m2", preset("minimax_m2"), 256, 8});
  cases.push_back({"gpt_oss", preset("gpt_oss"), 128, 4});
  cases.push_back({"llama4", preset("llama4"), 128, 1});
  cases.push_back({"ernie4_5", preset("ernie4_5"), 64, 6});
  cases.push_back({"dbrx", preset("dbrx"), 16, 4});
  RoutingRule excluded = preset("deepseek_v3");
  excluded.masked_groups = MaskedGroups::kExcluded;
  cases.push_back({"deepseek_v3_excluded", excluded, 64, 6});
  RoutingRule tight = preset("deepseek_v3");
  tight.kept_groups = 1;  // 8 experts kept for a top-8: every one taken
  cases.push_back({"deepseek_v3_one_kept_group", tight, 64, 8});
  RoutingRule sigmoid_max = preset("deepseek_v3");
  sigmoid_max.group_score = GroupScore::kMax;
  sigmoid_max.normalization = Normalization::kNone;
  cases.push_back({"sigmoid_group_max_unnormalised", sigmoid_max, 32, 4});
  RoutingRule p2 = preset("dbrx");
  p2.normalization_param = 2;
  cases.push_back({"dbrx_p2", p2, 16, 4});
  RoutingRule llama_top2 = preset("llama4");
  cases.push_back({"llama4_top2", llama_top2, 16, 2});
  // A worker's own scores given in place of logits, as moe_router.torch
  // gives LFM2-MoE's sigmoid taken in the model's dtype.
  RoutingRule given = preset("deepseek_v3");
  given.score = ScoreFunction::kLogits;
  given.num_groups = 1;
  given.normalization_param = 1e-6;
  given.scaling = 1.5;
  cases.push_back({"given_scores", given, 32, 4});
  return cases;
}

}  // namespace moe_router::testing
