// The AVX2 selection kernels. This file is compiled with -mavx2 -mpopcnt
// -mbmi and kept out of LTO (see CMakeLists.txt); top_select.cc calls it
// only where the CPU has those. Everything but the functions of
// top_select_internal.h has internal linkage, and no standard-library
// template is used, so no AVX2 code can be linked in for a portable caller.
#include <immintrin.h>

#include <limits>

#include "core/routing/top_select.h"
#include "core/routing/top_select_internal.h"

namespace moe_router::internal {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

#define MOE_INLINE [[gnu::always_inline]] inline

MOE_INLINE float Min(float a, float b) { return b < a ? b : a; }
MOE_INLINE float Max(float a, float b) { return a < b ? b : a; }
MOE_INLINE uint32_t Popcount(int mask) {
  return static_cast<uint32_t>(_mm_popcnt_u32(static_cast<unsigned>(mask)));
}

// For each 8-bit mask, the lane permutation that packs the set lanes left.
struct LeftPackTable {
  alignas(32) uint32_t perm[256][8];
  // rotate[r]: lane l takes lane (l + r) % 8. wrapped[r]: lanes l whose
  // partner (l + r) % 8 comes before l.
  alignas(32) uint32_t rotate[8][8];
  alignas(32) uint32_t wrapped[8][8];
  LeftPackTable() {
    for (int r = 0; r < 8; ++r) {
      for (int l = 0; l < 8; ++l) {
        rotate[r][l] = static_cast<uint32_t>((l + r) % 8);
        wrapped[r][l] = (l + r) % 8 < l ? 0xffffffffu : 0u;
      }
    }
    for (int m = 0; m < 256; ++m) {
      int out = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if (m & (1 << lane)) perm[m][out++] = static_cast<uint32_t>(lane);
      }
      while (out < 8) perm[m][out++] = 0;
    }
  }
};
const LeftPackTable& PackTable() {
  static const LeftPackTable table;
  return table;
}

MOE_INLINE __m256i Rotation(const LeftPackTable& table, int rot) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(table.rotate[rot]));
}

// ---- One row, any n ----

// The row's largest and smallest value.
MOE_INLINE void MaxAndMin(const float* row, uint32_t n, float* top, float* lowest) {
  const uint32_t full = n & ~7u;
  __m256 vmax = _mm256_set1_ps(-kInf), vmin = _mm256_set1_ps(kInf);
  for (uint32_t i = 0; i < full; i += 8) {
    const __m256 x = _mm256_loadu_ps(row + i);
    vmax = _mm256_max_ps(vmax, x);
    vmin = _mm256_min_ps(vmin, x);
  }
  alignas(32) float lanes_max[8], lanes_min[8];
  _mm256_store_ps(lanes_max, vmax);
  _mm256_store_ps(lanes_min, vmin);
  *top = -kInf;
  *lowest = kInf;
  for (int l = 0; l < 8; ++l) {
    *top = Max(*top, lanes_max[l]);
    *lowest = Min(*lowest, lanes_min[l]);
  }
  for (uint32_t i = full; i < n; ++i) {
    *top = Max(*top, row[i]);
    *lowest = Min(*lowest, row[i]);
  }
}

// Left-packs the values of the row >= threshold, with their ids, into the
// scratch; how many.
MOE_INLINE uint32_t PackAtLeast(const float* row, uint32_t n, float threshold,
                                const RowScratch& s) {
  const LeftPackTable& table = PackTable();
  const uint32_t full = n & ~7u;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 vt = _mm256_set1_ps(threshold);
  uint32_t c = 0;
  for (uint32_t i = 0; i < full; i += 8) {
    const __m256 x = _mm256_loadu_ps(row + i);
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, vt, _CMP_GE_OQ));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.perm[mask]));
    _mm256_storeu_ps(&s.value[c], _mm256_permutevar8x32_ps(x, perm));
    const __m256i id = _mm256_add_epi32(iota, _mm256_set1_epi32(static_cast<int>(i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&s.id[c]),
                        _mm256_permutevar8x32_epi32(id, perm));
    c += Popcount(mask);
  }
  for (uint32_t i = full; i < n; ++i) {
    s.value[c] = row[i];
    s.id[c] = i;
    c += row[i] >= threshold;
  }
  return c;
}

