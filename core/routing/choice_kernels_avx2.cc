// The AVX2 kernels of the choice scores. Compiled with -mavx2 and kept out
// of LTO (see CMakeLists.txt); choice_scores.cc calls them only where the
// CPU has AVX2. The loops are choice_scores.cc's portable ones, vectorised
// by the compiler: the same operations in the same order, so the same bits.
#include <immintrin.h>

#include <limits>

#include "core/routing/choice_kernels_internal.h"
#include "core/routing/choice_scores.h"

namespace moe_router::internal {

void SigmoidRowAvx2(const float* x, uint32_t n, float* out) {
  for (uint32_t i = 0; i < n; ++i) out[i] = Sigmoid(x[i]);
}

void ExpRelativeRowAvx2(const float* x, uint32_t n, float top, float* out) {
  for (uint32_t i = 0; i < n; ++i) out[i] = ExpNonPositive(x[i] - top);
}

float SoftmaxDenominatorAvx2(const float* row, uint32_t n, float top) {
  return SoftmaxDenominatorLoop(row, n, top);
}

namespace {

inline __m256 HorizontalMax(__m256 v) {
  v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 1));
  v = _mm256_max_ps(v, _mm256_permute_ps(v, 0x4e));
  return _mm256_max_ps(v, _mm256_permute_ps(v, 0xb1));
}

}  // namespace

void SliceTopTwoAvx2(const float* values, const uint32_t* ends, uint32_t slices, float* best,
                     float* second) {
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  const __m256 none = _mm256_set1_ps(kNone);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  uint32_t start = 0;
  for (uint32_t j = 0; j < slices; ++j) {
    const uint32_t length = ends[j] - start;
    if (length > 8) {
      SliceTopTwoPortable(values + start, length, &best[j], &second[j]);
    } else {
      const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(length)), iota);
      const __m256 v =
          _mm256_blendv_ps(none, _mm256_loadu_ps(values + start), _mm256_castsi256_ps(in));
      const __m256 top = HorizontalMax(v);
      const __m256 equal = _mm256_cmp_ps(v, top, _CMP_EQ_OQ);
      const float a = _mm256_cvtss_f32(top);
      // Two lanes at the maximum make it the second best too.
      const float rest = _mm256_cvtss_f32(HorizontalMax(_mm256_blendv_ps(v, none, equal)));
      const bool twice = __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(equal))) > 1;
      best[j] = a;
      second[j] = twice ? a : rest;
    }
    start = ends[j];
  }
}

}  // namespace moe_router::internal
