// Every routing rule against a brute-force reference written from its
// modeling file (tests/testing/rule_reference.cc): the choice and the
// weights at bonus 0, bit for bit, and the guard with the bonus on.
#include "core/routing/routing_rule.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "core/routing/router.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/rule_reference.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;
using testing::NamedTestRule;
using testing::RouteByRule;
using testing::RuleChoice;
using testing::RuleTestCases;
using testing::RuleTestLogits;
using testing::RuleWeights;

std::string ErrorOf(const RoutingRule& rule, uint32_t n = 256, uint32_t k = 8) {
  return std::string(rule.Validate(n, k).message());
}

TEST(RoutingRuleTest, RefusesBadFieldsByName) {
  RoutingRule r = *RoutingRulePreset("deepseek_v3");
  EXPECT_TRUE(r.Validate(256, 8).ok());
  r.num_groups = 7;
  EXPECT_THAT(ErrorOf(r), HasSubstr("routing.num_groups (7) must divide num_experts (256)"));
  r = *RoutingRulePreset("deepseek_v3");
  r.kept_groups = 9;
  EXPECT_THAT(ErrorOf(r), HasSubstr("routing.kept_groups (9) must be in [1, num_groups (8)]"));
  r.kept_groups = 0;
  EXPECT_THAT(ErrorOf(r), HasSubstr("routing.kept_groups"));
  r.kept_groups = 1;
  EXPECT_THAT(ErrorOf(r, 64, 9),
              HasSubstr("routing.kept_groups (1) x 8 experts per group is fewer than top_k (9)"));
  r = *RoutingRulePreset("deepseek_v3");
  r.num_groups = 256;
  EXPECT_THAT(ErrorOf(r), HasSubstr("top_two_sum needs at least 2 experts per group"));
  r.num_groups = 0;
  EXPECT_THAT(ErrorOf(r), HasSubstr("routing.num_groups must be >= 1"));
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(),
                     std::numeric_limits<double>::infinity()}) {
    r = *RoutingRulePreset("deepseek_v3");
    r.scaling = bad;
    EXPECT_THAT(ErrorOf(r), HasSubstr("routing.scaling must be finite and > 0"));
  }
  r = *RoutingRulePreset("deepseek_v3");
  r.normalization_param = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THAT(ErrorOf(r), HasSubstr("routing.normalization_param of sum_plus_epsilon"));
  r = *RoutingRulePreset("dbrx");
  r.normalization_param = 0;
  EXPECT_THAT(ErrorOf(r), HasSubstr("routing.normalization_param (p of p_norm)"));
  r = *RoutingRulePreset("gpt_oss");
  r.choice_bias = true;
  EXPECT_THAT(ErrorOf(r), HasSubstr("no choice_bias or groups"));
  r = *RoutingRulePreset("gpt_oss");
  r.score = ScoreFunction::kSigmoid;
  EXPECT_THAT(ErrorOf(r), HasSubstr("its score must be logits, not sigmoid"));
  r = *RoutingRulePreset("gpt_oss");
  r.normalization = Normalization::kNone;
  EXPECT_THAT(ErrorOf(r), HasSubstr("top_k_then_softmax normalises by the sum"));
  // Scores a worker computed itself, given in place of logits (LFM2-MoE).
  r = RoutingRule{};
  r.score = ScoreFunction::kLogits;
  EXPECT_TRUE(r.Validate(8, 2).ok());
}

TEST(RoutingRuleTest, PresetsByNameAndRulesNotImplementedRefusedByName) {
  for (const std::string& name : RoutingRulePresetNames()) {
    EXPECT_TRUE(RoutingRulePreset(name).ok()) << name;
  }
  EXPECT_TRUE(RoutingRulePreset("mixtral")->IsDefault());
  EXPECT_EQ(RoutingRulePreset("deepseek_v3")->num_groups, 8u);
  EXPECT_THAT(std::string(RoutingRulePreset("olmoe2").status().message()),
              HasSubstr("routing.preset 'olmoe2' is not one of: mixtral, qwen"));
  const absl::Status phi = RoutingRulePreset("phimoe").status();
  EXPECT_EQ(phi.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(phi.message()), HasSubstr("sparsemixer"));
  EXPECT_THAT(std::string(RoutingRulePreset("longcat_flash").status().message()),
              HasSubstr("zero-computation experts"));
  EXPECT_EQ(*ParseSelection("top_k_then_sigmoid"), Selection::kTopKThenSigmoid);
  EXPECT_THAT(std::string(ParseNormalization("l2").status().message()),
              HasSubstr("routing.normalization 'l2' is not one of: none, sum"));
}

