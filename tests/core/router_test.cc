#include "core/routing/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <set>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

using testing::Residency;

LayerRouter MakeRouter(RouterConfig config) {
  auto router = LayerRouter::Create(config, AffinityConfig{});
  EXPECT_TRUE(router.ok()) << router.status();
  return *std::move(router);
}

// Reference routing of one token, by sorting: the original ranking, the
// protected prefix, then the best adjusted scores within max_rank.
struct Expected {
  std::vector<uint32_t> experts;  // descending original logit
  std::vector<double> weights;
  bool changed = false;
  double mass = 1;
  // Candidates past the top whose probability over the top's reaches the
  // prefetch threshold; those left unchosen are prefetched.
  std::vector<uint32_t> runners_up;
};

Expected ReferenceRoute(const float* row, const RouterConfig& c, double bonus,
                        const Residency* res) {
  std::vector<uint32_t> order(c.num_experts);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return row[a] > row[b]; });
  const uint32_t r = c.EffectiveMaxRank();
  std::vector<uint32_t> chosen(order.begin(), order.begin() + c.protected_top);
  std::vector<uint32_t> rest(order.begin() + c.protected_top, order.begin() + r);
  const auto adjusted = [&](uint32_t e) {
    return static_cast<double>(row[e]) + (res != nullptr && res->Get(e) ? bonus : 0.0);
  };
  std::stable_sort(rest.begin(), rest.end(), [&](uint32_t a, uint32_t b) {
    const double x = adjusted(a), y = adjusted(b);
    return x > y || (x == y && a < b);
  });
  for (uint32_t i = 0; chosen.size() < c.top_k; ++i) chosen.push_back(rest[i]);
  std::sort(chosen.begin(), chosen.end(), [&](uint32_t a, uint32_t b) {
    return std::find(order.begin(), order.end(), a) < std::find(order.begin(), order.end(), b);
  });
  Expected out;
  out.experts = chosen;
  const double top = row[order[0]];
  double chosen_mass = 0, orig_mass = 0;
  for (uint32_t e : chosen) chosen_mass += std::exp(row[e] - top);
  for (uint32_t i = 0; i < c.top_k; ++i) orig_mass += std::exp(row[order[i]] - top);
  for (uint32_t e : chosen) out.weights.push_back(std::exp(row[e] - top) / chosen_mass);
  std::set<uint32_t> a(chosen.begin(), chosen.end()), b(order.begin(), order.begin() + c.top_k);
  out.changed = a != b;
  for (uint32_t i = 1; i < r; ++i) {
    if (std::exp(row[order[i]] - top) >= c.prefetch_threshold) out.runners_up.push_back(order[i]);
  }
  out.mass = chosen_mass / orig_mass;
  if (out.changed && out.mass < c.min_gate_mass) {
    // The mass guard refuses the reroute: the original top-k, as unbiased.
    RouterConfig plain = c;
    plain.min_gate_mass = 0;
    return ReferenceRoute(row, plain, 0, nullptr);
  }
  return out;
}

