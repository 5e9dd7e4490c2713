#ifndef MOE_ROUTER_CORE_PAGING_PAGING_POOL_H_
#define MOE_ROUTER_CORE_PAGING_PAGING_POOL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/base/types.h"
#include "core/cache/expert_cache.h"
#include "core/metrics/metrics.h"
#include "core/paging/paging_options.h"
#include "core/store/expert_store.h"

namespace moe_router {

/// Completion of a paging request, shared by every caller that joined it.
class PageTicket {
 public:
  /// Waits until done or `deadline`; returns whether it is done.
  bool WaitUntil(absl::Time deadline) const {
    return done_.WaitForNotificationWithDeadline(deadline);
  }
  bool done() const { return done_.HasBeenNotified(); }
  /// The outcome; only meaningful once done().
  const absl::Status& status() const { return status_; }
  /// Runs `callback(status)` once the request completes: now, on this
  /// thread, if it has; else on the thread that completes it (a paging
  /// worker). Keep it short.
  void OnDone(std::function<void(const absl::Status&)> callback) const;

 private:
  friend class PagingPool;
  void Complete(absl::Status status);

  absl::Status status_;
  absl::Notification done_;
  mutable absl::Mutex mu_;
  mutable std::vector<std::function<void(const absl::Status&)>> callbacks_ ABSL_GUARDED_BY(mu_);
};

/// Worker threads that page experts between a store and the cache.
/// Priorities: urgent > normal > prefetch. One page-in per expert at a time:
/// a second request for an expert in flight joins it (raising its priority
/// if higher). All store I/O happens here, with no cache lock held.
class PagingPool {
 public:
  /// Which precision variant to load for an expert now.
  using PrecisionFn = std::function<std::string(ExpertKey)>;

  static absl::StatusOr<std::unique_ptr<PagingPool>> Create(
      ExpertCache* cache, std::shared_ptr<const ExpertStore> store, PrecisionFn precision,
      ModelMetrics* metrics, const PagingPoolOptions& options);
  ~PagingPool();

  /// Queues a page-in, or joins the one in flight. An expert already
  /// resident completes at once with OK. A prefetch the cache cannot admit
  /// without evicting something more valuable completes RESOURCE_EXHAUSTED.
  std::shared_ptr<const PageTicket> PageIn(ExpertKey key, Priority priority);
  /// Queues a page-out (normal priority).
  std::shared_ptr<const PageTicket> PageOut(ExpertKey key);
  /// Queues a re-page of a resident expert at its current precision, at
  /// prefetch priority, if the budget allows without eviction.
  std::shared_ptr<const PageTicket> Repage(ExpertKey key);
  /// Cancels a queued prefetch page-in that nobody has raised; returns
  /// whether it was cancelled (it completes CANCELLED).
  bool CancelPrefetch(ExpertKey key);

  /// Requests waiting, per priority.
  uint64_t QueueDepth(Priority priority) const;
  /// Waits until nothing is queued or running, or `deadline`; returns
  /// whether the pool went idle.
  bool WaitIdle(absl::Time deadline) const;
  /// Stops taking work, cancels what is queued, waits for running requests.
  void Shutdown();

 private:
  enum class Kind : uint8_t { kPageIn, kPageOut, kRepage };
  struct Request {
    Kind kind;
    ExpertKey key;
    Priority priority;
    bool running = false;
    bool finished = false;
    std::shared_ptr<PageTicket> ticket = std::make_shared<PageTicket>();
  };

  PagingPool(ExpertCache* cache, std::shared_ptr<const ExpertStore> store, PrecisionFn precision,
             ModelMetrics* metrics);
  std::shared_ptr<const PageTicket> Enqueue(Kind kind, ExpertKey key, Priority priority);
  void PushLocked(const std::shared_ptr<Request>& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WorkerLoop();
  absl::Status Execute(const Request& request);
  absl::Status ExecutePageIn(ExpertKey key, Priority priority);
  absl::Status ExecuteRepage(ExpertKey key);
  // Reads and verifies from the store, then commits the booked bytes (or
  // gives them back on failure).
  absl::Status LoadAndCommit(ExpertKey key, const std::string& precision, Priority priority);

  ExpertCache* const cache_;
  const std::shared_ptr<const ExpertStore> store_;
  const PrecisionFn precision_;
  ModelMetrics* const metrics_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Entries whose priority no longer matches their queue, or that are
  // finished, are skipped when popped (cheap priority raise and cancel).
  std::deque<std::shared_ptr<Request>> queues_[kNumPriorities] ABSL_GUARDED_BY(mu_);
  uint64_t depth_[kNumPriorities] ABSL_GUARDED_BY(mu_) = {};
  uint64_t running_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<ExpertKey, std::shared_ptr<Request>> page_ins_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_PAGING_PAGING_POOL_H_
