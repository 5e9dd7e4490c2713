#ifndef MOE_ROUTER_CORE_CACHE_WORKER_CACHE_VIEW_H_
#define MOE_ROUTER_CORE_CACHE_WORKER_CACHE_VIEW_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/base/types.h"
#include "core/cache/eviction_index.h"
#include "core/cache/eviction_policy.h"
#include "core/cache/expert_size_table.h"
#include "core/metrics/metrics.h"

namespace moe_router {

/// What one call tells the worker: drop `evictions` first, then load the
/// rest. Net over the call: nothing is both dropped and loaded.
struct CacheInstructions {
  std::vector<ExpertKey> evictions;
  std::vector<ExpertKey> urgent;    // chosen experts to load before computing
  std::vector<ExpertKey> prefetch;  // predicted experts to load ahead
  uint64_t load_bytes = 0;
};

/// The server's exact view of one inference worker's expert memory: which
/// experts it holds (and in which precision variant), under its byte
/// budget, and the eviction policy's per-expert state. No expert bytes.
///
/// Bookkeeping follows ExpertCache step for step (the same ticks, reuse EMA
/// and PlanEviction), so a trace replayed through a view pages exactly like
/// the offline replay through an ExpertCache. A call allocates nothing once
/// its buffers have grown to the workload, and costs O(log n) per eviction:
/// the evictable entries are kept in the policy's order (EvictionIndex),
/// not ranked per call. Per expert it keeps 30 bytes of state (access ages
/// in 32 bits are rebased every 2^31 accesses; entries idle for longer tie
/// as the oldest) and the index's 21 (49 for adaptive).
///
/// Not thread-safe on its own: the owner holds mu() for a whole call, which
/// orders the calls on one cache.
class WorkerCacheView {
 public:
  static constexpr uint64_t kDefaultTickLimit = uint64_t{1} << 32;

  WorkerCacheView(std::string name, uint32_t num_layers, uint32_t num_experts,
                  uint64_t budget_bytes, std::unique_ptr<EvictionPolicy> policy,
                  std::shared_ptr<const ExpertSizeTable> sizes,
                  uint64_t tick_limit = kDefaultTickLimit);

  const std::string& name() const { return name_; }
  absl::Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }

  /// Last call, for idle expiry (readable without mu()).
  absl::Time last_used() const {
    return absl::FromUnixNanos(last_used_ns_.load(std::memory_order_relaxed));
  }
  void Touch(absl::Time now) {
    last_used_ns_.store(absl::ToUnixNanos(now), std::memory_order_relaxed);
  }

