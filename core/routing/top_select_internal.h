#ifndef MOE_ROUTER_CORE_ROUTING_TOP_SELECT_INTERNAL_H_
#define MOE_ROUTER_CORE_ROUTING_TOP_SELECT_INTERNAL_H_

// Between top_select.cc (portable code and the dispatch) and
// top_select_avx2.cc (compiled with -mavx2 -mpopcnt -mbmi, called only where
// the CPU has them). Everything the AVX2 file defines besides these has
// internal linkage, so no AVX2 code can stand in for a portable function.

#include <cstddef>
#include <cstdint>

namespace moe_router::internal {

/// Infinite or NaN: the magnitude bits are at least those of infinity. One
/// max over the magnitudes (two vector ops per 8 floats once vectorised).
[[gnu::always_inline]] inline bool AllFiniteLoop(const float* x, size_t n) {
  constexpr int32_t kInfBits = 0x7f800000;
  int32_t largest = 0;
#pragma GCC unroll 4
  for (size_t i = 0; i < n; ++i) {
    int32_t bits;
    __builtin_memcpy(&bits, x + i, sizeof bits);
    const int32_t magnitude = bits & 0x7fffffff;
    largest = magnitude > largest ? magnitude : largest;
  }
  return largest < kInfBits;
}

/// The portable selection of one row: ids and values of the r largest,
/// ties to the lower index; returns the row minimum.
float SelectRowPortable(const float* row, uint32_t n, uint32_t r, uint32_t* ids, float* values);

/// Scratch of the one-row vector path, each n + 16 entries (whole vectors).
struct RowScratch {
  float* value;
  uint32_t* id;
  uint32_t* ranked_id;
  float* ranked_value;
};

// AVX2 kernels (top_select_avx2.cc).
bool AllFiniteAvx2(const float* x, size_t n);
void ExpBatchAvx2(float* x, size_t n);
/// One row of n <= 8 experts: all ranked against their rotations.
float SelectUpTo8Avx2(const float* row, uint32_t n, uint32_t r, uint32_t* ids, float* values);
/// One row of any n: candidates >= max - *gap are packed and ranked; *gap
/// adapts to the rows seen.
float SelectRowAvx2(const float* row, uint32_t n, uint32_t r, float* gap, const RowScratch& scratch,
                    uint32_t* ids, float* values);
/// 8 rows at once, one per lane (r <= 16); false when a row holds a NaN or
/// an infinity (its outputs are then unspecified). Rows the kernel hands to
/// the portable path (ties at the r-th value, too many candidates) are
/// added to *redone.
using EightRowsKernel = bool (*)(const float* rows, uint32_t n, uint32_t* ids, float* values,
                                 float* lowest, uint32_t* redone);
/// The kernel for rows of n experts and r, or nullptr past r = 16.
EightRowsKernel EightRowsKernelAvx2(uint32_t n, uint32_t r);
/// PassThresholds, left-packing 8 at a time.
uint32_t PassThresholdsAvx2(const float* x, const float* threshold, uint32_t n, uint32_t* ids,
                            bool* finite, uint32_t* passed_by_eight);

}  // namespace moe_router::internal

#endif  // MOE_ROUTER_CORE_ROUTING_TOP_SELECT_INTERNAL_H_
