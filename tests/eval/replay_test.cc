#include "eval/replay.h"

#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

double HitRate(const RoutingTrace& trace, BudgetMode mode, uint64_t amount,
               const std::string& policy) {
  ReplayOptions options;
  options.mode = mode;
  options.amount = amount;
  options.policies = {policy};
  auto report = Replay(trace, options);
  EXPECT_TRUE(report.ok()) << report.status();
  return report.ok() ? report->rows[0].hit_rate : -1;
}

TEST(ReplayTest, ReproducesTheReferenceHitRatesOfTheSharedTrace) {
  const std::string path = testing::SharedTracePath();
  if (path.empty()) GTEST_SKIP() << "shared trace not present";
  auto trace = ReadTrace(path);
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->Accesses(), 15778u);
  struct Ref {
    BudgetMode mode;
    uint64_t amount;
    double lru, lfu, belady;
  };
  for (const Ref& r : {Ref{BudgetMode::kPerLayer, 2, 0.341, 0.341, 0.341},
                       Ref{BudgetMode::kPerLayer, 4, 0.597, 0.613, 0.727},
                       Ref{BudgetMode::kPerLayer, 6, 0.804, 0.819, 0.889},
                       Ref{BudgetMode::kGlobalSlots, 128, 0.532, 0.584, 0.802}}) {
    EXPECT_NEAR(HitRate(*trace, r.mode, r.amount, "lru"), r.lru, 0.0005) << r.amount;
    EXPECT_NEAR(HitRate(*trace, r.mode, r.amount, "lfu"), r.lfu, 0.0005) << r.amount;
    EXPECT_NEAR(HitRate(*trace, r.mode, r.amount, "belady"), r.belady, 0.0005) << r.amount;
  }
  // Global bytes is global slots in other units.
  EXPECT_DOUBLE_EQ(HitRate(*trace, BudgetMode::kGlobalBytes, 128 << 20, "lru"),
                   HitRate(*trace, BudgetMode::kGlobalSlots, 128, "lru"));
}

// The fewest misses any eviction choice achieves, by dynamic programming
// over cache contents (the step's experts pinned, as in replay).
uint64_t OptimalMisses(const RoutingTrace& trace, uint32_t slots) {
  const RoutingTrace::Run& run = trace.runs[0];
  std::map<std::set<uint32_t>, uint64_t> states = {{{}, 0}};
  for (size_t i = 0; i < run.steps.size(); ++i) {
    const uint32_t base = run.steps[i].layer * trace.num_experts;
    const auto experts = trace.StepExperts(run, i);
    std::set<uint32_t> step;
    for (uint32_t e : experts) step.insert(base + e);
    for (uint32_t e : experts) {
      const uint32_t key = base + e;
      std::map<std::set<uint32_t>, uint64_t> next;
      const auto offer = [&](const std::set<uint32_t>& s, uint64_t misses) {
        auto [it, inserted] = next.emplace(s, misses);
        if (!inserted) it->second = std::min(it->second, misses);
      };
      for (const auto& [cache, misses] : states) {
        if (cache.count(key)) {
          offer(cache, misses);
          continue;
        }
        if (cache.size() < slots) {
          std::set<uint32_t> s = cache;
          s.insert(key);
          offer(s, misses + 1);
          continue;
        }
        for (uint32_t victim : cache) {
          if (step.count(victim)) continue;
          std::set<uint32_t> s = cache;
          s.erase(victim);
          s.insert(key);
          offer(s, misses + 1);
        }
      }
      states = std::move(next);
    }
  }
  uint64_t best = UINT64_MAX;
  for (const auto& [cache, misses] : states) best = std::min(best, misses);
  return best;
}

