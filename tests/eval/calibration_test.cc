#include "eval/calibration.h"

#include "eval/workload.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

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
    EXPECT_TRUE(row.ok()) << row.metric << ": generated " << row.generated << ", real " << row.real;
  }
}

}  // namespace
}  // namespace moe_router
