#ifndef MOE_ROUTER_CORE_ROUTING_ROUTER_H_
#define MOE_ROUTER_CORE_ROUTING_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/routing/affinity.h"
#include "core/routing/choice_scores.h"
#include "core/routing/routing_rule.h"
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
  /// How the model chooses and weighs its experts (routing_rule.h). The
  /// bonus is added where the rule chooses (the logits, or the biased and
  /// group-limited scores), the guard ranks by the rule's own original
  /// order, and the weights are always the rule's for the chosen experts.
  RoutingRule rule = {};
  /// Favour resident experts by `cache_bonus` in the choice score.
  bool memory_aware = true;
  double cache_bonus = 0.75;
  BonusMode bonus_mode = BonusMode::kRelative;
  /// Unchosen candidates whose probability (for sigmoid scores: odds, which
  /// compare as probabilities of the logits do) is at least this fraction of
  /// the top candidate's become prefetch requests (a ratio, so no softmax
  /// over all experts is needed). 0 disables.
  double prefetch_threshold = 0.5;
  /// Quality guard: the original top `protected_top` experts are always
  /// chosen, whatever the bonus.
  uint32_t protected_top = 1;
  /// Quality guard: only experts ranked at most `max_rank` in the original
  /// order may be chosen. 0 means top_k + 2 (at most kMaxRank). Must be in
  /// [top_k, kMaxRank].
  uint32_t max_rank = 0;
  /// Quality guard: a token is rerouted only if its chosen experts keep at
  /// least this fraction of the original top-k's unnormalised weight (the
  /// rule's weights before normalisation and scaling: probabilities, sigmoid
  /// scores, or e^logit for a softmax over the chosen); otherwise it keeps
  /// its original top-k. 0 disables.
  double min_gate_mass = 0.7;
  /// Weight of each token's range in the running mean range (folded in
  /// once per batch; the bonus of a batch uses the range as of its start).
  double range_ema_alpha = 0.01;

  absl::Status Validate() const;
  uint32_t EffectiveMaxRank() const;
  /// The experts the rule may rank for a token: all of them, but for
  /// excluded groups those of the kept groups.
  uint32_t RankableExperts() const;
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
  /// tokens x top_k, row-major; per token in the rule's original order
  /// (descending choice score).
  std::vector<uint32_t> experts;
  /// The rule's weights of the chosen experts: their unbiased scores,
  /// normalised and scaled as the rule says.
  std::vector<float> weights;
  /// Whether each chosen expert was resident when it was chosen.
  std::vector<uint8_t> resident;
  /// Distinct unchosen experts over the prefetch threshold, ascending.
  std::vector<uint32_t> prefetch;
  /// Tokens whose chosen set differs from the original top-k.
  uint32_t changed_tokens = 0;
  /// Sum and minimum over tokens of the gate mass retained: the unnormalised
  /// weight of the chosen experts over that of the original top-k.
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

/// Routes the tokens of one MoE layer by the model's rule, with a
/// cache-residency bonus under a quality guard, and learns the layer's expert
/// affinity. One caller at a time (the owner serialises per layer).
///
///   auto router = LayerRouter::Create(config, {}, layer_choice_bias);
///   RouteResult out;
///   router->Route(logits, resident_flags, &out);
class LayerRouter {
 public:
  /// `choice_bias`: the layer's num_experts biases when the rule has them.
  static absl::StatusOr<LayerRouter> Create(const RouterConfig& config,
                                            const AffinityConfig& affinity,
                                            absl::Span<const float> choice_bias = {});

  /// Routes `logits` (tokens x num_experts, row-major). `resident` has one
  /// flag per expert (nullptr: none resident). On error (bad length, NaN or
  /// infinite logit, naming the token) nothing is routed and no state
  /// changes.
  absl::Status Route(absl::Span<const float> logits, const std::atomic<uint8_t>* resident,
                     RouteResult* out);

