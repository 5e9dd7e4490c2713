#ifndef MOE_ROUTER_CORE_CACHE_EXPERT_CACHE_H_
#define MOE_ROUTER_CORE_CACHE_EXPERT_CACHE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/base/types.h"
#include "core/cache/changed_slots.h"
#include "core/cache/eviction_index.h"
#include "core/cache/eviction_policy.h"
#include "core/store/expert_store.h"

namespace moe_router {

struct CacheConfig {
  uint32_t num_layers = 1;
  uint32_t num_experts = 8;
  uint64_t budget_bytes = 0;

  absl::Status Validate() const;
};

struct CacheStats {
  uint64_t budget_bytes = 0;
  uint64_t resident_bytes = 0;
  uint64_t loading_bytes = 0;
  uint64_t peak_bytes = 0;  // max of resident + loading ever seen
  uint64_t resident_experts = 0;
  uint64_t evictions = 0;
  uint64_t prefetch_loaded = 0;  // experts that became resident by prefetch
  uint64_t prefetch_used = 0;    // of those, accessed before eviction
  uint64_t prefetch_wasted = 0;  // of those, evicted unused
  std::string policy;
};

/// A resident expert held for reading; the cache will not evict it while
/// this handle lives.
class PinnedExpert {
 public:
  PinnedExpert() = default;
  PinnedExpert(class ExpertCache* cache, std::shared_ptr<const ExpertData> data);
  PinnedExpert(PinnedExpert&& other) noexcept;
  PinnedExpert& operator=(PinnedExpert&& other) noexcept;
  ~PinnedExpert();
  const ExpertData& operator*() const { return *data_; }
  const ExpertData* operator->() const { return data_.get(); }

 private:
  void Release();
  ExpertCache* cache_ = nullptr;
  std::shared_ptr<const ExpertData> data_;
};

/// The experts of one model in fast memory, all layers under one byte budget.
///
/// Loading is two-phase so that resident + loading bytes never exceed the
/// budget: Reserve() makes room (evicting by policy) and books the bytes,
/// the caller reads the expert without any cache lock held, then Commit()
/// makes it resident all at once, or Abort() returns the bytes.
///
/// Routing-path calls (ResidentFlags, Access, Pin, Unpin, BeginStep) are
/// lock-free. Bookkeeping for one layer (Access, BeginStep) must come from one
/// thread at a time, as the model's per-layer lock guarantees.
class ExpertCache {
 public:
  /// Called on every eviction, under the cache lock: keep it cheap.
  using EvictionListener = std::function<void(ExpertKey)>;

  static absl::StatusOr<std::unique_ptr<ExpertCache>> Create(const CacheConfig& config,
                                                             std::unique_ptr<EvictionPolicy> policy,
                                                             EvictionListener on_evict = nullptr);
  ~ExpertCache();

  const CacheConfig& config() const { return config_; }
  /// The order in which the policy's engine touches a step's experts: the
  /// caller arranges a step with ArrangeStep before its Access calls.
  StepOrder step_order() const { return step_order_; }

  /// One flag per expert of `layer`, 1 while resident; read by the router.
  const std::atomic<uint8_t>* ResidentFlags(uint32_t layer) const {
    return &resident_[size_t{layer} * config_.num_experts];
  }
  /// A key outside the model is not resident.
  bool IsResident(ExpertKey key) const {
    if (key.layer >= config_.num_layers || key.expert >= config_.num_experts) return false;
    return resident_[Index(key)].load(std::memory_order_acquire) != 0;
  }

  /// A step of `layer` for `tokens` tokens begins (layer-aware policies
  /// count visits; sglang breaks ties by a call's tokens).
  void BeginStep(uint32_t layer, uint32_t tokens);
  /// Records a use of the expert; returns whether it was resident (a hit).
  bool Access(ExpertKey key);

  /// Pins the expert against eviction (resident or not yet); returns whether
  /// it is resident now. Every Pin needs one Unpin.
  bool Pin(ExpertKey key);
  void Unpin(ExpertKey key);
  /// Pins a resident expert and returns it for reading; NOT_FOUND if absent.
  absl::StatusOr<PinnedExpert> Get(ExpertKey key);

  /// Books `bytes` for loading `key`, evicting by policy as needed. A
  /// prefetch may only evict entries the policy values less than the
  /// prefetched expert; otherwise it is dropped (RESOURCE_EXHAUSTED).
  /// ALREADY_EXISTS if the expert is resident or loading.
  absl::Status Reserve(ExpertKey key, uint64_t bytes, Priority priority);
  /// Whether Reserve would succeed now, without changing anything.
  absl::Status CanAdmit(ExpertKey key, uint64_t bytes, Priority priority) const;
  /// Books room to replace a resident expert by another variant (a new
  /// precision) only if free space allows: no eviction for this.
  absl::Status ReserveReplacement(ExpertKey key, uint64_t bytes);
  /// Makes the loaded expert resident; its size must equal the reservation.
  absl::Status Commit(std::shared_ptr<const ExpertData> data);
  /// Gives back a reservation after a failed load.
  void Abort(ExpertKey key);
  /// Pages an expert out. FAILED_PRECONDITION if pinned, NOT_FOUND if absent.
  absl::Status Evict(ExpertKey key);