TEST(RoutingRuleTest, ChoiceBiasCountedAndChecked) {
  const RoutingRule ds = *RoutingRulePreset("deepseek_v3");
  std::vector<float> bias(2 * 8, 0.1f);
  EXPECT_TRUE(ValidateChoiceBias(ds, bias, 2, 8).ok());
  EXPECT_THAT(std::string(ValidateChoiceBias(ds, bias, 3, 8).message()),
              HasSubstr("routing.choice_bias has 16 values, the model needs num_layers x "
                        "num_experts = 3 x 8 = 24"));
  bias[9] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(std::string(ValidateChoiceBias(ds, bias, 2, 8).message()),
              HasSubstr("routing.choice_bias of layer 1, expert 1 is NaN"));
  bias[9] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(std::string(ValidateChoiceBias(ds, bias, 2, 8).message()), HasSubstr("infinite"));
  bias[9] = 2e6f;
  EXPECT_THAT(std::string(ValidateChoiceBias(ds, bias, 2, 8).message()), HasSubstr("beyond"));
  EXPECT_THAT(std::string(ValidateChoiceBias(RoutingRule{}, {0.5f}, 1, 8).message()),
              HasSubstr("the rule takes none"));
  EXPECT_TRUE(ValidateChoiceBias(RoutingRule{}, {}, 1, 8).ok());
  // A layer router takes its layer's biases and refuses a wrong count.
  RouterConfig config;
  config.num_experts = 8;
  config.rule = ds;
  config.rule.num_groups = 2;
  config.rule.kept_groups = 1;
  EXPECT_FALSE(LayerRouter::Create(config, {}, std::vector<float>(7, 0)).ok());
  EXPECT_TRUE(LayerRouter::Create(config, {}, std::vector<float>(8, 0)).ok());
}

using testing::Residency;

std::vector<float> TestBias(std::mt19937& rng, uint32_t n) {
  // Corrections as large as the scores, so the bias often decides.
  std::normal_distribution<float> normal(0.0f, 0.3f);
  std::vector<float> bias(n);
  for (float& b : bias) b = normal(rng);
  return bias;
}

RouterConfig ConfigFor(const NamedTestRule& c) {
  RouterConfig config;
  config.num_experts = c.num_experts;
  config.top_k = c.top_k;
  config.rule = c.rule;
  return config;
}

class EveryRuleTest : public ::testing::TestWithParam<NamedTestRule> {};