// The candidates: values >= top - gap, the gap widened and the packing
// retried (up to three times, the last taking every value) while fewer
// than r qualify.
MOE_INLINE uint32_t PackCandidates(const float* row, uint32_t n, uint32_t r, float top, float gap,
                                   const RowScratch& s) {
  constexpr float kWiden[] = {1.0f, 1.3f, 2.0f, kInf};
  uint32_t c = 0;
  for (float widen : kWiden) {
    c = PackAtLeast(row, n, top - gap * widen, s);
    if (c >= r) break;
  }
  return c;
}

// Pads the candidates to whole vectors with -inf (which never outranks a
// real candidate) and id n; the padded count.
MOE_INLINE uint32_t PadToVectors(uint32_t count, uint32_t n, const RowScratch& s) {
  const uint32_t padded = (count + 7) & ~7u;
  for (uint32_t i = count; i < padded; ++i) {
    s.value[i] = -kInf;
    s.id[i] = n;
  }
  return padded;
}

// How many of values[0, padded) are >= t.
MOE_INLINE uint32_t CountAtLeast(const float* values, uint32_t padded, float t) {
  const __m256 vt = _mm256_set1_ps(t);
  uint32_t count = 0;
  for (uint32_t i = 0; i < padded; i += 8) {
    count +=
        Popcount(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(values + i), vt, _CMP_GE_OQ)));
  }
  return count;
}

// Ranking is quadratic in the candidates, so when the threshold let in many
// more than r, bisect it on the packed candidates (cheap counts) and pack
// again in place; the new count.
MOE_INLINE uint32_t NarrowCandidates(uint32_t r, float top, uint32_t c, uint32_t padded,
                                     const RowScratch& s) {
  constexpr uint32_t kSlack = 4;
  if (c <= r + kSlack) return c;
  // Invariant: count(>= lo) >= r.
  float lo = s.value[0], hi = top;
  for (uint32_t i = 1; i < c; ++i) lo = Min(lo, s.value[i]);
  for (int step = 0; step < 8; ++step) {
    const float mid = 0.5f * (lo + hi);
    const uint32_t count = CountAtLeast(s.value, padded, mid);
    if (count < r) {
      hi = mid;
    } else {
      lo = mid;
      if (count <= r + kSlack) break;
    }
  }
  const LeftPackTable& table = PackTable();
  const __m256 vt = _mm256_set1_ps(lo);
  uint32_t kept = 0;
  for (uint32_t i = 0; i < padded; i += 8) {
    const __m256 x = _mm256_loadu_ps(&s.value[i]);
    const __m256i id = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&s.id[i]));
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, vt, _CMP_GE_OQ));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.perm[mask]));
    // In place is safe: kept <= i, and each store lands before the next load.
    _mm256_storeu_ps(&s.value[kept], _mm256_permutevar8x32_ps(x, perm));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&s.id[kept]),
                        _mm256_permutevar8x32_epi32(id, perm));
    kept += Popcount(mask);
  }
  return kept;
}

// Ranks the c candidates (padded to whole vectors): a candidate's rank is
// how many beat it (greater, or equal and earlier, so ties go to the lower
// index), for 8 at once by comparing their vector with every rotation of
// every candidate vector. The top r land in ranked_id/ranked_value[0, r).
MOE_INLINE void RankCandidates(uint32_t r, uint32_t c, uint32_t padded, const RowScratch& s) {
  const LeftPackTable& table = PackTable();
  const uint32_t blocks = padded / 8;
  for (uint32_t a = 0; a < blocks; ++a) {
    const __m256 va = _mm256_loadu_ps(&s.value[a * 8]);
    __m256i rank = _mm256_setzero_si256();
    for (uint32_t b = 0; b < blocks; ++b) {
      const __m256 vb = _mm256_loadu_ps(&s.value[b * 8]);
      for (int rot = 0; rot < 8; ++rot) {
        if (a == b && rot == 0) continue;
        const __m256 rb = _mm256_permutevar8x32_ps(vb, Rotation(table, rot));
        // An earlier partner beats an equal value, a later one must be
        // greater. Earlier: its block is earlier, or same block, wrapped.
        const __m256 ge = _mm256_cmp_ps(rb, va, _CMP_GE_OQ);
        const __m256 gt = _mm256_cmp_ps(rb, va, _CMP_GT_OQ);
        const __m256 beats =
            b < a ? ge
            : b > a
                ? gt
                : _mm256_blendv_ps(
                      gt, ge, _mm256_load_ps(reinterpret_cast<const float*>(table.wrapped[rot])));
        rank = _mm256_sub_epi32(rank, _mm256_castps_si256(beats));
      }
    }
    alignas(32) uint32_t ranks[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(ranks), rank);
    const uint32_t lanes = c - a * 8 < 8 ? c - a * 8 : 8;
    for (uint32_t l = 0; l < lanes; ++l) {
      // Ranks past r land in one spill slot instead of branching.
      const uint32_t slot = ranks[l] < r ? ranks[l] : r;
      s.ranked_id[slot] = s.id[a * 8 + l];
      s.ranked_value[slot] = s.value[a * 8 + l];
    }
  }
}

