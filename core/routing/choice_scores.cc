#include "core/routing/choice_scores.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/routing/choice_kernels_internal.h"

namespace moe_router {

namespace {

// Below any choice score: scores are in [0, 1] and biases bounded
// (ValidateChoiceBias), so an excluded expert ranks last yet every
// difference stays finite.
constexpr float kExcludedValue = -1e30f;

// The floor is first set after this many tokens, then renewed from each
// window of kFloorWindow.
constexpr uint32_t kFirstFloorWindow = 64;
constexpr uint32_t kFloorWindow = 1024;
// The floor is the kFloorRank-th lowest that the window's tokens needed:
// about 1 token in 200 goes to the whole row, and the floor stays above
// the outliers.
constexpr uint32_t kFloorRank = 5;
// Pads a pool of scored experts: finite, below any real choice score.
constexpr float kPoolPadding = -std::numeric_limits<float>::max();
// Room past the last pool for a group's slice copied 8 at a time.
constexpr size_t kPoolOverrun = 8;

#if defined(__x86_64__)
const bool kHasAvx2 = __builtin_cpu_supports("avx2");
#else
constexpr bool kHasAvx2 = false;
#endif

// The best two of x[0, n) as a multiset (two equal maxima both count).
inline void BestTwo(const float* x, uint32_t n, float* best, float* second) {
  float a = x[0], b = x[1];
  if (b > a) std::swap(a, b);
  for (uint32_t i = 2; i < n; ++i) {
    const float v = x[i];
    b = v > b ? (v > a ? a : v) : b;
    a = v > a ? v : a;
  }
  *best = a;
  *second = b;
}

// Marks in `kept` the best `count` of the groups' scores `g` (a higher
// score, or an equal one at a lower index, beats a group). Counted over all
// pairs, lane by lane.
inline void KeepBestGroups(const float* g, uint32_t groups, uint32_t count, uint8_t* kept,
                           uint32_t* beaten_by) {
  for (uint32_t j = 0; j < groups; ++j) beaten_by[j] = 0;
  for (uint32_t o = 0; o < groups; ++o) {
    const float go = g[o];
    for (uint32_t j = 0; j < groups; ++j) beaten_by[j] += (go > g[j]) | ((go == g[j]) & (o < j));
  }
  for (uint32_t j = 0; j < groups; ++j) kept[j] = beaten_by[j] < count;
}

}  // namespace

void SigmoidRow(const float* x, uint32_t n, float* out) {
  if (kHasAvx2) return internal::SigmoidRowAvx2(x, n, out);
  for (uint32_t i = 0; i < n; ++i) out[i] = Sigmoid(x[i]);
}

void ExpRelativeRow(const float* x, uint32_t n, float top, float* out) {
  if (kHasAvx2) return internal::ExpRelativeRowAvx2(x, n, top, out);
  for (uint32_t i = 0; i < n; ++i) out[i] = ExpNonPositive(x[i] - top);
}

float SumInBlocksOfEight(const float* x, uint32_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (uint32_t j = 0; j < 8; ++j) s[j] += x[i + j];
  }
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) total += x[i];
  return total;
}

float SoftmaxDenominator(const float* row, uint32_t n, float top) {
  if (kHasAvx2) return internal::SoftmaxDenominatorAvx2(row, n, top);
  return internal::SoftmaxDenominatorLoop(row, n, top);
}

ChoiceScorer::ChoiceScorer(const RoutingRule& rule, uint32_t num_experts, uint32_t max_rank,
                           absl::Span<const float> bias)
    : rule_(rule),
      n_(num_experts),
      r_(max_rank),
      bias_(bias.begin(), bias.end()),
      group_size_(rule.num_groups > 1 ? num_experts / rule.num_groups : num_experts),
      masked_value_(rule.masked_groups == MaskedGroups::kZero ? 0.0f : kExcludedValue),
      shortlists_(rule.score == ScoreFunction::kSigmoid),
      group_best_(rule.num_groups),
      group_second_(rule.num_groups),
      group_scores_(rule.num_groups),
      kept_(rule.num_groups),
      beaten_by_(rule.num_groups),
      group_floor_(kChunk),
      logit_threshold_(shortlists_ ? num_experts : 0),
      window_lowest_(kFloorRank, std::numeric_limits<float>::infinity()),
      group_end_(rule.num_groups),
      passed_by_eight_(shortlists_ ? num_experts / 8 + 1 : 0),
      cand_id_(shortlists_ ? num_experts + 8 : 0),
      cand_logit_(shortlists_ ? num_experts + 8 : 0),
      cand_bias_(cand_logit_.size()),
      cand_score_(cand_logit_.size()),
      cand_value_(cand_logit_.size()),
      pool_value_(shortlists_ ? size_t{kChunk} * kPool + kPoolOverrun : 0, kPoolPadding),
      pool_id_(pool_value_.size()),
      pool_score_(pool_value_.size()),
      pool_pick_(shortlists_ ? size_t{kChunk} * max_rank : 0),
      pool_top_(pool_pick_.size()),
      pool_lowest_(kChunk),
      pool_selector_(kPool, std::min(max_rank, kPool)) {}

