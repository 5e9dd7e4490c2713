#ifndef MOE_ROUTER_CORE_WORKER_WORKER_ENGINE_H_
#define MOE_ROUTER_CORE_WORKER_WORKER_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "core/cache/expert_size_table.h"
#include "core/cache/worker_cache_view.h"
#include "core/model/learned_state.h"
#include "core/model/model_config.h"
#include "core/model/page_routed_batch.h"
#include "core/routing/router.h"

namespace moe_router {

/// One layer call's answer. Buffers are reused across calls.
struct WorkerStep {
  RouteResult batch;
  /// Drop `evictions`, then load `urgent` (before computing the layer) and
  /// `prefetch`. Never drops an expert chosen in `batch`.
  CacheInstructions cache;
};

struct WorkerEngineOptions {
  std::string cache;  // the worker's cache name, as the service knows it
  uint64_t budget_bytes = 0;
  std::string eviction_policy = {};  // empty: the model's
  /// Reports kept for resending and for re-applying this worker's own
  /// learning on top of fleet state that has not folded it in yet.
  uint32_t max_unacknowledged_reports = 64;
  /// Co-activation pairs a report carries per layer: the most frequent
  /// (0: all). Bounds a report of 64-token steps at 58 x 256 to about 60 KB;
  /// the strong pairs are the ones the fleet's successors are made of.
  uint32_t max_pairs_per_layer = 128;
  /// Room for the choices a layer call logs for pair counting off the
  /// routing thread, in 32-bit entries, per log (there are two: one fills
  /// while a report counts the other). A full log drops a batch's pairs and
  /// counts them; 2^20 holds about 100 ms of 64-token steps at 58 x 256.
  uint32_t pair_log_entries = 1 << 20;
};

/// The data plane of an inference worker that routes in its own process:
/// the model's router per layer (the cache bonus against this worker's own
/// residency, the quality guard, weights from the original probabilities),
/// this worker's cache view and eviction policy, and prefetch (runners-up,
/// next-layer successors from the fleet's co-activation, a gate guess). The
/// same code the service runs for a worker cache (PageRoutedBatch), so the
/// decisions are the same.
///
/// Route() is the per-layer call: no I/O, no lock that another thread holds
/// for long, and no allocation once its buffers have grown. The control
/// plane (client/control_stream) takes reports from it and offers it the
/// fleet's state, which Route() applies at its next call of that layer.
///
///   auto engine = WorkerEngine::Create(model_config, sizes, {.cache = "pod-7/gpu0",
///                                                            .budget_bytes = 8 << 30});
///   WorkerStep step;
///   (*engine)->Route(layer, logits, &step);  // then drop, load, compute
class WorkerEngine {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerEngine>> Create(
      const ModelConfig& model, std::shared_ptr<const ExpertSizeTable> sizes,
      const WorkerEngineOptions& options);

  // The data plane, one caller at a time (calls are ordered by a mutex).

  /// Routes one layer's batch (tokens x num_experts logits) against what
  /// this worker holds. On a bad layer or logits nothing changes.
  absl::Status Route(uint32_t layer, absl::Span<const float> logits, WorkerStep* out);
  /// Prefetches the top `budget` (top_k if 0) of a guess of the layer's
  /// gate (one row of its experts).
  absl::Status Prefetch(uint32_t layer, absl::Span<const float> gate_guess, uint32_t budget,
                        CacheInstructions* out);
  /// The worker holds exactly `held` (it dropped experts on its own, or a
  /// load failed): the view adopts it. Over the budget changes nothing.
  absl::Status Adopt(absl::Span<const ExpertKey> held);

  // The control plane, from any thread.

  /// Moves what was routed since the last report into `out` (its buffers
  /// reused), numbered one past the previous; with `residency`, also what
  /// the worker holds as of that report, in the same step. The routing
  /// thread waits only while the report is swapped out: the pairs are
  /// listed after, from a buffer routing no longer writes.
  void TakeReport(RoutingReport* out,
                  std::vector<std::pair<ExpertKey, uint8_t>>* residency = nullptr);
  /// What the worker holds now, in the variants it holds them.
  std::vector<std::pair<ExpertKey, uint8_t>> Residency();
  /// The fleet's state of some layers, folded in by the service up to this
  /// worker's report `acknowledged`. Each layer takes it at its next Route,
  /// with this worker's learning since that report re-applied on top.
  void Offer(std::vector<LayerLearnedState> layers, uint64_t acknowledged);

