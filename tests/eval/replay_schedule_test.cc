// Batched replay: the schedule continuous batching makes of a trace, and
// the replay of it: one run at a time it is the runs back to back, a use
// misses once per expert a step loads, and the peers' batch
// rules (llama.cpp's bypass, vLLM's split) apply.
#include "eval/replay_schedule.h"

#include <vector>

#include "core/cache/peer_policies.h"
#include "eval/replay.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;

// Runs of `tokens` tokens each over 2 layers, top-1; expert = run * 10 +
// token (mod 4 experts: only the shape matters here) except where given.
RoutingTrace HandTrace(const std::vector<uint32_t>& tokens) {
  RoutingTrace trace;
  trace.num_layers = 2;
  trace.num_experts = 40;
  trace.top_k = 1;
  for (uint32_t r = 0; r < tokens.size(); ++r) {
    RoutingTrace::Run run;
    for (uint32_t t = 0; t < tokens[r]; ++t) {
      for (uint32_t l = 0; l < 2; ++l) {
        run.steps.push_back({t, l});
        run.experts.push_back(r * 10 + t);
      }
    }
    trace.runs.push_back(run);
  }
  return trace;
}

std::vector<uint32_t> Runs(const ReplayStep& step) { return {step.runs.begin(), step.runs.end()}; }
std::vector<uint32_t> Experts(const ReplayStep& step) {
  return {step.experts.begin(), step.experts.end()};
}

TEST(ReplayScheduleTest, RunsJoinWhenOthersLeaveAndKeepTheirTokensInOrder) {
  const RoutingTrace trace = HandTrace({2, 1, 3});
  const ReplaySchedule s = ReplaySchedule::Batched(trace, 2);
  const std::vector<ReplayStep>& steps = s.steps();
  ASSERT_EQ(steps.size(), 8u);  // 4 batch steps of 2 layers
  // Batch step 0: runs 0 and 1; 1: run 1 left, run 2 joined; 2, 3: run 2.
  EXPECT_THAT(Runs(steps[0]), ElementsAre(0, 1));
  EXPECT_THAT(Experts(steps[0]), ElementsAre(0, 10));
  EXPECT_EQ(steps[1].layer, 1u);
  EXPECT_THAT(Runs(steps[2]), ElementsAre(0, 2));
  EXPECT_THAT(Experts(steps[2]), ElementsAre(1, 20));
  EXPECT_THAT(Runs(steps[4]), ElementsAre(2));
  EXPECT_THAT(Experts(steps[6]), ElementsAre(22));
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(steps[i].token, i / 2);
    EXPECT_EQ(steps[i].layer, i % 2);
    EXPECT_EQ(steps[i].run_step, -1);
  }
}

// Run 1 marks its first 3 tokens as its prompt: the batch step it joins
// routes all three at each layer beside run 0's one token; its next token
// follows alone in the next.
TEST(ReplayScheduleTest, ARunJoiningWithAMarkedPromptPrefillsItInOneStep) {
  RoutingTrace trace = HandTrace({3, 5});
  trace.runs[1].prompt_tokens = 3;
  const ReplaySchedule s = ReplaySchedule::Batched(trace, 2);
  const std::vector<ReplayStep>& steps = s.steps();
  ASSERT_EQ(steps.size(), 6u);  // 3 batch steps: run 1's 5 tokens in 1 + 1 + 1
  for (uint32_t layer : {0, 1}) {
    EXPECT_THAT(Runs(steps[layer]), ElementsAre(0, 1, 1, 1));
    EXPECT_THAT(Experts(steps[layer]), ElementsAre(0, 10, 11, 12));
    EXPECT_EQ(steps[layer].layer, layer);
  }
  EXPECT_THAT(Experts(steps[2]), ElementsAre(1, 13));
  EXPECT_THAT(Experts(steps[4]), ElementsAre(2, 14));
  // Unmarked, the same runs decode a token a step.
  trace.runs[1].prompt_tokens = 0;
  EXPECT_EQ(ReplaySchedule::Batched(trace, 2).steps().size(), 10u);
}