void ChoiceScorer::ScoreRow(const float* logits, float* scores) const {
  const uint32_t n = n_;
  if (rule_.score == ScoreFunction::kSigmoid) {
    SigmoidRow(logits, n, scores);
    return;
  }
  if (rule_.score == ScoreFunction::kLogits) {
    std::copy_n(logits, n, scores);
    return;
  }
  // Softmax in float32: e^(x - max) over its sum.
  float top = logits[0];
  for (uint32_t e = 1; e < n; ++e) top = logits[e] > top ? logits[e] : top;
  ExpRelativeRow(logits, n, top, scores);
  const float sum = SumInBlocksOfEight(scores, n);
  for (uint32_t e = 0; e < n; ++e) scores[e] = scores[e] / sum;
}

float ChoiceScorer::GroupFloor() const {
  const uint32_t groups = rule_.num_groups;
  // The kept groups' scores must be exact: their best two (top-two sum) or
  // best (max) at or above the floor.
  float gstar = std::numeric_limits<float>::infinity();
  float needed = std::numeric_limits<float>::infinity();
  const bool two = rule_.group_score == GroupScore::kTopTwoSum;
  for (uint32_t j = 0; j < groups; ++j) {
    if (!kept_[j]) continue;
    gstar = std::min(gstar, group_scores_[j]);
    needed = std::min(needed, two ? group_second_[j] : group_best_[j]);
  }
  // A group left out is either exact too, or bounded below the kept:
  // best + floor (or 2 x floor) below g*; a best unknown is below the floor.
  for (uint32_t j = 0; j < groups; ++j) {
    if (kept_[j]) continue;
    const float exact = two ? group_second_[j] : group_best_[j];
    const float bounded = two ? std::min(gstar - group_best_[j], gstar / 2) : gstar;
    needed = std::min(needed, std::max(exact, bounded));
  }
  return needed;
}

void ChoiceScorer::LimitGroups(float* choice, uint32_t t) const {
  const uint32_t groups = rule_.num_groups, size = group_size_;
  for (uint32_t j = 0; j < groups; ++j) {
    BestTwo(choice + size_t{j} * size, size, &group_best_[j], &group_second_[j]);
    group_scores_[j] = rule_.group_score == GroupScore::kTopTwoSum
                           ? group_best_[j] + group_second_[j]
                           : group_best_[j];
  }
  KeepBestGroups(group_scores_.data(), groups, rule_.kept_groups, kept_.data(), beaten_by_.data());
  for (uint32_t j = 0; j < groups; ++j) {
    if (!kept_[j]) std::fill_n(choice + size_t{j} * size, size, masked_value_);
  }
  if (t < kChunk) group_floor_[t] = GroupFloor();
}

void ChoiceScorer::Score(const float* logits, uint32_t tokens, float* choice, float* scores,
                         uint32_t first) const {
  const uint32_t n = n_;
  for (uint32_t t = 0; t < tokens; ++t) {
    const size_t row = size_t{t} * n;
    ScoreRow(logits + row, scores + row);
    float* c = choice + row;
    if (bias_.empty()) {
      std::copy_n(scores + row, n, c);
    } else {
      for (uint32_t e = 0; e < n; ++e) c[e] = scores[row + e] + bias_[e];
    }
    if (rule_.num_groups > 1) LimitGroups(c, first + t);
  }
}

void ChoiceScorer::SetFloor(float floor) {
  floor_ = floor;
  floor_set_ = true;
  for (uint32_t e = 0; e < n_; ++e) {
    const double b = bias_.empty() ? 0.0 : bias_[e];
    // A choice score at the floor needs Sigmoid(l) + b >= floor after
    // rounding: the exact sigmoid within 1e-6 of Sigmoid's, the sum within
    // half an ulp. So the exact sigmoid is at least p.
    const double p = (double{floor} - b) - 2e-6 * (1 + std::fabs(b) + std::fabs(double{floor}));
    double threshold;
    if (p <= 1e-30) {
      threshold = -std::numeric_limits<double>::infinity();  // every logit may
    } else if (p >= 1) {
      threshold = std::numeric_limits<double>::infinity();  // no logit can
    } else {
      threshold = std::log(p) - std::log1p(-p);
      threshold -= 1e-6 * (1 + std::fabs(threshold));
    }
    float rounded = static_cast<float>(threshold);
    if (rounded > threshold) {
      rounded = std::nextafter(rounded, -std::numeric_limits<float>::infinity());
    }
    logit_threshold_[e] = rounded;
  }
}

