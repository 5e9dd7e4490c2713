#ifndef MOE_ROUTER_CLIENT_WORKER_CACHE_H_
#define MOE_ROUTER_CLIENT_WORKER_CACHE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/client.h"
#include "client/held_experts.h"
#include "core/base/types.h"
#include "core/store/expert_store.h"

namespace moe_router {

/// How a worker gets past a replica that dies or stalls with its call in
/// flight: an attempt that fails as a lost replica does (UNAVAILABLE, or no
/// answer within its deadline) is repeated where the proxy now sends it,
/// until the call's deadline.
struct FailoverOptions {
  /// An attempt not answered by then is given up as stalled. 1 s: a
  /// routing call answers in well under a millisecond on a healthy replica
  /// and in tens of milliseconds under heavy load, so 1 s is no healthy
  /// call's time; a stall then costs one step about a second plus the
  /// proxy's time to take the replica out (about 1 s with
  /// deploy/haproxy), not the 10 s of the call's deadline.
  absl::Duration attempt_timeout = absl::Seconds(1);
  /// A fetch moves the expert's bytes, so its attempts get longer.
  absl::Duration fetch_attempt_timeout = absl::Seconds(5);
  /// The whole call, repeats included.
  absl::Duration call_deadline = absl::Seconds(10);
};

/// Whether a call's failure is that of a lost replica (died or stalled with
/// the call in flight) rather than the server's answer.
bool ReplicaLost(const absl::Status& status);

/// From moe-routerd's FetchExpert, verified (Client::Fetch): served from the
/// server's memory when it staged the expert, else paged from its store.
/// `cache`: the worker cache it loads for (its FetchExpert calls carry it in
/// x-moe-cache, so a proxy sends them to the replica that staged the expert).
/// A fetch from a lost replica is repeated (it changes nothing on the
/// server) within `failover`'s deadlines.
std::unique_ptr<ExpertSource> ServerExpertSource(Client& client, std::string model,
                                                 std::string cache = "",
                                                 const FailoverOptions& failover = {});
/// From a store on this machine (a safetensors directory is read and
/// checked against its manifest), in its default precision.
std::unique_ptr<ExpertSource> StoreExpertSource(std::shared_ptr<const ExpertStore> store);

/// An inference worker's own expert memory, managed by moe-routerd: the
/// server keeps an exact view of what this worker holds, routes against it,
/// and says what to drop and what to load; this class carries that out on
/// its own copies of the expert bytes. One per worker (not thread-safe).
///
///   auto cache = WorkerCache::Open(client, {.model = "mixtral-8x7b",
///                                           .cache = "pod-7/gpu0",
///                                           .budget_bytes = 8 << 30},
///                                  ServerExpertSource(client, "mixtral-8x7b"));
///   // per layer of a forward pass:
///   auto routed = (*cache)->Route(layer, gate_logits);   // drops and loads done
///   for (each chosen expert e) compute with (*cache)->Get({layer, e});
class WorkerCache {
 public:
  struct Options {
    std::string model;
    /// Stable across restarts of this worker (e.g. pod name and device), so
    /// that it finds its cache again.
    std::string cache;
    uint64_t budget_bytes = 0;
    std::string eviction_policy = {};  // empty: the model's
    FailoverOptions failover = {};
  };

  /// Opens the cache on the server (or finds it again). It holds nothing
  /// yet, so a cache the server remembers as holding experts is synced to
  /// empty.
  static absl::StatusOr<std::unique_ptr<WorkerCache>> Open(Client& client, const Options& options,
                                                           std::unique_ptr<ExpertSource> source);

  /// Routes one layer's batch against this cache, then drops what the server
  /// said to drop and loads what it said to load (urgent, then prefetches).
  /// A load that fails resyncs the server's view before returning the error.
  /// A server that does not know the cache (the worker moved to another
  /// replica, or it expired) gets it reopened with what the worker holds,
  /// and the call is repeated: the move costs the policy's history for the
  /// cache, not the worker's bytes or a failed step. A replica lost with
  /// the call in flight (it may have applied it) is handled the same way,
  /// wherever the proxy sends the repeat: the view is restated before the
  /// call is repeated, so it stays exact (Options::failover).
  absl::StatusOr<v1::RouteTokensResponse> Route(uint32_t layer, absl::Span<const float> logits);
  /// Prefetches into this cache by a guess of the layer's gate (its top
  /// `budget`, top_k if 0), and carries out the answer.
  absl::StatusOr<v1::PrefetchResponse> Prefetch(uint32_t layer, absl::Span<const float> gate_logits,
                                                uint32_t budget);
  /// An expert to compute with: held, or else loaded from the source for
  /// this use only (an expert that did not fit beside the batch's others).
  absl::StatusOr<HeldExpert> Get(ExpertKey key);
  /// Drops an expert on the worker's own initiative; Resync() tells the server.
  void Drop(ExpertKey key);
  /// States to the server what this worker holds.
  absl::Status Resync();
  absl::Status Close();

  std::vector<ExpertKey> Held() const;
  uint64_t held_bytes() const { return held_.bytes(); }
  uint64_t budget_bytes() const { return options_.budget_bytes; }
  /// The eviction policy the server runs for this cache.
  const std::string& policy() const { return policy_; }
  const WorkerCacheReport& report() const { return report_; }

 private:
  WorkerCache(Client& client, Options options, std::unique_ptr<ExpertSource> source)
      : client_(client.WithTimeout(options.failover.attempt_timeout)),
        options_(std::move(options)),
        held_(std::move(source)) {}
  // Runs `call`; when the server does not know the cache, reopens it,
  // states what the worker holds, and runs `call` once more; when the
  // replica was lost with the call in flight, restates what the worker
  // holds where the proxy now sends it and repeats the call, until the
  // call's deadline.
  template <typename Call>
  auto Reliably(Call call) -> decltype(call());
  // OpenCache, then SyncCache with what the worker holds.
  absl::Status Reopen();
  // SyncCache with what the worker holds.
  absl::StatusOr<v1::CacheInfo> StateHeld();
  // Drops, then loads; on a failed load, resyncs and returns the error.
  absl::Status CarryOut(const google::protobuf::RepeatedPtrField<v1::ExpertRef>& evictions,
                        const std::vector<ExpertKey>& loads);

  // Calls with the attempt deadline (Options::failover).
  const std::unique_ptr<Client> client_;
  const Options options_;
  HeldExperts held_;
  std::string policy_;
  WorkerCacheReport report_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CLIENT_WORKER_CACHE_H_
