#include "eval/workload.h"

#include <algorithm>
#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/rule_reference.h"

namespace moe_router {
namespace {

TEST(WorkloadTest, PresetsAreValidAndUnknownNamesAreErrors) {
  for (const std::string& name : WorkloadPresetNames()) {
    auto p = GetWorkloadPreset(name);
    ASSERT_TRUE(p.ok());
    EXPECT_TRUE(p->shape.Validate().ok()) << name;
  }
  EXPECT_EQ(GetWorkloadPreset("deepseek-v3")->shape.num_experts, 256u);
  EXPECT_EQ(GetWorkloadPreset("qwen3-30b-a3b")->shape.num_layers, 48u);
  EXPECT_EQ(GetWorkloadPreset("qwen3-235b-a22b")->shape.num_layers, 94u);
  EXPECT_EQ(GetWorkloadPreset("gpt-oss-120b")->shape.top_k, 4u);
  EXPECT_EQ(GetWorkloadPreset("kimi-k2")->shape.num_experts, 384u);
  EXPECT_THAT(std::string(GetWorkloadPreset("gpt-4").status().message()),
              ::testing::HasSubstr("expected one of: mixtral, qwen3-30b-a3b, deepseek-v3, "
                                   "qwen3-235b-a22b, gpt-oss-120b, kimi-k2, glm-4.5, "
                                   "llama4-maverick"));
  // Each routes by its family's rule.
  EXPECT_TRUE(GetWorkloadPreset("mixtral")->shape.rule.IsDefault());
  EXPECT_EQ(GetWorkloadPreset("deepseek-v3")->shape.rule, *RoutingRulePreset("deepseek_v3"));
  const RoutingRule kimi = GetWorkloadPreset("kimi-k2")->shape.rule;
  EXPECT_EQ(kimi.num_groups, 1u);
  EXPECT_EQ(kimi.scaling, 2.827);
  EXPECT_EQ(GetWorkloadPreset("glm-4.5")->shape.num_experts, 160u);
  EXPECT_EQ(GetWorkloadPreset("glm-4.5")->shape.rule, *RoutingRulePreset("glm4_moe"));
  EXPECT_EQ(GetWorkloadPreset("llama4-maverick")->shape.top_k, 1u);
  EXPECT_EQ(GetWorkloadPreset("llama4-maverick")->shape.rule.selection,
            Selection::kTopKThenSigmoid);
  EXPECT_EQ(GetWorkloadPreset("gpt-oss-120b")->shape.rule.selection, Selection::kTopKThenSoftmax);
}

// A rule with a choice bias gets biases that balance the experts' loads:
// the busiest expert's share of choices falls, and the biases are the
// trace's. The logits do not depend on the rule.
TEST(WorkloadTest, BalancedBiasesEvenOutTheLoadAndLeaveTheLogitsAlone) {
  WorkloadShape shape = GetWorkloadPreset("deepseek-v3")->shape;
  shape.num_layers = 2;
  shape.num_experts = 64;
  shape.rule.num_groups = 8;
  shape.skew = 1.5;  // a few experts far busier than the rest
  const std::vector<float> bias = BalancedChoiceBias(shape, 3);
  ASSERT_EQ(bias.size(), 128u);
  const RoutingTrace balanced = GenerateTrace(shape, 2, 200, 3);
  EXPECT_EQ(balanced.choice_bias, bias);
  RoutingTrace unbalanced = balanced;
  unbalanced.choice_bias.assign(bias.size(), 0.0f);
  ASSERT_TRUE(FillTopKFromLogits(unbalanced).ok());
  const auto busiest = [](const RoutingTrace& t) {
    std::vector<uint64_t> uses(t.num_experts, 0);
    for (const auto& run : t.runs) {
      for (size_t s = 0; s < run.steps.size(); ++s) {
        if (run.steps[s].layer != 0) continue;
        for (uint32_t e : t.StepExperts(run, s)) ++uses[e];
      }
    }
    return *std::max_element(uses.begin(), uses.end());
  };
  EXPECT_LT(busiest(balanced), busiest(unbalanced) * 3 / 4);
  WorkloadShape softmax = shape;
  softmax.rule = RoutingRule{};
  EXPECT_EQ(GenerateTrace(softmax, 2, 200, 3).runs[1].logits, balanced.runs[1].logits);
  EXPECT_TRUE(BalancedChoiceBias(softmax, 3).empty());
}

// A generated trace's experts are its rule's, step by step.
TEST(WorkloadTest, TracesAreRoutedByTheirRule) {
  for (const char* name : {"deepseek-v3", "glm-4.5", "llama4-maverick", "gpt-oss-120b"}) {
    WorkloadShape shape = GetWorkloadPreset(name)->shape;
    shape.num_layers = 2;
    const RoutingTrace trace = GenerateTrace(shape, 1, 30, 9);
    for (const auto& run : trace.runs) {
      for (size_t s = 0; s < run.steps.size(); ++s) {
        const auto want = testing::RouteByRule(trace.rule, trace.top_k, trace.StepLogits(run, s),
                                               trace.LayerChoiceBias(run.steps[s].layer));
        ASSERT_THAT(trace.StepExperts(run, s), ::testing::ElementsAreArray(want.experts))
            << name << " step " << s;
      }
    }
  }
}

TEST(WorkloadTest, BadShapesNameTheField) {
  WorkloadShape shape;
  shape.persistence = 1.0;
  EXPECT_THAT(std::string(shape.Validate().message()), ::testing::HasSubstr("persistence"));
  shape = WorkloadShape{};
  shape.top_k = 9;
  EXPECT_THAT(std::string(shape.Validate().message()), ::testing::HasSubstr("top_k 9"));
  shape = WorkloadShape{};
  shape.noise = -1;
  EXPECT_THAT(std::string(shape.Validate().message()), ::testing::HasSubstr("noise"));
  shape = WorkloadShape{};
  shape.rule.num_groups = 3;
  EXPECT_THAT(std::string(shape.Validate().message()), ::testing::HasSubstr("routing.num_groups"));
}

// A generated trace has every step of every run, in token then layer order,
// and its experts are the top-k of its own logits.
TEST(WorkloadTest, TracesAreCompleteAndTheirExpertsAreTheLogitsTopK) {
  WorkloadShape shape;
  shape.num_layers = 3;
  shape.num_experts = 16;
  shape.top_k = 4;
  const RoutingTrace trace = GenerateTrace(shape, 2, 7, 5);
  ASSERT_EQ(trace.runs.size(), 2u);
  EXPECT_TRUE(trace.has_logits());
  for (const RoutingTrace::Run& run : trace.runs) {
    EXPECT_EQ(run.tokens, 7u);
    ASSERT_EQ(run.steps.size(), 21u);
    for (size_t s = 0; s < run.steps.size(); ++s) {
      EXPECT_EQ(run.steps[s].token, s / 3);
      EXPECT_EQ(run.steps[s].layer, s % 3);
      const absl::Span<const float> logits = trace.StepLogits(run, s);
      std::vector<uint32_t> order(16);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](uint32_t a, uint32_t b) { return logits[a] > logits[b]; });
      EXPECT_THAT(trace.StepExperts(run, s),
                  ::testing::ElementsAreArray(order.begin(), order.begin() + 4));
    }
  }
}

