#include "eval/workload.h"

#include <algorithm>
#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

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
                                   "qwen3-235b-a22b, gpt-oss-120b, kimi-k2"));
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
