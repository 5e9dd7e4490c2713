#include "core/routing/affinity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "core/routing/top_n_internal.h"

namespace moe_router {
namespace {
// Below this the lazily decayed values are folded back so that the stored
// values stay far from overflow.
constexpr double kMinScale = 1e-150;
}  // namespace

absl::Status AffinityConfig::Validate() const {
  if (!(decay > 0.0 && decay <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("affinity.decay must be in (0, 1], got %g", decay));
  }
  if (!(boost >= 0.0) || !std::isfinite(boost)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("affinity.boost must be finite and >= 0, got %g", boost));
  }
  if (!(max_score > 0.0) || !std::isfinite(max_score)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("affinity.max_score must be finite and > 0, got %g", max_score));
  }
  if (!(coactivation_decay > 0.0 && coactivation_decay <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "affinity.coactivation_decay must be in (0, 1], got %g", coactivation_decay));
  }
  return absl::OkStatus();
}

ExpertAffinity::ExpertAffinity(uint32_t num_experts, const AffinityConfig& config)
    : num_experts_(num_experts),
      config_(config),
      inv_decay_(1.0 / config.decay),
      raw_(new std::atomic<double>[num_experts]),
      counts_(new std::atomic<uint64_t>[num_experts]) {
  for (uint32_t e = 0; e < num_experts_; ++e) {
    raw_[e].store(0.0, std::memory_order_relaxed);
    counts_[e].store(0, std::memory_order_relaxed);
  }
}

