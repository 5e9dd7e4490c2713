#ifndef MOE_ROUTER_EVAL_TRACE_H_
#define MOE_ROUTER_EVAL_TRACE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/routing/routing_rule.h"
#include "nlohmann/json.hpp"

namespace moe_router {

/// A routing trace: runs (sequences) of tokens, each routed at every layer.
/// Routing traces hold the chosen experts; logits traces (written by
/// tracegen) also hold every gate logit, so routing can be replayed with a
/// different router.
struct RoutingTrace {
  /// One (token, layer) step of a run.
  struct Step {
    uint32_t token = 0;
    uint32_t layer = 0;
  };
  struct Run {
    std::string name;
    /// The steps present, in token then layer order. Real traces may miss a
    /// few; logits traces have every step.
    std::vector<Step> steps;
    /// steps x top_k, highest probability first.
    std::vector<uint32_t> experts;
    /// steps x num_experts, only in logits traces.
    std::vector<float> logits;
    /// Distinct tokens (the last token index + 1).
    uint32_t tokens = 0;
    /// Its first `prompt_tokens` tokens were its prompt, which an engine
    /// prefills in one pass (0: the trace does not say).
    uint32_t prompt_tokens = 0;
  };
  uint32_t num_layers = 0;
  uint32_t num_experts = 0;
  uint32_t top_k = 0;
  /// How the model routes (logits traces): its experts are the rule's top-k
  /// of the logits, and replay reroutes by it. Routing traces recorded what
  /// the model chose, whatever its rule.
  RoutingRule rule = {};
  /// The rule's choice biases, num_layers x num_experts; empty without.
  std::vector<float> choice_bias;
  std::vector<Run> runs;

  bool has_logits() const { return !runs.empty() && !runs[0].logits.empty(); }
  uint64_t Tokens() const;
  uint64_t Steps() const;
  /// (layer, expert) uses over all runs: steps x top_k.
  uint64_t Accesses() const { return Steps() * top_k; }
  absl::Span<const uint32_t> StepExperts(const Run& run, size_t step) const {
    return absl::MakeConstSpan(run.experts).subspan(step * top_k, top_k);
  }
  absl::Span<const float> StepLogits(const Run& run, size_t step) const {
    return absl::MakeConstSpan(run.logits).subspan(step * num_experts, num_experts);
  }
  absl::Span<const float> LayerChoiceBias(uint32_t layer) const {
    if (choice_bias.empty()) return {};
    return absl::MakeConstSpan(choice_bias).subspan(size_t{layer} * num_experts, num_experts);
  }
};

/// Reads a trace, recognising the format by its first line:
/// - JSONL routing traces (see shared/traces/README.md): one object per
///   (run, layer, token) with `layer`, `experts`, and `token_idx` or
///   `token_pos`; `dataset` and `problem_id` name the run; an optional
///   `num_experts` gives the model's expert count (else the largest id + 1);
///   an optional `"phase"` ("prompt" or "generated", as `trace import`
///   writes it) marks a line's token as part of its run's prompt or not
///   (the prompt's tokens must be the run's first); other fields are
///   ignored. A step may be missing; a duplicate is an error. Errors name
///   the line.
/// - logits traces: a JSON header line {"format": "moe-router-logits/1", ...}
///   then binary records (see WriteLogitsTrace).
/// Either is of a model the service could host: layers and expert ids
/// beyond kMaxModelLayers and kMaxModelExperts are refused by name.
absl::StatusOr<RoutingTrace> ReadTrace(const std::string& path);

/// Writes a logits trace: the header line
///   {"format":"moe-router-logits/1","num_layers":L,"num_experts":E,
///    "top_k":K,"runs":[{"name":...,"tokens":T[,"prompt_tokens":P]},...],
///    "routing":{"score":"sigmoid",...,"bias":[L x E floats]}}\n
/// then, per run in order and per token, L x E little-endian float32 logits
/// (every step present). "routing" (RoutingRuleToJson) is written unless
/// the rule is the default, and read as the default when absent.
/// The experts are recomputed from the logits by the rule on reading.
/// Written atomically.
absl::Status WriteLogitsTrace(const std::string& path, const RoutingTrace& trace);

/// The runs of worker `index` of `workers` (runs index, index + workers,
/// ...), as inference workers sharing a trace round-robin would get them.
RoutingTrace SplitRoundRobin(const RoutingTrace& trace, uint32_t workers, uint32_t index);
/// The runs back to back as one run (tokens renumbered), as one long-lived
/// worker's cache sees them: replaying it carries the cache across runs.
/// Its prompt is the first run's.
RoutingTrace Concatenated(const RoutingTrace& trace);

/// Every step's experts from its logits by the trace's rule and biases, as
/// the model chooses (ties to the lower id). Errors: a rule or biases that
/// do not fit the shape, a NaN or infinite logit (naming the run and layer).
absl::Status FillTopKFromLogits(RoutingTrace& trace);

/// A rule and its biases as the logits-trace header writes them (the
/// ModelSpec's RoutingSettings names, every step spelled out), and back;
/// errors name the field.
nlohmann::json RoutingRuleToJson(const RoutingRule& rule, absl::Span<const float> bias);
absl::Status RoutingRuleFromJson(const nlohmann::json& json, uint32_t num_layers,
                                 uint32_t num_experts, uint32_t top_k, RoutingRule* rule,
                                 std::vector<float>* bias);

/// Statistics that characterise a trace, for calibrating synthetic ones.
struct TraceStats {
  /// Fraction of consecutive tokens whose expert sets share at least one
  /// expert: mean over layers, and per layer.
  double overlap_mean = 0;
  std::vector<double> overlap_by_layer;
  /// Fraction of consecutive tokens with the same first-choice expert.
  double first_choice_recurrence = 0;
  /// Busiest expert's share of a layer's uses over the mean share: min,
  /// mean and max over layers.
  double skew_min = 0, skew_mean = 0, skew_max = 0;
  /// Per layer: the share of a token's experts the previous token used too
  /// (what a cache of one token's experts would hit); the busiest expert's
  /// share of the layer's accesses; the share the most used tenth of the
  /// experts (at least one) take.
  std::vector<double> reuse_by_layer, busiest_share_by_layer, top_tenth_share_by_layer;
  /// Means over layers.
  double reuse_mean = 0, busiest_share_mean = 0, top_tenth_share_mean = 0;
};
TraceStats ComputeTraceStats(const RoutingTrace& trace);

}  // namespace moe_router

#endif  // MOE_ROUTER_EVAL_TRACE_H_