TEST(ReplayScheduleTest, ATokenMissingALayerAddsNothingThere) {
  RoutingTrace trace = HandTrace({1, 1});
  // Run 1's token skips layer 0.
  trace.runs[1].steps.erase(trace.runs[1].steps.begin());
  trace.runs[1].experts.erase(trace.runs[1].experts.begin());
  const ReplaySchedule s = ReplaySchedule::Batched(trace, 4);
  ASSERT_EQ(s.steps().size(), 2u);
  EXPECT_THAT(Runs(s.steps()[0]), ElementsAre(0));
  EXPECT_THAT(Runs(s.steps()[1]), ElementsAre(0, 1));
}

TEST(ReplayScheduleTest, ARunsOwnScheduleIsItsSteps) {
  const RoutingTrace trace = HandTrace({3});
  const ReplaySchedule s = ReplaySchedule::OfRun(trace, 0);
  ASSERT_EQ(s.steps().size(), 6u);
  EXPECT_EQ(s.steps()[5].run_step, 5);
  EXPECT_THAT(Experts(s.steps()[5]), ElementsAre(2));
}

void ExpectSameRows(const ReplayReport& a, const ReplayReport& b) {
  ASSERT_EQ(a.rows.size(), b.rows.size());
  for (size_t i = 0; i < a.rows.size(); ++i) {
    EXPECT_EQ(a.rows[i].policy, b.rows[i].policy);
    EXPECT_EQ(a.rows[i].refused, b.rows[i].refused) << a.rows[i].policy;
    EXPECT_EQ(a.rows[i].demand_hits, b.rows[i].demand_hits) << a.rows[i].policy;
    EXPECT_EQ(a.rows[i].demand_loads, b.rows[i].demand_loads) << a.rows[i].policy;
    EXPECT_EQ(a.rows[i].ready_hits, b.rows[i].ready_hits) << a.rows[i].policy;
    EXPECT_EQ(a.rows[i].prefetch_loads, b.rows[i].prefetch_loads) << a.rows[i].policy;
    EXPECT_EQ(a.rows[i].changed_fraction, b.rows[i].changed_fraction) << a.rows[i].policy;
  }
}

// At batch 1, the replay of `trace` is that of its runs back to back.
void ExpectABatchOfOneIsTheRunsBackToBack(const RoutingTrace& trace, ReplayOptions options) {
  options.batch = 1;
  auto batched = Replay(trace, options);
  ASSERT_TRUE(batched.ok()) << batched.status();
  options.batch = 0;
  auto back_to_back = Replay(Concatenated(trace), options);
  ASSERT_TRUE(back_to_back.ok()) << back_to_back.status();
  ExpectSameRows(*batched, *back_to_back);
}

TEST(ReplayScheduleTest, ABatchOfOneIsTheRunsBackToBack) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/3, /*tokens=*/25,
                    /*seed=*/9);
  ReplayOptions options;
  options.amount = 96;
  options.prefetch_budget = 2;
  options.policies = ReplayPolicyNames();
  ExpectABatchOfOneIsTheRunsBackToBack(trace, options);
}

// Two tokens of a batch on one expert: two hits if it was resident, else
// one load, its first use the miss and the other a hit.
TEST(ReplayScheduleTest, AStepsMissIsTheFirstUseOfEachExpertItLoads) {
  RoutingTrace trace = HandTrace({2, 2});
  for (RoutingTrace::Run& run : trace.runs) {
    for (uint32_t& e : run.experts) e = 7;
  }
  ReplayOptions options;
  options.amount = 4;
  options.batch = 2;
  options.policies = {"lru", "llama_cpp_lru"};
  auto report = Replay(trace, options);
  ASSERT_TRUE(report.ok()) << report.status();
  for (const ReplayRow& row : report->rows) {
    // Layer 0 and 1 of batch step 0 load expert 7 once each, and the
    // second use hits; batch step 1 hits both uses at both layers.
    EXPECT_EQ(row.demand_loads, 2u) << row.policy;
    EXPECT_EQ(row.demand_hits, 6u) << row.policy;
    EXPECT_EQ(row.accesses, 8u) << row.policy;
  }
}

