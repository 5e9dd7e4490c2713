#ifndef MOE_ROUTER_CLIENT_HELD_EXPERTS_H_
#define MOE_ROUTER_CLIENT_HELD_EXPERTS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/base/types.h"

namespace moe_router {

/// An expert in the worker's memory: its bytes, kept alive by `bytes`.
struct HeldExpert {
  std::shared_ptr<const uint8_t> bytes;
  uint64_t size = 0;
};

/// Where a worker gets the experts it is told to load. Not thread-safe.
class ExpertSource {
 public:
  virtual ~ExpertSource() = default;
  virtual absl::StatusOr<HeldExpert> Load(ExpertKey key) = 0;
  /// Loads repeated since the last call because the replica serving them
  /// was lost (a server source); counted into the report's failovers.
  virtual uint64_t TakeRepeats() { return 0; }
};

/// What a worker's memory did.
struct WorkerCacheReport {
  uint64_t route_calls = 0;
  uint64_t tokens = 0;
  uint64_t accesses = 0;  // chosen experts
  uint64_t hits = 0;      // of those, held when routed
  uint64_t loads = 0;
  uint64_t evictions = 0;
  uint64_t streamed = 0;  // chosen experts used without being kept
  uint64_t loaded_bytes = 0;
  double route_seconds = 0;  // in routing and prefetch calls
  double load_seconds = 0;   // in loading experts from the source
  uint64_t reopens = 0;      // the server did not know the cache: reopened
  // Calls repeated because the replica died or stalled with them in flight
  // (each after restating what the worker holds), and fetches repeated.
  uint64_t failovers = 0;
  double HitRate() const { return accesses == 0 ? 0 : static_cast<double>(hits) / accesses; }
};

/// The expert bytes a worker holds, whoever decides what to hold (the
/// service for a WorkerCache, its own engine in process). Not thread-safe.
class HeldExperts {
 public:
  explicit HeldExperts(std::unique_ptr<ExpertSource> source) : source_(std::move(source)) {}

  /// Drops `evictions`, then loads `loads` from the source. Stops at the
  /// first failed load, naming it.
  absl::Status CarryOut(absl::Span<const ExpertKey> evictions, absl::Span<const ExpertKey> loads,
                        WorkerCacheReport* report);
  /// An expert to compute with: held, or else loaded for this use only.
  absl::StatusOr<HeldExpert> Get(ExpertKey key, WorkerCacheReport* report);
  void Drop(ExpertKey key);
  std::vector<ExpertKey> Keys() const;
  uint64_t bytes() const { return bytes_; }

 private:
  // The source's Load, its repeats counted.
  absl::StatusOr<HeldExpert> Load(ExpertKey key, WorkerCacheReport* report);

  std::unique_ptr<ExpertSource> source_;
  std::map<ExpertKey, HeldExpert> held_;
  uint64_t bytes_ = 0;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CLIENT_HELD_EXPERTS_H_
