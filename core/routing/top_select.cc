#include "core/routing/top_select.h"

#include <algorithm>
#include <limits>

#include "core/routing/top_select_internal.h"

namespace moe_router {
namespace internal {

float SelectRowPortable(const float* row, uint32_t n, uint32_t r, uint32_t* ids, float* values) {
  uint32_t filled = 0;
  float lowest = row[0];
  for (uint32_t e = 0; e < n; ++e) {
    const float x = row[e];
    lowest = x < lowest ? x : lowest;
    uint32_t p;
    if (filled < r) {
      p = filled++;
    } else if (x > values[r - 1]) {
      p = r - 1;
    } else {
      continue;
    }
    // A new value must beat the current r-th strictly and equal values keep
    // their place, so ties go to the lower index.
    while (p > 0 && values[p - 1] < x) {
      values[p] = values[p - 1];
      ids[p] = ids[p - 1];
      --p;
    }
    values[p] = x;
    ids[p] = e;
  }
  return lowest;
}

}  // namespace internal

namespace {

#if defined(__x86_64__)
const bool kHasAvx2 = __builtin_cpu_supports("avx2");
// The selection kernels also count bits and find the lowest set one.
const bool kHasSelectionIsa =
    kHasAvx2 && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi");
#else
constexpr bool kHasAvx2 = false;
constexpr bool kHasSelectionIsa = false;
#endif

}  // namespace

bool AllFinite(const float* x, size_t n) {
  if (kHasAvx2) return internal::AllFiniteAvx2(x, n);
  return internal::AllFiniteLoop(x, n);
}

void ExpNonPositiveBatch(float* x, size_t n) {
  if (kHasAvx2) return internal::ExpBatchAvx2(x, n);
  for (size_t i = 0; i < n; ++i) x[i] = ExpNonPositive(x[i]);
}

uint32_t PassThresholds(const float* x, const float* threshold, uint32_t n, uint32_t* ids,
                        bool* finite, uint32_t* passed_by_eight) {
  if (kHasSelectionIsa) {
    return internal::PassThresholdsAvx2(x, threshold, n, ids, finite, passed_by_eight);
  }
  *finite = internal::AllFiniteLoop(x, n);
  uint32_t count = 0;
  for (uint32_t i = 0; i < n; ++i) {
    ids[count] = i;
    count += x[i] >= threshold[i];
    if (passed_by_eight != nullptr && i % 8 == 7) passed_by_eight[i / 8] = count;
  }
  return count;
}

bool TopSelector::VectorPathAvailable() { return kHasSelectionIsa; }

TopSelector::TopSelector(uint32_t n, uint32_t r)
    : n_(n),
      r_(r),
      portable_(!VectorPathAvailable()),
      gap_(std::numeric_limits<float>::infinity()),
      eight_rows_(portable_ ? nullptr : internal::EightRowsKernelAvx2(n, r)),
      cand_value_(n + 16),
      cand_id_(n + 16),
      ranked_id_(n + 16),
      ranked_value_(n + 16) {}

void TopSelector::Select(const float* row, uint32_t* ids, float* values, float* lowest) {
  if (portable_) {
    *lowest = internal::SelectRowPortable(row, n_, r_, ids, values);
  } else if (n_ <= 8) {
    *lowest = internal::SelectUpTo8Avx2(row, n_, r_, ids, values);
  } else {
    const internal::RowScratch scratch{cand_value_.data(), cand_id_.data(), ranked_id_.data(),
                                       ranked_value_.data()};
    *lowest = internal::SelectRowAvx2(row, n_, r_, &gap_, scratch, ids, values);
  }
}

bool TopSelector::SelectRows(const float* rows, uint32_t tokens, uint32_t* ids, float* values,
                             float* lowest) {
  bool finite = true;
  uint32_t t = 0;
  if (eight_rows_ != nullptr && !portable_) {
    for (; t + 8 <= tokens; t += 8) {
      uint32_t redone = 0;
      finite &= eight_rows_(rows + size_t{t} * n_, n_, ids + size_t{t} * r_,
                            values + size_t{t} * r_, lowest + t, &redone);
      rows_batched_ += 8;
      rows_redone_ += redone;
    }
  }
  for (; t < tokens; ++t) {
    const float* row = rows + size_t{t} * n_;
    uint32_t* row_ids = ids + size_t{t} * r_;
    float* row_values = values + size_t{t} * r_;
    // The one-row paths assume finite values (a NaN defeats their ranks).
    if (!AllFinite(row, n_)) {
      finite = false;
      std::fill_n(row_ids, r_, 0u);
      std::fill_n(row_values, r_, 0.0f);
      lowest[t] = 0;
      continue;
    }
    Select(row, row_ids, row_values, &lowest[t]);
  }
  return finite;
}

}  // namespace moe_router
