#include "core/routing/choice_scores.h"

#include <algorithm>

namespace moe_router {

namespace {

// Below any choice score: scores are in [0, 1] and biases bounded
// (ValidateChoiceBias), so an excluded expert ranks last yet every
// difference stays finite.
constexpr float kExcludedValue = -1e30f;

}  // namespace

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
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (uint32_t j = 0; j < 8; ++j) s[j] += ExpNonPositive(row[i + j] - top);
  }
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) total += ExpNonPositive(row[i] - top);
  return total;
}

ChoiceScorer::ChoiceScorer(const RoutingRule& rule, uint32_t num_experts,
                           absl::Span<const float> bias)
    : rule_(rule),
      n_(num_experts),
      bias_(bias.begin(), bias.end()),
      group_size_(rule.num_groups > 1 ? num_experts / rule.num_groups : num_experts),
      masked_value_(rule.masked_groups == MaskedGroups::kZero ? 0.0f : kExcludedValue),
      group_scores_(rule.num_groups) {}

void ChoiceScorer::ScoreRow(const float* logits, float* scores) const {
  const uint32_t n = n_;
  if (rule_.score == ScoreFunction::kSigmoid) {
    for (uint32_t e = 0; e < n; ++e) scores[e] = Sigmoid(logits[e]);
    return;
  }
  // Softmax in float32: e^(x - max) over its sum.
  float top = logits[0];
  for (uint32_t e = 1; e < n; ++e) top = logits[e] > top ? logits[e] : top;
  for (uint32_t e = 0; e < n; ++e) scores[e] = ExpNonPositive(logits[e] - top);
  const float sum = SumInBlocksOfEight(scores, n);
  for (uint32_t e = 0; e < n; ++e) scores[e] = scores[e] / sum;
}

void ChoiceScorer::LimitGroups(float* choice) const {
  const uint32_t groups = rule_.num_groups, size = group_size_;
  float* g = group_scores_.data();
  for (uint32_t j = 0; j < groups; ++j) {
    const float* x = choice + size_t{j} * size;
    // The best two as a multiset: two equal maxima both count.
    float best = x[0], second = x[1];
    if (second > best) std::swap(best, second);
    for (uint32_t i = 2; i < size; ++i) {
      const float v = x[i];
      second = v > second ? (v > best ? best : v) : second;
      best = v > best ? v : best;
    }
    g[j] = rule_.group_score == GroupScore::kTopTwoSum ? best + second : best;
  }
  // A group is kept when fewer than kept_groups groups beat it (a higher
  // score, or an equal one at a lower index).
  for (uint32_t j = 0; j < groups; ++j) {
    uint32_t beaten_by = 0;
    for (uint32_t o = 0; o < groups; ++o) beaten_by += g[o] > g[j] || (g[o] == g[j] && o < j);
    if (beaten_by >= rule_.kept_groups) {
      std::fill_n(choice + size_t{j} * size, size, masked_value_);
    }
  }
}

void ChoiceScorer::Score(const float* logits, uint32_t tokens, float* choice, float* scores,
                         float* range) const {
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
    float top = c[0], lowest = c[0];
    for (uint32_t e = 1; e < n; ++e) {
      top = c[e] > top ? c[e] : top;
      lowest = c[e] < lowest ? c[e] : lowest;
    }
    range[t] = top - lowest;
    if (rule_.num_groups > 1) LimitGroups(c);
  }
}

}  // namespace moe_router