TEST(RouterConfigTest, RejectsBadFieldsByName) {
  const auto error_of = [](RouterConfig c) { return std::string(c.Validate().message()); };
  RouterConfig c;
  c.top_k = 0;
  EXPECT_THAT(error_of(c), HasSubstr("top_k"));
  c = {};
  c.top_k = 9;
  EXPECT_THAT(error_of(c), HasSubstr("top_k (9) must be <= router.num_experts (8)"));
  c = {};
  c.num_experts = 0;
  EXPECT_THAT(error_of(c), HasSubstr("num_experts"));
  c = {};
  c.cache_bonus = -1;
  EXPECT_THAT(error_of(c), HasSubstr("cache_bonus"));
  c = {};
  c.cache_bonus = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THAT(error_of(c), HasSubstr("cache_bonus"));
  c = {};
  c.prefetch_threshold = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THAT(error_of(c), HasSubstr("prefetch_threshold"));
  c = {};
  c.protected_top = 3;
  EXPECT_THAT(error_of(c), HasSubstr("protected_top"));
  c = {};
  c.max_rank = 1;
  EXPECT_THAT(error_of(c), HasSubstr("max_rank"));
  // Candidates live in a 64-bit mask: ranks past 64 are refused, by name.
  c = {};
  c.num_experts = 256;
  c.max_rank = 65;
  EXPECT_THAT(error_of(c),
              HasSubstr("max_rank (65) must be 0 or in [top_k, min(num_experts, 64)]"));
  c.max_rank = 64;
  EXPECT_TRUE(c.Validate().ok());
  c.top_k = 65;
  c.max_rank = 0;
  EXPECT_THAT(error_of(c), HasSubstr("top_k (65) must be <= 64"));
  c.top_k = 64;
  EXPECT_TRUE(c.Validate().ok());
  EXPECT_EQ(c.EffectiveMaxRank(), 64u);
  c = {};
  c.range_ema_alpha = 0;
  EXPECT_THAT(error_of(c), HasSubstr("range_ema_alpha"));
  EXPECT_TRUE(RouterConfig{}.Validate().ok());
  EXPECT_FALSE(LayerRouter::Create(c, AffinityConfig{}).ok());
  AffinityConfig bad_affinity;
  bad_affinity.decay = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THAT(std::string(LayerRouter::Create(RouterConfig{}, bad_affinity).status().message()),
              HasSubstr("affinity.decay"));
}

TEST(RouterTest, PlainTopKMatchesSoftmaxOfChosen) {
  RouterConfig config;
  config.num_experts = 8;
  config.top_k = 2;
  config.memory_aware = false;
  LayerRouter router = MakeRouter(config);
  const std::vector<float> logits = testing::RandomLogits(100, 8, 1);
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, nullptr, &out).ok());
  ASSERT_EQ(out.tokens, 100u);
  for (uint32_t t = 0; t < out.tokens; ++t) {
    const Expected want = ReferenceRoute(&logits[t * 8], config, 0, nullptr);
    EXPECT_THAT(out.TokenExperts(t), ::testing::ElementsAreArray(want.experts));
    for (uint32_t i = 0; i < 2; ++i) EXPECT_NEAR(out.weights[t * 2 + i], want.weights[i], 1e-6);
  }
  EXPECT_EQ(out.changed_tokens, 0u);
  EXPECT_DOUBLE_EQ(out.gate_mass_sum, 100.0);
  EXPECT_EQ(out.hits, 0u);
  EXPECT_EQ(out.misses, 200u);
}

struct BonusCase {
  uint32_t experts, top_k, protected_top, max_rank;
  double bonus, min_gate_mass;
};

std::string CaseName(const ::testing::TestParamInfo<BonusCase>& info) {
  const BonusCase& c = info.param;
  return absl::StrFormat("e%d_k%d_p%d_r%d_b%d_m%d", c.experts, c.top_k, c.protected_top, c.max_rank,
                         static_cast<int>(c.bonus * 10), static_cast<int>(c.min_gate_mass * 10));
}

class RouterBonusTest : public ::testing::TestWithParam<BonusCase> {};