  const RouterConfig& config() const { return config_; }
  const ExpertAffinity& affinity() const { return *affinity_; }
  /// The rule's choice scorer; null when the rule chooses on the logits.
  const ChoiceScorer* choice_scorer() const { return scorer_.get(); }
  ExpertAffinity& mutable_affinity() { return *affinity_; }
  /// Running mean of the per-token range of the choice scores: the logits'
  /// max - min, or for choice scores the spread of the candidates (best
  /// minus max_rank-th); 0 before the first token.
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
  LayerRouter(const RouterConfig& config, const AffinityConfig& affinity,
              absl::Span<const float> choice_bias);

  RouterConfig config_;
  uint32_t max_rank_;
  std::unique_ptr<ExpertAffinity> affinity_;
  // The choice scores of a rule that does not choose on the logits; null
  // when it does.
  std::unique_ptr<ChoiceScorer> scorer_;
  // The selection bonus for a batch (from the running range; the first
  // batch seeds it from its tokens' ranges, summed in `range_sum`).
  float BatchBonus(double range_sum, uint32_t tokens);
  // Folds a batch's per-token ranges into the running mean range; returns
  // the change, as seen from before the batch.
  RangeChange UpdateRange(double range_sum, uint32_t tokens, bool seen_before);
  // Phase 1 of Route: selects each token's candidates into the batch
  // scratch; false when a logit is NaN or infinite.
  bool SelectCandidates(absl::Span<const float> logits);
  // SelectCandidates for a rule with choice scores: by shortlist, or whole
  // rows a chunk of tokens at a time; each candidate's unbiased score kept
  // for the weights.
  bool SelectByChoiceScores(absl::Span<const float> logits, uint32_t tokens);
  // The sum over the batch's tokens of their range (top - lowest choice
  // score).
  double RangeSum(uint32_t tokens) const;
  // Per token: which candidates are resident and the tentative choice; on
  // the logits, the candidates' logits are then made relative to the top's.
  void Choose(uint32_t tokens, const std::atomic<uint8_t>* resident, float bonus);
  // The chosen candidate positions (a mask over the original ranks) with the
  // bonus applied to the resident candidates in `res_mask`.
  uint64_t ChooseWithBonus(float bonus, uint64_t res_mask, const uint32_t* id,
                           const float* value) const;
  // Each candidate's unnormalised weight, from the relative logits Choose
  // left (softmax numerators, sigmoid) or the unbiased scores kept by
  // SelectByChoiceScores; returns where they are.
  const float* UnnormalisedWeights(uint32_t tokens);
  // What runners-up are compared by for prefetch: the unnormalised weights,
  // or for sigmoid scores their odds.
  const float* PrefetchStrengths(const float* weights, uint32_t tokens);

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
  // candidate ids, and each candidate's choice score (on the logits, made
  // relative to the top's and turned into its probability relative to the
  // top's in place). Per token: the row minimum, and masks over candidate
  // positions of the resident and of the chosen.
  std::vector<uint32_t> batch_id_;
  std::vector<float> batch_relative_;
  std::vector<float> batch_lowest_;
  std::vector<uint64_t> batch_res_;
  std::vector<uint64_t> batch_chosen_;
  // With choice scores: tokens x max_rank unbiased scores of the
  // candidates, and one chunk's rows of choice and unbiased scores. A
  // softmax whose weights need it: per token its denominator.
  std::vector<float> batch_score_;
  std::vector<float> batch_strength_;
  // With a shortlist: per token the floor it needed, and per token of a
  // chunk whether the shortlist decided it.
  std::vector<float> batch_needed_floor_;
  uint8_t shortlist_decided_[ChoiceScorer::kChunk];
  std::vector<float> chunk_choice_;
  std::vector<float> chunk_scores_;
  std::vector<float> batch_denominator_;
};

/// Checks a batch of logits' length only: a non-empty multiple of
/// num_experts.
absl::Status ValidateLogitsShape(absl::Span<const float> logits, uint32_t num_experts);

/// Checks a batch of logits without routing it: the length is a multiple of
/// num_experts and every value is finite; the error names the first bad token.
absl::Status ValidateLogits(absl::Span<const float> logits, uint32_t num_experts);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ROUTING_ROUTER_H_
