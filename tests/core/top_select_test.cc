#include "core/routing/top_select.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

// Brute force: indices sorted by value descending, ties to the lower index.
std::vector<uint32_t> Ranked(const float* row, uint32_t n) {
  std::vector<uint32_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](uint32_t a, uint32_t b) { return row[a] > row[b]; });
  return ids;
}

struct Shape {
  uint32_t n, r;
};

class TopSelectorTest : public ::testing::TestWithParam<Shape> {
 protected:
  // The paths to compare: portable always, vector where the CPU has it.
  static std::vector<bool> Paths() {
    if (TopSelector::VectorPathAvailable()) return {false, true};
    return {true};
  }
};

// Called last in a test that compared paths: marks it skipped, saying why,
// when the CPU could not run the vector half (the portable half's
// assertions still count).
void SkipIfVectorHalfUnavailable() {
  if (!TopSelector::VectorPathAvailable()) {
    GTEST_SKIP() << "only the portable half ran: this CPU lacks AVX2, POPCNT or BMI1";
  }
}

TEST_P(TopSelectorTest, MatchesBruteForceOnBothPaths) {
  const auto [n, r] = GetParam();
  for (bool portable : Paths()) {
    TopSelector selector(n, r);
    selector.set_portable(portable);
    std::vector<uint32_t> ids(r);
    std::vector<float> values(r);
    for (uint64_t seed = 0; seed < 300; ++seed) {
      // Coarse values force many exact ties; some rows shift the scale so
      // the adaptive threshold has to retry.
      std::vector<float> row = testing::RandomLogits(1, n, seed, seed % 7 == 0 ? 20.0f : 2.0f);
      if (seed % 3 == 0) {
        for (float& x : row) x = std::round(x);
      }
      float lowest = 0;
      selector.Select(row.data(), ids.data(), values.data(), &lowest);
      const std::vector<uint32_t> expected = Ranked(row.data(), n);
      for (uint32_t p = 0; p < r; ++p) {
        ASSERT_EQ(ids[p], expected[p]) << "n=" << n << " r=" << r << " seed=" << seed << " rank "
                                       << p << " portable=" << portable;
        ASSERT_EQ(values[p], row[expected[p]]);
      }
      ASSERT_EQ(lowest, *std::min_element(row.begin(), row.end()));
    }
  }
  SkipIfVectorHalfUnavailable();
}

TEST_P(TopSelectorTest, AllEqualRowKeepsIndexOrder) {
  const auto [n, r] = GetParam();
  TopSelector selector(n, r);
  std::vector<float> row(n, 0.5f);
  std::vector<uint32_t> ids(r);
  std::vector<float> values(r);
  float lowest = 0;
  selector.Select(row.data(), ids.data(), values.data(), &lowest);
  for (uint32_t p = 0; p < r; ++p) EXPECT_EQ(ids[p], p);
}

// The batched path (8 rows per kernel call, the rest row by row) gives what
// brute force gives, on rows with and without ties, on both paths.
TEST_P(TopSelectorTest, SelectRowsMatchesBruteForce) {
  const auto [n, r] = GetParam();
  for (bool portable : Paths()) {
    TopSelector selector(n, r);
    selector.set_portable(portable);
    for (uint64_t seed = 0; seed < 40; ++seed) {
      const uint32_t tokens = 1 + static_cast<uint32_t>(seed * 7 % 29);  // partial groups too
      std::vector<float> rows =
          testing::RandomLogits(tokens, n, seed, seed % 5 == 0 ? 30.0f : 2.0f);
      // Some rows tie inside their top r, some only at its boundary.
      for (uint32_t t = 0; t < tokens; t += 3) {
        for (uint32_t e = 0; e < n; ++e) rows[t * n + e] = std::round(rows[t * n + e]);
      }
      std::vector<uint32_t> ids(size_t{tokens} * r);
      std::vector<float> values(size_t{tokens} * r), lowest(tokens);
      selector.SelectRows(rows.data(), tokens, ids.data(), values.data(), lowest.data());
      for (uint32_t t = 0; t < tokens; ++t) {
        const float* row = rows.data() + size_t{t} * n;
        const std::vector<uint32_t> expected = Ranked(row, n);
        for (uint32_t p = 0; p < r; ++p) {
          ASSERT_EQ(ids[t * r + p], expected[p])
              << "n=" << n << " r=" << r << " seed=" << seed << " token " << t << " rank " << p
              << " portable=" << portable;
          ASSERT_EQ(values[t * r + p], row[expected[p]]);
        }
        ASSERT_EQ(lowest[t], *std::min_element(row, row + n));
      }
    }
  }
  SkipIfVectorHalfUnavailable();
}