void ExpertAffinity::UpdateTokens(absl::Span<const uint32_t> activated, uint32_t per_token) {
  // A token with no activations still decays every score.
  const size_t tokens = per_token == 0 ? 1 : activated.size() / per_token;
  double scale = scale_.load(std::memory_order_relaxed);
  uint64_t max_count = max_count_.load(std::memory_order_relaxed);
  // Locals: the atomic stores below would otherwise force reloads of the
  // members on every expert.
  std::atomic<double>* const raw = raw_.get();
  std::atomic<uint64_t>* const counts = counts_.get();
  const uint32_t* token = activated.data();
  for (size_t t = 0; t < tokens; ++t) {
    scale *= config_.decay;
    // 1/scale tracked by multiplication: no division on the routing path.
    inv_scale_ *= inv_decay_;
    if (scale < kMinScale) {
      scale_.store(scale, std::memory_order_relaxed);
      Renormalize();
      scale = 1.0;
      inv_scale_ = 1.0;
    }
    const double gain = config_.boost * inv_scale_;
    const double cap = config_.max_score * inv_scale_;
    for (const uint32_t* e = token; e != token + per_token; ++e) {
      const double v = raw[*e].load(std::memory_order_relaxed) + gain;
      raw[*e].store(v < cap ? v : cap, std::memory_order_relaxed);
      const uint64_t c = counts[*e].load(std::memory_order_relaxed) + 1;
      counts[*e].store(c, std::memory_order_relaxed);
      max_count = c > max_count ? c : max_count;
    }
    token += per_token;
    // Readers see the scale that matches the stored values.
    scale_.store(scale, std::memory_order_relaxed);
  }
  max_count_.store(max_count, std::memory_order_relaxed);
  updates_.store(updates_.load(std::memory_order_relaxed) + tokens, std::memory_order_relaxed);
  version_.store(version_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

void ExpertAffinity::FoldActivations(uint64_t tokens, absl::Span<const uint32_t> activations) {
  if (tokens == 0) return;
  const double d = config_.decay;
  const double factor = std::pow(d, static_cast<double>(tokens));
  // The mean of d^i over the run's tokens: what one boost is worth at its end.
  const double spread = d == 1.0 ? 1.0 : (1.0 - factor) / (static_cast<double>(tokens) * (1.0 - d));
  const double scale = scale_.load(std::memory_order_relaxed) * factor;
  scale_.store(scale, std::memory_order_relaxed);
  inv_scale_ /= factor;
  if (scale < kMinScale) {
    Renormalize();
    inv_scale_ = 1.0;
  }
  const double cap = config_.max_score * inv_scale_;
  uint64_t max_count = max_count_.load(std::memory_order_relaxed);
  for (uint32_t e = 0; e < num_experts_ && e < activations.size(); ++e) {
    if (activations[e] == 0) continue;
    const double v = raw_[e].load(std::memory_order_relaxed) +
                     config_.boost * activations[e] * spread * inv_scale_;
    raw_[e].store(v < cap ? v : cap, std::memory_order_relaxed);
    const uint64_t c = counts_[e].load(std::memory_order_relaxed) + activations[e];
    counts_[e].store(c, std::memory_order_relaxed);
    max_count = std::max(max_count, c);
  }
  max_count_.store(max_count, std::memory_order_relaxed);
  updates_.store(updates_.load(std::memory_order_relaxed) + tokens, std::memory_order_relaxed);
  version_.store(version_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

void ExpertAffinity::Renormalize() {
  const double scale = scale_.load(std::memory_order_relaxed);
  for (uint32_t e = 0; e < num_experts_; ++e) {
    raw_[e].store(raw_[e].load(std::memory_order_relaxed) * scale, std::memory_order_relaxed);
  }
  scale_.store(1.0, std::memory_order_relaxed);
}

double ExpertAffinity::Score(uint32_t expert) const {
  return raw_[expert].load(std::memory_order_relaxed) * scale_.load(std::memory_order_relaxed);
}

std::vector<uint32_t> ExpertAffinity::TopByAffinity(uint32_t k) const {
  return internal::TopN(num_experts_, k, [&](uint32_t e) { return Score(e); });
}

std::vector<uint32_t> ExpertAffinity::TopByFrequency(uint32_t k) const {
  return internal::TopN(num_experts_, k, [&](uint32_t e) { return static_cast<double>(Count(e)); });
}

std::optional<uint32_t> ExpertAffinity::LeastAffine(absl::Span<const uint32_t> candidates) const {
  std::optional<uint32_t> best;
  double best_score = 0;
  for (uint32_t e : candidates) {
    const double s = Score(e);
    if (!best || s < best_score || (s == best_score && e < *best)) {
      best = e;
      best_score = s;
    }
  }
  return best;
}

double ExpertAffinity::FrequencyRatio(uint32_t expert) const {
  const uint64_t max_count = MaxCount();
  return max_count == 0 ? 0.0 : static_cast<double>(Count(expert)) / max_count;
}

double ExpertAffinity::FrequencyPercentile(uint32_t expert) const {
  const uint64_t mine = Count(expert);
  uint32_t below = 0;
  for (uint32_t e = 0; e < num_experts_; ++e) below += Count(e) < mine;
  return static_cast<double>(below) / num_experts_;
}

ExpertAffinity::State ExpertAffinity::Export() const {
  State state;
  state.updates = updates();
  for (uint32_t e = 0; e < num_experts_; ++e) {
    state.scores.push_back(Score(e));
    state.counts.push_back(Count(e));
  }
  return state;
}

absl::Status ExpertAffinity::Import(const State& state) {
  if (state.scores.size() != num_experts_ || state.counts.size() != num_experts_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("affinity state has %d scores and %d counts, expected %d each",
                        state.scores.size(), state.counts.size(), num_experts_));
  }
  for (double s : state.scores) {
    if (!std::isfinite(s) || s < 0 || s > config_.max_score) {
      return absl::InvalidArgumentError(
          absl::StrFormat("affinity state score %g is outside [0, max_score]", s));
    }
  }
  uint64_t max_count = 0;
  for (uint32_t e = 0; e < num_experts_; ++e) {
    raw_[e].store(state.scores[e], std::memory_order_relaxed);
    counts_[e].store(state.counts[e], std::memory_order_relaxed);
    max_count = std::max(max_count, state.counts[e]);
  }
  scale_.store(1.0, std::memory_order_relaxed);
  inv_scale_ = 1.0;
  max_count_.store(max_count, std::memory_order_relaxed);
  updates_.store(state.updates, std::memory_order_relaxed);
  version_.store(version_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  return absl::OkStatus();
}

CoActivation::CoActivation(uint32_t from_experts, uint32_t to_experts, double decay)
    : from_(from_experts),
      to_(to_experts),
      decay_(decay),
      raw_(size_t{from_experts} * to_experts, 0.0),
      row_scale_(from_experts, 1.0) {}

std::vector<uint32_t> CoActivation::Predict(absl::Span<const uint32_t> prev, uint32_t n) const {
  std::vector<double> weights(from_, 0.0);
  for (uint32_t e : prev) weights[e] += 1.0;
  return PredictWeighted(weights, n);
}

std::vector<uint32_t> CoActivation::PredictWeighted(absl::Span<const double> weights,
                                                    uint32_t n) const {
  std::vector<double> sum(to_, 0.0);
  for (uint32_t i = 0; i < from_; ++i) {
    if (weights[i] == 0) continue;
    const double w = weights[i] * row_scale_[i];
    const double* row = &raw_[size_t{i} * to_];
    for (uint32_t j = 0; j < to_; ++j) sum[j] += w * row[j];
  }
  return internal::TopN(
      to_, n, [&](uint32_t j) { return sum[j]; }, 0.0);
}

void CoActivation::Update(absl::Span<const uint32_t> prev, absl::Span<const uint32_t> next) {
  const std::vector<uint32_t> predicted = Predict(prev, 2);
  if (!predicted.empty()) {
    const auto chosen = [&](uint32_t e) {
      return std::find(next.begin(), next.end(), e) != next.end();
    };
    ++scored_;
    top1_hits_ += chosen(predicted[0]);
    double overlap = 0;
    for (uint32_t e : predicted) overlap += chosen(e);
    top2_overlap_ += overlap / std::min<size_t>(2, std::max<size_t>(1, next.size()));
  }
  for (uint32_t i : prev) {
    double& scale = row_scale_[i];
    double* row = &raw_[size_t{i} * to_];
    scale *= decay_;
    if (scale < kMinScale) {
      for (uint32_t j = 0; j < to_; ++j) row[j] *= scale;
      scale = 1.0;
    }
    const double add = 1.0 / scale;
    for (uint32_t j : next) row[j] += add;
  }
}

void CoActivation::FoldPairs(absl::Span<const uint32_t> index, absl::Span<const uint32_t> count,
                             uint32_t per_token) {
  // Tokens each row led: its pairs over the pairs a token makes per row.
  thread_local std::vector<uint64_t> led;
  led.assign(from_, 0);
  for (size_t i = 0; i < index.size(); ++i) led[index[i] / to_] += count[i];
  for (uint32_t row = 0; row < from_; ++row) {
    if (led[row] == 0) continue;
    double& scale = row_scale_[row];
    scale *= std::pow(decay_, static_cast<double>(led[row] / std::max<uint32_t>(per_token, 1)));
    if (scale < kMinScale) {
      for (uint32_t j = 0; j < to_; ++j) raw_[size_t{row} * to_ + j] *= scale;
      scale = 1.0;
    }
  }
  for (size_t i = 0; i < index.size(); ++i) {
    raw_[index[i]] += count[i] / row_scale_[index[i] / to_];
  }
}

void CoActivation::TopPerRow(uint32_t n, std::vector<uint32_t>* ids,
                             std::vector<float>* weights) const {
  n = std::min(n, to_);
  ids->assign(size_t{from_} * n, 0);
  weights->assign(size_t{from_} * n, 0.0f);
  for (uint32_t row = 0; row < from_; ++row) {
    const std::vector<uint32_t> top = internal::TopN(
        to_, n, [&](uint32_t j) { return Value(row, j); }, 0.0);
    for (size_t i = 0; i < top.size(); ++i) {
      (*ids)[size_t{row} * n + i] = top[i];
      (*weights)[size_t{row} * n + i] = static_cast<float>(Value(row, top[i]));
    }
  }
}

double CoActivation::Top1Accuracy() const { return scored_ == 0 ? 0.0 : top1_hits_ / scored_; }

double CoActivation::Top2Accuracy() const { return scored_ == 0 ? 0.0 : top2_overlap_ / scored_; }

std::vector<double> CoActivation::ExportMatrix() const {
  std::vector<double> out(raw_.size());
  for (uint32_t i = 0; i < from_; ++i) {
    for (uint32_t j = 0; j < to_; ++j) out[size_t{i} * to_ + j] = Value(i, j);
  }
  return out;
}

absl::Status CoActivation::ImportMatrix(absl::Span<const double> matrix) {
  if (matrix.size() != raw_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "co-activation matrix has %d values, expected %d", matrix.size(), raw_.size()));
  }
  for (double v : matrix) {
    if (!std::isfinite(v) || v < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("co-activation value %g is not finite and >= 0", v));
    }
  }
  raw_.assign(matrix.begin(), matrix.end());
  std::fill(row_scale_.begin(), row_scale_.end(), 1.0);
  return absl::OkStatus();
}

}  // namespace moe_router
