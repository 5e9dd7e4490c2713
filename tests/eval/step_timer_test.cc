// The time model against worked examples: all hits, all misses, prefetch
// hidden behind compute and not, and a demand load queued behind a
// prefetch; then through replay.
#include "eval/step_timer.h"

#include "eval/replay.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

using ::testing::DoubleEq;
using ::testing::HasSubstr;

// 1 MB over 25 GB/s is 40 us, plus 10 us a load: 50 us; 200 us compute.
constexpr HardwareProfile kLink{
    .name = "test", .link_gb_per_s = 25, .load_latency_us = 10, .compute_us_per_layer = 200};
constexpr uint64_t kMegabyte = 1000000;
// 1 MB over 1 GB/s: 1000 us a load, against 200 us of compute.
constexpr HardwareProfile kSlowLink{
    .name = "slow", .link_gb_per_s = 1, .load_latency_us = 0, .compute_us_per_layer = 200};

TEST(StepTimerTest, AllHitsCostComputeOnly) {
  StepTimer timer(kLink, kMegabyte, 4);
  for (int step = 0; step < 3; ++step) {
    timer.BeginStep();
    timer.Use(0);
    timer.Use(1);
    timer.EndStep(1);
  }
  EXPECT_THAT(timer.load_us(), DoubleEq(50));
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(3 * 200));
}

// A prefill of 40 tokens at 10 us a token computes 400 us; a decode step
// of 4 tokens still the 200 us of reading the weights.
TEST(StepTimerTest, AStepComputesForTheLargerOfItsWeightsAndItsTokens) {
  HardwareProfile link = kLink;
  link.compute_us_per_token = 10;
  StepTimer timer(link, kMegabyte, 4);
  timer.BeginStep();
  timer.Use(0);
  timer.EndStep(40);
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(400));
  timer.BeginStep();
  timer.Use(0);
  timer.EndStep(4);
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(600));
  link.compute_us_per_token = -1;
  EXPECT_THAT(std::string(link.Validate().message()),
              HasSubstr("compute per token must be a non-negative number of microseconds, got -1"));
}

TEST(StepTimerTest, MissesStallTheirStepOneLoadAfterAnother) {
  StepTimer timer(kLink, kMegabyte, 4);
  for (size_t step = 0; step < 2; ++step) {
    timer.BeginStep();
    timer.Demand(2 * step);
    timer.Demand(2 * step + 1);
    timer.EndStep(1);
  }
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(2 * (2 * 50 + 200)));
}

TEST(StepTimerTest, APrefetchShorterThanTheComputeItOverlapsIsHidden) {
  StepTimer timer(kLink, kMegabyte, 4);
  timer.BeginStep();
  timer.Demand(0);
  timer.EndStep(1);
  timer.Prefetch(1);  // issued as step 1 computes: in at 100 us, step 2 starts at 250
  timer.BeginStep();
  timer.Use(1);
  timer.EndStep(1);
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(50 + 2 * 200));
}

TEST(StepTimerTest, APrefetchLongerThanTheComputeIsWaitedFor) {
  StepTimer timer(kSlowLink, kMegabyte, 4);
  timer.BeginStep();
  timer.Demand(0);
  timer.EndStep(1);   // computes 1000..1200
  timer.Prefetch(1);  // lands at 2000
  timer.BeginStep();
  timer.Use(1);  // waits from 1200 to 2000
  timer.EndStep(1);
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(2000 + 200));
}

TEST(StepTimerTest, ADemandLoadQueuesBehindAPrefetchInFlight) {
  StepTimer timer(kSlowLink, kMegabyte, 4);
  timer.BeginStep();
  timer.EndStep(1);   // 0..200, nothing to load
  timer.Prefetch(1);  // the link is busy 0..1000
  timer.BeginStep();
  timer.Demand(2);  // 1000..2000
  timer.EndStep(1);
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(2000 + 200));
}

TEST(StepTimerTest, ADemandLoadGoesAheadOfPrefetchesNotStarted) {
  StepTimer timer(kSlowLink, kMegabyte, 4);
  timer.BeginStep();
  timer.EndStep(1);   // 0..200
  timer.Prefetch(1);  // 0..1000, in flight at 200
  timer.Prefetch(2);  // queued for 1000..2000
  timer.BeginStep();
  timer.Demand(3);   // after the one in flight: 1000..2000; prefetch 2 now 2000..3000
  timer.EndStep(1);  // 2000..2200
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(2200));
  timer.BeginStep();
  timer.Use(2);  // waits for 3000
  timer.EndStep(1);
  EXPECT_THAT(timer.elapsed_us(), DoubleEq(3200));
}

TEST(StepTimerTest, PresetsAreNamedAndBadProfilesRefusedByField) {
  EXPECT_THAT(HardwarePresetNames(), ::testing::ElementsAre("pcie4-x16", "pcie5-x16"));
  auto pcie5 = HardwarePreset("pcie5-x16");
  ASSERT_TRUE(pcie5.ok());
  EXPECT_GT(pcie5->link_gb_per_s, HardwarePreset("pcie4-x16")->link_gb_per_s);
  EXPECT_THAT(std::string(HardwarePreset("nvlink").status().message()),
              HasSubstr("unknown hardware 'nvlink'; expected one of: pcie4-x16, pcie5-x16"));
  HardwareProfile bad = kLink;
  bad.link_gb_per_s = 0;
  EXPECT_THAT(std::string(bad.Validate().message()), HasSubstr("link bandwidth"));
  bad = kLink;
  bad.load_latency_us = -1;
  EXPECT_THAT(std::string(bad.Validate().message()), HasSubstr("load latency"));
  bad = kLink;
  bad.compute_us_per_layer = std::nan("");
  EXPECT_THAT(std::string(bad.Validate().message()), HasSubstr("compute per layer"));
}

// Through replay: with every expert resident after its first load, time per
// token is compute plus the cold loads; fewer slots cost more.
TEST(StepTimerTest, ReplayPricesTokensByTheirLoads) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/2, /*tokens=*/30,
                    /*seed=*/3);
  ReplayOptions options;
  options.expert_bytes = kMegabyte;
  options.hardware = kLink;
  options.policies = {"lru"};
  options.amount = uint64_t{trace.num_layers} * trace.num_experts;
  auto all = Replay(trace, options);
  ASSERT_TRUE(all.ok()) << all.status();
  const ReplayRow& row = all->rows[0];
  const double loads = static_cast<double>(row.demand_loads);
  const double steps = static_cast<double>(trace.Steps());
  EXPECT_THAT(row.ms_per_token * row.tokens * 1e3,
              DoubleEq(steps * 200 + loads * 50));  // every load a step's own stall
  EXPECT_EQ(row.ms_per_token, row.ready_ms_per_token);
  options.amount = 64;
  auto fewer = Replay(trace, options);
  ASSERT_TRUE(fewer.ok());
  EXPECT_GT(fewer->rows[0].ms_per_token, row.ms_per_token);
}

}  // namespace
}  // namespace moe_router