  /// One flag per expert of `layer`, nonzero while the worker holds it.
  const std::atomic<uint8_t>* ResidentFlags(uint32_t layer) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return &flags_[size_t{layer} * num_experts_];
  }
  bool IsResident(ExpertKey key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return flags_[Index(key)].load(std::memory_order_relaxed) != 0;
  }

  /// A chosen expert the worker lacked at the start of a step, and how many
  /// uses the step makes of it.
  struct Miss {
    uint32_t expert = 0;
    uint32_t uses = 0;
  };
  /// A step of `layer` for `tokens` tokens begins with its chosen experts in
  /// order of use (tokens x top_k): pins them until the call ends and
  /// records every use as the offline replay does, one expert at a time.
  /// Returns the experts the worker lacks, in order of first use: Admit
  /// each, then NoteMiss.
  /// The span lives until the next BeginStep.
  absl::Span<const Miss> BeginStep(uint32_t layer, uint32_t tokens,
                                   absl::Span<const uint32_t> experts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  /// How a miss ended: loaded for its first use and held for the rest, or
  /// not placed at all (the step's own experts filled the budget).
  void NoteMiss(const Miss& miss, bool placed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NoteRoutedTokens(uint64_t tokens) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    counters_.routed_tokens += tokens;
  }
  /// Counts what the worker did on its own (it routes in its process).
  void AddCounters(const WorkerCacheCounters& delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  /// The last report folded for this cache: which run of its worker sent
  /// it (0: none) and its sequence number. A report resent after a broken
  /// stream is then told from a new one.
  struct FoldedReport {
    uint64_t worker = 0;
    uint64_t sequence = 0;
  };
  const FoldedReport& last_folded() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return last_folded_;
  }
  void set_last_folded(FoldedReport folded) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    last_folded_ = folded;
  }

  /// Makes the expert resident in `variant`, evicting by policy. A prefetch
  /// evicts only entries the policy values less than the incoming expert.
  /// RESOURCE_EXHAUSTED when it does not fit; ALREADY_EXISTS if resident.
  absl::Status Admit(ExpertKey key, uint8_t variant, Priority priority)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  /// The same without a message, so the routing path allocates nothing.
  enum class Admission : uint8_t { kAdmitted, kResident, kTooLarge, kValuedMore, kNoRoom };
  Admission TryAdmit(ExpertKey key, uint8_t variant, Priority priority)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  /// A new budget; evicts by policy down to it (the evictions are the next
  /// instructions).
  void Resize(uint64_t budget_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  /// Replaces the residency with what the worker states it holds. Over the
  /// budget is INVALID_ARGUMENT naming both numbers, and changes nothing.
  /// The policy's state (access history) is kept.
  absl::Status Adopt(absl::Span<const std::pair<ExpertKey, uint8_t>> resident)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetPolicy(std::unique_ptr<EvictionPolicy> policy) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  /// Ends a call: releases its pins and writes its net changes into `out`
  /// (its buffers reused), counted in counters().
  void EndCall(CacheInstructions* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  CacheInstructions EndCall() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    CacheInstructions out;
    EndCall(&out);
    return out;
  }

  /// The last routed batch, so that co-activation pairs this worker's
  /// consecutive layers and no one else's.
  std::optional<uint32_t> last_layer() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return last_layer_;
  }
  const std::vector<uint32_t>& last_choices() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return last_choices_;
  }
  void SetLastBatch(uint32_t layer, absl::Span<const uint32_t> experts)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::vector<ExpertKey> ResidentKeys() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  /// The variant the worker holds an expert in (only while resident).
  uint8_t ResidentVariant(ExpertKey key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return flags_[Index(key)].load(std::memory_order_relaxed) - 1;
  }
  uint64_t budget_bytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return budget_bytes_; }
  uint64_t resident_bytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return resident_bytes_; }
  std::string policy_name() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return policy_->name(); }
  const WorkerCacheCounters& counters() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return counters_;
  }
  /// Heap bytes this view holds (for the memory accounting of open caches).
  uint64_t MemoryBytes() const;
  /// What a view of a model of this shape holds, before it exists: what the
  /// server reserves for each worker cache a model may open.
  static uint64_t FootprintBytes(uint32_t num_layers, uint32_t num_experts, size_t name_bytes);

 private:
  // Per expert, 28 bytes: the policy's state in 32-bit fields.
  struct Usage {
    uint32_t last_access = 0;  // tick - tick_base_; 0: never
    uint32_t accesses = 0;     // saturates
    float reuse = 0;
    float crf = 0;
    uint32_t reuse_visit = 0;        // low 32 bits of the layer's visit count
    uint32_t resident_accesses = 0;  // since it last left; saturates
    uint32_t layer_access = 0;       // low 32 bits of the layer's access count
    uint32_t admitted = 0;           // tick - tick_base_, as last_access
  };
  // How a slot stood when the current call first changed it, one byte per
  // slot (a dense array, so a call allocates nothing).
  enum TouchBits : uint8_t { kTouched = 1, kWasResident = 2, kAdmittedForPrefetch = 4 };

  size_t Index(ExpertKey key) const { return size_t{key.layer} * num_experts_ + key.expert; }
  ExpertKey KeyOf(size_t index) const {
    return {static_cast<uint32_t>(index / num_experts_),
            static_cast<uint32_t>(index % num_experts_)};
  }
  EntryView View(ExpertKey key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A visit (or access) count from its low 32 bits, given the layer's count
  // now.
  static uint64_t FullVisit(uint64_t visits, uint32_t low) {
    return visits - static_cast<uint32_t>(static_cast<uint32_t>(visits) - low);
  }
  // A tick relative to tick_base_ (1: rebased away, the oldest).
  uint32_t Relative(uint64_t tick) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return tick > tick_base_ ? static_cast<uint32_t>(tick - tick_base_) : 1;
  }
  const CacheClock& Clock() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return clock_; }
  uint64_t SlotBytes(ExpertKey key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Evicts by policy until `need` bytes are free; kNoRoom (and no change)
  // if the evictable entries are not enough or, for a prefetch of
  // `incoming`, kValuedMore if they are valued more. The bookings of one step share one
  // ranking: the entries they may evict do not change in between.
  Admission MakeRoom(uint64_t need, const EntryView* incoming) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The bookings of one call share one ranking, as a ranking of all
  // candidates at the call's first booking would: entries admitted after it
  // join the order only when the snapshot ends (the call ends, or an
  // eviction changes an adaptive policy's population).
  void EndSnapshot() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The step's experts leave the order while pinned; back in at the end of
  // the call, re-keyed by their uses.
  void ReleasePins() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsPinned(size_t index) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return index / num_experts_ == clock_.current_layer && pinned_[index % num_experts_] != 0;
  }
  // Refills the index with every resident entry not pinned (a new policy,
  // an adopted residency).
  void RebuildIndex() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  class IndexSource;
  void Note(size_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Remove(ExpertKey key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RebaseTicks() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const std::string name_;
  const uint32_t num_layers_;
  const uint32_t num_experts_;
  const size_t slots_;
  const uint64_t tick_limit_;
  const std::shared_ptr<const ExpertSizeTable> sizes_;
  std::atomic<int64_t> last_used_ns_{0};

  absl::Mutex mu_;
  std::unique_ptr<EvictionPolicy> policy_ ABSL_GUARDED_BY(mu_);
  uint64_t budget_bytes_ ABSL_GUARDED_BY(mu_);
  uint64_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  FoldedReport last_folded_ ABSL_GUARDED_BY(mu_);
  // 0: absent; else 1 + the variant held. Atomic only for the router's
  // signature: every access is under mu_.
  std::unique_ptr<std::atomic<uint8_t>[]> flags_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Usage[]> usage_ ABSL_GUARDED_BY(mu_);
  // The tick, the current layer and the visits per layer, as the policy
  // sees them.
  CacheClock clock_ ABSL_GUARDED_BY(mu_);
  uint64_t tick_base_ ABSL_GUARDED_BY(mu_) = 0;
  EvictionIndex index_ ABSL_GUARDED_BY(mu_);
  EvictionPlan plan_ ABSL_GUARDED_BY(mu_);  // the last booking's
  bool snapshot_open_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<size_t> deferred_ ABSL_GUARDED_BY(mu_);       // admitted while the snapshot is open
  std::vector<uint8_t> pinned_ ABSL_GUARDED_BY(mu_);        // experts of the current layer
  std::vector<uint32_t> pinned_list_ ABSL_GUARDED_BY(mu_);  // the same, listed
  std::vector<uint8_t> touch_ ABSL_GUARDED_BY(mu_);         // TouchBits per slot
  std::vector<size_t> touched_ ABSL_GUARDED_BY(mu_);        // slots with touch_ set
  std::vector<Miss> misses_ ABSL_GUARDED_BY(mu_);
  WorkerCacheCounters counters_ ABSL_GUARDED_BY(mu_);
  std::optional<uint32_t> last_layer_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> last_choices_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_WORKER_CACHE_VIEW_H_