// Tracks the gap as the ~91st percentile of what rows need (up 5% on a
// miss, down 0.5% otherwise): few candidates, and rare retries.
MOE_INLINE void UpdateGap(float needed, float* gap) {
  if (!(*gap < kInf)) {
    *gap = needed * 1.1f + 1e-6f;
  } else if (needed > *gap) {
    *gap *= 1.05f;
  } else {
    *gap *= 0.995f;
  }
}

// ---- 8 rows at once, one per lane ----

// Transposes 8 vectors: out[j] lane i = in[i] lane j.
MOE_INLINE void Transpose8x8(const __m256 (&r)[8], __m256 (&out)[8]) {
  const __m256 a0 = _mm256_unpacklo_ps(r[0], r[1]), a1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 a2 = _mm256_unpacklo_ps(r[2], r[3]), a3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 a4 = _mm256_unpacklo_ps(r[4], r[5]), a5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 a6 = _mm256_unpacklo_ps(r[6], r[7]), a7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xee);
  const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xee);
  const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xee);
  const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xee);
  out[0] = _mm256_permute2f128_ps(b0, b4, 0x20);
  out[1] = _mm256_permute2f128_ps(b1, b5, 0x20);
  out[2] = _mm256_permute2f128_ps(b2, b6, 0x20);
  out[3] = _mm256_permute2f128_ps(b3, b7, 0x20);
  out[4] = _mm256_permute2f128_ps(b0, b4, 0x31);
  out[5] = _mm256_permute2f128_ps(b1, b5, 0x31);
  out[6] = _mm256_permute2f128_ps(b2, b6, 0x31);
  out[7] = _mm256_permute2f128_ps(b3, b7, 0x31);
}

// The column of 8 rows x 8 experts starting at rows + col, transposed: out[e]
// holds expert col + e of rows 0..7 (lane = row).
MOE_INLINE void LoadTransposed(const float* rows, uint32_t n, uint32_t col, __m256 (&out)[8]) {
  __m256 r[8];
  for (uint32_t t = 0; t < 8; ++t) r[t] = _mm256_loadu_ps(rows + size_t{t} * n + col);
  Transpose8x8(r, out);
}

// One expert's values for 8 rows sink down the sorted columns: each level
// keeps the larger of it and the incoming value and passes the smaller on.
template <int R>
MOE_INLINE void Sink(__m256 x, __m256* top, __m256& vmin) {
  vmin = _mm256_min_ps(vmin, x);
  for (int j = 0; j < R; ++j) {
    const __m256 hi = _mm256_max_ps(top[j], x);
    x = _mm256_min_ps(top[j], x);
    top[j] = hi;
  }
}

// Orders a and b per lane: the larger in a.
MOE_INLINE void CompareSwap(__m256& a, __m256& b) {
  const __m256 hi = _mm256_max_ps(a, b);
  b = _mm256_min_ps(a, b);
  a = hi;
}

// Sorts 8 vectors per lane, descending: an optimal 19-comparator network.
MOE_INLINE void Sort8(__m256 (&x)[8]) {
  constexpr int kPairs[19][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}, {0, 4}, {1, 5}, {2, 6},
                                 {3, 7}, {0, 1}, {2, 3}, {4, 5}, {6, 7}, {2, 4}, {3, 5},
                                 {1, 4}, {3, 6}, {1, 2}, {3, 4}, {5, 6}};
