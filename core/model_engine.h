#ifndef MOE_ROUTER_CORE_MODEL_ENGINE_H_
#define MOE_ROUTER_CORE_MODEL_ENGINE_H_

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
#include "core/affinity.h"
#include "core/expert_cache.h"
#include "core/expert_store.h"
#include "core/metrics.h"
#include "core/paging_pool.h"
#include "core/precision.h"
#include "core/router.h"

namespace moe_router {

/// Everything that defines one hosted model.
struct ModelConfig {
  std::string name;
  uint32_t num_layers = 32;
  /// num_experts and top_k live here.
  RouterConfig router;
  AffinityConfig affinity;
  uint64_t budget_bytes = 0;
  std::string eviction_policy = "layer_reuse";
  PrecisionConfig precision;
  PagingPoolOptions paging;
  /// After routing layer l, prefetch this many experts of layer l+1
  /// predicted by co-activation (0: none).
  uint32_t prefetch_next_layer = 2;
  Targets targets;

  absl::Status Validate() const;
};

/// What one RouteTokens call produced and queued.
struct RouteOutcome {
  RouteResult batch;
  std::vector<ExpertKey> urgent;    // page-ins queued for chosen, absent experts
  std::vector<ExpertKey> prefetch;  // prefetches queued
};

struct PrefetchOutcome {
  std::vector<uint32_t> queued;
  std::vector<uint32_t> already_resident;
  std::vector<uint32_t> dropped;  // the cache would not admit them now
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
};

/// One hosted model: a router and affinity per layer, next-layer
/// co-activation, one expert cache under one byte budget, and the paging
/// pool that fills it from the store. Thread-safe; routing locks only the
/// layer it routes (and briefly its neighbours, never two at once).
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
  /// strong runners-up and the predicted next-layer experts.
  absl::StatusOr<RouteOutcome> Route(uint32_t layer, absl::Span<const float> logits);
  /// Prefetches explicit experts of `layer`, or, if `experts` is empty, up to
  /// `budget` experts chosen by co-activation with the previous layer's last
  /// batch and by affinity.
  absl::StatusOr<PrefetchOutcome> Prefetch(uint32_t layer, absl::Span<const uint32_t> experts,
                                           uint32_t budget);
  /// The expert, paged in first if needed, pinned while the handle lives.
  /// Waits, retrying while the budget is momentarily full of pinned
  /// experts, until `deadline`.
  absl::StatusOr<PinnedExpert> Fetch(ExpertKey key, absl::Time deadline);
  /// The same without blocking: `done` runs once, on this thread or a
  /// paging worker. A budget full of pinned experts is RESOURCE_EXHAUSTED.
  using FetchCallback = std::function<void(absl::StatusOr<PinnedExpert>)>;
  void FetchAsync(ExpertKey key, FetchCallback done);

  ModelStats Stats() const;

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
  absl::StatusOr<bool> RouteAndLearn(uint32_t layer, absl::Span<const float> logits,
                                     RouteResult* result);
  // Prefetches the experts co-activation predicts for layer + 1, given how
  // often this batch used each expert of `layer`.
  void PrefetchNextLayer(uint32_t layer, absl::Span<const uint32_t> uses_by_expert,
                         std::vector<ExpertKey>* queued);
  void QueuePrefetch(uint32_t layer, absl::Span<const uint32_t> experts,
                     std::vector<ExpertKey>* queued);
  void RepageChangedClasses(uint32_t layer);
  absl::Status CheckExpert(ExpertKey key) const;
  void FetchAttempt(ExpertKey key, FetchCallback done, int attempts_left);

  const ModelConfig config_;
  const std::shared_ptr<const ExpertStore> store_;
  const bool multi_precision_;
  std::unique_ptr<ModelMetrics> metrics_;
  std::unique_ptr<ExpertCache> cache_;
  std::unique_ptr<PagingPool> pool_;
  std::vector<std::unique_ptr<Layer>> layers_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_MODEL_ENGINE_H_
