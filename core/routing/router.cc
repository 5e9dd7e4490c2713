#include "core/routing/router.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "core/routing/top_select.h"

namespace moe_router {

absl::Status RouterConfig::Validate() const {
  if (num_experts == 0) {
    return absl::InvalidArgumentError("router.num_experts must be > 0");
  }
  if (top_k == 0) return absl::InvalidArgumentError("router.top_k must be > 0");
  if (top_k > num_experts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.top_k (%d) must be <= router.num_experts (%d)", top_k, num_experts));
  }
  if (top_k > kMaxRank) {
    return absl::InvalidArgumentError(
        absl::StrFormat("router.top_k (%d) must be <= %d", top_k, kMaxRank));
  }
  if (absl::Status s = rule.Validate(num_experts, top_k); !s.ok()) return s;
  if (!std::isfinite(cache_bonus) || cache_bonus < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("router.cache_bonus must be finite and >= 0, got %g", cache_bonus));
  }
  if (!(prefetch_threshold >= 0 && prefetch_threshold <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("router.prefetch_threshold must be in [0, 1], got %g", prefetch_threshold));
  }
  if (protected_top > top_k) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.protected_top (%d) must be <= router.top_k (%d)", protected_top, top_k));
  }
  const uint32_t rank_limit = std::min(num_experts, kMaxRank);
  if (max_rank != 0 && (max_rank < top_k || max_rank > rank_limit)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.max_rank (%d) must be 0 or in [top_k, min(num_experts, %d)] = [%d, %d]", max_rank,
        kMaxRank, top_k, rank_limit));
  }
  if (max_rank > RankableExperts()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.max_rank (%d) is more than the %d experts the rule's kept groups hold", max_rank,
        RankableExperts()));
  }
  if (!(min_gate_mass >= 0 && min_gate_mass <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("router.min_gate_mass must be in [0, 1], got %g", min_gate_mass));
  }
  if (!(range_ema_alpha > 0 && range_ema_alpha <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("router.range_ema_alpha must be in (0, 1], got %g", range_ema_alpha));
  }
  return absl::OkStatus();
}

uint32_t RouterConfig::EffectiveMaxRank() const {
  if (max_rank != 0) return max_rank;
  return std::min({top_k + 2, num_experts, kMaxRank, RankableExperts()});
}

uint32_t RouterConfig::RankableExperts() const {
  if (rule.num_groups <= 1 || rule.masked_groups != MaskedGroups::kExcluded) return num_experts;
  return num_experts / rule.num_groups * rule.kept_groups;
}

absl::Status ValidateLogitsShape(absl::Span<const float> logits, uint32_t num_experts) {
  if (logits.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("gate_logits is empty: send one row of %d logits per token", num_experts));
  }
  if (num_experts == 0 || logits.size() % num_experts != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("gate_logits has %d values, not a multiple of num_experts (%d)",
                        logits.size(), num_experts));
  }
  return absl::OkStatus();
}

absl::Status ValidateLogits(absl::Span<const float> logits, uint32_t num_experts) {
  if (absl::Status s = ValidateLogitsShape(logits, num_experts); !s.ok()) return s;
  // The common all-finite case is one vectorised scan; the search for the
  // culprit runs only on failure.
  if (AllFinite(logits.data(), logits.size())) return absl::OkStatus();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("gate_logits of token %d has a %s value at expert %d", i / num_experts,
                          std::isnan(logits[i]) ? "NaN" : "infinite", i % num_experts));
    }
  }
  return absl::OkStatus();
}

namespace {
// A mask of positions [0, n), n <= 64.
inline uint64_t LowBits(uint32_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }
// Rows a rule with choice scores scores at once: its scratch stays
// kScoreChunk x num_experts floats twice, whatever the batch.
constexpr uint32_t kScoreChunk = 64;
}  // namespace

absl::StatusOr<LayerRouter> LayerRouter::Create(const RouterConfig& config,
                                                const AffinityConfig& affinity,
                                                absl::Span<const float> choice_bias) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (absl::Status s = affinity.Validate(); !s.ok()) return s;
  if (absl::Status s = ValidateChoiceBias(config.rule, choice_bias, 1, config.num_experts);
      !s.ok()) {
    return s;
  }
  return LayerRouter(config, affinity, choice_bias);
}

