#ifndef MOE_ROUTER_CORE_CACHE_WORKER_CACHE_SET_H_
#define MOE_ROUTER_CORE_CACHE_WORKER_CACHE_SET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/base/types.h"
#include "core/cache/eviction_policy.h"
#include "core/cache/expert_size_table.h"
#include "core/cache/worker_cache_view.h"

namespace moe_router {

/// What OpenCache and SyncCache answer.
struct WorkerCacheInfo {
  std::string cache;
  uint64_t budget_bytes = 0;
  std::vector<ExpertKey> resident;
  bool created = false;
  std::vector<ExpertKey> evictions;  // to carry out after a shrinking resize
  std::string policy;
};

struct WorkerCacheLimits {
  uint32_t max_caches = 1024;
  absl::Duration idle_timeout = absl::Minutes(10);
};

/// The worker caches of one model, by name. Lookups take a reader lock only
/// to copy a pointer; each cache's calls are then ordered by its own mutex.
class WorkerCacheSet {
 public:
  WorkerCacheSet(std::string model, uint32_t num_layers, uint32_t num_experts,
                 std::shared_ptr<const ExpertSizeTable> sizes, WorkerCacheLimits limits,
                 std::string default_policy, EvictionPolicyOptions policy_options);

  /// Opens (or finds) a cache. An existing one with another budget is
  /// resized, with another policy switched to it; an empty policy is the
  /// model's. INVALID_ARGUMENT for a bad name, policy or a budget below one
  /// expert; RESOURCE_EXHAUSTED past the limit of caches.
  absl::StatusOr<WorkerCacheInfo> Open(const std::string& name, uint64_t budget_bytes,
                                       const std::string& policy, absl::Time now);
  absl::Status Close(const std::string& name);
  /// NOT_FOUND, saying to open it, for an unknown cache.
  absl::StatusOr<std::shared_ptr<WorkerCacheView>> Find(const std::string& name) const;
  /// Closes the caches idle past the timeout; how many.
  size_t CloseIdle(absl::Time now);
  size_t size() const;
  std::vector<std::shared_ptr<WorkerCacheView>> All() const;

 private:
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakePolicy(const std::string& name) const;

  const std::string model_;
  const uint32_t num_layers_;
  const uint32_t num_experts_;
  const std::shared_ptr<const ExpertSizeTable> sizes_;
  const WorkerCacheLimits limits_;
  const std::string default_policy_;
  const EvictionPolicyOptions policy_options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<WorkerCacheView>> caches_ ABSL_GUARDED_BY(mu_);
};

/// A summary of a view under its lock, for the resident list of CacheInfo.
WorkerCacheInfo DescribeCache(WorkerCacheView& view) ABSL_EXCLUSIVE_LOCKS_REQUIRED(view.mu());

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_WORKER_CACHE_SET_H_
