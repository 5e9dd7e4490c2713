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

// Each row's ids and values are its top r by brute force, and its minimum.
void ExpectRanked(const std::vector<float>& rows, uint32_t n, uint32_t r,
                  const std::vector<uint32_t>& ids, const std::vector<float>& values,
                  const std::vector<float>& lowest, uint64_t seed, bool portable) {
  for (uint32_t t = 0; t < lowest.size(); ++t) {
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

// SelectRows over `rows` says every value was finite and ranks each row as
// brute force does.
void SelectRowsAndExpectRanked(TopSelector& selector, const std::vector<float>& rows, uint32_t n,
                               uint32_t r, uint64_t seed, bool portable) {
  const uint32_t tokens = static_cast<uint32_t>(rows.size() / n);
  std::vector<uint32_t> ids(size_t{tokens} * r);
  std::vector<float> values(size_t{tokens} * r), lowest(tokens);
  ASSERT_TRUE(selector.SelectRows(rows.data(), tokens, ids.data(), values.data(), lowest.data()));
  ExpectRanked(rows, n, r, ids, values, lowest, seed, portable);
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
      std::vector<float> lowest(1);
      selector.Select(row.data(), ids.data(), values.data(), lowest.data());
      ExpectRanked(row, n, r, ids, values, lowest, seed, portable);
    }
  }
  SkipIfVectorHalfUnavailable();
}

// Rows of a few values (as bf16 logits, or scores plus a coarse bias,
// give): candidates tie where the narrowing stops, so it keeps all of them
// and its in-place packing must leave the padding intact (it did not: ranks
// then read leftover lanes as candidates and returned duplicates).
TEST_P(TopSelectorTest, MatchesBruteForceOnRowsOfFewValues) {
  const auto [n, r] = GetParam();
  for (bool portable : Paths()) {
    TopSelector selector(n, r);
    selector.set_portable(portable);
    std::vector<uint32_t> ids(r);
    std::vector<float> values(r);
    std::mt19937 rng(3);
    std::uniform_int_distribution<int> level(-4, 9);
    std::vector<float> row(n), lowest(1);
    for (uint64_t t = 0; t < 1500; ++t) {
      for (float& x : row) x = 0.125f * static_cast<float>(level(rng));
      selector.Select(row.data(), ids.data(), values.data(), lowest.data());
      ExpectRanked(row, n, r, ids, values, lowest, t, portable);
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
      SelectRowsAndExpectRanked(selector, rows, n, r, seed, portable);
    }
  }
  SkipIfVectorHalfUnavailable();
}

// Rows built against the bound of the wide path (the maxima of 32 groups of
// experts): the top r all in one group, in one vector, in the tail, rising
// and falling rows, and rows where far more than r experts equal the bound
// (the candidates overflow and the row is redone).
TEST_P(TopSelectorTest, SelectRowsMatchesBruteForceOnAdversarialRows) {
  const auto [n, r] = GetParam();
  for (bool portable : Paths()) {
    TopSelector selector(n, r);
    selector.set_portable(portable);
    constexpr uint32_t kTokens = 16;
    for (uint64_t seed = 0; seed < 6; ++seed) {
      std::vector<float> rows = testing::RandomLogits(kTokens, n, seed, 1.0f);
      for (uint32_t t = 0; t < kTokens; ++t) {
        float* row = rows.data() + size_t{t} * n;
        for (uint32_t e = 0; e < n; ++e) {
          switch ((t + seed) % 8) {
            case 0:  // the largest all in one group (lane 0 of every 4th vector)
              row[e] = e % 32 == 0 ? 10.0f + static_cast<float>(e) : row[e];
              break;
            case 1:  // rising
              row[e] = static_cast<float>(e) * 0.25f;
              break;
            case 2:  // falling
              row[e] = -static_cast<float>(e);
              break;
            case 3:  // r - 1 high values, every other one equal
              row[e] = e < r - 1 ? 5.0f + static_cast<float>(e) : 1.0f;
              break;
            case 4:  // the largest values in the last partial vector
              row[e] = e + 8 >= n ? 100.0f - static_cast<float>(n - e) : row[e];
              break;
            case 5:  // two levels only
              row[e] = (e * 7919) % 5 == 0 ? 2.0f : -2.0f;
              break;
            case 6:  // -0 and +0 among small values
              row[e] = e % 3 == 0 ? -0.0f : (e % 3 == 1 ? 0.0f : row[e] - 10.0f);
              break;
            default:
              break;
          }
        }
      }
      SelectRowsAndExpectRanked(selector, rows, n, r, seed, portable);
    }
  }
  SkipIfVectorHalfUnavailable();
}

// A NaN or an infinity anywhere (a row of a whole group of 8, a row past
// the groups, the last partial vector) makes SelectRows say so.
TEST_P(TopSelectorTest, SelectRowsReportsNonFiniteValues) {
  const auto [n, r] = GetParam();
  constexpr uint32_t kTokens = 11;  // one group of 8 and 3 rows past it
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(),
                       std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity()};
  for (bool portable : Paths()) {
    TopSelector selector(n, r);
    selector.set_portable(portable);
    std::vector<uint32_t> ids(size_t{kTokens} * r);
    std::vector<float> values(size_t{kTokens} * r), lowest(kTokens);
    for (uint32_t t : {0u, 5u, 7u, 8u, 10u}) {
      for (uint32_t e : {0u, n / 2, n - 1}) {
        for (float x : bad) {
          std::vector<float> rows = testing::RandomLogits(kTokens, n, t * 31 + e, 2.0f);
          rows[size_t{t} * n + e] = x;
          EXPECT_FALSE(
              selector.SelectRows(rows.data(), kTokens, ids.data(), values.data(), lowest.data()))
              << "token " << t << " expert " << e << " value " << x << " portable=" << portable;
          for (uint32_t id : ids) ASSERT_LT(id, n);
        }
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
                                           Shape{16, 2}, Shape{24, 5}, Shape{40, 13}, Shape{33, 1},
                                           // The bounded path: just past 128,
                                           // tails, the widest models.
                                           Shape{136, 3}, Shape{130, 8}, Shape{300, 12},
                                           Shape{384, 10}, Shape{512, 10}, Shape{512, 16},
                                           Shape{96, 3}),
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