#pragma GCC unroll 19
  for (const auto& pair : kPairs) CompareSwap(x[pair[0]], x[pair[1]]);
}

// Merges the sorted x[0, 8) into the sorted top[0, R) per lane, keeping the
// top R. The column is padded to L, a power of two: pairing top[j] with
// x[L-1-j] leaves the L largest as one bitonic sequence, which log2(L)
// half-cleaners sort. Only top[0, R) is read afterwards, so the compiler
// drops the comparisons that feed only the padding.
template <int R, int L>
MOE_INLINE void MergeTop(const __m256 (&x)[8], __m256 (&top)[L]) {
#pragma GCC unroll 16
  for (int j = 0; j < L; ++j) {
    const int q = L - 1 - j;
    if (j >= R) {
      top[j] = q < 8 ? x[q] : _mm256_set1_ps(-kInf);
    } else if (q < 8) {
      top[j] = _mm256_max_ps(top[j], x[q]);
    }
  }
#pragma GCC unroll 4
  for (int half = L / 2; half >= 1; half /= 2) {
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      if ((i & half) == 0) CompareSwap(top[i], top[i + half]);
    }
  }
}

// Pass 1 over 8 rows: the sorted top L >= R values of each lane, and its
// minimum. Each block of 8 experts is sorted by a network and merged in;
// the last few experts sink in one at a time.
template <int R, int L>
MOE_INLINE void SortedTops(const float* rows, uint32_t n, __m256 (&top)[L], __m256& vmin) {
  const uint32_t full = n & ~7u;
  for (int j = 0; j < L; ++j) top[j] = _mm256_set1_ps(-kInf);
  vmin = _mm256_set1_ps(kInf);
  for (uint32_t col = 0; col < full; col += 8) {
    __m256 x[8];
    LoadTransposed(rows, n, col, x);
    Sort8(x);
    vmin = _mm256_min_ps(vmin, x[7]);
    if (col == 0) {
      for (int j = 0; j < R && j < 8; ++j) top[j] = x[j];
    } else {
      MergeTop<R, L>(x, top);
    }
  }
  for (uint32_t e = full; e < n; ++e) {
    alignas(32) float lane[8];
    for (uint32_t t = 0; t < 8; ++t) lane[t] = rows[size_t{t} * n + e];
    Sink<R>(_mm256_load_ps(lane), top, vmin);
  }
}

// Stores `id` at the rank of its value row[e]: how many of the row's sorted
// top R values (top_lo, then top_hi past 8; -inf padded) beat it.
template <int R>
MOE_INLINE void PlaceByRank(const float* row, uint32_t e, uint32_t id, __m256 top_lo, __m256 top_hi,
                            uint32_t* out_id) {
  const __m256 v = _mm256_broadcast_ss(row + e);
  unsigned beaten_by =
      static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(top_lo, v, _CMP_GT_OQ)));
  if constexpr (R > 8) {
    beaten_by |= static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(top_hi, v, _CMP_GT_OQ)))
                 << 8;
  }
  out_id[_mm_popcnt_u32(beaten_by)] = id;
}

// Bit e - begin set for each expert e in [begin, end), end - begin <= 64,
// whose value is >= threshold; experts below `full` are compared 8 at once.
MOE_INLINE uint64_t CandidateMask(const float* row, uint32_t begin, uint32_t end, uint32_t full,
                                  float threshold) {
  const __m256 vt = _mm256_set1_ps(threshold);
  const uint32_t vector_end = end < full ? end : full;
  uint64_t mask = 0;
  uint32_t i = begin;
  for (; i < vector_end; i += 8) {
    const int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + i), vt, _CMP_GE_OQ));
    mask |= uint64_t{static_cast<uint32_t>(bits)} << (i - begin);
  }
  for (; i < end; ++i) mask |= uint64_t{row[i] >= threshold} << (i - begin);
  return mask;
}