LayerRouter::LayerRouter(const RouterConfig& config, const AffinityConfig& affinity,
                         absl::Span<const float> choice_bias)
    : config_(config),
      max_rank_(config.EffectiveMaxRank()),
      affinity_(std::make_unique<ExpertAffinity>(config.num_experts, affinity)),
      scorer_(config.rule.ChoosesOnLogits()
                  ? nullptr
                  : std::make_unique<ChoiceScorer>(config.rule, config.num_experts, max_rank_,
                                                   choice_bias)),
      selector_(config.num_experts, max_rank_),
      original_(LowBits(config.top_k)),
      protected_(LowBits(config.protected_top)),
      unprotected_(LowBits(max_rank_) & ~protected_),
      prefetch_bits_((config.num_experts + 63) / 64, 0) {}

float LayerRouter::BatchBonus(double range_sum, uint32_t tokens) {
  if (!config_.memory_aware || config_.cache_bonus <= 0) return 0;
  if (config_.bonus_mode == BonusMode::kAbsolute) {
    return static_cast<float>(config_.cache_bonus);
  }
  // The first batch seeds the running range from its own tokens.
  if (!range_seen_) {
    range_ema_ = range_sum / tokens;
    range_seen_ = true;
  }
  return static_cast<float>(config_.cache_bonus * range_ema_);
}

RangeChange LayerRouter::UpdateRange(double range_sum, uint32_t tokens, bool seen_before) {
  if (tokens == 0) return {};
  // Equivalent to one EMA step per token towards the batch's mean range.
  // Batches mostly repeat one size, so the weight is computed once per size.
  if (tokens != range_weight_tokens_) {
    range_weight_ = 1.0 - std::pow(1.0 - config_.range_ema_alpha, tokens);
    range_weight_tokens_ = tokens;
  }
  const double weight = range_weight_;
  const double mean = range_sum / tokens;
  range_ema_ = range_seen_ ? range_ema_ + weight * (mean - range_ema_) : mean;
  range_seen_ = true;
  // A first batch sets the range to its mean (BatchBonus may have seeded it).
  return seen_before ? RangeChange{1.0 - weight, weight * mean} : RangeChange{0.0, range_ema_};
}

void LayerRouter::ApplyRangeChange(const RangeChange& change) {
  if (range_seen_) {
    range_ema_ = range_ema_ * change.keep + change.add;
  } else if (change.keep < 1) {
    // The change's fixed point: the level its batches pull towards.
    range_ema_ = change.add / (1 - change.keep);
    range_seen_ = true;
  }
}

uint64_t LayerRouter::ChooseWithBonus(float bonus, uint64_t res_mask, const uint32_t* id,
                                      const float* value) const {
  // Past the protected prefix, resident and absent candidates each stay in
  // descending choice order, and the bonus shifts a whole list by the same
  // amount: the best k - protect come from merging the two lists, taking
  // each list's lowest remaining position.
  uint64_t resident = res_mask & unprotected_;
  uint64_t absent = ~res_mask & unprotected_;
  uint64_t chosen = protected_;
  for (uint32_t s = config_.protected_top; s < config_.top_k; ++s) {
    // r >= k, so at most one list runs dry; a dry list never wins.
    const uint32_t pr = resident != 0 ? static_cast<uint32_t>(__builtin_ctzll(resident)) : 0;
    const uint32_t pa = absent != 0 ? static_cast<uint32_t>(__builtin_ctzll(absent)) : 0;
    const float a = resident != 0 ? value[pr] + bonus : -std::numeric_limits<float>::infinity();
    const float b = absent != 0 ? value[pa] : -std::numeric_limits<float>::infinity();
    const bool take_resident = a > b || (a == b && id[pr] < id[pa]);
    const uint64_t bit = take_resident ? resident & -resident : absent & -absent;
    chosen |= bit;
    resident &= ~bit;
    absent &= ~bit;
  }
  return chosen;
}

