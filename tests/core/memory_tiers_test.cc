#include "core/memory_tiers.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

TEST(MemoryTiersTest, PresetsPlanBudgetsAndLatency) {
  for (const std::string& name : MemoryTiers::PresetNames()) {
    EXPECT_TRUE(MemoryTiers::Preset(name).ok()) << name;
  }
  EXPECT_THAT(std::string(MemoryTiers::Preset("tablet").status().message()),
              ::testing::HasSubstr("unknown tier preset 'tablet'"));
  auto desktop = MemoryTiers::Preset("desktop");
  ASSERT_TRUE(desktop.ok());
  // Mixtral 8x7B: 256 experts of ~176 MiB; 24 GiB fast, 4 GiB reserved.
  const uint64_t expert = 176ull << 20;
  const BudgetPlan plan = desktop->Plan(expert, 256, 4ull << 30);
  EXPECT_EQ(plan.cache_budget_bytes, 20ull << 30);
  EXPECT_EQ(plan.resident_experts, (20ull << 30) / expert);
  EXPECT_EQ(plan.source, Tier::kMain);  // 44 GiB of experts fit host RAM
  EXPECT_NEAR(plan.page_in_seconds, 10e-6 + expert / 25e9, 1e-9);
  auto edge = MemoryTiers::Preset("edge-8GB");
  EXPECT_EQ(edge->Plan(expert, 256, 1ull << 30).source, Tier::kStorage);
  EXPECT_EQ(edge->EstimatePageInSeconds(expert, Tier::kFast), 0.0);
}

TEST(MemoryTiersTest, PinsRespectFastCapacity) {
  auto tiers = MemoryTiers::Create({.capacity_bytes = 1000}, {}, {1 << 20, 1e9, 1e-4});
  ASSERT_TRUE(tiers.ok());
  EXPECT_TRUE(tiers->Pin({0, 1}, 600).ok());
  EXPECT_TRUE(tiers->Pin({0, 1}, 600).ok());  // idempotent
  EXPECT_TRUE(absl::IsResourceExhausted(tiers->Pin({0, 2}, 600)));
  EXPECT_EQ(tiers->PinnedBytes(), 600u);
  EXPECT_TRUE(tiers->IsPinned({0, 1}));
  EXPECT_EQ(tiers->Plan(100, 10, 0).cache_budget_bytes, 400u);
  EXPECT_TRUE(tiers->Unpin({0, 1}).ok());
  EXPECT_TRUE(absl::IsNotFound(tiers->Unpin({0, 1})));
  EXPECT_TRUE(tiers->Pin({0, 2}, 600).ok());
  EXPECT_FALSE(MemoryTiers::Create({}, {}, {}).ok());
}

}  // namespace
}  // namespace moe_router