// At bonus 0, resident experts or not, the router's experts and weights are
// the rule's, bit for bit, on rows with and without ties. A sigmoid rule
// routes enough tokens for its shortlist to take over from the whole rows
// (after 64 tokens, and again after 1024): each of its decisions is checked
// against the reference too.
TEST_P(EveryRuleTest, ChoiceAndWeightsAreTheRulesAtBonusZero) {
  const NamedTestRule& c = GetParam();
  std::mt19937 rng(7);
  const uint32_t n = c.num_experts, k = c.top_k, tokens = 77;
  const bool shortlists = c.rule.score == ScoreFunction::kSigmoid;
  const std::vector<float> bias = c.rule.choice_bias ? TestBias(rng, n) : std::vector<float>{};
  RouterConfig config = ConfigFor(c);
  config.cache_bonus = 0;
  auto router = LayerRouter::Create(config, {}, bias);
  ASSERT_TRUE(router.ok()) << router.status();
  Residency resident(n);
  for (uint32_t e = 0; e < n; e += 3) resident.Set(e, true);
  uint32_t bias_decided = 0, ties_seen = 0;
  for (uint32_t batch = 0; batch < (shortlists ? 16u : 2u); ++batch) {
    const bool ties = batch % 2 == 1;
    const std::vector<float> logits = RuleTestLogits(rng, tokens, n, ties);
    RouteResult out;
    ASSERT_TRUE(router->Route(logits, resident.get(), &out).ok());
    EXPECT_EQ(out.changed_tokens, 0u);
    for (uint32_t t = 0; t < tokens; ++t) {
      const auto row = absl::MakeConstSpan(logits).subspan(size_t{t} * n, n);
      const RuleChoice want = RouteByRule(c.rule, k, row, bias);
      ASSERT_THAT(std::vector<uint32_t>(out.TokenExperts(t).begin(), out.TokenExperts(t).end()),
                  ::testing::ElementsAreArray(want.experts))
          << c.name << " batch " << batch << " token " << t << (ties ? " (ties)" : "");
      for (uint32_t i = 0; i < k; ++i) {
        ASSERT_EQ(out.weights[size_t{t} * k + i], want.weights[i])
            << c.name << " batch " << batch << " token " << t << " weight " << i;
      }
      if (c.rule.choice_bias) {
        RoutingRule unbiased = c.rule;
        unbiased.choice_bias = false;
        bias_decided += RouteByRule(unbiased, k, row, {}).experts != want.experts;
      }
      std::set<float> distinct(row.begin(), row.end());
      ties_seen += distinct.size() < n;
    }
  }
  if (c.rule.choice_bias) {
    EXPECT_GT(bias_decided, 0u) << "no token where the bias decides";
  }
  EXPECT_GT(ties_seen, 0u);
  if (shortlists) {
    const ChoiceScorer* scorer = router->choice_scorer();
    // With fewer experts kept than candidates, masked zeros are among them:
    // no floor above 0 proves them, so the whole rows decide every token.
    const bool zeros_ranked =
        c.rule.num_groups > 1 &&
        c.rule.kept_groups * (n / c.rule.num_groups) < config.EffectiveMaxRank();
    if (zeros_ranked) {
      EXPECT_EQ(scorer->shortlisted(), 0u);
    } else {
      EXPECT_GT(scorer->shortlisted(), 0u) << "the shortlist never decided";
    }
    EXPECT_GT(scorer->full_rows(), 0u);
  }
}

// With a large bonus: the original top stays, nothing past the rule's own
// top max_rank is chosen (so nothing outside the kept groups unless the
// rule ranks it there), excluded experts never, and the weights are the
// rule's for what was chosen.
TEST_P(EveryRuleTest, GuardHoldsAndWeightsStayTheRulesWithTheBonus) {
  const NamedTestRule& c = GetParam();
  std::mt19937 rng(11);
  const uint32_t n = c.num_experts, k = c.top_k, tokens = 64;
  const std::vector<float> bias = c.rule.choice_bias ? TestBias(rng, n) : std::vector<float>{};
  RouterConfig config = ConfigFor(c);
  config.bonus_mode = BonusMode::kAbsolute;
  config.cache_bonus = 50;
  config.min_gate_mass = 0;
  auto router = LayerRouter::Create(config, {}, bias);
  ASSERT_TRUE(router.ok()) << router.status();
  Residency resident(n);
  for (uint32_t e = 0; e < n; ++e) resident.Set(e, e % 4 == 1);
  const std::vector<float> logits = RuleTestLogits(rng, tokens, n, false);
  RouteResult out;
  ASSERT_TRUE(router->Route(logits, resident.get(), &out).ok());
  const uint32_t r = config.EffectiveMaxRank();
  uint32_t changed = 0;
  for (uint32_t t = 0; t < tokens; ++t) {
    const auto row = absl::MakeConstSpan(logits).subspan(size_t{t} * n, n);
    const RuleChoice rule = RouteByRule(c.rule, k, row, bias);
    const std::vector<uint32_t> chosen(out.TokenExperts(t).begin(), out.TokenExperts(t).end());
    EXPECT_EQ(chosen[0], rule.ranking[0]) << c.name << " token " << t;
    const std::set<uint32_t> eligible(rule.ranking.begin(), rule.ranking.begin() + r);
    EXPECT_EQ(std::set<uint32_t>(chosen.begin(), chosen.end()).size(), k);
    for (uint32_t e : chosen) {
      EXPECT_TRUE(eligible.count(e)) << c.name << " token " << t << " expert " << e;
      if (c.rule.masked_groups == MaskedGroups::kExcluded) {
        EXPECT_TRUE(rule.allowed[e]);
      }
    }
    const std::vector<float> weights = RuleWeights(c.rule, row, chosen);
    for (uint32_t i = 0; i < k; ++i) {
      ASSERT_EQ(out.weights[size_t{t} * k + i], weights[i]) << c.name << " token " << t;
    }
    changed += chosen != rule.experts;
  }
  // A top-1 rule with its top protected has nothing the bonus may change.
  if (r > k && k > config.protected_top) {
    EXPECT_GT(changed, 0u) << "the bonus never rerouted";
  }
}

