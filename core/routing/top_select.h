#ifndef MOE_ROUTER_CORE_ROUTING_TOP_SELECT_H_
#define MOE_ROUTER_CORE_ROUTING_TOP_SELECT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace moe_router {

/// Selects the r largest of n floats, best first, ties to the lower index:
/// the routing hot path. With AVX2 it is branch-free: one pass for max and
/// min, a threshold `max - gap` that keeps about r candidates (the gap adapts
/// to the layer's logits), left-packing of the candidates, and ranking them
/// by counting. Without AVX2, an insertion scan. Both give identical results.
/// Not thread-safe (it adapts per call); one per layer router.
class TopSelector {
 public:
  TopSelector(uint32_t n, uint32_t r);

  /// Fills ids[0, r) and values[0, r), and *lowest with the row minimum.
  void Select(const float* row, uint32_t* ids, float* values, float* lowest);

  /// Select for each of `tokens` rows (row-major, n floats each): ids and
  /// values tokens x r, and each row's minimum; also checks every value:
  /// false when some row holds a NaN or an infinity (the outputs are then
  /// unspecified). Identical results to Select row by row. With AVX2 and
  /// r <= 16 it works on 8 rows at once, one per lane: a bitonic merge of
  /// sorted columns (max/min only, no branches and no ids) yields each
  /// row's sorted top r values, and one pass over the row then finds the
  /// ids at or above the r-th and ranks each against those values held in
  /// registers. Past 128 experts the merge sorts only candidates: one read of
  /// each row takes its minimum, checks it and keeps the maxima of 32 groups
  /// of its experts, whose r-th largest bounds the row's r-th from below, so
  /// the experts at or above it (about r + 2) hold the top r. Rows whose top
  /// r hold equal values, or with too many candidates, are redone by the
  /// portable path; the rows past the last whole group of 8 go through
  /// Select.
  [[nodiscard]] bool SelectRows(const float* rows, uint32_t tokens, uint32_t* ids, float* values,
                                float* lowest);

  /// Rows SelectRows ranked 8 at a time, and those of them the kernel
  /// handed back to the portable path: a speed figure (bench counters), not
  /// a result.
  uint64_t rows_batched() const { return rows_batched_; }
  uint64_t rows_redone() const { return rows_redone_; }

  /// Whether this CPU runs the vector path (AVX2, POPCNT and BMI1).
  static bool VectorPathAvailable();
  /// Forces the portable path (tests compare both). Turning it off on a CPU
  /// without the vector path is an error of the caller's (SIGILL).
  void set_portable(bool portable) { portable_ = portable; }

 private:
  using EightRowsKernel = bool (*)(const float* rows, uint32_t n, uint32_t* ids, float* values,
                                   float* lowest, uint32_t* redone);

  const uint32_t n_;
  const uint32_t r_;
  bool portable_;
  float gap_;                   // candidates are the values >= max - gap_
  EightRowsKernel eight_rows_;  // nullptr: no batched path for this r
  uint64_t rows_batched_ = 0;
  uint64_t rows_redone_ = 0;
  // Candidate scratch, padded to whole vectors.
  std::vector<float> cand_value_;
  std::vector<uint32_t> cand_id_;
  std::vector<uint32_t> ranked_id_;
  std::vector<float> ranked_value_;
};

/// e^x for x <= 0, within 2 ulp of std::exp; inline, branch-free and
/// vectorisable (the router exponentiates a few logits per token).
[[gnu::always_inline]] inline float ExpNonPositive(float x) {
  x = x < -87.0f ? -87.0f : x;  // e^-87 underflows to ~0 anyway
  // Round to nearest by the 1.5 * 2^23 trick: no libm call without SSE4.1.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float f = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  // Degree-6 Taylor on |f| <= ln2/2 (error < 1.5e-7), in Estrin form to keep
  // the dependency chain short.
  const float f2 = f * f;
  const float f4 = f2 * f2;
  const float p = (1.0f + f) + f2 * (0.5f + f * (1.0f / 6)) +
                  f4 * ((1.0f / 24 + f * (1.0f / 120)) + f2 * (1.0f / 720));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/// x[i] = e^x[i] for all i (each x[i] <= 0).
void ExpNonPositiveBatch(float* x, size_t n);

/// Bit i set when x[i] >= threshold, for i < n <= 64: four compares per
/// instruction where SSE2 is there (all of x86-64).
inline uint64_t MaskAtLeast(const float* x, uint32_t n, float threshold) {
  uint64_t mask = 0;
  uint32_t i = 0;
#if defined(__SSE2__)
  const __m128 t = _mm_set1_ps(threshold);
  for (; i + 4 <= n; i += 4) {
    mask |= uint64_t{static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i), t)))}
            << i;
  }
#endif
  for (; i < n; ++i) mask |= uint64_t{x[i] >= threshold} << i;
  return mask;
}

/// Writes the i with x[i] >= threshold[i] to ids, ascending; how many. ids
/// holds n entries. *finite: whether every x[i] is finite (checked on the
/// same pass). With passed_by_eight (n / 8 entries): how many passed among
/// x[0, 8 (v + 1)) for each v, so groups of a multiple of 8 find their
/// slices of ids.
uint32_t PassThresholds(const float* x, const float* threshold, uint32_t n, uint32_t* ids,
                        bool* finite, uint32_t* passed_by_eight = nullptr);

/// True when no x[i] is NaN or infinite. A branch-free max over the
/// magnitude bits, 8 lanes wide with AVX2: the router checks every logit it
/// gets.
bool AllFinite(const float* x, size_t n);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ROUTING_TOP_SELECT_H_
