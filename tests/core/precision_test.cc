#include "core/model/precision.h"

#include "gtest/gtest.h"

namespace moe_router {
namespace {

TEST(PrecisionTest, ClassifiesAgainstTheBusiestExpert) {
  PrecisionConfig c;
  EXPECT_EQ(c.Classify(0.95, 1000), PrecisionClass::kHot);
  EXPECT_EQ(c.Classify(0.9, 1000), PrecisionClass::kHot);
  EXPECT_EQ(c.Classify(0.5, 1000), PrecisionClass::kWarm);
  EXPECT_EQ(c.Classify(0.1, 1000), PrecisionClass::kCold);
  EXPECT_EQ(c.Classify(0.1, 10), PrecisionClass::kHot);  // still warming up
  EXPECT_EQ(c.PrecisionOf(PrecisionClass::kWarm), "Q3_K");
  EXPECT_STREQ(PrecisionClassName(PrecisionClass::kCold), "cold");
  c.warm_threshold = 0.95;
  EXPECT_FALSE(c.Validate().ok());
  c = {};
  c.cold_precision = "";
  EXPECT_FALSE(c.Validate().ok());
}

}  // namespace
}  // namespace moe_router
