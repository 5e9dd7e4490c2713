#ifndef MOE_ROUTER_CORE_ENGINE_MODEL_ENGINE_H_
#define MOE_ROUTER_CORE_ENGINE_MODEL_ENGINE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/cache/expert_cache.h"
#include "core/cache/worker_cache_set.h"
#include "core/metrics/metrics.h"
#include "core/model/learned_state.h"
#include "core/model/model_config.h"
#include "core/model/precision.h"
#include "core/paging/paging_pool.h"
#include "core/routing/affinity.h"
#include "core/routing/router.h"
#include "core/store/expert_store.h"

namespace moe_router {

/// What one RouteTokens call produced and queued. For a worker cache, the
/// page-ins and evictions are the worker's to carry out (evictions first);
/// otherwise they are queued on the server's own cache.
struct RouteOutcome {
  RouteResult batch;
  std::vector<ExpertKey> urgent;    // page-ins for chosen, absent experts
  std::vector<ExpertKey> prefetch;  // prefetches
  std::vector<ExpertKey> evictions;
};

/// A Prefetch call: explicit experts, or the worker's guess of the layer's
/// gate (the top `budget` by logit), or else the server's prediction.
struct PrefetchQuery {
  uint32_t layer = 0;
  absl::Span<const uint32_t> experts = {};
  /// Experts to choose when `experts` is empty (0 with gate logits: top_k).
  uint32_t budget = 0;
  absl::Span<const float> gate_logits = {};  // empty or one row of the layer's experts
  std::string cache = {};                    // empty: the server's own cache
};

struct PrefetchOutcome {
  std::vector<uint32_t> queued;
  std::vector<uint32_t> already_resident;
  std::vector<uint32_t> dropped;     // the cache would not admit them now
  std::vector<ExpertKey> evictions;  // for a worker cache: to drop first
};

/// One worker cache, for GetModelStats.
struct WorkerCacheStats {
  std::string cache;
  std::string policy;
  uint64_t budget_bytes = 0;
  uint64_t resident_bytes = 0;
  WorkerCacheCounters counters;
  std::vector<uint32_t> resident_by_layer;
  uint64_t memory_bytes = 0;  // what the server holds for it
};

struct LayerStats {
  uint32_t resident_experts = 0;
  double coactivation_top1 = 0;  // predicting this layer from the previous
  double coactivation_top2 = 0;
  double mean_logit_range = 0;
};

struct ModelStats {
  std::string name;
  std::string store;
  MetricsSnapshot metrics;
  CacheStats cache;
  std::vector<LayerStats> layers;
  /// Resident experts per precision variant, and per precision class.
  std::map<std::string, uint64_t> resident_by_precision;
  uint64_t resident_by_class[kNumPrecisionClasses] = {};
  uint64_t queue_depth[kNumPriorities] = {};
  uint64_t open_caches = 0;
  uint64_t worker_cache_memory_bytes = 0;
};

/// One hosted model: a router and affinity per layer, next-layer
/// co-activation, one expert cache under one byte budget, the paging pool
/// that fills it from the store, and the worker caches: views of the
/// callers' own memories. What is learned is shared by every caller.
/// Thread-safe; routing locks only the layer it routes (and briefly its
/// neighbours, never two at once), and with a worker cache that cache
/// first, for the whole call.
///
///   auto model = ModelEngine::Create(config, store);
///   auto routed = (*model)->Route(/*layer=*/0, logits);
class ModelEngine {
 public:
  static absl::StatusOr<std::unique_ptr<ModelEngine>> Create(
      const ModelConfig& config, std::shared_ptr<const ExpertStore> store);
  ~ModelEngine();

  const ModelConfig& config() const { return config_; }

  /// Routes a batch of one layer (tokens x num_experts logits), queues
  /// urgent page-ins for chosen experts that are absent and prefetches for
  /// strong runners-up and the predicted next-layer experts. With `cache`,
  /// against that worker cache: residency, page-ins and evictions are the
  /// worker's, and what it must load is prefetched into the server's cache.
  absl::StatusOr<RouteOutcome> Route(uint32_t layer, absl::Span<const float> logits,
                                     const std::string& cache = "");
  /// Prefetches explicit experts, the top of the worker's gate guess, or up
  /// to `budget` experts chosen by co-activation with the previous layer's
  /// last batch (of the same worker cache) and by affinity.
  absl::StatusOr<PrefetchOutcome> Prefetch(const PrefetchQuery& query);

  /// Worker caches (see WorkerCacheSet). Sync adopts what the worker states
  /// it holds, in the variants it was told to load.
  absl::StatusOr<WorkerCacheInfo> OpenCache(const std::string& cache, uint64_t budget_bytes,
                                            const std::string& policy);
  absl::Status CloseCache(const std::string& cache);
  absl::StatusOr<WorkerCacheInfo> SyncCache(const std::string& cache,
                                            absl::Span<const ExpertKey> resident);
  absl::StatusOr<WorkerCacheStats> CacheStats(const std::string& cache) const;
  /// Closes caches idle past the limit; how many.
  size_t CloseIdleCaches(absl::Time now);
  /// The expert, paged in first if needed, pinned while the handle lives.
  /// Waits, retrying while the budget is momentarily full of pinned
  /// experts, until `deadline`.
  absl::StatusOr<PinnedExpert> Fetch(ExpertKey key, absl::Time deadline);
  /// The same without blocking: `done` runs once, on this thread or a
  /// paging worker. A budget full of pinned experts is RESOURCE_EXHAUSTED.
  /// An expert evicted between its page-in and the pin (a thrashing
  /// budget) is paged in again until `deadline`, then DEADLINE_EXCEEDED.
  using FetchCallback = std::function<void(absl::StatusOr<PinnedExpert>)>;
  void FetchAsync(ExpertKey key, absl::Time deadline, FetchCallback done);