namespace {

// What the guard and the outputs need of the router, by value, so nothing
// is reloaded through `this` (the byte stores to the residency output may
// alias anything).
struct GuardSettings {
  uint32_t k;
  uint32_t r;
  uint64_t original;  // positions of the original top-k
  float min_mass;
  float prefetch_ratio;
  // The rule's weights: the chosen unnormalised weights over the
  // normalisation, times the scaling.
  Normalization normalization;
  float normalization_param;
  float scaling;
};

// What a token's weights are divided by: `kept` is their sum.
[[gnu::always_inline]] inline float WeightDenominator(const GuardSettings& g, const float* weight,
                                                      uint64_t chosen, float kept) {
  switch (g.normalization) {
    case Normalization::kNone:
      return 1.0f;
    case Normalization::kSum:
      return kept;
    case Normalization::kSumPlusEpsilon:
      return kept + g.normalization_param;
    case Normalization::kSumClamped:
      return kept > g.normalization_param ? kept : g.normalization_param;
    case Normalization::kPNorm: {
      if (g.normalization_param == 1.0f) return kept;
      float sum = 0;
      for (uint64_t m = chosen; m != 0; m &= m - 1) {
        sum += std::pow(weight[__builtin_ctzll(m)], g.normalization_param);
      }
      return std::pow(sum, 1.0f / g.normalization_param);
    }
  }
  return kept;
}

struct BatchTotals {
  uint64_t hits = 0;
  uint32_t changed_tokens = 0;
  double mass_sum = 0;  // over the changed tokens
  double mass_min = 1;
};

// The mass guard: the token's choice (a mask over its candidate positions),
// or its original top-k when the choice keeps less than min_mass of the
// original's probability. *kept: the chosen experts' probability mass.
[[gnu::always_inline]] inline uint64_t GuardedChoice(const float* prob, uint64_t chosen,
                                                     const GuardSettings& g, float* kept,
                                                     BatchTotals* totals) {
  *kept = 0;
  for (uint64_t m = chosen; m != 0; m &= m - 1) *kept += prob[__builtin_ctzll(m)];
  if (chosen == g.original) return chosen;
  float orig = 0;
  for (uint32_t p = 0; p < g.k; ++p) orig += prob[p];
  if (*kept < g.min_mass * orig) {
    // Too costly for this token: it keeps its original top-k.
    *kept = orig;
    return g.original;
  }
  const double mass = *kept / orig;
  totals->mass_sum += mass;
  totals->mass_min = mass < totals->mass_min ? mass : totals->mass_min;
  ++totals->changed_tokens;
  return chosen;
}

// Writes a token's chosen experts in ascending position (the rule's
// original order), whether each was resident, and their weights (the
// unnormalised ones over the rule's denominator, scaled); returns the
// resident ones.
[[gnu::always_inline]] inline uint32_t WriteToken(const GuardSettings& g, const uint32_t* id,
                                                  const float* prob, uint64_t chosen,
                                                  uint64_t res_mask, float kept, uint32_t* experts,
                                                  uint8_t* resident, float* weights) {
  const float inv = 1.0f / WeightDenominator(g, prob, chosen, kept);
  uint32_t hits = 0;
  uint32_t i = 0;
  for (uint64_t m = chosen; m != 0; m &= m - 1, ++i) {
    const uint32_t p = static_cast<uint32_t>(__builtin_ctzll(m));
    experts[i] = id[p];
    const uint8_t hit = static_cast<uint8_t>((res_mask >> p) & 1);
    resident[i] = hit;
    hits += hit;
    weights[i] = prob[p] * inv;
  }
  if (g.scaling != 1.0f) {
    for (uint32_t j = 0; j < i; ++j) weights[j] *= g.scaling;
  }
  return hits;
}

// Marks the token's strong unchosen runners-up (strength at least `ratio`
// of the top candidate's) in the batch's prefetch bits.
[[gnu::always_inline]] inline void MarkRunnersUp(const uint32_t* id, const float* strength,
                                                 uint32_t r, uint64_t chosen, float ratio,
                                                 uint64_t* prefetch_bits) {
  const uint64_t strong = MaskAtLeast(strength, r, ratio * strength[0]) & ~uint64_t{1};
  for (uint64_t m = strong & ~chosen; m != 0; m &= m - 1) {
    const uint32_t e = id[__builtin_ctzll(m)];
    prefetch_bits[e / 64] |= uint64_t{1} << (e % 64);
  }
}

// Per token of the batch: the mass guard, then the outputs (tokens x k
// experts, residency and weights) and the prefetch bits.
BatchTotals GuardAndWrite(const GuardSettings& g, uint32_t tokens, const uint32_t* ids,
                          const float* probs, const float* strengths, const uint64_t* res_masks,
                          const uint64_t* choices, uint64_t* prefetch_bits, uint32_t* out_experts,
                          uint8_t* out_resident, float* out_weights) {
  BatchTotals totals;
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint32_t* id = ids + size_t{t} * g.r;
    const float* prob = probs + size_t{t} * g.r;
    float kept;
    const uint64_t chosen = GuardedChoice(prob, choices[t], g, &kept, &totals);
    totals.hits +=
        WriteToken(g, id, prob, chosen, res_masks[t], kept, out_experts + size_t{t} * g.k,
                   out_resident + size_t{t} * g.k, out_weights + size_t{t} * g.k);
    if (g.prefetch_ratio > 0) {
      MarkRunnersUp(id, strengths + size_t{t} * g.r, g.r, chosen, g.prefetch_ratio, prefetch_bits);
    }
  }
  return totals;
}

