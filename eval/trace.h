#ifndef MOE_ROUTER_EVAL_TRACE_H_
#define MOE_ROUTER_EVAL_TRACE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

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
  };
  uint32_t num_layers = 0;
  uint32_t num_experts = 0;
  uint32_t top_k = 0;
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
};

/// Reads a trace, recognising the format by its first line:
/// - JSONL routing traces (see shared/traces/README.md): one object per
///   (run, layer, token) with `layer`, `experts`, and `token_idx` or
///   `token_pos`; `dataset` and `problem_id` name the run; an optional
///   `num_experts` gives the model's expert count (else the largest id + 1);
///   other fields are ignored. A step may be missing; a duplicate is an
///   error. Errors name the line.
/// - logits traces: a JSON header line {"format": "moe-router-logits/1", ...}
///   then binary records (see WriteLogitsTrace).
absl::StatusOr<RoutingTrace> ReadTrace(const std::string& path);

/// Writes a logits trace: the header line
///   {"format":"moe-router-logits/1","num_layers":L,"num_experts":E,
///    "top_k":K,"runs":[{"name":...,"tokens":T},...]}\n
/// then, per run in order and per token, L x E little-endian float32 logits
/// (every step present).
/// The experts are recomputed from the logits (plain top-k) on reading.
/// Written atomically.
absl::Status WriteLogitsTrace(const std::string& path, const RoutingTrace& trace);

/// The runs of worker `index` of `workers` (runs index, index + workers,
/// ...), as inference workers sharing a trace round-robin would get them.
RoutingTrace SplitRoundRobin(const RoutingTrace& trace, uint32_t workers, uint32_t index);
/// The runs back to back as one run (tokens renumbered), as one long-lived
/// worker's cache sees them: replaying it carries the cache across runs.
RoutingTrace Concatenated(const RoutingTrace& trace);

/// Plain top-k of every step's logits (ties to the lower id) into experts.
void FillTopKFromLogits(RoutingTrace& trace);

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