// CandidateMask of 64 whole floats: the compares packed to bytes, one
// movemask per 32 (a third of the instructions of one per vector).
MOE_INLINE uint64_t CandidateMask64(const float* row, float threshold) {
  const __m256 vt = _mm256_set1_ps(threshold);
  // The packs interleave 128-bit halves; this puts each vector's 8 bytes
  // back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  uint64_t mask = 0;
  for (int half = 0; half < 2; ++half) {
    const float* p = row + 32 * half;
    __m256i c[4];
    for (int v = 0; v < 4; ++v) {
      c[v] = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(p + 8 * v), vt, _CMP_GE_OQ));
    }
    const __m256i bytes =
        _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    mask |= uint64_t{static_cast<uint32_t>(
                _mm256_movemask_epi8(_mm256_permutevar8x32_epi32(bytes, order)))}
            << (32 * half);
  }
  return mask;
}

// Pass 2 for one row: places the ids of its values >= its R-th (the
// threshold) by rank; how many there were (R unless a value outside the top
// R equals the R-th). The candidates of each 64 experts are one mask: no
// stores to read back (packed candidates stalled on store forwarding). A
// candidate's rank is below R even on ties, so placing stays in bounds
// before the count is checked. Up to 64 experts (most models) one mask
// needs no chunk loop: the loop costs about 8% more instructions per routed
// token at 8/2.
template <int R>
MOE_INLINE uint32_t PlaceCandidates(const float* row, uint32_t n, float threshold, __m256 top_lo,
                                    __m256 top_hi, uint32_t* out_id) {
  const uint32_t full = n & ~7u;
  uint32_t found = 0;
  if (n <= 64) {
    uint64_t mask = CandidateMask(row, 0, n, full, threshold);
    found = static_cast<uint32_t>(_mm_popcnt_u64(mask));
    for (; mask != 0; mask &= mask - 1) {
      const uint32_t e = static_cast<uint32_t>(__builtin_ctzll(mask));
      PlaceByRank<R>(row, e, e, top_lo, top_hi, out_id);
    }
    return found;
  }
  for (uint32_t base = 0; base < n; base += 64) {
    uint64_t mask = CandidateMask(row, base, n < base + 64 ? n : base + 64, full, threshold);
    found += static_cast<uint32_t>(_mm_popcnt_u64(mask));
    for (; mask != 0; mask &= mask - 1) {
      const uint32_t e = base + static_cast<uint32_t>(__builtin_ctzll(mask));
      PlaceByRank<R>(row, e, e, top_lo, top_hi, out_id);
    }
  }
  return found;
}

// The padded column of the bitonic merge: r rounded up to a power of two.
constexpr int ColumnFor(int r) { return r <= 1 ? 1 : 2 * ColumnFor((r + 1) / 2); }

// What ranking 8 rows (one per lane) needs of their sorted top R values:
// the values by rank, the rows with equal values among them (those need the
// tie-aware path), and each row's values as vectors (lane j: the j-th
// largest; -inf past R) to rank candidates in registers.
template <int R>
struct LaneTops {
  alignas(32) float sorted[R][8];
  int tied = 0;
  __m256 row_top[2][8];

  template <int L>
  explicit LaneTops(const __m256 (&top)[L]) {
    for (int j = 0; j + 1 < R; ++j) {
      tied |= _mm256_movemask_ps(_mm256_cmp_ps(top[j], top[j + 1], _CMP_EQ_OQ));
    }
    for (int j = 0; j < R; ++j) _mm256_store_ps(sorted[j], top[j]);
    for (int half = 0; half * 8 < R; ++half) {
      __m256 column[8];
      for (int j = 0; j < 8; ++j) {
        column[j] = half * 8 + j < R ? top[half * 8 + j] : _mm256_set1_ps(-kInf);
      }
      Transpose8x8(column, row_top[half]);
    }
  }
  float Threshold(uint32_t t) const { return sorted[R - 1][t]; }
  __m256 Lo(uint32_t t) const { return row_top[0][t]; }
  __m256 Hi(uint32_t t) const { return R > 8 ? row_top[1][t] : _mm256_set1_ps(-kInf); }
  void WriteValues(uint32_t t, float* out_value) const {
    for (int j = 0; j < R; ++j) out_value[j] = sorted[j][t];
  }
};