TEST(ReplayScheduleTest, LlamaCppServesBatchesAbove32TokensAroundItsCache) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/33, /*tokens=*/4,
                    /*seed=*/2);
  ReplayOptions options;
  options.amount = 256;  // every expert: what is paged in stays
  options.policies = {"llama_cpp", "llama_cpp_lru", "lru"};
  options.batch = 33;
  auto over = Replay(trace, options);
  ASSERT_TRUE(over.ok()) << over.status();
  EXPECT_EQ(PeerBypassTokens("llama_cpp"), 32u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(over->rows[i].demand_hits, 0u) << over->rows[i].policy;
    EXPECT_EQ(over->rows[i].demand_loads, 0u) << over->rows[i].policy;
  }
  EXPECT_GT(over->rows[2].demand_hits, 0u);
  options.batch = 32;
  auto under = Replay(trace, options);
  ASSERT_TRUE(under.ok()) << under.status();
  EXPECT_GT(under->rows[0].demand_hits, 0u);
}

// A marked prompt of 40 tokens is one step of 40 tokens a layer, which
// llama.cpp serves around its cache; the 4 tokens decoded after it page.
TEST(ReplayScheduleTest, APrefilledPromptAbove32TokensBypassesLlamaCpp) {
  RoutingTrace trace = GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/1,
                                     /*tokens=*/44, /*seed=*/3);
  trace.runs[0].prompt_tokens = 40;
  ReplayOptions options;
  options.amount = 256;
  options.policies = {"llama_cpp", "lru"};
  options.batch = 1;
  auto report = Replay(trace, options);
  ASSERT_TRUE(report.ok()) << report.status();
  const uint64_t decoded = 4 * trace.num_layers * trace.top_k;
  EXPECT_EQ(report->rows[0].demand_hits + report->rows[0].demand_loads, decoded);
  EXPECT_EQ(report->rows[1].demand_hits + report->rows[1].demand_loads, report->rows[1].accesses);
  EXPECT_EQ(report->rows[1].accesses, 44 * decoded / 4);
}

// vLLM's layer of 2 slots and a step of up to 16 experts: it splits the
// step instead of failing, and loads at least once per miss.
TEST(ReplayScheduleTest, VllmSplitsABatchWhoseExpertsDoNotFitItsLayer) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/8, /*tokens=*/10,
                    /*seed=*/4);
  ReplayOptions options;
  options.amount = 2 * trace.num_layers;
  options.policies = {"vllm_lfru"};
  options.batch = 8;
  auto report = Replay(trace, options);
  ASSERT_TRUE(report.ok()) << report.status();
  const ReplayRow& row = report->rows[0];
  EXPECT_TRUE(row.refused.empty());
  EXPECT_GT(row.demand_hits, 0u);
  EXPECT_GE(row.demand_hits + row.demand_loads, row.accesses / 8);
}

// Rerouted in batches: each step's tokens routed together against the
// cache, each by its own run's logits. At bonus 0 that is the trace's
// routing (so every token's logits came from the right run and step); at
// batch 1 it is the runs back to back; with a bonus, it reroutes.
TEST(ReplayScheduleTest, BatchedReplayReroutesEachTokenByItsOwnLogits) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/6, /*tokens=*/20,
                    /*seed=*/5);
  ReplayOptions options;
  options.amount = 200;  // at 96, LRU holds nothing of a layer when it comes round
  options.policies = {"lru", "layer_reuse"};
  options.batch = 4;
  auto plain = Replay(trace, options);
  ASSERT_TRUE(plain.ok()) << plain.status();
  options.router = RouterConfig{};
  options.router->cache_bonus = 0;
  auto at_zero = Replay(trace, options);
  ASSERT_TRUE(at_zero.ok()) << at_zero.status();
  ExpectSameRows(*plain, *at_zero);
  for (const ReplayRow& row : at_zero->rows) EXPECT_EQ(row.changed_fraction, 0.0);

  options.router->cache_bonus = 1.0;
  auto rerouted = Replay(trace, options);
  ASSERT_TRUE(rerouted.ok()) << rerouted.status();
  for (size_t i = 0; i < rerouted->rows.size(); ++i) {
    EXPECT_GT(rerouted->rows[i].changed_fraction, 0.0) << rerouted->rows[i].policy;
    EXPECT_GT(rerouted->rows[i].demand_hits, plain->rows[i].demand_hits)
        << rerouted->rows[i].policy;
  }
  ExpectABatchOfOneIsTheRunsBackToBack(trace, options);
}

}  // namespace
}  // namespace moe_router
