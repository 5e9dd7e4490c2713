#ifndef MOE_ROUTER_CORE_MODEL_LEARNED_STATE_H_
#define MOE_ROUTER_CORE_MODEL_LEARNED_STATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/base/types.h"
#include "core/metrics/metrics.h"
#include "core/routing/router.h"

// What crosses the control stream between a worker that routes in its own
// process and the service: its reports up (what it routed, aggregated per
// layer), the fleet's learned state down. Plain values, no gRPC.

namespace moe_router {

/// What one layer routed since the last report. Its size is bounded by the
/// layer's shape (E activation counts, at most E x E pairs), not by the
/// tokens routed.
struct LayerReport {
  uint64_t tokens = 0;
  uint64_t batches = 0;
  uint64_t hits = 0;  // chosen experts resident when chosen
  uint64_t misses = 0;
  uint64_t changed_tokens = 0;
  double gate_mass_sum = 0;  // per token retained, as RouteResult
  double gate_mass_min = 1;
  /// Per expert of the layer: times chosen.
  std::vector<uint32_t> activations;
  /// Co-activation into this layer from the previous one for the same
  /// tokens: pair from * num_experts + to, and how many times.
  std::vector<uint32_t> pair_index;
  std::vector<uint32_t> pair_count;
  RangeChange range;

  bool empty() const { return tokens == 0; }
  /// Empties it, keeping its buffers.
  void Clear();
};

/// One report of a worker: sequence numbers start at 1 per worker stream.
struct RoutingReport {
  uint64_t sequence = 0;
  std::vector<LayerReport> layers;  // one per model layer
  /// The worker's residency changes over the report, net: what it now holds
  /// that it did not (in the variant it holds), and what it dropped.
  std::vector<ExpertKey> loaded;
  std::vector<uint8_t> loaded_variants;
  std::vector<ExpertKey> dropped;
  WorkerCacheCounters counters;
  /// Whether the residency changes are left out because a statement of the
  /// whole residency (a resync) already covers them.
  bool residency_in_sync = false;
};

/// What the fleet learned of one layer, as the service pushes it.
struct LayerLearnedState {
  uint32_t layer = 0;
  std::vector<double> affinity;       // per expert
  std::vector<uint64_t> activations;  // per expert
  uint64_t tokens = 0;
  double mean_logit_range = 0;  // 0: none seen yet
  /// Co-activation into this layer: per expert of the previous layer, its
  /// `row_top` strongest successors and their weights (empty for layer 0).
  uint32_t row_top = 0;
  std::vector<uint32_t> successor_ids;  // num_experts x row_top; weight 0 pads
  std::vector<float> successor_weights;
};

/// How many successors per row the service sends: enough to rank the few
/// experts a prefetch takes, a sixteenth of a 256-expert row.
inline constexpr uint32_t kDefaultSuccessorsPerRow = 16;

/// Checks a report against a model's shape before anything is folded.
absl::Status ValidateReport(const RoutingReport& report, uint32_t num_layers, uint32_t num_experts,
                            uint32_t top_k, size_t num_variants);

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_MODEL_LEARNED_STATE_H_
