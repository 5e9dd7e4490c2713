#ifndef MOE_ROUTER_CORE_ROUTING_ROUTER_H_
#define MOE_ROUTER_CORE_ROUTING_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/routing/affinity.h"
#include "core/routing/top_select.h"

namespace moe_router {

enum class BonusMode : uint8_t {
  /// cache_bonus is added to the logit of a resident expert as is.
  kAbsolute,
  /// cache_bonus is a fraction of the layer's running mean logit range
  /// (max - min per token), so one setting fits models of any logit scale.
  kRelative,
};

/// The most candidates a token can have: the router keeps each token's
/// candidates as a 64-bit mask. Experts ranked lower carry a negligible share
/// of the gate mass, which the mass guard would refuse anyway.
inline constexpr uint32_t kMaxRank = 64;

struct RouterConfig {
  uint32_t num_experts = 8;
  /// At most kMaxRank.
  uint32_t top_k = 2;
  /// Favour resident experts by `cache_bonus` in the selection score.
  bool memory_aware = true;
  double cache_bonus = 0.75;
  BonusMode bonus_mode = BonusMode::kRelative;
  /// Unchosen experts whose probability is at least this fraction of the top
  /// expert's become prefetch requests (a ratio, so no softmax over all
  /// experts is needed). 0 disables.
  double prefetch_threshold = 0.5;
  /// Quality guard: the original top `protected_top` experts are always
  /// chosen, whatever the bonus.
  uint32_t protected_top = 1;
  /// Quality guard: only experts ranked at most `max_rank` in the original
  /// order may be chosen. 0 means top_k + 2 (at most kMaxRank). Must be in
  /// [top_k, kMaxRank].
  uint32_t max_rank = 0;
  /// Quality guard: a token is rerouted only if its chosen experts keep at
  /// least this fraction of the original top-k's probability; otherwise it
  /// keeps its original top-k. 0 disables.
  double min_gate_mass = 0.7;
  /// Weight of each token's range in the running mean range (folded in
  /// once per batch; the bonus of a batch uses the range as of its start).
  double range_ema_alpha = 0.01;

  absl::Status Validate() const;
  uint32_t EffectiveMaxRank() const;
};

/// The running logit range's change over a run of batches, as an affine map
/// (EMA steps compose): range <- range * keep + add. The first batch of a
/// router that had no range is keep 0, add its mean range.
struct RangeChange {
  double keep = 1;
  double add = 0;
  /// `next` applied after this.
  void Then(const RangeChange& next) {
    keep *= next.keep;
    add = add * next.keep + next.add;
  }
};

/// What one routed batch produced. Buffers are reused across calls.
struct RouteResult {
  uint32_t tokens = 0;
  uint32_t top_k = 0;
  /// tokens x top_k, row-major; per token in descending original probability.
  std::vector<uint32_t> experts;
  /// The original softmax probabilities of the chosen experts, renormalised.
  std::vector<float> weights;
  /// Whether each chosen expert was resident when it was chosen.
  std::vector<uint8_t> resident;
  /// Distinct unchosen experts over the prefetch threshold, ascending.
  std::vector<uint32_t> prefetch;
  /// Tokens whose chosen set differs from the original top-k.
  uint32_t changed_tokens = 0;
  /// Sum and minimum over tokens of the gate mass retained: the original
  /// probability of the chosen experts over that of the original top-k.
  double gate_mass_sum = 0;
  double gate_mass_min = 1;
  /// Chosen experts that were resident / not resident.
  uint64_t hits = 0;
  uint64_t misses = 0;
  /// What the batch did to the router's running logit range.
  RangeChange range_change;

  absl::Span<const uint32_t> TokenExperts(uint32_t t) const {
    return absl::MakeConstSpan(experts).subspan(size_t{t} * top_k, top_k);
  }
};

/// Routes the tokens of one MoE layer: top-k over gate logits with a
/// cache-residency bonus under a quality guard, and learns the layer's expert
/// affinity. One caller at a time (the owner serialises per layer).
///
///   auto router = LayerRouter::Create(config, {});
///   RouteResult out;
///   router->Route(logits, resident_flags, &out);
class LayerRouter {
 public:
  static absl::StatusOr<LayerRouter> Create(const RouterConfig& config,
                                            const AffinityConfig& affinity);

