#ifndef MOE_ROUTER_CORE_ROUTING_CHOICE_SCORES_H_
#define MOE_ROUTER_CORE_ROUTING_CHOICE_SCORES_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/types/span.h"
#include "core/routing/routing_rule.h"
#include "core/routing/top_select.h"

namespace moe_router {

/// 1 / (1 + e^-x), within 1e-6 of the exact value relative to it for x
/// above -87 (e^-|x| by ExpNonPositive, one division); branch-free and
/// vectorisable, so a vector row and the scalar reference give the same
/// bits. Below -87 it returns e^-87 / (1 + e^-87), where the exact value is
/// smaller still.
[[gnu::always_inline]] inline float Sigmoid(float x) {
  const float t = ExpNonPositive(x < 0 ? x : -x);
  return (x < 0 ? t : 1.0f) / (1.0f + t);
}

/// out[i] = Sigmoid(x[i]), vectorised where the CPU allows (same bits).
void SigmoidRow(const float* x, uint32_t n, float* out);
/// out[i] = e^(x[i] - top) for x[i] <= top, vectorised (same bits).
void ExpRelativeRow(const float* x, uint32_t n, float top, float* out);

/// The sum of x[0, n) in a fixed order: eight running sums over the
/// elements by index mod 8 (whole blocks of 8), added as
/// ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), then the rest in
/// order. Vectorisable without reassociating, so every caller gets the same
/// bits.
float SumInBlocksOfEight(const float* x, uint32_t n);

/// sum over the row of e^(row[e] - top), top >= every value: a softmax's
/// denominator, in SumInBlocksOfEight's order.
float SoftmaxDenominator(const float* row, uint32_t n, float top);

/// The choice scores of a rule that chooses on something other than the
/// logits (sigmoid or softmax scores, plus a bias, limited to groups).
///
/// Score gives whole rows: the choice scores top-k runs over (masked groups
/// included) and the unbiased scores the weights are made of. For sigmoid
/// scores, Shortlist finds a chunk of tokens' candidates without scoring
/// every expert: a per-expert logit threshold, derived from a choice-score
/// floor the layer's recent tokens cleared, passes every expert whose choice
/// score can reach the floor; only those are scored, and a token's
/// candidates are proven from them (its max_rank-th reaching the floor, its
/// groups decided by the experts above it) or the whole row decides it.
/// Either way the candidates are the same, bit for bit. Not thread-safe:
/// one per layer router.
class ChoiceScorer {
 public:
  /// `bias`: this layer's num_experts biases, or empty.
  ChoiceScorer(const RoutingRule& rule, uint32_t num_experts, uint32_t max_rank,
               absl::Span<const float> bias);

  /// For `tokens` rows of finite logits (row-major, num_experts each);
  /// `first`: the rows' first token in the chunk, for NeededFloor.
  void Score(const float* logits, uint32_t tokens, float* choice, float* scores,
             uint32_t first = 0) const;

  /// Whether Shortlist applies to the rule (sigmoid scores).
  bool shortlists() const { return shortlists_; }
  /// The most tokens Shortlist takes at once.
  static constexpr uint32_t kChunk = 64;
  /// For up to kChunk tokens: each token's max_rank candidates (ids, choice
  /// scores and unbiased scores, best first, ties to the lower id) where the
  /// shortlist proves them, decided[t] saying where. False when a logit is
  /// NaN or infinite (every one is checked).
  bool Shortlist(const float* logits, uint32_t tokens, uint32_t* ids, float* values, float* scores,
                 uint8_t* decided);
  /// The floor the token t of the last Shortlist or Score needed to be
  /// decided: its max_rank-th choice score, and with groups what deciding
  /// them takes. For Observe.
  float NeededFloor(uint32_t t, float last_candidate_value) const;
  /// What a token routed either way needed: the floor follows the lowest of
  /// the layer's recent tokens. It only makes the shortlist faster or
  /// slower, never changes a choice.
  void Observe(float needed);

  /// Tokens Shortlist decided, and tokens it passed to the whole rows.
  uint64_t shortlisted() const { return shortlisted_; }
  uint64_t full_rows() const { return full_rows_; }
  /// Experts the shortlist scored, over all its tokens.
  uint64_t shortlist_scored() const { return shortlist_scored_; }

 private:
  // A token's pool of scored experts (more go to the whole row).
  static constexpr uint32_t kPool = 32;

  // The rule's score of each logit into `scores`.
  void ScoreRow(const float* logits, float* scores) const;
  // Masks the groups not kept, in place; notes token t's group floor.
  void LimitGroups(float* choice, uint32_t t) const;
  // The logit each expert must reach for its choice score to reach
  // `floor`, rounded down (so a logit below it cannot).
  void SetFloor(float floor);
  // Scores token t's `count` experts that passed the thresholds (in
  // cand_id_) and puts those of its kept groups in its pool row; false
  // when that cannot decide it.
  bool FillPool(const float* logits, uint32_t count, uint32_t t);
  // Each group's slice of the `count` scored experts (they come in id
  // order): where it ends, into group_end_.
  void FindGroupSlices(uint32_t count);
  // The group step over `count` scored experts: marks the kept groups in
  // kept_; false when the scored experts do not decide them.
  bool DecideGroups(uint32_t count, uint32_t t);
  // The floor a token's groups needed, from each group's best two choice
  // scores known (below the floor when unknown) and the kept groups.
  float GroupFloor() const;

  const RoutingRule rule_;
  const uint32_t n_;
  const uint32_t r_;
  const std::vector<float> bias_;
  const uint32_t group_size_;
  const float masked_value_;
  const bool shortlists_;
  // Per group: its best two choice scores, its score, whether it is kept.
  mutable std::vector<float> group_best_;
  mutable std::vector<float> group_second_;
  mutable std::vector<float> group_scores_;
  mutable std::vector<uint8_t> kept_;
  mutable std::vector<uint32_t> beaten_by_;
  // Per token of the last chunk: the floor its groups needed.
  mutable std::vector<float> group_floor_;

  // The shortlist's floor and the per-expert logit thresholds for it.
  bool floor_set_ = false;
  float floor_ = 0;
  std::vector<float> logit_threshold_;
  // The lowest floors the recent tokens needed, ascending.
  uint32_t observed_ = 0;
  std::vector<float> window_lowest_;
  uint64_t shortlisted_ = 0;
  uint64_t full_rows_ = 0;
  uint64_t shortlist_scored_ = 0;
  // One token's scored experts: per group where its slice ends, how many
  // passed by each 8 experts; ids, logits and biases (padded to whole
  // vectors), unbiased and choice scores.
  std::vector<uint32_t> group_end_;
  std::vector<uint32_t> passed_by_eight_;
  std::vector<uint32_t> cand_id_;
  std::vector<float> cand_logit_;
  std::vector<float> cand_bias_;
  std::vector<float> cand_score_;
  std::vector<float> cand_value_;
  // A chunk's pools, kChunk x kPool: the kept scored experts' choice scores
  // (padded), ids and unbiased scores; ranked 8 tokens at a time.
  std::vector<float> pool_value_;
  std::vector<uint32_t> pool_id_;
  std::vector<float> pool_score_;
  std::vector<uint32_t> pool_pick_;
  std::vector<float> pool_top_;
  std::vector<float> pool_lowest_;
  TopSelector pool_selector_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ROUTING_CHOICE_SCORES_H_
