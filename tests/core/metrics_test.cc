#include "core/metrics/metrics.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace moe_router {
namespace {

TEST(HistogramTest, BucketsQuantilesAndConcurrency) {
  Histogram h({1, 2, 4});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) h.Observe(i % 5);  // 0 1 2 3 4
    });
  }
  for (auto& t : threads) t.join();
  const Histogram::Snapshot s = h.Read();
  EXPECT_EQ(s.count, 4000u);
  EXPECT_DOUBLE_EQ(s.sum, 4 * 200 * (0 + 1 + 2 + 3 + 4));
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{1600, 800, 1600, 0}));  // <=1, <=2, <=4, +Inf
  EXPECT_DOUBLE_EQ(s.max, 4);
  EXPECT_DOUBLE_EQ(s.Quantile(0.5), 2);
  EXPECT_DOUBLE_EQ(s.Quantile(0.99), 4);
}

TEST(ModelMetricsTest, TotalsAndTargets) {
  ModelMetrics m(2, Targets{.min_hit_rate = 0.7, .max_route_us_per_token = 15});
  m.RecordRoute(0, 10, 15, 5, 2, 9.5, 0.8, 50e-6);
  m.RecordRoute(1, 10, 16, 4, 0, 10.0, 1.0, 50e-6);
  m.RecordPageIn({1, 2}, Priority::kPrefetch, 100, 0.001);
  m.RecordPageInFailure({1, 3}, absl::DataLossError("x"));
  m.RecordPrefetch({0, 1}, true);
  const MetricsSnapshot s = m.Snapshot();
  EXPECT_EQ(s.total.routed_tokens, 20u);
  EXPECT_DOUBLE_EQ(s.targets.hit_rate, 31.0 / 40);
  EXPECT_TRUE(s.targets.hit_rate_ok);
  EXPECT_NEAR(s.targets.route_us_per_token, 5.0, 1e-9);
  EXPECT_TRUE(s.targets.route_overhead_ok);
  EXPECT_EQ(s.layers[1].page_ins[static_cast<int>(Priority::kPrefetch)], 1u);
  EXPECT_EQ(s.checksum_failures, 1u);
  EXPECT_EQ(s.layers[0].prefetch_dropped, 1u);
  EXPECT_DOUBLE_EQ(s.gate_mass_min, 0.8);
  EXPECT_EQ(s.gate_mass.count, 2u);
  EXPECT_NE(s.targets.ToString().find("meets target"), std::string::npos);
}

}  // namespace
}  // namespace moe_router