TEST_P(RouterBonusTest, MatchesReferenceAndKeepsTheGuard) {
  const BonusCase p = GetParam();
  RouterConfig config;
  config.num_experts = p.experts;
  config.top_k = p.top_k;
  config.protected_top = p.protected_top;
  config.max_rank = p.max_rank;
  config.cache_bonus = p.bonus;
  config.min_gate_mass = p.min_gate_mass;
  config.bonus_mode = BonusMode::kAbsolute;
  LayerRouter router = MakeRouter(config);
  Residency res(p.experts);
  for (uint32_t e = 0; e < p.experts; ++e) res.Set(e, (e * 7 + 3) % 5 < 2);
  const uint32_t tokens = 200;
  const std::vector<float> logits = testing::RandomLogits(tokens, p.experts, p.experts + p.top_k);
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, res.get(), &out).ok());
  uint32_t changed = 0;
  double mass_sum = 0;
  std::set<uint32_t> prefetch;
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = &logits[size_t{t} * p.experts];
    const Expected want = ReferenceRoute(row, config, p.bonus, &res);
    for (uint32_t e : want.runners_up) {
      if (std::find(want.experts.begin(), want.experts.end(), e) == want.experts.end()) {
        prefetch.insert(e);
      }
    }
    ASSERT_THAT(out.TokenExperts(t), ::testing::ElementsAreArray(want.experts)) << "token " << t;
    for (uint32_t i = 0; i < p.top_k; ++i) {
      EXPECT_NEAR(out.weights[t * p.top_k + i], want.weights[i], 2e-6);
      EXPECT_EQ(out.resident[t * p.top_k + i], res.Get(want.experts[i]) ? 1 : 0);
    }
    changed += want.changed;
    mass_sum += want.mass;
  }
  EXPECT_EQ(out.changed_tokens, changed);
  EXPECT_THAT(out.prefetch, ::testing::ElementsAreArray(prefetch));
  EXPECT_NEAR(out.gate_mass_sum, mass_sum, 1e-4);
  EXPECT_LE(out.gate_mass_min, 1.0);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RouterBonusTest,
    ::testing::Values(BonusCase{8, 2, 1, 4, 1.0, 0}, BonusCase{8, 2, 0, 8, 3.0, 0},
                      BonusCase{8, 2, 2, 4, 5.0, 0}, BonusCase{8, 2, 1, 8, 3.0, 0.7},
                      BonusCase{64, 6, 1, 12, 1.5, 0}, BonusCase{64, 6, 1, 12, 1.5, 0.8},
                      BonusCase{256, 8, 2, 10, 1.0, 0}, BonusCase{128, 8, 1, 0, 0.8, 0.9},
                      // The widest candidate mask.
                      BonusCase{128, 8, 0, 64, 2.0, 0}, BonusCase{64, 64, 1, 64, 1.0, 0}),
    CaseName);

TEST(RouterTest, BonusOnlyReroutesAndWeightsStayOriginal) {
  RouterConfig config;
  config.cache_bonus = 10.0;  // huge: every allowed swap happens
  config.bonus_mode = BonusMode::kAbsolute;
  config.max_rank = 3;
  config.min_gate_mass = 0;
  LayerRouter router = MakeRouter(config);
  Residency res(8);
  // Token: expert 0 best, 1 second, 2 third; only 2 is resident.
  const std::vector<float> logits = {3.0f, 2.0f, 1.0f, 0.0f, -1.0f, -2.0f, -3.0f, -4.0f};
  res.Set(2, true);
  res.Set(7, true);  // resident but beyond max_rank: never chosen
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, res.get(), &out).ok());
  EXPECT_THAT(out.TokenExperts(0), ::testing::ElementsAre(0u, 2u));
  const double w0 = 1.0 / (1.0 + std::exp(-2.0));
  EXPECT_NEAR(out.weights[0], w0, 1e-6);
  EXPECT_NEAR(out.weights[1], 1 - w0, 1e-6);
  EXPECT_EQ(out.changed_tokens, 1u);
  const double retained = (1 + std::exp(-2.0)) / (1 + std::exp(-1.0));
  EXPECT_NEAR(out.gate_mass_sum, retained, 1e-6);
  EXPECT_THAT(out.resident, ::testing::ElementsAre(0, 1));
}