INSTANTIATE_TEST_SUITE_P(Shapes, TopSelectorTest,
                         ::testing::Values(Shape{8, 4}, Shape{8, 8}, Shape{5, 3}, Shape{1, 1},
                                           Shape{64, 8}, Shape{64, 12}, Shape{60, 6},
                                           Shape{128, 10}, Shape{256, 10}, Shape{256, 16},
                                           Shape{257, 9}, Shape{64, 17}, Shape{20, 16},
                                           // Every padded column width of the
                                           // batched merge: 1, 2, 4, 8, 16.
                                           Shape{16, 2}, Shape{24, 5}, Shape{40, 13}, Shape{33, 1}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return absl::StrCat("n", info.param.n, "_r", info.param.r);
                         });

TEST(AllFiniteTest, FindsNanAndInfinityAnywhere) {
  std::vector<float> x(37, 1.0f);
  x[3] = -0.0f;
  x[4] = std::numeric_limits<float>::denorm_min();
  x[5] = std::numeric_limits<float>::max();
  x[6] = std::numeric_limits<float>::lowest();
  EXPECT_TRUE(AllFinite(x.data(), x.size()));
  EXPECT_TRUE(AllFinite(x.data(), 0));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (size_t at : {size_t{0}, size_t{7}, size_t{8}, size_t{31}, size_t{36}}) {
      std::vector<float> y = x;
      y[at] = bad;
      EXPECT_FALSE(AllFinite(y.data(), y.size())) << "at " << at;
      EXPECT_TRUE(AllFinite(y.data(), at)) << "before " << at;
    }
  }
}

TEST(MaskAtLeastTest, SetsTheBitOfEveryValueAtOrAboveTheThreshold) {
  std::vector<float> x(64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37) % 11);
  for (uint32_t n : {0u, 1u, 3u, 4u, 7u, 10u, 63u, 64u}) {
    for (float threshold : {-1.0f, 0.0f, 5.0f, 5.5f, 10.0f, 11.0f}) {
      uint64_t want = 0;
      for (uint32_t i = 0; i < n; ++i) want |= uint64_t{x[i] >= threshold} << i;
      EXPECT_EQ(MaskAtLeast(x.data(), n, threshold), want) << "n=" << n << " t=" << threshold;
    }
  }
}

TEST(ExpNonPositiveTest, CloseToStdExp) {
  std::vector<float> xs;
  for (float x = 0.0f; x > -100.0f; x -= 0.0137f) xs.push_back(x);
  std::vector<float> batch = xs;
  ExpNonPositiveBatch(batch.data(), batch.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const double want = std::exp(static_cast<double>(xs[i]));
    EXPECT_EQ(batch[i], ExpNonPositive(xs[i]));
    if (xs[i] > -87.0f) {
      EXPECT_NEAR(ExpNonPositive(xs[i]), want, want * 3e-7) << xs[i];
    } else {
      EXPECT_LT(ExpNonPositive(xs[i]), 2e-38f);
    }
  }
  EXPECT_EQ(ExpNonPositive(0.0f), 1.0f);
}

}  // namespace
}  // namespace moe_router