float ChoiceScorer::NeededFloor(uint32_t t, float last_candidate_value) const {
  return rule_.num_groups > 1 ? std::min(last_candidate_value, group_floor_[t])
                              : last_candidate_value;
}

void ChoiceScorer::Observe(float needed) {
  // Insert into the ascending lowest few.
  for (float& low : window_lowest_) {
    if (needed < low) std::swap(needed, low);
  }
  ++observed_;
  if (observed_ != kFirstFloorWindow && observed_ % kFloorWindow != 0) return;
  float floor = observed_ == kFirstFloorWindow ? window_lowest_.front() : window_lowest_.back();
  std::fill(window_lowest_.begin(), window_lowest_.end(), std::numeric_limits<float>::infinity());
  // Strictly below what was needed: the group bounds compare strictly.
  floor -= 1e-6f * (1 + std::fabs(floor));
  // Masked experts score 0.0: a floor at or below it cannot prove them out.
  const bool usable =
      std::isfinite(floor) &&
      (rule_.num_groups <= 1 || rule_.masked_groups != MaskedGroups::kZero || floor > 0);
  if (!usable) {
    floor_set_ = false;
  } else if (!floor_set_ || floor != floor_) {
    SetFloor(floor);
  }
}

namespace {

void SliceTopTwo(const float* values, const uint32_t* ends, uint32_t slices, float* best,
                 float* second) {
  if (kHasAvx2) return internal::SliceTopTwoAvx2(values, ends, slices, best, second);
  uint32_t start = 0;
  for (uint32_t j = 0; j < slices; ++j) {
    internal::SliceTopTwoPortable(values + start, ends[j] - start, &best[j], &second[j]);
    start = ends[j];
  }
}

// Copies a slice 8 floats (or ids) at a time: at least 8, so one step for
// the usual short slice; both sides have room for the overrun.
template <typename T>
inline void CopyByEight(const T* from, uint32_t length, T* to) {
  uint32_t i = 0;
  do {
    std::memcpy(to + i, from + i, 8 * sizeof(T));
    i += 8;
  } while (i < length);
}

}  // namespace

void ChoiceScorer::FindGroupSlices(uint32_t count) {
  const uint32_t groups = rule_.num_groups, size = group_size_;
  if (size % 8 == 0) {
    for (uint32_t j = 0; j < groups; ++j) group_end_[j] = passed_by_eight_[(j + 1) * size / 8 - 1];
    return;
  }
  const uint32_t* ids = cand_id_.data();
  for (uint32_t j = 0; j < groups; ++j) {
    group_end_[j] = static_cast<uint32_t>(std::lower_bound(ids, ids + count, (j + 1) * size) - ids);
  }
}

bool ChoiceScorer::DecideGroups(uint32_t count, uint32_t t) {
  const uint32_t groups = rule_.num_groups;
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  FindGroupSlices(count);
  SliceTopTwo(cand_value_.data(), group_end_.data(), groups, group_best_.data(),
              group_second_.data());
  // Every expert whose choice score reaches the floor was scored: a group
  // whose best two scored reach it has them exactly (complete); another's
  // score is below best + floor (or 2 x floor; for a max, below the floor).
  const bool two = rule_.group_score == GroupScore::kTopTwoSum;
  uint32_t complete = 0;
  for (uint32_t j = 0; j < groups; ++j) {
    const bool exact = (two ? group_second_[j] : group_best_[j]) >= floor_;
    group_scores_[j] = !exact ? kNone : two ? group_best_[j] + group_second_[j] : group_best_[j];
    complete += exact;
  }
  if (complete < rule_.kept_groups) return false;
  // At least kept_groups are exact, so the best are (an unknown is -inf).
  KeepBestGroups(group_scores_.data(), groups, rule_.kept_groups, kept_.data(), beaten_by_.data());
  float gstar = std::numeric_limits<float>::infinity();
  for (uint32_t j = 0; j < groups; ++j)
    gstar = kept_[j] ? std::min(gstar, group_scores_[j]) : gstar;
  bool bounded = true;
  for (uint32_t j = 0; j < groups; ++j) {
    const float bound = !two ? floor_ : std::max(group_best_[j], floor_) + floor_;
    bounded &= group_scores_[j] != kNone || gstar > bound;
    // A best unknown is below the floor, as GroupFloor takes it.
    group_best_[j] = std::max(group_best_[j], floor_);
  }
  if (!bounded) return false;
  group_floor_[t] = GroupFloor();
  return true;
}

