#ifndef MOE_ROUTER_SERVER_BLOCKING_CALL_POOL_H_
#define MOE_ROUTER_SERVER_BLOCKING_CALL_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace moe_router {

/// Threads for the calls that block (registering a model indexes its
/// checkpoint; unregistering waits for its paging workers), so gRPC's
/// callback threads keep serving everything else meanwhile. The queue is
/// bounded: a call that finds it full is refused, not buffered.
class BlockingCallPool {
 public:
  BlockingCallPool(int threads, size_t max_queued);
  /// Runs what is queued, then joins.
  ~BlockingCallPool();
  BlockingCallPool(const BlockingCallPool&) = delete;
  BlockingCallPool& operator=(const BlockingCallPool&) = delete;

  /// Queues `task`; false (and `task` dropped) when the queue is full.
  bool Submit(std::function<void()> task);

 private:
  void Work();

  const size_t max_queued_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_BLOCKING_CALL_POOL_H_
