#include "core/router.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "core/top_select.h"

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
  if (!std::isfinite(cache_bonus) || cache_bonus < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.cache_bonus must be finite and >= 0, got %g", cache_bonus));
  }
  if (!(prefetch_threshold >= 0 && prefetch_threshold <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.prefetch_threshold must be in [0, 1], got %g", prefetch_threshold));
  }
  if (protected_top > top_k) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.protected_top (%d) must be <= router.top_k (%d)", protected_top, top_k));
  }
  const uint32_t rank_limit = std::min(num_experts, kMaxRank);
  if (max_rank != 0 && (max_rank < top_k || max_rank > rank_limit)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.max_rank (%d) must be 0 or in [top_k, min(num_experts, %d)] = [%d, %d]",
        max_rank, kMaxRank, top_k, rank_limit));
  }
  if (!(min_gate_mass >= 0 && min_gate_mass <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.min_gate_mass must be in [0, 1], got %g", min_gate_mass));
  }
  if (!(range_ema_alpha > 0 && range_ema_alpha <= 1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.range_ema_alpha must be in (0, 1], got %g", range_ema_alpha));
  }
  return absl::OkStatus();
}

uint32_t RouterConfig::EffectiveMaxRank() const {
  if (max_rank != 0) return max_rank;
  return std::min({top_k + 2, num_experts, kMaxRank});
}

absl::Status ValidateLogits(absl::Span<const float> logits, uint32_t num_experts) {
  if (num_experts == 0 || logits.size() % num_experts != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "gate_logits has %d values, not a multiple of num_experts (%d)",
        logits.size(), num_experts));
  }
  // The common all-finite case is one vectorised scan; the search for the
  // culprit runs only on failure.
  if (AllFinite(logits.data(), logits.size())) return absl::OkStatus();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "gate_logits of token %d has a %s value at expert %d", i / num_experts,
          std::isnan(logits[i]) ? "NaN" : "infinite", i % num_experts));
    }
  }
  return absl::OkStatus();
}

namespace {
// A mask of positions [0, n), n <= 64.
inline uint64_t LowBits(uint32_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; }
}  // namespace

absl::StatusOr<LayerRouter> LayerRouter::Create(const RouterConfig& config,
                                                const AffinityConfig& affinity) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (absl::Status s = affinity.Validate(); !s.ok()) return s;
  return LayerRouter(config, affinity);
}

LayerRouter::LayerRouter(const RouterConfig& config, const AffinityConfig& affinity)
    : config_(config),
      max_rank_(config.EffectiveMaxRank()),
      affinity_(std::make_unique<ExpertAffinity>(config.num_experts, affinity)),
      selector_(config.num_experts, max_rank_),
      original_(LowBits(config.top_k)),
      protected_(LowBits(config.protected_top)),
      unprotected_(LowBits(max_rank_) & ~protected_),
      prefetch_bits_((config.num_experts + 63) / 64, 0) {}

float LayerRouter::BatchBonus(absl::Span<const float> logits) {
  if (!config_.memory_aware || config_.cache_bonus <= 0) return 0;
  if (config_.bonus_mode == BonusMode::kAbsolute) {
    return static_cast<float>(config_.cache_bonus);
  }
  // The first batch seeds the running range from its own tokens.
  if (!range_seen_) {
    const uint32_t n = config_.num_experts;
    double sum = 0;
    for (size_t t = 0; t < logits.size() / n; ++t) {
      const auto row = logits.subspan(t * n, n);
      sum += *std::max_element(row.begin(), row.end()) -
             *std::min_element(row.begin(), row.end());
    }
    range_ema_ = sum / (logits.size() / n);
    range_seen_ = true;
  }
  return static_cast<float>(config_.cache_bonus * range_ema_);
}

void LayerRouter::UpdateRange(double range_sum, uint32_t tokens) {
  if (tokens == 0) return;
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
}

uint64_t LayerRouter::ChooseWithBonus(float bonus, uint64_t res_mask, const uint32_t* id,
                                      const float* logit) const {
  // Past the protected prefix, resident and absent candidates each stay in
  // descending logit order, and the bonus shifts a whole list by the same
  // amount: the best k - protect come from merging the two lists, taking
  // each list's lowest remaining position.
  uint64_t resident = res_mask & unprotected_;
  uint64_t absent = ~res_mask & unprotected_;
  uint64_t chosen = protected_;
  for (uint32_t s = config_.protected_top; s < config_.top_k; ++s) {
    // r >= k, so at most one list runs dry; a dry list never wins.
    const uint32_t pr = resident != 0 ? static_cast<uint32_t>(__builtin_ctzll(resident)) : 0;
    const uint32_t pa = absent != 0 ? static_cast<uint32_t>(__builtin_ctzll(absent)) : 0;
    const float a = resident != 0 ? logit[pr] + bonus : -std::numeric_limits<float>::infinity();
    const float b = absent != 0 ? logit[pa] : -std::numeric_limits<float>::infinity();
    const bool take_resident = a > b || (a == b && id[pr] < id[pa]);
    const uint64_t bit = take_resident ? resident & -resident : absent & -absent;
    chosen |= bit;
    resident &= ~bit;
    absent &= ~bit;
  }
  return chosen;
}