bool ChoiceScorer::FillPool(const float* logits, uint32_t count, uint32_t t) {
  shortlist_scored_ += count;
  // Whole vectors: the padding (logit 0, bias 0) is scored and never read.
  const uint32_t padded = (count + 7) & ~7u;
  for (uint32_t i = 0; i < count; ++i) {
    cand_logit_[i] = logits[cand_id_[i]];
    cand_bias_[i] = bias_.empty() ? 0.0f : bias_[cand_id_[i]];
  }
  std::fill(cand_logit_.begin() + count, cand_logit_.begin() + padded, 0.0f);
  std::fill(cand_bias_.begin() + count, cand_bias_.begin() + padded, 0.0f);
  SigmoidRow(cand_logit_.data(), padded, cand_score_.data());
  for (uint32_t i = 0; i < padded; ++i) cand_value_[i] = cand_score_[i] + cand_bias_[i];
  float* value = pool_value_.data() + size_t{t} * kPool;
  uint32_t* id = pool_id_.data() + size_t{t} * kPool;
  float* score = pool_score_.data() + size_t{t} * kPool;
  uint32_t kept = count;
  if (rule_.num_groups > 1) {
    if (!DecideGroups(count, t)) return false;
    // The kept groups' slices, in id order (so the selection's ties to the
    // lower position are ties to the lower id). Short slices are copied
    // whether kept or not, a slice not kept overwritten by the next.
    kept = 0;
    uint32_t start = 0;
    for (uint32_t j = 0; j < rule_.num_groups; ++j) {
      const uint32_t length = group_end_[j] - start;
      if (kept_[j] && kept + length > kPool) return false;
      // A long slice not kept is skipped: copies stay within 8 of the pool.
      if (kept_[j] || length <= 8) {
        CopyByEight(cand_value_.data() + start, length, value + kept);
        CopyByEight(cand_id_.data() + start, length, id + kept);
        CopyByEight(cand_score_.data() + start, length, score + kept);
      }
      kept += kept_[j] ? length : 0;
      start = group_end_[j];
    }
  } else {
    if (count > kPool) return false;
    std::copy_n(cand_value_.data(), count, value);
    std::copy_n(cand_id_.data(), count, id);
    std::copy_n(cand_score_.data(), count, score);
  }
  if (kept < r_) return false;
  std::fill(value + kept, value + kPool, kPoolPadding);
  return true;
}

bool ChoiceScorer::Shortlist(const float* logits, uint32_t tokens, uint32_t* ids, float* values,
                             float* scores, uint8_t* decided) {
  const uint32_t n = n_, r = r_;
  std::fill_n(decided, tokens, 0);
  if (!floor_set_ || r > kPool) {
    full_rows_ += tokens;
    return AllFinite(logits, size_t{tokens} * n);
  }
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = logits + size_t{t} * n;
    bool finite;
    const uint32_t count = PassThresholds(row, logit_threshold_.data(), n, cand_id_.data(), &finite,
                                          rule_.num_groups > 1 ? passed_by_eight_.data() : nullptr);
    if (!finite) return false;
    decided[t] = count >= r && FillPool(row, count, t);
  }
  // The pools ranked 8 at a time; a pool left undecided is ranked too, and
  // its result dropped.
  (void)pool_selector_.SelectRows(pool_value_.data(), tokens, pool_pick_.data(), pool_top_.data(),
                                  pool_lowest_.data());
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* top = pool_top_.data() + size_t{t} * r;
    // Every expert not scored is below the floor: the r-th must reach it.
    if (!decided[t] || !(top[r - 1] >= floor_)) {
      decided[t] = 0;
      ++full_rows_;
      continue;
    }
    const uint32_t* pick = pool_pick_.data() + size_t{t} * r;
    for (uint32_t p = 0; p < r; ++p) {
      const size_t k = size_t{t} * kPool + pick[p];
      ids[size_t{t} * r + p] = pool_id_[k];
      values[size_t{t} * r + p] = top[p];
      scores[size_t{t} * r + p] = pool_score_[k];
    }
    ++shortlisted_;
  }
  return true;
}

}  // namespace moe_router
