#include "core/routing/affinity.h"

#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;

TEST(AffinityTest, MatchesNaiveEmaOverLongRuns) {
  AffinityConfig config;
  config.decay = 0.9;  // reaches the renormalisation point within the run
  config.boost = 1.0;
  config.max_score = 5.0;
  ExpertAffinity affinity(16, config);
  std::vector<double> naive(16, 0.0);
  std::mt19937 rng(7);
  for (int step = 0; step < 20000; ++step) {
    const uint32_t a = rng() % 16, b = (a + 1 + rng() % 15) % 16;
    const uint32_t chosen[] = {a, b};
    affinity.Update(chosen);
    for (double& s : naive) s *= config.decay;
    for (uint32_t e : chosen) naive[e] = std::min(naive[e] + config.boost, config.max_score);
  }
  for (uint32_t e = 0; e < 16; ++e) {
    EXPECT_NEAR(affinity.Score(e), naive[e], 1e-9 * std::max(1.0, naive[e])) << e;
  }
  EXPECT_EQ(affinity.updates(), 20000u);
}

TEST(AffinityTest, NeverIncreasesWithoutActivation) {
  ExpertAffinity affinity(8, AffinityConfig{});
  std::mt19937 rng(3);
  for (int step = 0; step < 5000; ++step) {
    const uint32_t active = rng() % 7;  // expert 7 is never activated after step 0
    std::vector<double> before(8);
    for (uint32_t e = 0; e < 8; ++e) before[e] = affinity.Score(e);
    const uint32_t chosen[] = {active};
    affinity.Update(chosen);
    for (uint32_t e = 0; e < 8; ++e) {
      if (e != active) {
        ASSERT_LE(affinity.Score(e), before[e]) << "step " << step;
      }
    }
  }
  EXPECT_EQ(affinity.Score(7), 0.0);
}

TEST(AffinityTest, ClampsAtMaxScore) {
  AffinityConfig config;
  config.decay = 1.0;
  config.max_score = 3.0;
  ExpertAffinity affinity(4, config);
  const uint32_t chosen[] = {1};
  for (int i = 0; i < 10; ++i) affinity.Update(chosen);
  EXPECT_DOUBLE_EQ(affinity.Score(1), 3.0);
  EXPECT_EQ(affinity.Count(1), 10u);
}

TEST(AffinityTest, RankingsAndFrequencies) {
  ExpertAffinity affinity(6, AffinityConfig{});
  const auto route = [&](std::vector<uint32_t> e, int times) {
    for (int i = 0; i < times; ++i) affinity.Update(e);
  };
  route({2, 4}, 10);  // oldest
  route({5}, 4);
  route({1}, 3);  // most recent
  EXPECT_THAT(affinity.TopByFrequency(3), ElementsAre(2u, 4u, 5u));
  EXPECT_EQ(affinity.TopByAffinity(1)[0], 2u);  // 10 boosts outweigh recency here
  EXPECT_EQ(affinity.LeastAffine(std::vector<uint32_t>{5, 1, 0}), 0u);
  EXPECT_EQ(affinity.LeastAffine(std::vector<uint32_t>{}), std::nullopt);
  EXPECT_DOUBLE_EQ(affinity.FrequencyRatio(2), 1.0);
  EXPECT_DOUBLE_EQ(affinity.FrequencyRatio(5), 0.4);
  EXPECT_DOUBLE_EQ(affinity.FrequencyPercentile(2), 4.0 / 6);  // 0, 3, 1, 5 below
  EXPECT_DOUBLE_EQ(affinity.FrequencyPercentile(0), 0.0);
  EXPECT_EQ(affinity.MaxCount(), 10u);
}

TEST(AffinityTest, ExportImportRoundTripAndRejectsBadState) {
  ExpertAffinity a(4, AffinityConfig{});
  const uint32_t chosen[] = {0, 3};
  for (int i = 0; i < 5; ++i) a.Update(chosen);
  ExpertAffinity b(4, AffinityConfig{});
  ASSERT_TRUE(b.Import(a.Export()).ok());
  for (uint32_t e = 0; e < 4; ++e) {
    EXPECT_DOUBLE_EQ(a.Score(e), b.Score(e));
    EXPECT_EQ(a.Count(e), b.Count(e));
  }
  ExpertAffinity::State wrong = a.Export();
  wrong.scores.pop_back();
  EXPECT_FALSE(b.Import(wrong).ok());
  wrong = a.Export();
  wrong.scores[0] = NAN;
  EXPECT_FALSE(b.Import(wrong).ok());
  EXPECT_DOUBLE_EQ(b.Score(0), a.Score(0));  // unchanged by the rejected imports
}

TEST(CoActivationTest, LearnsAndPredictsNextLayer) {
  CoActivation co(4, 4, 0.9);
  // Expert 0 is always followed by 2 and 3; expert 1 by 0.
  const std::vector<uint32_t> a = {0}, a_next = {2, 3}, b = {1}, b_next = {0, 1};
  for (int i = 0; i < 50; ++i) {
    co.Update(a, a_next);
    co.Update(b, b_next);
  }
  EXPECT_THAT(co.Predict(a, 2), ElementsAre(2u, 3u));
  EXPECT_THAT(co.Predict(b, 1), ElementsAre(0u));
  EXPECT_GT(co.Top1Accuracy(), 0.95);
  EXPECT_GT(co.Top2Accuracy(), 0.95);
  EXPECT_EQ(co.scored_tokens(), 98u);  // the first of each pattern has no prediction yet
  EXPECT_TRUE(co.Predict(std::vector<uint32_t>{3}, 2).empty());
}

TEST(CoActivationTest, AccuracyReflectsMispredictions) {
  CoActivation co(2, 4, 1.0);
  const std::vector<uint32_t> prev = {0};
  co.Update(prev, std::vector<uint32_t>{1, 2});  // learn: 0 -> {1, 2}
  co.Update(prev, std::vector<uint32_t>{3, 0});  // predicted {1, 2}: both wrong
  EXPECT_DOUBLE_EQ(co.Top1Accuracy(), 0.0);
  EXPECT_DOUBLE_EQ(co.Top2Accuracy(), 0.0);
  // Now 0 -> {0, 1, 2, 3} all tied: predicted {0, 1} by lower id.
  co.Update(prev, std::vector<uint32_t>{0, 3});  // top-1 hit, top-2 overlap 1 of 2
  EXPECT_DOUBLE_EQ(co.Top1Accuracy(), 0.5);
  EXPECT_DOUBLE_EQ(co.Top2Accuracy(), 0.25);
}

}  // namespace
}  // namespace moe_router