INSTANTIATE_TEST_SUITE_P(Rules, EveryRuleTest, ::testing::ValuesIn(RuleTestCases()),
                         [](const auto& info) { return info.param.name; });

// Transformers masks the groups it drops with 0.0, not -inf: when every
// biased score of the kept groups is negative, a masked expert wins. The
// engine does the same; excluding the groups (vLLM, SGLang) never does.
TEST(RoutingRuleTest, MaskedZeroWinsWhenKeptScoresAreNegativeAsInTransformers) {
  const uint32_t n = 16, k = 4;
  RoutingRule rule = *RoutingRulePreset("deepseek_v3");
  rule.num_groups = 4;
  rule.kept_groups = 2;
  std::vector<float> bias(n, -2.0f);  // every biased score below 0
  std::vector<float> logits(n);
  for (uint32_t e = 0; e < n; ++e) logits[e] = static_cast<float>(e % 5) - 2;
  const RuleChoice want = RouteByRule(rule, k, logits, bias);
  uint32_t masked_chosen = 0;
  for (uint32_t e : want.experts) masked_chosen += !want.allowed[e];
  ASSERT_GT(masked_chosen, 0u);
  RouterConfig config;
  config.num_experts = n;
  config.top_k = k;
  config.rule = rule;
  auto router = LayerRouter::Create(config, {}, bias);
  ASSERT_TRUE(router.ok());
  RouteResult out;
  ASSERT_TRUE(router->Route(logits, nullptr, &out).ok());
  EXPECT_THAT(out.experts, ::testing::ElementsAreArray(want.experts));
  config.rule.masked_groups = MaskedGroups::kExcluded;
  auto excluding = LayerRouter::Create(config, {}, bias);
  ASSERT_TRUE(excluding.ok());
  ASSERT_TRUE(excluding->Route(logits, nullptr, &out).ok());
  const RuleChoice kept = RouteByRule(config.rule, k, logits, bias);
  EXPECT_THAT(out.experts, ::testing::ElementsAreArray(kept.experts));
  for (uint32_t e : out.experts) EXPECT_TRUE(kept.allowed[e]) << e;
}