TEST(ReplayTest, BeladyIsOptimalOnSmallRandomTraces) {
  std::mt19937 rng(5);
  for (int round = 0; round < 60; ++round) {
    RoutingTrace trace;
    trace.num_layers = 2;
    trace.num_experts = 4;
    trace.top_k = 1 + round % 2;
    RoutingTrace::Run run;
    run.tokens = 6 + round % 5;
    for (uint32_t t = 0; t < run.tokens; ++t) {
      for (uint32_t l = 0; l < 2; ++l) {
        if (rng() % 7 == 0) continue;  // sparse, like the real trace
        run.steps.push_back({t, l});
        const uint32_t a = rng() % 4;
        run.experts.push_back(a);
        if (trace.top_k == 2) run.experts.push_back((a + 1 + rng() % 3) % 4);
      }
    }
    trace.runs.push_back(run);
    const uint32_t slots = 2 + round % 3;
    const double rate = HitRate(trace, BudgetMode::kGlobalSlots, slots, "belady");
    const double optimal =
        1.0 - static_cast<double>(OptimalMisses(trace, slots)) / trace.Accesses();
    EXPECT_NEAR(rate, optimal, 1e-12) << "round " << round;
    // No online policy beats it.
    for (const char* policy : {"lru", "lfu", "layer_reuse", "adaptive", "affinity"}) {
      EXPECT_LE(HitRate(trace, BudgetMode::kGlobalSlots, slots, policy), rate + 1e-12);
    }
  }
}

TEST(ReplayTest, PrefetchRaisesReadinessAndCountsItsLoads) {
  WorkloadShape shape;
  shape.num_layers = 8;
  const RoutingTrace trace = GenerateTrace(shape, 2, 60, 3);
  ReplayOptions options;
  options.mode = BudgetMode::kGlobalSlots;
  options.amount = 32;
  options.policies = {"layer_reuse"};
  options.prefetch_budget = 2;
  auto report = Replay(trace, options);
  ASSERT_TRUE(report.ok()) << report.status();
  const ReplayRow& row = report->rows[0];
  EXPECT_GT(row.ready_rate, row.hit_rate);
  EXPECT_GT(row.prefetch_loads, 0u);
  EXPECT_LE(row.prefetch_used, row.prefetch_loads);
  EXPECT_GT(row.loads_per_token, row.demand_loads_per_token);
  EXPECT_EQ(row.accesses, 2u * 60 * 8 * 2);
}

TEST(ReplayTest, CacheAwareRoutingTradesGateMassForHits) {
  const RoutingTrace trace = GenerateTrace(GetWorkloadPreset("mixtral")->shape, 2, 60, 4);
  ReplayOptions options;
  options.mode = BudgetMode::kGlobalSlots;
  options.amount = 128;
  options.policies = {"layer_reuse"};
  RouterConfig router;
  router.cache_bonus = 0;
  options.router = router;
  auto plain = Replay(trace, options);
  options.router->cache_bonus = 0.3;
  auto aware = Replay(trace, options);
  ASSERT_TRUE(plain.ok() && aware.ok());
  EXPECT_EQ(plain->rows[0].changed_fraction, 0.0);
  EXPECT_DOUBLE_EQ(plain->rows[0].gate_mass_mean, 1.0);
  // Unchanged routing through the router is the trace's own top-k.
  EXPECT_DOUBLE_EQ(plain->rows[0].hit_rate,
                   HitRate(trace, BudgetMode::kGlobalSlots, 128, "layer_reuse"));
  EXPECT_GT(aware->rows[0].hit_rate, plain->rows[0].hit_rate);
  EXPECT_GT(aware->rows[0].changed_fraction, 0.0);
  EXPECT_LT(aware->rows[0].gate_mass_mean, 1.0);
  // Belady and the peers page the trace's own routing, bonus or not.
  options.policies = {"belady", "vllm_lfru"};
  auto references = Replay(trace, options);
  ASSERT_TRUE(references.ok()) << references.status();
  EXPECT_DOUBLE_EQ(references->rows[0].hit_rate,
                   HitRate(trace, BudgetMode::kGlobalSlots, 128, "belady"));
  EXPECT_DOUBLE_EQ(references->rows[1].hit_rate,
                   HitRate(trace, BudgetMode::kGlobalSlots, 128, "vllm_lfru"));
  EXPECT_EQ(references->rows[0].changed_fraction, 0.0);
}