// The experts whose bits are set, ascending; the bits are cleared.
void TakePrefetch(absl::Span<uint64_t> bits, std::vector<uint32_t>* out) {
  for (uint32_t word = 0; word < bits.size(); ++word) {
    for (uint64_t m = bits[word]; m != 0; m &= m - 1) {
      out->push_back(word * 64 + static_cast<uint32_t>(__builtin_ctzll(m)));
    }
    bits[word] = 0;
  }
}

}  // namespace

bool LayerRouter::SelectCandidates(absl::Span<const float> logits) {
  const uint32_t r = max_rank_;
  const uint32_t tokens = static_cast<uint32_t>(logits.size() / config_.num_experts);
  batch_id_.resize(size_t{tokens} * r);
  batch_relative_.resize(size_t{tokens} * r);
  batch_lowest_.resize(tokens);
  batch_res_.resize(tokens);
  batch_chosen_.resize(tokens);
  if (scorer_ == nullptr) {
    return selector_.SelectRows(logits.data(), tokens, batch_id_.data(), batch_relative_.data(),
                                batch_lowest_.data());
  }
  return SelectByChoiceScores(logits, tokens);
}

bool LayerRouter::SelectByChoiceScores(absl::Span<const float> logits, uint32_t tokens) {
  const uint32_t n = config_.num_experts, r = max_rank_;
  batch_score_.resize(size_t{tokens} * r);
  const uint32_t chunk = scorer_->shortlists() ? 1 : std::min(tokens, kScoreChunk);
  chunk_choice_.resize(size_t{chunk} * n);
  chunk_scores_.resize(chunk_choice_.size());
  // The candidates of rows [first, first + count) from whole rows; `note`:
  // the first one's token in the shortlist's chunk.
  const auto whole_rows = [&](uint32_t first, uint32_t count, uint32_t note) {
    scorer_->Score(logits.data() + size_t{first} * n, count, chunk_choice_.data(),
                   chunk_scores_.data(), note);
    // Finite logits make finite choice scores.
    const size_t at = size_t{first} * r;
    (void)selector_.SelectRows(chunk_choice_.data(), count, batch_id_.data() + at,
                               batch_relative_.data() + at, batch_lowest_.data() + first);
    for (uint32_t t = 0; t < count; ++t) {
      const uint32_t* id = batch_id_.data() + at + size_t{t} * r;
      float* score = batch_score_.data() + at + size_t{t} * r;
      const float* row = chunk_scores_.data() + size_t{t} * n;
      for (uint32_t p = 0; p < r; ++p) score[p] = row[id[p]];
    }
  };
  if (!scorer_->shortlists()) {
    if (!AllFinite(logits.data(), logits.size())) return false;
    for (uint32_t first = 0; first < tokens; first += kScoreChunk) {
      whole_rows(first, std::min(kScoreChunk, tokens - first), 0);
    }
    return true;
  }
  batch_needed_floor_.resize(tokens);
  for (uint32_t first = 0; first < tokens; first += ChoiceScorer::kChunk) {
    const uint32_t count = std::min(ChoiceScorer::kChunk, tokens - first);
    const size_t at = size_t{first} * r;
    if (!scorer_->Shortlist(logits.data() + size_t{first} * n, count, batch_id_.data() + at,
                            batch_relative_.data() + at, batch_score_.data() + at,
                            shortlist_decided_)) {
      return false;
    }
    for (uint32_t t = 0; t < count; ++t) {
      if (!shortlist_decided_[t]) whole_rows(first + t, 1, t);
      batch_needed_floor_[first + t] =
          scorer_->NeededFloor(t, batch_relative_[at + size_t{t} * r + r - 1]);
    }
  }
  // Only once every logit is known finite: a refused batch leaves the
  // shortlist as it was.
  for (uint32_t t = 0; t < tokens; ++t) scorer_->Observe(batch_needed_floor_[t]);
  return true;
}

