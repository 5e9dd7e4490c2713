// Every eviction decision of a replay, through the real ExpertCache and its
// eviction index, equals the decision a ranking of all evictable entries
// made before the index (the oracle): every policy and Belady, budgets from
// 10% to 75%, with and without prefetch and cache-aware routing (one token
// a step and batched), on the shared Mixtral trace and on calibrated
// workloads of 8 to 384 experts.
#include <string>
#include <vector>

#include "eval/replay.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/ranking_oracle.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

struct Workload {
  std::string name;
  uint32_t layers = 0, experts = 0, top_k = 0, sequences = 0, tokens = 0;
};

RoutingTrace TraceOf(const Workload& w) {
  if (w.name == "shared") {
    auto trace = ReadTrace(testing::SharedTracePath());
    EXPECT_TRUE(trace.ok()) << trace.status();
    return trace.ok() ? *std::move(trace) : RoutingTrace{};
  }
  WorkloadShape shape = GetWorkloadPreset("mixtral")->shape;
  shape.num_layers = w.layers;
  shape.num_experts = w.experts;
  shape.top_k = w.top_k;
  return GenerateTrace(shape, w.sequences, w.tokens, /*seed=*/11);
}

class ReplayDecisionsTest : public ::testing::TestWithParam<Workload> {};

TEST_P(ReplayDecisionsTest, EveryEvictionEqualsARankingOfAllEvictableEntries) {
  if (GetParam().name == "shared" && testing::SharedTracePath().empty()) {
    GTEST_SKIP() << "shared trace not present";
  }
  const RoutingTrace trace = TraceOf(GetParam());
  const uint64_t slots = uint64_t{trace.num_layers} * trace.num_experts;
  testing::RankingOracle oracle;
  for (const double share : {0.10, 0.25, 0.50, 0.75}) {
    for (const uint32_t prefetch : {0u, 2u}) {
      ReplayOptions options;
      options.amount = std::max<uint64_t>(static_cast<uint64_t>(share * slots), trace.top_k);
      options.policies = ReplayPolicyNames();
      options.prefetch_budget = prefetch;
      ASSERT_TRUE(Replay(trace, options).ok()) << share;
      if (!trace.has_logits()) continue;
      // Cache-aware routing reroutes against the cache (Belady cannot).
      options.policies = EvictionPolicyNames();
      RouterConfig router;
      router.num_experts = trace.num_experts;
      router.top_k = trace.top_k;
      router.cache_bonus = 0.3;
      options.router = router;
      ASSERT_TRUE(Replay(trace, options).ok()) << share;
      options.batch = 4;  // batched: each step's tokens rerouted together
      ASSERT_TRUE(Replay(trace, options).ok()) << share;
    }
  }
  ReplayOptions per_layer;
  per_layer.mode = BudgetMode::kPerLayer;
  per_layer.amount = trace.top_k + 1;
  per_layer.policies = ReplayPolicyNames();
  ASSERT_TRUE(Replay(trace, per_layer).ok());
  EXPECT_GT(oracle.decisions(), 1000u);
  EXPECT_GT(oracle.victims(), 1000u);
  EXPECT_EQ(oracle.differences(), 0u) << ::testing::PrintToString(oracle.first_differences());
}

INSTANTIATE_TEST_SUITE_P(Workloads, ReplayDecisionsTest,
                         ::testing::Values(Workload{"shared"},
                                           Workload{"mixtral_8", 32, 8, 2, 2, 40},
                                           Workload{"qwen3_128", 8, 128, 8, 2, 16},
                                           Workload{"deepseek_256", 6, 256, 8, 1, 16},
                                           Workload{"kimi_384", 5, 384, 8, 1, 14}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace moe_router
