#include "core/router.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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
  if (max_rank != 0 && (max_rank < top_k || max_rank > num_experts)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "router.max_rank (%d) must be 0 or in [top_k, num_experts] = [%d, %d]",
        max_rank, top_k, num_experts));
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
  const uint32_t rank = max_rank != 0 ? max_rank : top_k + 2;
  return rank < num_experts ? rank : num_experts;
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
      taken_(max_rank_),
      res_pos_(max_rank_),
      abs_pos_(max_rank_),
      chosen_pos_(config.top_k),
      prefetch_mark_(config.num_experts, 0) {}

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
  const double weight = 1.0 - std::pow(1.0 - config_.range_ema_alpha, tokens);
  const double mean = range_sum / tokens;
  range_ema_ = range_seen_ ? range_ema_ + weight * (mean - range_ema_) : mean;
  range_seen_ = true;
}

bool LayerRouter::ChooseWithBonus(float bonus, const std::atomic<uint8_t>* resident,
                                  const uint32_t* id, const float* logit, uint8_t* res) {
  const uint32_t k = config_.top_k;
  const uint32_t r = max_rank_;
  const uint32_t protect = config_.protected_top;
  // Past the protected prefix, resident and absent candidates each stay in
  // descending logit order, and the bonus shifts a whole list by the same
  // amount: the best k - protect come from merging the two lists.
  uint32_t n_res = 0, n_abs = 0;
  for (uint32_t p = 0; p < r; ++p) {
    const uint8_t is_res = resident[id[p]].load(std::memory_order_relaxed) != 0;
    res[p] = is_res;
    taken_[p] = p < protect;
    // Branch-free split: write to both lists, advance one.
    const bool listed = p >= protect;
    res_pos_[n_res] = p;
    abs_pos_[n_abs] = p;
    n_res += listed & is_res;
    n_abs += listed & !is_res;
  }
  uint32_t i = 0, j = 0;
  bool changed = false;
  for (uint32_t s = protect; s < k; ++s) {
    bool take_resident;
    if (i == n_res) {
      take_resident = false;
    } else if (j == n_abs) {
      take_resident = true;
    } else {
      const float a = logit[res_pos_[i]] + bonus;
      const float b = logit[abs_pos_[j]];
      take_resident = a > b || (a == b && id[res_pos_[i]] < id[abs_pos_[j]]);
    }
    const uint32_t p = take_resident ? res_pos_[i++] : abs_pos_[j++];
    taken_[p] = 1;
    changed |= p >= k;
  }
  // Report in descending original probability.
  for (uint32_t p = 0, s = 0; p < r; ++p) {
    if (taken_[p]) chosen_pos_[s++] = p;
  }
  return changed;
}