// Each family's rule: rerouting through the router at bonus 0 pages exactly
// the rule's own choices (the trace's), and the bonus trades gate mass for
// hits under every rule.
TEST(ReplayTest, EveryRuleReroutesByItselfAndTradesMassForHits) {
  for (const char* name : {"deepseek-v3", "kimi-k2", "glm-4.5", "gpt-oss-120b"}) {
    WorkloadShape shape = GetWorkloadPreset(name)->shape;
    shape.num_layers = 4;
    const RoutingTrace trace = GenerateTrace(shape, 2, 60, 4);
    ReplayOptions options;
    options.amount = uint64_t{trace.num_layers} * trace.num_experts / 4;
    options.policies = {"layer_reuse", "lru"};
    RouterConfig router;
    router.num_experts = trace.num_experts;
    router.top_k = trace.top_k;
    router.cache_bonus = 0;
    options.router = router;
    auto plain = Replay(trace, options);
    ASSERT_TRUE(plain.ok()) << name << ": " << plain.status();
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_DOUBLE_EQ(plain->rows[i].hit_rate, HitRate(trace, BudgetMode::kGlobalSlots,
                                                        options.amount, options.policies[i]))
          << name << " " << options.policies[i];
      EXPECT_EQ(plain->rows[i].changed_fraction, 0.0);
    }
    options.router->cache_bonus = 0.5;
    auto aware = Replay(trace, options);
    ASSERT_TRUE(aware.ok());
    EXPECT_GT(aware->rows[0].hit_rate, plain->rows[0].hit_rate) << name;
    EXPECT_LT(aware->rows[0].gate_mass_mean, 1.0) << name;
  }
}

// Policies replayed on several threads give the rows one thread gives, in
// the order asked, and the progress ends at the total.
TEST(ReplayTest, ThreadsChangeNothingButTheTime) {
  const RoutingTrace trace = GenerateTrace(GetWorkloadPreset("mixtral")->shape, 2, 40, 6);
  ReplayOptions options;
  options.amount = 96;
  options.prefetch_budget = 2;
  options.policies = {"layer_reuse", "belady", "lru", "affinity", "adaptive", "lfu"};
  auto one = Replay(trace, options);
  options.threads = 3;
  uint64_t last = 0, total = 0;
  auto three = Replay(trace, options, [&](uint64_t done, uint64_t all) {
    EXPECT_GT(done, last);
    last = done;
    total = all;
  });
  ASSERT_TRUE(one.ok() && three.ok());
  ASSERT_EQ(three->rows.size(), options.policies.size());
  for (size_t i = 0; i < options.policies.size(); ++i) {
    EXPECT_EQ(three->rows[i].policy, options.policies[i]);
    EXPECT_EQ(three->rows[i].demand_hits, one->rows[i].demand_hits) << options.policies[i];
    EXPECT_EQ(three->rows[i].ready_hits, one->rows[i].ready_hits) << options.policies[i];
    EXPECT_EQ(three->rows[i].prefetch_loads, one->rows[i].prefetch_loads) << options.policies[i];
  }
  EXPECT_EQ(last, total);
  EXPECT_EQ(total, trace.Steps() * options.policies.size() * 2);
  options.threads = 0;
  EXPECT_THAT(std::string(Replay(trace, options).status().message()),
              ::testing::HasSubstr("threads"));
}

TEST(ReplayTest, RejectsImpossibleOptions) {
  const RoutingTrace trace = GenerateTrace(WorkloadShape{}, 1, 2, 1);
  ReplayOptions options;
  options.policies = {"lru"};
  options.amount = 1;  // fewer slots than top_k
  EXPECT_FALSE(Replay(trace, options).ok());
  options.amount = 0;
  EXPECT_FALSE(Replay(trace, options).ok());
  options.amount = 10;
  options.policies = {"mru"};
  EXPECT_FALSE(Replay(trace, options).ok());
}

}  // namespace
}  // namespace moe_router