// Every column of the 8 rows sorted and merged: fewer instructions than the
// bound below for rows of up to about 128 experts.
template <int R>
bool SelectEightRows(const float* rows, uint32_t n, uint32_t* ids, float* values, float* lowest,
                     uint32_t* redone) {
  constexpr int L = ColumnFor(R);
  __m256 top[L];
  __m256 vmin;
  SortedTops<R, L>(rows, n, top, vmin);
  const LaneTops<R> tops(top);
  alignas(32) float mins[8];
  _mm256_store_ps(mins, vmin);
  for (uint32_t t = 0; t < 8; ++t) {
    const float* row = rows + size_t{t} * n;
    uint32_t* out_id = ids + size_t{t} * R;
    float* out_value = values + size_t{t} * R;
    lowest[t] = mins[t];
    if ((tops.tied & (1 << t)) ||
        PlaceCandidates<R>(row, n, tops.Threshold(t), tops.Lo(t), tops.Hi(t), out_id) !=
            static_cast<uint32_t>(R)) {
      SelectRowPortable(row, n, R, out_id, out_value);
      ++*redone;
      continue;
    }
    tops.WriteValues(t, out_value);
  }
  return AllFiniteLoop(rows, size_t{8} * n);
}

// ---- 8 rows through a bound: each row is read once from memory ----

// Vector v of a row folds into accumulator v % 4, so a row has 32 groups of
// experts (lane, accumulator), and each group's maximum is a different
// expert's value: the R-th largest of the 32 maxima is at most the row's
// R-th largest value, a bound that provably keeps the top R. On Gaussian
// logits it lets in about 11.5 experts for R = 10 at 128 to 512 experts.
constexpr uint32_t kGroups = 32;

MOE_INLINE float HorizontalMin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
}

MOE_INLINE float HorizontalMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

// The pass over one row: each group's maximum into maxima[0, 32) (-inf for
// an empty group) and the row's minimum; false when the row holds a NaN or
// an infinity (a NaN shows in an unordered compare, an infinity in the
// extremes).
MOE_INLINE bool GroupMaxima(const float* row, uint32_t n, float* maxima, float* lowest) {
  const __m256 neg_inf = _mm256_set1_ps(-kInf);
  __m256 acc[4] = {neg_inf, neg_inf, neg_inf, neg_inf};
  __m256 vmin = _mm256_set1_ps(kInf);
  __m256 nan = _mm256_setzero_ps();
  const uint32_t full = n & ~7u;
  uint32_t i = 0;
  for (; i + 32 <= full; i += 32) {
    const __m256 x0 = _mm256_loadu_ps(row + i), x1 = _mm256_loadu_ps(row + i + 8);
    const __m256 x2 = _mm256_loadu_ps(row + i + 16), x3 = _mm256_loadu_ps(row + i + 24);
    acc[0] = _mm256_max_ps(acc[0], x0);
    acc[1] = _mm256_max_ps(acc[1], x1);
    acc[2] = _mm256_max_ps(acc[2], x2);
    acc[3] = _mm256_max_ps(acc[3], x3);
    vmin = _mm256_min_ps(vmin, _mm256_min_ps(_mm256_min_ps(x0, x1), _mm256_min_ps(x2, x3)));
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(x0, x1, _CMP_UNORD_Q),
                                         _mm256_cmp_ps(x2, x3, _CMP_UNORD_Q)));
  }
  for (; i < n; i += 8) {
    __m256 x, for_max, for_min;
    if (i < full) {
      x = for_max = for_min = _mm256_loadu_ps(row + i);
    } else {
      // The last partial vector: absent lanes read as 0, then -inf for the
      // maximum and +inf for the minimum.
      const __m256 present = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
          _mm256_set1_epi32(static_cast<int>(n - i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
      x = _mm256_maskload_ps(row + i, _mm256_castps_si256(present));
      for_max = _mm256_blendv_ps(neg_inf, x, present);
      for_min = _mm256_blendv_ps(_mm256_set1_ps(kInf), x, present);
    }
    __m256& a = acc[(i / 8) % 4];
    a = _mm256_max_ps(a, for_max);
    vmin = _mm256_min_ps(vmin, for_min);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  for (int j = 0; j < 4; ++j) _mm256_storeu_ps(maxima + 8 * j, acc[j]);
  const float high =
      HorizontalMax(_mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3])));
  *lowest = HorizontalMin(vmin);
  return _mm256_movemask_ps(nan) == 0 && high<kInf&& * lowest> - kInf;
}