double LayerRouter::RangeSum(uint32_t tokens) const {
  double sum = 0;
  if (scorer_ != nullptr) {
    // Choice scores: the spread of the candidates, which both ways of
    // finding them know.
    for (uint32_t t = 0; t < tokens; ++t) {
      sum += batch_relative_[size_t{t} * max_rank_] -
             batch_relative_[size_t{t} * max_rank_ + max_rank_ - 1];
    }
    return sum;
  }
  for (uint32_t t = 0; t < tokens; ++t)
    sum += batch_relative_[size_t{t} * max_rank_] - batch_lowest_[t];
  return sum;
}

void LayerRouter::Choose(uint32_t tokens, const std::atomic<uint8_t>* resident, float bonus) {
  const uint32_t r = max_rank_;
  // A softmax's numerators are taken relative to the top logit.
  const bool relative_logits =
      scorer_ == nullptr && config_.rule.selection != Selection::kTopKThenSigmoid;
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint32_t* id = batch_id_.data() + size_t{t} * r;
    float* value = batch_relative_.data() + size_t{t} * r;
    uint64_t res_mask = 0;
    if (resident != nullptr) {
      for (uint32_t p = 0; p < r; ++p) {
        res_mask |= uint64_t{resident[id[p]].load(std::memory_order_relaxed) != 0} << p;
      }
    }
    batch_res_[t] = res_mask;
    batch_chosen_[t] = bonus > 0 ? ChooseWithBonus(bonus, res_mask, id, value) : original_;
    if (relative_logits) {
      // Logits relative to the top expert, exponentiated next.
      const float top = value[0];
      for (uint32_t p = 0; p < r; ++p) value[p] -= top;
    }
  }
}

const float* LayerRouter::UnnormalisedWeights(uint32_t tokens) {
  if (scorer_ != nullptr) return batch_score_.data();
  float* weight = batch_relative_.data();
  const size_t count = batch_relative_.size();
  if (config_.rule.selection == Selection::kTopKThenSigmoid) {
    // The candidates' logits as selected (Choose left them as they are).
    for (size_t i = 0; i < count; ++i) weight[i] = Sigmoid(weight[i]);
    return weight;
  }
  // Softmax numerators relative to the top expert's, vectorised over the
  // batch: only the original top-r are exponentiated, never all experts...
  ExpNonPositiveBatch(weight, count);
  if (config_.rule.NeedsSoftmaxDenominator()) {
    // ...unless the weights are probabilities themselves.
    const uint32_t r = max_rank_;
    for (uint32_t t = 0; t < tokens; ++t) {
      const float denominator = batch_denominator_[t];
      for (uint32_t p = 0; p < r; ++p) weight[size_t{t} * r + p] /= denominator;
    }
  }
  return weight;
}