  /// Folds a report of a worker that routes in its own process against
  /// `cache`, as if its tokens had been routed here with that cache: the
  /// learned state, the metrics, the view's residency and counters. Checks
  /// everything first; a bad report changes nothing. `worker` names the run
  /// of the worker that sent it (0: unnamed): a report of that run no newer
  /// than the last one folded for the cache is a resend and is skipped, so
  /// each report is folded once across broken streams.
  absl::Status FoldReport(const std::string& cache, const RoutingReport& report,
                          uint64_t worker = 0);
  /// The sequence of the last report of `worker` folded for `cache`; 0 if
  /// none (another run's, or an unknown cache).
  uint64_t LastFolded(const std::string& cache, uint64_t worker) const;
  /// What the fleet learned of one layer, compactly: co-activation as each
  /// row's `row_top` strongest successors.
  LayerLearnedState ExportLayerState(uint32_t layer, uint32_t row_top) const;
  /// Tokens a layer has learned from so far: a layer whose count moved has
  /// state worth sending again.
  uint64_t LayerTokens(uint32_t layer) const { return layers_[layer]->affinity->updates(); }
  const std::shared_ptr<const ExpertSizeTable>& sizes() const { return sizes_; }

  ModelStats Stats() const;
  /// A FetchExpert served from this server's memory took `seconds`.
  void RecordFetchFromMemory(double seconds) { metrics_->RecordFetchFromMemory(seconds); }

  /// Learned state (affinity, co-activation, logit range) as JSON, and back.
  /// Import checks everything before changing anything.
  std::string ExportState() const;
  absl::Status ImportState(absl::string_view json);

  ExpertCache& cache() { return *cache_; }
  PagingPool& pool() { return *pool_; }
  const ModelMetrics& metrics() const { return *metrics_; }
  const ExpertStore& store() const { return *store_; }
  /// Stops the paging pool (queued work is cancelled).
  void Shutdown();

 private:
  struct Layer {
    mutable absl::Mutex mu;
    std::unique_ptr<LayerRouter> router ABSL_GUARDED_BY(mu);
    // Co-activation from the previous layer into this one.
    std::unique_ptr<CoActivation> from_previous ABSL_GUARDED_BY(mu);
    std::vector<uint32_t> last_choices ABSL_GUARDED_BY(mu);
    uint32_t last_top_k ABSL_GUARDED_BY(mu) = 0;
    uint64_t tokens_since_reclassify ABSL_GUARDED_BY(mu) = 0;
    // The router's affinity; its readers use atomics, so no lock.
    const ExpertAffinity* affinity = nullptr;
  };

  ModelEngine(const ModelConfig& config, std::shared_ptr<const ExpertStore> store);
  absl::Status CheckLayer(uint32_t layer) const;
  std::string PrecisionFor(ExpertKey key) const;
  PrecisionClass ClassOf(ExpertKey key) const;
  // Queues prefetches of absent experts; returns the keys queued.
  // Routes under the layer's lock and learns from it: cache bookkeeping and
  // co-activation from the previous layer's last batch. Whether the layer's
  // precision classes are due for another look.
  // With a worker cache, against its view and its previous batch (the
  // caller holds the view's lock); without, against the server's cache.
  absl::StatusOr<bool> RouteAndLearn(uint32_t layer, absl::Span<const float> logits,
                                     WorkerCacheView* view, RouteResult* result);
  // The experts co-activation predicts for layer + 1, given how often this
  // batch used each expert of `layer`.
  std::vector<uint32_t> PredictNextLayer(uint32_t layer, absl::Span<const uint32_t> uses_by_expert);
  // Route's paging, on the server's cache or on a worker's view.
  void PageForServer(uint32_t layer, RouteOutcome* out);
  void PageForWorker(WorkerCacheView& view, uint32_t layer, RouteOutcome* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(view.mu());
  // The worker must load these: page them into the server's cache too, so
  // that its FetchExpert is served from memory.
  void StageForWorker(absl::Span<const ExpertKey> loads);
  // Candidates of a Prefetch without explicit experts.
  std::vector<uint32_t> PrefetchCandidates(const PrefetchQuery& query, WorkerCacheView* view);
  absl::StatusOr<PrefetchOutcome> PrefetchForWorker(WorkerCacheView& view, uint32_t layer,
                                                    absl::Span<const uint32_t> candidates)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(view.mu());
  absl::StatusOr<std::shared_ptr<WorkerCacheView>> FindCache(const std::string& cache) const;
  std::vector<uint32_t> UsesByExpert(absl::Span<const uint32_t> experts) const;
  // The precision variant a worker is told to load an expert in.
  uint8_t VariantFor(ExpertKey key) const;
  void QueuePrefetch(uint32_t layer, absl::Span<const uint32_t> experts,
                     std::vector<ExpertKey>* queued);
  void RepageChangedClasses(uint32_t layer);
  absl::Status CheckExpert(ExpertKey key) const;
  void FetchAttempt(ExpertKey key, absl::Time deadline, FetchCallback done, int attempt);

  const ModelConfig config_;
  const std::shared_ptr<const ExpertStore> store_;
  const bool multi_precision_;
  std::unique_ptr<ModelMetrics> metrics_;
  std::unique_ptr<ExpertCache> cache_;
  std::unique_ptr<PagingPool> pool_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::shared_ptr<const ExpertSizeTable> sizes_;
  std::unique_ptr<WorkerCacheSet> worker_caches_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_ENGINE_MODEL_ENGINE_H_