TEST(RouterTest, MinGateMassKeepsCostlyTokensOnTheirOriginalExperts) {
  RouterConfig config;
  config.cache_bonus = 10.0;
  config.bonus_mode = BonusMode::kAbsolute;
  config.max_rank = 3;
  config.min_gate_mass = 0.9;
  LayerRouter router = MakeRouter(config);
  Residency res(8);
  res.Set(2, true);
  // Token 0: expert 2 is a near tie with 1 (cheap swap, rerouted).
  // Token 1: expert 2 is far below 1 (keeps 1 + e^-3 of 1 + e^-0.5: refused).
  const std::vector<float> logits = {3.0f, 2.0f, 1.95f, 0, 0, 0, 0, 0,
                                     3.0f, 2.5f, 0.0f,  0, 0, 0, 0, 0};
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, res.get(), &out).ok());
  EXPECT_THAT(out.TokenExperts(0), ::testing::ElementsAre(0u, 2u));
  EXPECT_THAT(out.TokenExperts(1), ::testing::ElementsAre(0u, 1u));
  EXPECT_EQ(out.changed_tokens, 1u);
  EXPECT_THAT(out.resident, ::testing::ElementsAre(0, 1, 0, 0));
  EXPECT_GE(out.gate_mass_min, 0.9);
  config.min_gate_mass = 1.5;
  EXPECT_THAT(std::string(config.Validate().message()), HasSubstr("min_gate_mass"));
}

TEST(RouterTest, RelativeBonusScalesWithLogitRange) {
  RouterConfig config;
  config.cache_bonus = 0.2;
  config.min_gate_mass = 0;
  config.bonus_mode = BonusMode::kRelative;
  // Same token shape at two scales: the relative bonus flips both the same way.
  for (float scale : {1.0f, 100.0f}) {
    LayerRouter router = MakeRouter(config);
    Residency res(8);
    res.Set(2, true);
    std::vector<float> row = {3, 2, 1.5, 0, -1, -2, -3, -4};  // range 7: bonus 1.4 > 0.5
    for (float& x : row) x *= scale;
    RouteResult out;
    ASSERT_TRUE(router.Route(row, res.get(), &out).ok());
    EXPECT_THAT(out.TokenExperts(0), ::testing::ElementsAre(0u, 2u)) << scale;
    EXPECT_NEAR(router.mean_logit_range(), 7.0 * scale, 1e-3 * scale);
  }
}

TEST(RouterTest, BadInputNamesTheTokenAndChangesNothing) {
  LayerRouter router = MakeRouter(RouterConfig{});
  std::vector<float> logits = testing::RandomLogits(4, 8, 3);
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, nullptr, &out).ok());
  const ExpertAffinity::State before = router.affinity().Export();
  const double range_before = router.mean_logit_range();

  std::vector<float> bad = logits;
  bad[2 * 8 + 5] = std::numeric_limits<float>::quiet_NaN();
  absl::Status s = router.Route(bad, nullptr, &out);
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(std::string(s.message()), HasSubstr("token 2 has a NaN value at expert 5"));

  bad = logits;
  bad[3 * 8] = -std::numeric_limits<float>::infinity();
  s = router.Route(bad, nullptr, &out);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token 3 has a infinite value"));

  std::vector<float> short_row(logits.begin(), logits.end() - 1);
  s = router.Route(short_row, nullptr, &out);
  EXPECT_THAT(std::string(s.message()), HasSubstr("31 values, not a multiple of num_experts (8)"));

  const ExpertAffinity::State after = router.affinity().Export();
  EXPECT_EQ(before.counts, after.counts);
  EXPECT_EQ(before.scores, after.scores);
  EXPECT_EQ(before.updates, after.updates);
  EXPECT_EQ(range_before, router.mean_logit_range());
}

TEST(RouterTest, DeterministicForSameLogitsAndCacheState) {
  RouterConfig config;
  config.num_experts = 64;
  config.top_k = 6;
  Residency res(64);
  for (uint32_t e = 0; e < 64; e += 3) res.Set(e, true);
  const std::vector<float> logits = testing::RandomLogits(300, 64, 11);
  LayerRouter a = MakeRouter(config);
  LayerRouter b = MakeRouter(config);
  RouteResult out_a, out_b;
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(a.Route(logits, res.get(), &out_a).ok());
    ASSERT_TRUE(b.Route(logits, res.get(), &out_b).ok());
    EXPECT_EQ(out_a.experts, out_b.experts);
    EXPECT_EQ(out_a.weights, out_b.weights);
    EXPECT_EQ(out_a.prefetch, out_b.prefetch);
  }
}