const float* LayerRouter::PrefetchStrengths(const float* weights, uint32_t tokens) {
  const RoutingRule& rule = config_.rule;
  const bool sigmoid =
      rule.score == ScoreFunction::kSigmoid || rule.selection == Selection::kTopKThenSigmoid;
  if (!sigmoid) return weights;
  // A sigmoid score's odds, s / (1 - s), are e^logit: their ratio is the
  // softmax ratio of the logits, so one threshold means the same for every
  // rule (sigmoid scores themselves are all near 1 at the top).
  const size_t count = size_t{tokens} * max_rank_;
  batch_strength_.resize(count);
  for (size_t i = 0; i < count; ++i) batch_strength_[i] = weights[i] / (1.0f - weights[i]);
  return batch_strength_.data();
}

absl::Status LayerRouter::Route(absl::Span<const float> logits,
                                const std::atomic<uint8_t>* resident, RouteResult* out) {
  const uint32_t n = config_.num_experts;
  if (absl::Status s = ValidateLogitsShape(logits, n); !s.ok()) return s;
  const uint32_t k = config_.top_k;
  const uint32_t tokens = static_cast<uint32_t>(logits.size() / n);
  // Phase 1, per token: the candidates (the rule's original top-r), every
  // logit checked on the way. Nothing has changed yet if one is not finite.
  if (!SelectCandidates(logits)) return ValidateLogits(logits, n);
  out->tokens = tokens;
  out->top_k = k;
  out->experts.resize(size_t{tokens} * k);
  out->weights.resize(size_t{tokens} * k);
  out->resident.resize(size_t{tokens} * k);
  out->prefetch.clear();
  if (scorer_ == nullptr && config_.rule.NeedsSoftmaxDenominator()) {
    batch_denominator_.resize(tokens);
    for (uint32_t t = 0; t < tokens; ++t) {
      batch_denominator_[t] = SoftmaxDenominator(logits.data() + size_t{t} * n, n,
                                                 batch_relative_[size_t{t} * max_rank_]);
    }
  }

  // One bonus for the batch, from the running range as of its start, so
  // tokens do not wait on each other. With max_rank == top_k the bonus has
  // nothing to choose between.
  const bool can_reroute = resident != nullptr && max_rank_ > k;
  const bool range_seen = range_seen_;
  const double range_sum = RangeSum(tokens);
  const float bonus = can_reroute ? BatchBonus(range_sum, tokens) : 0.0f;
  // Per token: which candidates are resident, and the tentative choice.
  Choose(tokens, resident, bonus);
  out->range_change = UpdateRange(range_sum, tokens, range_seen);
  // Phase 2, over the batch: each candidate's unnormalised weight.
  const float* weights = UnnormalisedWeights(tokens);
  // Phase 3, per token: the mass guard and the outputs.
  const RoutingRule& rule = config_.rule;
  const GuardSettings guard{k,
                            max_rank_,
                            original_,
                            static_cast<float>(config_.min_gate_mass),
                            static_cast<float>(config_.prefetch_threshold),
                            rule.normalization,
                            static_cast<float>(rule.normalization_param),
                            static_cast<float>(rule.scaling)};
  const float* strengths =
      config_.prefetch_threshold > 0 ? PrefetchStrengths(weights, tokens) : weights;
  const BatchTotals totals = GuardAndWrite(
      guard, tokens, batch_id_.data(), weights, strengths, batch_res_.data(), batch_chosen_.data(),
      prefetch_bits_.data(), out->experts.data(), out->resident.data(), out->weights.data());
  out->hits = totals.hits;
  out->misses = uint64_t{tokens} * k - totals.hits;
  out->changed_tokens = totals.changed_tokens;
  // Unchanged tokens keep all of their mass.
  out->gate_mass_sum = totals.mass_sum + (tokens - totals.changed_tokens);
  out->gate_mass_min = totals.mass_min;
  affinity_->UpdateTokens(out->experts, k);
  TakePrefetch(absl::MakeSpan(prefetch_bits_), &out->prefetch);
  return absl::OkStatus();
}

}  // namespace moe_router