absl::Status LayerRouter::Route(absl::Span<const float> logits,
                                const std::atomic<uint8_t>* resident, RouteBatch* out) {
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
  out->changed_tokens = 0;
  out->gate_mass_sum = 0;
  out->gate_mass_min = 1;
  out->hits = 0;

  // One bonus for the batch, from the running range as of its start, so
  // tokens do not wait on each other.
  const float bonus = can_reroute ? BatchBonus(logits) : 0.0f;
  double range_sum = 0;

  // Phase 1, per token: the candidates (original top-r), whether each is
  // resident, and the tentative choice.
  batch_id_.resize(size_t{tokens} * r);
  batch_prob_.resize(size_t{tokens} * r);
  batch_res_.resize(size_t{tokens} * r);
  batch_pos_.resize(size_t{tokens} * k);
  batch_changed_.resize(tokens);
  batch_lowest_.resize(tokens);
  selector_.SelectRows(logits.data(), tokens, batch_id_.data(), batch_prob_.data(),
                       batch_lowest_.data());
  for (uint32_t t = 0; t < tokens; ++t) {
    uint32_t* id = batch_id_.data() + size_t{t} * r;
    float* logit = batch_prob_.data() + size_t{t} * r;
    const float top = logit[0];
    range_sum += top - batch_lowest_[t];
    uint8_t* res = batch_res_.data() + size_t{t} * r;
    uint32_t* pos = batch_pos_.data() + size_t{t} * k;
    const bool changed = bonus > 0 && ChooseWithBonus(bonus, resident, id, logit, res);
    if (changed) {
      for (uint32_t i = 0; i < k; ++i) pos[i] = chosen_pos_[i];
    } else {
      for (uint32_t p = 0; p < k; ++p) pos[p] = p;
      if (bonus <= 0) {
        for (uint32_t p = 0; p < k; ++p) {
          res[p] = resident != nullptr ? resident[id[p]].load(std::memory_order_relaxed) : 0;
        }
      }
    }
    batch_changed_[t] = changed;
    // Logits relative to the top expert, exponentiated below.
    for (uint32_t p = 0; p < r; ++p) logit[p] -= top;
  }
  UpdateRange(range_sum, tokens);

  // Phase 2, over the batch (vectorised): each candidate's original
  // probability relative to the top expert's. Only the original top-r are
  // exponentiated, never a softmax over all experts.
  ExpNonPositiveBatch(batch_prob_.data(), batch_prob_.size());

  // Phase 3, per token: the mass guard, the outputs, and learning.
  const float prefetch_ratio = static_cast<float>(config_.prefetch_threshold);
  for (uint32_t t = 0; t < tokens; ++t) {
    const uint32_t* id = batch_id_.data() + size_t{t} * r;
    const float* prob = batch_prob_.data() + size_t{t} * r;
    const uint8_t* res = batch_res_.data() + size_t{t} * r;
    uint32_t* pos = batch_pos_.data() + size_t{t} * k;
    bool changed = batch_changed_[t] != 0;
    float kept = 0;
    for (uint32_t i = 0; i < k; ++i) kept += prob[pos[i]];
    if (changed) {
      float orig = 0;
      for (uint32_t p = 0; p < k; ++p) orig += prob[p];
      if (kept < static_cast<float>(config_.min_gate_mass) * orig) {
        // Too costly for this token: it keeps its original top-k.
        changed = false;
        for (uint32_t p = 0; p < k; ++p) pos[p] = p;
        kept = orig;
      } else {
        const double mass = kept / orig;
        out->gate_mass_sum += mass;
        out->gate_mass_min = mass < out->gate_mass_min ? mass : out->gate_mass_min;
        ++out->changed_tokens;
      }
    }
    uint32_t* ex = out->experts.data() + size_t{t} * k;
    uint8_t* out_res = out->resident.data() + size_t{t} * k;
    float* w = out->weights.data() + size_t{t} * k;
    const float inv = 1.0f / kept;
    for (uint32_t i = 0; i < k; ++i) {
      ex[i] = id[pos[i]];
      out_res[i] = res[pos[i]];
      w[i] = prob[pos[i]] * inv;
      out->hits += res[pos[i]] != 0;
    }
    // Strong unchosen runners-up become prefetch candidates. pos is
    // ascending, so one merge walk skips the chosen.
    for (uint32_t p = 1, i = 0; p < r && prob[p] >= prefetch_ratio && prefetch_ratio > 0; ++p) {
      while (i < k && pos[i] < p) ++i;
      if (i < k && pos[i] == p) continue;
      prefetch_mark_[id[p]] = 1;
    }
    affinity_->Update(absl::MakeConstSpan(ex, k));
  }
  out->gate_mass_sum += tokens - out->changed_tokens;  // unchanged tokens keep all
  out->misses = uint64_t{tokens} * k - out->hits;

  for (uint32_t e = 0; e < n; ++e) {
    if (prefetch_mark_[e] == 0) continue;
    prefetch_mark_[e] = 0;
    out->prefetch.push_back(e);
  }
  return absl::OkStatus();
}

}  // namespace moe_router