// The row's experts >= bound (it is in L1 by now), values and ids in expert
// order, into W slots padded with -inf; false, with every slot -inf, when
// more than W qualify.
template <uint32_t W>
MOE_INLINE bool PackAtLeast(const float* row, uint32_t n, float bound, float* value, uint32_t* id) {
  const uint32_t full = n & ~7u;
  uint32_t count = 0;
  for (uint32_t base = 0; base < n; base += 64) {
    uint64_t mask = base + 64 <= full
                        ? CandidateMask64(row + base, bound)
                        : CandidateMask(row, base, n < base + 64 ? n : base + 64, full, bound);
    if (count + static_cast<uint32_t>(_mm_popcnt_u64(mask)) > W) {
      count = 0;
      break;
    }
    for (; mask != 0; mask &= mask - 1, ++count) {
      const uint32_t e = base + static_cast<uint32_t>(__builtin_ctzll(mask));
      value[count] = row[e];
      id[count] = e;
    }
  }
  for (uint32_t k = count; k < W; ++k) {
    value[k] = -kInf;
    id[k] = 0;
  }
  return count > 0;
}

template <int R>
bool SelectEightRowsBounded(const float* rows, uint32_t n, uint32_t* ids, float* values,
                            float* lowest, uint32_t* redone) {
  constexpr int L = ColumnFor(R);
  // Candidates kept per row, whole vectors: the bound lets in R + 6 or
  // fewer on all but about 1% of Gaussian rows; the rest take the
  // portable path.
  constexpr uint32_t W = (R + 6 + 7) & ~7u;
  alignas(32) float maxima[8][kGroups];
  bool finite = true;
  for (uint32_t t = 0; t < 8; ++t) {
    finite &= GroupMaxima(rows + size_t{t} * n, n, maxima[t], &lowest[t]);
  }
  __m256 top[L];
  __m256 unused_min;
  SortedTops<R, L>(&maxima[0][0], kGroups, top, unused_min);
  alignas(32) float bound[8];
  _mm256_store_ps(bound, top[R - 1]);
  alignas(32) float cand_value[8][W];
  uint32_t cand_id[8][W];
  int overflow = 0;
  for (uint32_t t = 0; t < 8; ++t) {
    if (!PackAtLeast<W>(rows + size_t{t} * n, n, bound[t], cand_value[t], cand_id[t])) {
      overflow |= 1 << t;
    }
  }
  // The candidates hold each row's top R, so their top R are the row's.
  SortedTops<R, L>(&cand_value[0][0], W, top, unused_min);
  const LaneTops<R> tops(top);
  for (uint32_t t = 0; t < 8; ++t) {
    uint32_t* out_id = ids + size_t{t} * R;
    float* out_value = values + size_t{t} * R;
    uint64_t mask = ((overflow | tops.tied) & (1 << t)) != 0
                        ? 0
                        : CandidateMask(cand_value[t], 0, W, W, tops.Threshold(t));
    // Fewer or more than R at or above the R-th value: a tie at the edge.
    if (_mm_popcnt_u64(mask) != R) {
      SelectRowPortable(rows + size_t{t} * n, n, R, out_id, out_value);
      ++*redone;
      continue;
    }
    for (; mask != 0; mask &= mask - 1) {
      const uint32_t k = static_cast<uint32_t>(__builtin_ctzll(mask));
      PlaceByRank<R>(cand_value[t], k, cand_id[t][k], tops.Lo(t), tops.Hi(t), out_id);
    }
    tops.WriteValues(t, out_value);
  }
  return finite;
}

}  // namespace

bool AllFiniteAvx2(const float* x, size_t n) { return AllFiniteLoop(x, n); }

uint32_t PassThresholdsAvx2(const float* x, const float* threshold, uint32_t n, uint32_t* ids,
                            bool* finite, uint32_t* passed_by_eight) {
  const LeftPackTable& table = PackTable();
  const uint32_t full = n & ~7u;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i magnitude_bits = _mm256_set1_epi32(0x7fffffff);
  __m256i largest = _mm256_setzero_si256();
  uint32_t c = 0;
  for (uint32_t i = 0; i < full; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    largest = _mm256_max_epi32(largest, _mm256_and_si256(_mm256_castps_si256(v), magnitude_bits));
    const int mask =
        _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_loadu_ps(threshold + i), _CMP_GE_OQ));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(table.perm[mask]));
    const __m256i id = _mm256_add_epi32(iota, _mm256_set1_epi32(static_cast<int>(i)));
    // Whole vectors are stored: ids has room, as c + 8 <= i + 8 <= n.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ids + c), _mm256_permutevar8x32_epi32(id, perm));
    c += Popcount(mask);
    if (passed_by_eight != nullptr) passed_by_eight[i / 8] = c;
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), largest);
  bool ok = AllFiniteLoop(x + full, n - full);
  for (int32_t lane : lanes) ok &= lane < 0x7f800000;
  for (uint32_t i = full; i < n; ++i) {
    ids[c] = i;
    c += x[i] >= threshold[i];
  }
  *finite = ok;
  return c;
}