  /// Routes `logits` (tokens x num_experts, row-major). `resident` has one
  /// flag per expert (nullptr: none resident). On error (bad length, NaN or
  /// infinite logit, naming the token) nothing is routed and no state
  /// changes.
  absl::Status Route(absl::Span<const float> logits, const std::atomic<uint8_t>* resident,
                     RouteResult* out);

  const RouterConfig& config() const { return config_; }
  const ExpertAffinity& affinity() const { return *affinity_; }
  ExpertAffinity& mutable_affinity() { return *affinity_; }
  /// Running mean of the per-token logit range (0 before the first token).
  double mean_logit_range() const { return range_ema_; }
  /// Restores a saved running range, so the relative bonus survives a
  /// restart; 0 means none was seen yet.
  void RestoreMeanLogitRange(double range) {
    range_ema_ = range;
    range_seen_ = range > 0;
  }
  /// Applies batches routed elsewhere (another process's router of the same
  /// layer). A router with no range yet takes the change's own level.
  void ApplyRangeChange(const RangeChange& change);

 private:
  LayerRouter(const RouterConfig& config, const AffinityConfig& affinity);

  RouterConfig config_;
  uint32_t max_rank_;
  std::unique_ptr<ExpertAffinity> affinity_;
  // The selection bonus for a batch (from the running range; the first
  // batch seeds it from its tokens' ranges, summed in `range_sum`).
  float BatchBonus(double range_sum, uint32_t tokens);
  // Folds a batch's per-token ranges into the running mean range; returns
  // the change, as seen from before the batch.
  RangeChange UpdateRange(double range_sum, uint32_t tokens, bool seen_before);
  // Phase 1 of Route: selects each token's candidates into the batch
  // scratch; false when a logit is NaN or infinite.
  bool SelectCandidates(absl::Span<const float> logits);
  // The sum over the batch's tokens of their logit range (top - lowest).
  double RangeSum(uint32_t tokens) const;
  // Per token: which candidates are resident, the tentative choice, and the
  // candidates' logits made relative to the token's top.
  void Choose(uint32_t tokens, const std::atomic<uint8_t>* resident, float bonus);
  // The chosen candidate positions (a mask over the original ranks) with the
  // bonus applied to the resident candidates in `res_mask`.
  uint64_t ChooseWithBonus(float bonus, uint64_t res_mask, const uint32_t* id,
                           const float* logit) const;

  double range_ema_ = 0;
  bool range_seen_ = false;
  // The EMA weight of a batch of range_weight_tokens_ tokens.
  uint32_t range_weight_tokens_ = 0;
  double range_weight_ = 0;
  TopSelector selector_;
  // Masks over candidate positions: the original top-k, the protected
  // prefix, and the candidates past it.
  const uint64_t original_;
  const uint64_t protected_;
  const uint64_t unprotected_;
  // Experts to prefetch, one bit each, collected over a batch.
  std::vector<uint64_t> prefetch_bits_;
  // Per-batch scratch, reused (one caller at a time). tokens x max_rank:
  // candidate ids, and each candidate's logit relative to the top's (turned
  // into its probability relative to the top's in place). Per token: the
  // row minimum, and masks over candidate positions of the resident and of
  // the chosen.
  std::vector<uint32_t> batch_id_;
  std::vector<float> batch_relative_;
  std::vector<float> batch_lowest_;
  std::vector<uint64_t> batch_res_;
  std::vector<uint64_t> batch_chosen_;
};

/// Checks a batch of logits' length only: a non-empty multiple of
/// num_experts.
absl::Status ValidateLogitsShape(absl::Span<const float> logits, uint32_t num_experts);

/// Checks a batch of logits without routing it: the length is a multiple of
/// num_experts and every value is finite; the error names the first bad token.
absl::Status ValidateLogits(absl::Span<const float> logits, uint32_t num_experts);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ROUTING_ROUTER_H_