absl::Status LayerRouter::Route(absl::Span<const float> logits,
                                const std::atomic<uint8_t>* resident, RouteResult* out) {
  const uint32_t n = config_.num_experts;
  if (absl::Status s = ValidateLogits(logits, n); !s.ok()) return s;

  const uint32_t k = config_.top_k;
  const uint32_t r = max_rank_;
  const uint32_t tokens = static_cast<uint32_t>(logits.size() / n);
  // With max_rank == top_k the bonus has nothing to choose between.
  const bool can_reroute = resident != nullptr && r > k;

  out->tokens = tokens;
  out->top_k = k;
  out->experts.resize(size_t{tokens} * k);
  out->weights.resize(size_t{tokens} * k);
  out->resident.resize(size_t{tokens} * k);
  out->prefetch.clear();

  // One bonus for the batch, from the running range as of its start, so
  // tokens do not wait on each other.
  const float bonus = can_reroute ? BatchBonus(logits) : 0.0f;
  double range_sum = 0;

  // Phase 1, per token: the candidates (original top-r), which are
  // resident, and the tentative choice.
  batch_id_.resize(size_t{tokens} * r);
  batch_relative_.resize(size_t{tokens} * r);
  batch_lowest_.resize(tokens);
  batch_res_.resize(tokens);
  batch_chosen_.resize(tokens);
  selector_.SelectRows(logits.data(), tokens, batch_id_.data(), batch_relative_.data(),
                       batch_lowest_.data());
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint32_t* id = batch_id_.data() + size_t{t} * r;
    float* logit = batch_relative_.data() + size_t{t} * r;
    const float top = logit[0];
    range_sum += top - batch_lowest_[t];
    uint64_t res_mask = 0;
    if (resident != nullptr) {
      for (uint32_t p = 0; p < r; ++p) {
        res_mask |= uint64_t{resident[id[p]].load(std::memory_order_relaxed) != 0} << p;
      }
    }
    batch_res_[t] = res_mask;
    batch_chosen_[t] = bonus > 0 ? ChooseWithBonus(bonus, res_mask, id, logit) : original_;
    // Logits relative to the top expert, exponentiated below.
    for (uint32_t p = 0; p < r; ++p) logit[p] -= top;
  }
  UpdateRange(range_sum, tokens);

  // Phase 2, over the batch (vectorised): each candidate's original
  // probability relative to the top expert's. Only the original top-r are
  // exponentiated, never a softmax over all experts.
  ExpNonPositiveBatch(batch_relative_.data(), batch_relative_.size());

  // Phase 3, per token: the mass guard and the outputs. Totals and
  // pointers live in locals: the byte stores to `resident` may alias
  // anything, which would force reloads through `out` and `this`.
  const float prefetch_ratio = static_cast<float>(config_.prefetch_threshold);
  const float min_mass = static_cast<float>(config_.min_gate_mass);
  const uint64_t original = original_;
  const uint32_t* const ids = batch_id_.data();
  const float* const probs = batch_relative_.data();
  const uint64_t* const res_masks = batch_res_.data();
  const uint64_t* const choices = batch_chosen_.data();
  uint64_t* const prefetch_bits = prefetch_bits_.data();
  uint32_t* const out_experts = out->experts.data();
  uint8_t* const out_resident = out->resident.data();
  float* const out_weights = out->weights.data();
  uint64_t hits = 0;
  uint32_t changed_tokens = 0;
  double mass_sum = 0, mass_min = 1;
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint32_t* id = ids + size_t{t} * r;
    const float* prob = probs + size_t{t} * r;
    const uint64_t res_mask = res_masks[t];
    uint64_t chosen = choices[t];
    float kept = 0;
    for (uint64_t m = chosen; m != 0; m &= m - 1) kept += prob[__builtin_ctzll(m)];
    if (chosen != original) {
      float orig = 0;
      for (uint32_t p = 0; p < k; ++p) orig += prob[p];
      if (kept < min_mass * orig) {
        // Too costly for this token: it keeps its original top-k.
        chosen = original;
        kept = orig;
      } else {
        const double mass = kept / orig;
        mass_sum += mass;
        mass_min = mass < mass_min ? mass : mass_min;
        ++changed_tokens;
      }
    }
    // Ascending positions: descending original probability.
    uint32_t* ex = out_experts + size_t{t} * k;
    uint8_t* out_res = out_resident + size_t{t} * k;
    float* w = out_weights + size_t{t} * k;
    const float inv = 1.0f / kept;
    uint32_t i = 0;
    for (uint64_t m = chosen; m != 0; m &= m - 1, ++i) {
      const uint32_t p = static_cast<uint32_t>(__builtin_ctzll(m));
      ex[i] = id[p];
      const uint8_t hit = static_cast<uint8_t>((res_mask >> p) & 1);
      out_res[i] = hit;
      hits += hit;
      w[i] = prob[p] * inv;
    }
    // Strong unchosen runners-up become prefetch candidates.
    if (prefetch_ratio > 0) {
      const uint64_t strong = MaskAtLeast(prob, r, prefetch_ratio) & ~uint64_t{1};
      for (uint64_t m = strong & ~chosen; m != 0; m &= m - 1) {
        const uint32_t e = id[__builtin_ctzll(m)];
        prefetch_bits[e / 64] |= uint64_t{1} << (e % 64);
      }
    }
  }
  out->hits = hits;
  out->misses = uint64_t{tokens} * k - hits;
  out->changed_tokens = changed_tokens;
  out->gate_mass_sum = mass_sum + (tokens - changed_tokens);  // unchanged tokens keep all
  out->gate_mass_min = mass_min;
  affinity_->UpdateTokens(out->experts, k);

  for (uint32_t word = 0; word < prefetch_bits_.size(); ++word) {
    for (uint64_t m = prefetch_bits_[word]; m != 0; m &= m - 1) {
      out->prefetch.push_back(word * 64 + static_cast<uint32_t>(__builtin_ctzll(m)));
    }
    prefetch_bits_[word] = 0;
  }
  return absl::OkStatus();
}

}  // namespace moe_router
