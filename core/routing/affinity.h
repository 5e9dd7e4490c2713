#ifndef MOE_ROUTER_CORE_ROUTING_AFFINITY_H_
#define MOE_ROUTER_CORE_ROUTING_AFFINITY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace moe_router {

struct AffinityConfig {
  /// Every update multiplies all scores by `decay` (0 < decay <= 1).
  double decay = 0.99;
  /// Added to the score of each activated expert.
  double boost = 1.0;
  /// Scores are clamped to at most this.
  double max_score = 100.0;
  /// Decay of the next-layer co-activation EMA (per activation of a row).
  double coactivation_decay = 0.98;

  absl::Status Validate() const;
};

/// EMA affinity of the experts of one layer, plus activation counts.
///
/// Decay is applied lazily: a stored value v means score v * scale_, and an
/// update multiplies only scale_, so one token costs O(top_k), not
/// O(num_experts). One writer at a time (the layer's router, under its lock);
/// readers on any thread see atomics, so the eviction policy of the shared
/// cache may read scores while the layer routes.
///
///   ExpertAffinity aff(8, {});
///   uint32_t chosen[] = {3, 5};
///   aff.Update(chosen);
///   double s = aff.Score(3);  // 1.0
class ExpertAffinity {
 public:
  ExpertAffinity(uint32_t num_experts, const AffinityConfig& config);

  /// One token's activations: decay all, boost each of `activated`.
  void Update(absl::Span<const uint32_t> activated) {
    UpdateTokens(activated, static_cast<uint32_t>(activated.size()));
  }
  /// Update for each token in turn: `activated` holds `per_token` experts per
  /// token (a routed batch's experts, row-major).
  void UpdateTokens(absl::Span<const uint32_t> activated, uint32_t per_token);

  uint32_t num_experts() const { return num_experts_; }
  double Score(uint32_t expert) const;
  uint64_t Count(uint32_t expert) const { return counts_[expert].load(std::memory_order_relaxed); }
  uint64_t MaxCount() const { return max_count_.load(std::memory_order_relaxed); }
  uint64_t updates() const { return updates_.load(std::memory_order_relaxed); }
  /// Moves whenever any score may have changed: eviction orders by score
  /// re-rank the layer then.
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }

  /// The k experts with the highest affinity (ties: lower id first).
  std::vector<uint32_t> TopByAffinity(uint32_t k) const;
  /// The k experts with the most activations (ties: lower id first).
  std::vector<uint32_t> TopByFrequency(uint32_t k) const;
  /// The candidate with the lowest affinity (ties: lower id), or nullopt if
  /// `candidates` is empty.
  std::optional<uint32_t> LeastAffine(absl::Span<const uint32_t> candidates) const;
  /// Activation count of `expert` as a fraction of the busiest expert's count
  /// (0 when nothing was activated yet).
  double FrequencyRatio(uint32_t expert) const;
  /// Fraction of this layer's experts activated strictly less often than
  /// `expert`, in [0, 1).
  double FrequencyPercentile(uint32_t expert) const;

  /// Folds in `tokens` tokens routed elsewhere that chose each expert
  /// `activations[e]` times. With decay 1 this equals routing them here;
  /// otherwise their boosts are taken as spread evenly over the tokens (the
  /// order within the run is not known), and the cap applies once at the
  /// end. One writer at a time, as UpdateTokens.
  void FoldActivations(uint64_t tokens, absl::Span<const uint32_t> activations);

  /// Learned state, for persisting across restarts.
  struct State {
    std::vector<double> scores;
    std::vector<uint64_t> counts;
    uint64_t updates = 0;
  };
  State Export() const;
  /// Replaces the learned state; rejects a state of the wrong size.
  absl::Status Import(const State& state);

 private:
  void Renormalize();

  const uint32_t num_experts_;
  const AffinityConfig config_;
  const double inv_decay_;
  // Written only by the single writer; atomics let other threads read.
  std::unique_ptr<std::atomic<double>[]> raw_;
  std::atomic<double> scale_{1.0};
  double inv_scale_ = 1.0;  // writer only
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> max_count_{0};
  std::atomic<uint64_t> updates_{0};
  std::atomic<uint64_t> version_{0};
};

/// EMA of how often expert i of layer l is followed by expert j of layer l+1
/// for the same token; predicts the next layer's experts for prefetch.
/// Each row decays lazily with its own scale, only when its expert is active.
/// Not thread-safe: the owner (the next layer's state) serialises access.
class CoActivation {
 public:
  CoActivation(uint32_t from_experts, uint32_t to_experts, double decay);

  /// Scores and records one token: `prev` chosen at layer l, `next` at l+1.
  /// Before learning from it, checks the prediction from `prev` against
  /// `next` to keep the top-1 and top-2 accuracy.
  void Update(absl::Span<const uint32_t> prev, absl::Span<const uint32_t> next);

  /// The n experts of layer l+1 most co-activated with the weighted set of
  /// layer-l experts (`weights[i]` for expert i; size from_experts); ties
  /// lower id first. Experts never seen co-activated are not returned.
  std::vector<uint32_t> PredictWeighted(absl::Span<const double> weights, uint32_t n) const;
  std::vector<uint32_t> Predict(absl::Span<const uint32_t> prev, uint32_t n) const;

  /// Fraction of the predicted top-1 that was among the next layer's
  /// experts, and mean overlap of the predicted top-2 with them.
  double Top1Accuracy() const;
  double Top2Accuracy() const;
  uint64_t scored_tokens() const { return scored_; }

  /// Folds in pairs counted elsewhere (index from * to_experts + to, each
  /// next-layer token contributing `per_token` pairs per previous expert):
  /// each row decays once per token it led, then gains its counts. Equal
  /// to the tokens' own updates with decay 1; otherwise the run's order is
  /// not known and the gains are taken as arriving last. The accuracy
  /// figures are not scored for them.
  void FoldPairs(absl::Span<const uint32_t> index, absl::Span<const uint32_t> count,
                 uint32_t per_token);
  /// Per row, its `n` largest entries (ties: lower id), weight 0 padding a
  /// row with fewer: row-major from_experts x n.
  void TopPerRow(uint32_t n, std::vector<uint32_t>* ids, std::vector<float>* weights) const;

  std::vector<double> ExportMatrix() const;
  absl::Status ImportMatrix(absl::Span<const double> matrix);

 private:
  double Value(uint32_t row, uint32_t col) const {
    return raw_[size_t{row} * to_ + col] * row_scale_[row];
  }

  const uint32_t from_;
  const uint32_t to_;
  const double decay_;
  std::vector<double> raw_;
  std::vector<double> row_scale_;
  uint64_t scored_ = 0;
  double top1_hits_ = 0;
  double top2_overlap_ = 0;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ROUTING_AFFINITY_H_