TEST(WorkloadTest, DeterministicPerSeed) {
  WorkloadShape shape;
  shape.num_layers = 4;
  EXPECT_EQ(GenerateTrace(shape, 2, 10, 9).runs[1].logits,
            GenerateTrace(shape, 2, 10, 9).runs[1].logits);
  EXPECT_NE(GenerateTrace(shape, 2, 10, 9).runs[1].logits,
            GenerateTrace(shape, 2, 10, 8).runs[1].logits);
}

// The generator's knobs move the statistics they are named for.
TEST(WorkloadTest, PersistenceAndSkewShapeTheTrace) {
  WorkloadShape calm;
  calm.num_layers = 4;
  calm.persistence = 0.0;
  calm.topic = 2.0;
  calm.noise = 0.5;
  WorkloadShape sticky = calm;
  sticky.persistence = 0.95;
  EXPECT_GT(ComputeTraceStats(GenerateTrace(sticky, 4, 100, 1)).first_choice_recurrence,
            ComputeTraceStats(GenerateTrace(calm, 4, 100, 1)).first_choice_recurrence + 0.2);
  WorkloadShape flat = calm;
  flat.skew = 0.0;
  WorkloadShape skewed = calm;
  skewed.skew = 3.0;
  EXPECT_GT(ComputeTraceStats(GenerateTrace(skewed, 4, 100, 1)).skew_mean,
            ComputeTraceStats(GenerateTrace(flat, 4, 100, 1)).skew_mean + 0.5);
}

TEST(WorkloadTest, SequencesStartFresh) {
  WorkloadShape shape;
  shape.num_layers = 2;
  SyntheticRouting a(shape, 3), b(shape, 3);
  a.StartSequence();
  b.StartSequence();
  EXPECT_EQ(a.NextToken(), b.NextToken());
  EXPECT_EQ(a.current(), b.current());
  EXPECT_EQ(a.current().size(), 2u * 8);
}

}  // namespace
}  // namespace moe_router
