#include "core/engine/model_footprint.h"

#include <malloc.h>

#include "core/store/synthetic_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

ModelConfig Shape(uint32_t layers, uint32_t experts, uint32_t top_k) {
  ModelConfig c;
  c.name = "shape";
  c.num_layers = layers;
  c.router.num_experts = experts;
  c.router.top_k = top_k;
  c.budget_bytes = 1 << 20;
  return c;
}

#if defined(__SANITIZE_ADDRESS__)  // GCC
constexpr bool kUnderAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang
constexpr bool kUnderAddressSanitizer = true;
#else
constexpr bool kUnderAddressSanitizer = false;
#endif
#else
constexpr bool kUnderAddressSanitizer = false;
#endif

uint64_t HeapInUse() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

// The estimate is what RegisterModel weighs against the memory limit, so
// it must not undercount what Create allocates, nor overcount it so much
// that real models are refused.
class FootprintBoundsTest : public ::testing::TestWithParam<std::array<uint32_t, 3>> {};

TEST_P(FootprintBoundsTest, BoundsWhatCreateAndAWorkerCacheAllocate) {
  if (kUnderAddressSanitizer)
    GTEST_SKIP() << "AddressSanitizer's allocator is not seen by mallinfo2";
  const auto [layers, experts, top_k] = GetParam();
  ModelConfig config = Shape(layers, experts, top_k);
  config.worker_caches.max_caches = 1;
  const uint64_t before = HeapInUse();
  auto store = SyntheticStore::Create(
      {.num_layers = layers, .num_experts = experts, .variants = {{"default", 4096}}});
  ASSERT_TRUE(store.ok());
  auto engine = ModelEngine::Create(config, *std::move(store));
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_TRUE((*engine)->OpenCache("worker-0", 1 << 20, "").ok());
  const uint64_t allocated = HeapInUse() - before;

  const ModelFootprint f = EstimateFootprint(config, /*store_bytes=*/4096);
  const uint64_t estimate = f.Total() - f.budget_bytes;
  EXPECT_GE(estimate, allocated) << f.ToString();
  EXPECT_LE(estimate, allocated * 3 / 2 + (256 << 10)) << f.ToString();
}

INSTANTIATE_TEST_SUITE_P(
    RealAndExtremeShapes, FootprintBoundsTest,
    ::testing::Values(std::array<uint32_t, 3>{32, 8, 2}, std::array<uint32_t, 3>{58, 256, 8},
                      std::array<uint32_t, 3>{61, 384, 8}, std::array<uint32_t, 3>{94, 128, 8},
                      std::array<uint32_t, 3>{8, 1024, 8}, std::array<uint32_t, 3>{400, 16, 2}));

// A rule with choice scores holds biases, thresholds and scratch per
// expert, grown in full by a 64-token batch routed through every layer.
TEST(FootprintTest, BoundsAChoiceScoreRuleAfterRouting) {
  if (kUnderAddressSanitizer)
    GTEST_SKIP() << "AddressSanitizer's allocator is not seen by mallinfo2";
  const uint32_t layers = 58, experts = 256;
  ModelConfig config = Shape(layers, experts, 8);
  config.worker_caches.max_caches = 1;
  config.router.rule = *RoutingRulePreset("deepseek_v3");
  config.choice_bias.assign(size_t{layers} * experts, 0.01f);
  const std::vector<float> logits(size_t{64} * experts, 0.5f);
  const uint64_t before = HeapInUse();
  auto store = SyntheticStore::Create(
      {.num_layers = layers, .num_experts = experts, .variants = {{"default", 4096}}});
  ASSERT_TRUE(store.ok());
  auto engine = ModelEngine::Create(config, *std::move(store));
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (uint32_t l = 0; l < layers; ++l) ASSERT_TRUE((*engine)->Route(l, logits, "").ok());
  (*engine)->pool().WaitIdle(absl::InfiniteFuture());
  const uint64_t allocated = HeapInUse() - before;
  const ModelFootprint f = EstimateFootprint(config, /*store_bytes=*/4096);
  // The config's own biases are the caller's, outside the heap measured.
  EXPECT_GE(f.Total() - f.budget_bytes, allocated) << f.ToString();
}

TEST(FootprintTest, LargestRealModelsFitInAFewGigabytes) {
  for (const auto& [layers, experts] : {std::pair{58u, 256u}, {61u, 384u}, {94u, 128u}}) {
    const ModelConfig config = Shape(layers, experts, 8);
    ASSERT_TRUE(config.Validate().ok());
    const ModelFootprint f = EstimateFootprint(config, 0);
    // 1024 worker caches of 67 bytes per expert at most, plus learned state.
    EXPECT_LT(f.learned_state_bytes, uint64_t{128} << 20) << layers << "x" << experts;
    EXPECT_LT(f.worker_views_bytes, uint64_t{2} << 30) << layers << "x" << experts;
  }
}

// 34 bytes of state and, at most (adaptive), 49 of eviction index.
TEST(FootprintTest, WorkerCacheViewsCostEightyThreeBytesPerExpertAtMost) {
  ModelConfig config = Shape(58, 256, 8);
  config.worker_caches.max_caches = 1;
  const uint64_t one = EstimateFootprint(config, 0).worker_views_bytes;
  EXPECT_GE(one, 83u * 58 * 256);
  EXPECT_LT(one, 84u * 58 * 256);
  config.worker_caches.max_caches = 1000;
  EXPECT_EQ(EstimateFootprint(config, 0).worker_views_bytes, 1000 * one);
}

TEST(FootprintTest, TotalSaturatesInsteadOfWrapping) {
  ModelConfig config = Shape(4, 8, 2);
  config.budget_bytes = ~uint64_t{0} - 10;
  const ModelFootprint f = EstimateFootprint(config, ~uint64_t{0} - 10);
  EXPECT_EQ(f.Total(), ~uint64_t{0});
  EXPECT_THAT(f.ToString(), HasSubstr("EiB"));
}

TEST(FootprintTest, ShapesPastTheLimitsAreRefusedByName) {
  ModelConfig config = Shape(kMaxModelLayers + 1, 8, 2);
  EXPECT_THAT(config.Validate().message(), HasSubstr("model.num_layers must be in [1, 1024]"));
  config = Shape(4, kMaxModelExperts + 1, 2);
  EXPECT_THAT(config.Validate().message(), HasSubstr("model.num_experts must be <= 4096"));
  EXPECT_TRUE(Shape(kMaxModelLayers, kMaxModelExperts, 64).Validate().ok());
}

TEST(FootprintTest, FormatsBytesForPeople) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(3 << 10), "3.0 KiB");
  EXPECT_EQ(FormatBytes(uint64_t{3} << 29), "1.5 GiB");
}

}  // namespace
}  // namespace moe_router