TEST(RouterTest, TiesGoToTheLowerExpertId) {
  RouterConfig config;
  config.memory_aware = false;
  LayerRouter router = MakeRouter(config);
  const std::vector<float> logits = {1, 2, 2, 0, 2, 0, 0, 0};
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, nullptr, &out).ok());
  EXPECT_THAT(out.TokenExperts(0), ::testing::ElementsAre(1u, 2u));
  EXPECT_NEAR(out.weights[0], 0.5f, 1e-7);
}

// When the bonus exactly closes the gap between a resident and an absent
// candidate, the lower expert id wins, whichever of the two is resident.
// Values are exact in float, so the adjusted scores tie bit for bit.
TEST(RouterTest, CacheAwareTiesGoToTheLowerExpertId) {
  RouterConfig config;
  config.cache_bonus = 1.0;
  config.bonus_mode = BonusMode::kAbsolute;
  config.max_rank = 4;
  config.min_gate_mass = 0;
  LayerRouter router = MakeRouter(config);
  Residency res(8);
  res.Set(2, true);
  res.Set(5, true);
  // A: absent 3 (3.0) ties resident 5 (2.0 + 1.0): 3 is lower, nothing changes.
  const std::vector<float> a = {4, -1, -2, 3, -3, 2, -4, -5};
  // B: resident 2 (2.0 + 1.0) ties absent 6 (3.0): 2 is lower, rerouted.
  const std::vector<float> b = {4, -1, 2, -2, -3, -4, 3, -5};
  // 16 tokens, so the batched selection path runs too.
  std::vector<float> logits;
  for (int t = 0; t < 16; ++t)
    logits.insert(logits.end(), (t % 2 ? b : a).begin(), (t % 2 ? b : a).end());
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, res.get(), &out).ok());
  for (uint32_t t = 0; t < 16; ++t) {
    if (t % 2 == 0) {
      EXPECT_THAT(out.TokenExperts(t), ::testing::ElementsAre(0u, 3u)) << t;
    } else {
      EXPECT_THAT(out.TokenExperts(t), ::testing::ElementsAre(0u, 2u)) << t;
    }
    const Expected want = ReferenceRoute(&logits[t * 8], config, 1.0, &res);
    EXPECT_THAT(out.TokenExperts(t), ::testing::ElementsAreArray(want.experts)) << t;
  }
  EXPECT_EQ(out.changed_tokens, 8u);
}

TEST(RouterTest, StrongRunnersUpBecomePrefetchCandidates) {
  RouterConfig config;
  config.memory_aware = false;
  config.prefetch_threshold = 0.5;  // within ln 2 of the top logit
  config.max_rank = 4;
  LayerRouter router = MakeRouter(config);
  // Expert 3 is third at 0.3 below the top: prefetch. Expert 5 is 2 below.
  const std::vector<float> logits = {0, 5.0f, 0, 4.7f, 0, 3.0f, 4.9f, 0};
  RouteResult out;
  ASSERT_TRUE(router.Route(logits, nullptr, &out).ok());
  EXPECT_THAT(out.TokenExperts(0), ::testing::ElementsAre(1u, 6u));
  EXPECT_THAT(out.prefetch, ::testing::ElementsAre(3u));
}

TEST(RouterTest, RoutingLearnsAffinity) {
  LayerRouter router = MakeRouter(RouterConfig{});
  const std::vector<float> logits = {5, 4, 0, 0, 0, 0, 0, 0};
  RouteResult out;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(router.Route(logits, nullptr, &out).ok());
  EXPECT_EQ(router.affinity().Count(0), 10u);
  EXPECT_EQ(router.affinity().Count(1), 10u);
  EXPECT_EQ(router.affinity().Count(2), 0u);
  EXPECT_THAT(router.affinity().TopByAffinity(2), ::testing::ElementsAre(0u, 1u));
}

}  // namespace
}  // namespace moe_router
