#include "core/calibration.h"

#include "core/workload.h"
#include "tests/testing/test_util.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

TEST(CalibrationTest, MixtralPresetMatchesTheRealTraceAtAFixedSeed) {
  const std::string path = testing::SharedTracePath();
  if (path.empty()) GTEST_SKIP() << "shared trace not present";
  auto real = ReadTrace(path);
  ASSERT_TRUE(real.ok());
  auto preset = GetWorkloadPreset("mixtral");
  ASSERT_TRUE(preset.ok());
  const RoutingTrace generated =
      GenerateTrace(preset->shape, preset->sequences, preset->tokens, /*seed=*/1);
  auto rows = CompareTraces(generated, *real);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 9u);
  for (const CalibrationRow& row : *rows) {
    EXPECT_TRUE(row.ok()) << row.metric << ": generated " << row.generated << ", real "
                          << row.real;
  }
}

TEST(WorkloadTest, PresetsAndDeterminism) {
  for (const std::string& name : WorkloadPresetNames()) {
    auto p = GetWorkloadPreset(name);
    ASSERT_TRUE(p.ok());
    EXPECT_TRUE(p->shape.Validate().ok()) << name;
  }
  EXPECT_EQ(GetWorkloadPreset("deepseek-v3")->shape.num_experts, 256u);
  EXPECT_EQ(GetWorkloadPreset("qwen3-30b-a3b")->shape.num_layers, 48u);
  EXPECT_FALSE(GetWorkloadPreset("gpt-4").ok());
  WorkloadShape shape;
  shape.num_layers = 4;
  EXPECT_EQ(GenerateTrace(shape, 2, 10, 9).runs[1].logits, GenerateTrace(shape, 2, 10, 9).runs[1].logits);
  EXPECT_NE(GenerateTrace(shape, 2, 10, 9).runs[1].logits, GenerateTrace(shape, 2, 10, 8).runs[1].logits);
  shape.persistence = 1.0;
  EXPECT_FALSE(shape.Validate().ok());
}

}  // namespace
}  // namespace moe_router
