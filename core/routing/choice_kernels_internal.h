#ifndef MOE_ROUTER_CORE_ROUTING_CHOICE_KERNELS_INTERNAL_H_
#define MOE_ROUTER_CORE_ROUTING_CHOICE_KERNELS_INTERNAL_H_

// Between choice_scores.cc (portable code and the dispatch) and
// choice_kernels_avx2.cc (compiled with -mavx2, called only where the CPU
// has it). Both compute the same bits: the same scalar source, no FMA.

#include <cstdint>

#include "core/routing/top_select.h"

namespace moe_router::internal {

void SigmoidRowAvx2(const float* x, uint32_t n, float* out);
void ExpRelativeRowAvx2(const float* x, uint32_t n, float top, float* out);
float SoftmaxDenominatorAvx2(const float* row, uint32_t n, float top);

/// SoftmaxDenominator's loop, for both builds.
[[gnu::always_inline]] inline float SoftmaxDenominatorLoop(const float* row, uint32_t n,
                                                           float top) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (uint32_t j = 0; j < 8; ++j) s[j] += ExpNonPositive(row[i + j] - top);
  }
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) total += ExpNonPositive(row[i] - top);
  return total;
}
/// For consecutive slices of values (slice j ends at ends[j]; values
/// readable 8 past any start): each slice's best two as a multiset, -inf
/// where it has fewer.
void SliceTopTwoAvx2(const float* values, const uint32_t* ends, uint32_t slices, float* best,
                     float* second);
/// One slice's best two, in order (the portable path, and long slices).
inline void SliceTopTwoPortable(const float* values, uint32_t length, float* best, float* second) {
  float a = -__builtin_inff(), b = -__builtin_inff();
  for (uint32_t i = 0; i < length; ++i) {
    const float v = values[i];
    b = v > b ? (v > a ? a : v) : b;
    a = v > a ? v : a;
  }
  *best = a;
  *second = b;
}

}  // namespace moe_router::internal

#endif  // MOE_ROUTER_CORE_ROUTING_CHOICE_KERNELS_INTERNAL_H_