  const ModelConfig& model() const { return model_; }
  const std::string& cache_name() const { return options_.cache; }
  uint64_t budget_bytes() const { return options_.budget_bytes; }
  std::string policy_name();
  WorkerCacheCounters counters();
  /// Layers that have taken fleet state (a layer counts once per offer).
  uint64_t state_updates_applied() const {
    return state_updates_applied_.load(std::memory_order_relaxed);
  }
  /// The sequence number of the last report taken.
  uint64_t last_sequence();
  /// A layer's affinity as its router holds it now, the fleet's state and
  /// this worker's own learning together: for tests and diagnostics.
  ExpertAffinity::State LayerAffinity(uint32_t layer);
  /// Co-activation pairs left out of reports: past max_pairs_per_layer, or
  /// logged while the log was full.
  uint64_t pairs_dropped() const { return pairs_dropped_.load(std::memory_order_relaxed); }

 private:
  struct Layer {
    std::unique_ptr<LayerRouter> router;
    // Co-activation into this layer as the fleet last sent it: per expert
    // of the previous layer, its strongest successors here.
    uint32_t row_top = 0;
    std::vector<uint32_t> successor_ids;
    std::vector<float> successor_weights;
  };
  // A layer's pairs counted from a log, dense from x to, and which are set.
  struct PairCounts {
    std::vector<uint32_t> counts;
    std::vector<uint32_t> touched;
  };
  // A layer's offered state, waiting for the routing thread.
  struct Inbox {
    absl::Mutex mu;
    std::unique_ptr<LayerLearnedState> state ABSL_GUARDED_BY(mu);
    uint64_t acknowledged ABSL_GUARDED_BY(mu) = 0;
    std::atomic<bool> ready{false};
  };
  // What the routers learned in one report, kept until it is too old.
  struct Learning {
    uint64_t sequence = 0;
    std::vector<LayerReport> layers;
  };

  WorkerEngine(const ModelConfig& model, const WorkerEngineOptions& options,
               std::shared_ptr<const ExpertSizeTable> sizes, std::unique_ptr<WorkerCacheView> view);
  absl::Status CheckLayer(uint32_t layer) const;
  uint8_t VariantFor(ExpertKey key) const;
  // The experts of layer + 1 the fleet's co-activation predicts from this
  // batch's uses of each expert, into predicted_.
  void PredictNextLayer(uint32_t layer, absl::Span<const uint32_t> experts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds the batch to the report being gathered.
  void Record(uint32_t layer, const RouteResult& batch, const CacheInstructions& changes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Logs the batch's and the previous layer's choices when they are the
  // same tokens one layer on: [layer, tokens, top_k, previous, this].
  void LogPairs(uint32_t layer, const RouteResult& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts a taken log into pair_counts_.
  void CountLoggedPairs(std::vector<uint32_t>& log) ABSL_EXCLUSIVE_LOCKS_REQUIRED(take_mu_);
  void ReserveInstructions(CacheInstructions& out) const;
  void NoteResidencyChanges(const CacheInstructions& changes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyOffer(uint32_t layer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lists a layer's counted pairs into the report (the strongest, in index
  // order) and zeroes them.
  void ListPairs(PairCounts& pairs, LayerReport* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(take_mu_);
  // What the view holds, with the variants (the caller holds its mutex).
  void ListResidency(std::vector<std::pair<ExpertKey, uint8_t>>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(view_->mu());
  // The report's part taken under the lock: all but the pairs.
  void SwapOutReport(RoutingReport* out, std::vector<std::pair<ExpertKey, uint8_t>>* residency)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ModelConfig model_;
  const WorkerEngineOptions options_;
  const bool multi_precision_;
  std::shared_ptr<const ExpertSizeTable> sizes_;
  std::unique_ptr<WorkerCacheView> view_;
  std::vector<std::unique_ptr<Inbox>> inboxes_;
  std::atomic<uint64_t> state_updates_applied_{0};
  std::atomic<uint64_t> pairs_dropped_{0};
  // One TakeReport at a time: it owns the taken log and the counts.
  absl::Mutex take_mu_;
  std::vector<uint32_t> pair_logs_[2];  // [active_log_] under mu_, the other the taker's
  std::vector<PairCounts> pair_counts_ ABSL_GUARDED_BY(take_mu_);  // per layer

  // Orders the data plane and guards everything below; taken before the
  // view's own mutex.
  absl::Mutex mu_;
  std::vector<Layer> layers_ ABSL_GUARDED_BY(mu_);
  RoutingReport report_ ABSL_GUARDED_BY(mu_);
  WorkerCacheCounters counters_at_report_ ABSL_GUARDED_BY(mu_);
  // Per slot: 1 + whether it was resident when the report first changed it.
  std::vector<uint8_t> residency_at_report_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> residency_touched_ ABSL_GUARDED_BY(mu_);
  std::deque<Learning> unacknowledged_ ABSL_GUARDED_BY(mu_);
  int active_log_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 1;
  // Per-call scratch.
  std::vector<double> successor_sums_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> uses_ ABSL_GUARDED_BY(mu_);  // per expert
  std::vector<uint32_t> used_experts_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> predicted_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> guess_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_WORKER_WORKER_ENGINE_H_