void ExpBatchAvx2(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = ExpNonPositive(x[i]);
}

float SelectUpTo8Avx2(const float* row, uint32_t n, uint32_t r, uint32_t* ids, float* values) {
  const LeftPackTable& table = PackTable();
  alignas(32) float lanes[8];
  for (uint32_t i = 0; i < 8; ++i) lanes[i] = i < n ? row[i] : -kInf;
  const __m256 v = _mm256_load_ps(lanes);
  __m256i rank = _mm256_setzero_si256();
  for (int rot = 1; rot < 8; ++rot) {
    const __m256 rv = _mm256_permutevar8x32_ps(v, Rotation(table, rot));
    const __m256 beats =
        _mm256_blendv_ps(_mm256_cmp_ps(rv, v, _CMP_GT_OQ), _mm256_cmp_ps(rv, v, _CMP_GE_OQ),
                         _mm256_load_ps(reinterpret_cast<const float*>(table.wrapped[rot])));
    rank = _mm256_sub_epi32(rank, _mm256_castps_si256(beats));
  }
  // Padding lanes rank last, so ranks 0..n-1 belong to real experts.
  for (uint32_t p = 0; p < r; ++p) {
    const int mask = _mm256_movemask_ps(
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(rank, _mm256_set1_epi32(static_cast<int>(p)))));
    const uint32_t lane = static_cast<uint32_t>(__builtin_ctz(static_cast<unsigned>(mask)));
    ids[p] = lane;
    values[p] = lanes[lane];
  }
  const int last = _mm256_movemask_ps(
      _mm256_castsi256_ps(_mm256_cmpeq_epi32(rank, _mm256_set1_epi32(static_cast<int>(n - 1)))));
  return lanes[__builtin_ctz(static_cast<unsigned>(last))];
}

float SelectRowAvx2(const float* row, uint32_t n, uint32_t r, float* gap, const RowScratch& scratch,
                    uint32_t* ids, float* values) {
  float top, lowest;
  MaxAndMin(row, n, &top, &lowest);
  uint32_t c = PackCandidates(row, n, r, top, *gap, scratch);
  uint32_t padded = PadToVectors(c, n, scratch);
  // Narrowing packs whole vectors in place, over the padding, even when it
  // keeps every candidate (ties at the bisection's end): pad again.
  c = NarrowCandidates(r, top, c, padded, scratch);
  padded = PadToVectors(c, n, scratch);
  RankCandidates(r, c, padded, scratch);
  for (uint32_t p = 0; p < r; ++p) {
    ids[p] = scratch.ranked_id[p];
    values[p] = scratch.ranked_value[p];
  }
  UpdateGap(top - values[r - 1], gap);
  return lowest;
}

namespace {

// Up to this many experts a row is sorted whole; past it, through the bound
// (BM_SelectTopR, one run: at 64/8 whole 36 ns a row, bound 57; at 128/10
// both 77; at 256/10 whole 126 to 140, bound 99).
constexpr uint32_t kWholeRowsUpTo = 128;

// One instantiation per r: the merge column is sized at compile time.
template <int R>
EightRowsKernel KernelFor(uint32_t r, bool bounded) {
  if constexpr (R == 0) {
    return nullptr;
  } else {
    if (r != R) return KernelFor<R - 1>(r, bounded);
    return bounded ? &SelectEightRowsBounded<R> : &SelectEightRows<R>;
  }
}

}  // namespace

EightRowsKernel EightRowsKernelAvx2(uint32_t n, uint32_t r) {
  return r > 16 ? nullptr : KernelFor<16>(r, n > kWholeRowsUpTo);
}

}  // namespace moe_router::internal