  /// Grows whenever room may have come free for a booking that found none
  /// (the budget full of pinned or loading experts): a load committed or
  /// aborted, an eviction, a reader's PinnedExpert released. Routing pins,
  /// held for microseconds, do not count.
  uint64_t RoomGeneration() const;
  /// Waits until RoomGeneration() passes `seen`, or `deadline`; whether it did.
  bool AwaitRoom(uint64_t seen, absl::Time deadline) const;

  /// Precision of the resident variant ("" if absent).
  std::string ResidentPrecision(ExpertKey key) const;
  std::vector<ExpertKey> ResidentKeys() const;
  CacheStats Stats() const;

 private:
  enum class State : uint8_t { kAbsent, kLoading, kResident };
  struct Entry {
    State state = State::kAbsent;
    uint64_t bytes = 0;              // resident size, or booked while loading
    uint64_t replacement_bytes = 0;  // booked for a new variant while resident
    Priority loading_priority = Priority::kNormal;
    size_t list_pos = 0;  // index in resident_list_ while resident
    std::shared_ptr<const ExpertData> data;
  };
  // Routing-path bookkeeping, lock-free.
  struct Usage {
    std::atomic<uint64_t> last_access{0};
    std::atomic<uint64_t> accesses{0};
    std::atomic<float> reuse{0};  // float, as a worker view keeps it: both rank alike
    std::atomic<float> crf{0};
    std::atomic<uint64_t> reuse_visit{0};
    std::atomic<uint64_t> resident_accesses{0};
    std::atomic<uint64_t> layer_access{0};
    std::atomic<uint64_t> admitted{0};
    std::atomic<uint32_t> pins{0};
  };

  ExpertCache(const CacheConfig& config, std::unique_ptr<EvictionPolicy> policy,
              EvictionListener on_evict);
  // The entries to evict, in order, so that `bytes` more fit, in plan_; the
  // error says why they cannot (too big, all pinned, or a prefetch not
  // worth it).
  absl::Status PlanEvictionLocked(ExpertKey key, uint64_t bytes, Priority priority) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Brings the eviction index up to the slots changed since it last looked:
  // an entry is in it while resident, unpinned and not being re-paged.
  void SyncIndexLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool EvictableLocked(size_t index) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t Index(ExpertKey key) const { return size_t{key.layer} * config_.num_experts + key.expert; }
  ExpertKey KeyOf(size_t index) const {
    return {static_cast<uint32_t>(index / config_.num_experts),
            static_cast<uint32_t>(index % config_.num_experts)};
  }
  absl::Status CheckKey(ExpertKey key) const;
  EntryView View(size_t index) const;
  void FillClock(CacheClock* clock) const;
  class IndexSource;
  // Removes a resident, unpinned entry; false if a pin raced in. The data
  // goes to `released`, for the caller to drop after unlocking: freeing
  // megabytes (munmap) must not stall everyone waiting on the lock.
  bool TryEvictLocked(size_t index, std::vector<std::shared_ptr<const ExpertData>>* released)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotePeakLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  friend class PinnedExpert;  // its release may free room
  void NoteRoom();

  const CacheConfig config_;
  const size_t slots_;
  const EvictionListener on_evict_;
  const StepOrder step_order_;
  const bool tracks_crf_;
  std::unique_ptr<std::atomic<uint8_t>[]> resident_;
  std::unique_ptr<Usage[]> usage_;
  std::unique_ptr<std::atomic<uint64_t>[]> layer_visits_;
  std::unique_ptr<std::atomic<uint64_t>[]> layer_accesses_;
  std::unique_ptr<std::atomic<uint32_t>[]> layer_tokens_;
  std::atomic<uint64_t> pass_start_{0};
  std::atomic<uint32_t> current_layer_{0};
  std::atomic<uint64_t> tick_{0};
  std::atomic<uint64_t> prefetch_used_{0};

  mutable absl::Mutex mu_;
  std::unique_ptr<EvictionPolicy> policy_ ABSL_GUARDED_BY(mu_);
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<size_t> resident_list_ ABSL_GUARDED_BY(mu_);
  // What the routing path changed (accesses, pins), for the index.
  mutable ChangedSlots changed_;
  // Evictable entries in the policy's order; kept up to date lazily by the
  // decisions, hence mutable.
  mutable EvictionIndex index_ ABSL_GUARDED_BY(mu_);
  mutable CacheClock clock_ ABSL_GUARDED_BY(mu_);  // of the decision in progress
  mutable EvictionPlan plan_ ABSL_GUARDED_BY(mu_);
  uint64_t resident_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t loading_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t peak_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t prefetch_loaded_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t prefetch_wasted_ ABSL_GUARDED_BY(mu_) = 0;
  // Taken after mu_ when both are held, never before it.
  mutable absl::Mutex room_mu_;
  uint64_t room_generation_ ABSL_GUARDED_BY(room_mu_) = 0;
  // Prefetched-but-unused flags readable from Access without the lock.
  std::unique_ptr<std::atomic<uint8_t>[]> prefetched_unused_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_EXPERT_CACHE_H_