// The shortlist against the reference where ties are everywhere: a few
// logit values, biases on a coarse grid, so equal choice scores meet at the
// top-k boundary, between groups and at the floor.
TEST(RoutingRuleTest, ShortlistBreaksTiesAsTheRuleDoes) {
  const uint32_t n = 64, k = 6, tokens = 1500;
  RoutingRule rule = *RoutingRulePreset("deepseek_v3");
  for (uint32_t groups : {1u, 8u}) {
    rule.num_groups = groups;
    rule.kept_groups = groups > 1 ? 3 : 1;
    std::mt19937 rng(groups);
    std::uniform_int_distribution<int> level(-2, 3), step(-2, 2);
    std::vector<float> bias(n);
    for (float& b : bias) b = 0.125f * static_cast<float>(step(rng));
    std::vector<float> logits(size_t{tokens} * n);
    for (float& x : logits) x = static_cast<float>(level(rng));
    RouterConfig config;
    config.num_experts = n;
    config.top_k = k;
    config.rule = rule;
    auto router = LayerRouter::Create(config, {}, bias);
    ASSERT_TRUE(router.ok());
    // Batches of 100: the floor is set between batches.
    for (uint32_t first = 0; first < tokens; first += 100) {
      const auto batch = absl::MakeConstSpan(logits).subspan(size_t{first} * n, size_t{100} * n);
      RouteResult out;
      ASSERT_TRUE(router->Route(batch, nullptr, &out).ok());
      for (uint32_t t = 0; t < 100; ++t) {
        const auto row = batch.subspan(size_t{t} * n, n);
        const RuleChoice want = RouteByRule(rule, k, row, bias);
        ASSERT_THAT(std::vector<uint32_t>(out.TokenExperts(t).begin(), out.TokenExperts(t).end()),
                    ::testing::ElementsAreArray(want.experts))
            << groups << " groups, token " << first + t;
      }
    }
    EXPECT_GT(router->choice_scorer()->shortlisted(), 0u) << groups << " groups";
  }
}

// Runners-up are prefetched by how likely they are next to the top: for
// sigmoid scores their odds (e^logit), not the scores themselves, which all
// sit near 1 at the top.
TEST(RoutingRuleTest, SigmoidRunnersUpArePrefetchedByTheirOdds) {
  for (const char* preset : {"deepseek_v3", "llama4"}) {
    RouterConfig config;
    config.num_experts = 64;
    config.top_k = 2;
    config.max_rank = 12;
    config.prefetch_threshold = 0.5;
    config.rule = *RoutingRulePreset(preset);
    if (config.rule.HasGroups()) config.rule.kept_groups = 2;
    std::mt19937 rng(3);
    std::vector<float> bias;
    if (config.rule.choice_bias) bias = TestBias(rng, 64);
    auto router = LayerRouter::Create(config, {}, bias);
    ASSERT_TRUE(router.ok()) << router.status();
    const std::vector<float> logits = RuleTestLogits(rng, 1, 64, false);
    RouteResult out;
    ASSERT_TRUE(router->Route(logits, nullptr, &out).ok());
    const RuleChoice rule = RouteByRule(config.rule, 2, logits, bias);
    const auto odds = [&](uint32_t e) {
      const float s = Sigmoid(logits[e]);
      return s / (1.0f - s);
    };
    std::vector<uint32_t> want;
    for (uint32_t p = 2; p < 12; ++p) {
      if (odds(rule.ranking[p]) >= 0.5f * odds(rule.ranking[0])) want.push_back(rule.ranking[p]);
    }
    std::sort(want.begin(), want.end());
    EXPECT_THAT(out.prefetch, ::testing::ElementsAreArray(want)) << preset;
    EXPECT_LT(out.prefetch.size(), 10u) << preset << ": every candidate prefetched";
  }
}

TEST(RoutingRuleTest, SigmoidIsCloseToExactAndFiniteEverywhere) {
  for (float x : {-100.0f, -87.5f, -20.0f, -1.5f, -1e-3f, 0.0f, 1e-3f, 0.7f, 3.0f, 20.0f, 100.0f}) {
    const double exact = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    const float got = Sigmoid(x);
    EXPECT_TRUE(std::isfinite(got));
    if (x > -87) {
      EXPECT_NEAR(got, exact, exact * 5e-7) << x;
    }
  }
  EXPECT_EQ(Sigmoid(0.0f), 0.5f);
  // The shortlist's thresholds assume 1e-6 relative: every float step of
  // 2^-10 over the range that matters.
  double worst = 0;
  for (float x = -80.0f; x <= 40.0f; x += 1.0f / 1024) {
    const double exact = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    worst = std::max(worst, std::fabs(Sigmoid(x) - exact) / exact);
  }
  EXPECT_LT(worst, 1e-6);
}

}  // namespace
}  // namespace moe_router
