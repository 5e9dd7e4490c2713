#ifndef MOE_ROUTER_CORE_CACHE_CHANGED_SLOTS_H_
#define MOE_ROUTER_CORE_CACHE_CHANGED_SLOTS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace moe_router {

/// The slots whose state changed since a consumer last looked: marked
/// lock-free by any number of threads (the routing path), drained by one
/// consumer at a time (under the owner's lock). Each slot is queued at most
/// once until drained, so a ring of one cell per slot never overflows, and
/// nothing allocates after construction.
class ChangedSlots {
 public:
  explicit ChangedSlots(size_t slots)
      : slots_(slots),
        marked_(new std::atomic<uint8_t>[slots]),
        ring_(new std::atomic<uint32_t>[slots]) {
    for (size_t i = 0; i < slots; ++i) {
      marked_[i].store(0, std::memory_order_relaxed);
      ring_[i].store(0, std::memory_order_relaxed);
    }
  }

  /// Call after changing the slot's state. The read-modify-write publishes
  /// that change to the consumer even when the slot is already queued.
  void Mark(size_t slot) {
    if (marked_[slot].exchange(1, std::memory_order_acq_rel) != 0) return;
    const uint64_t at = head_.fetch_add(1, std::memory_order_relaxed);
    ring_[at % slots_].store(static_cast<uint32_t>(slot) + 1, std::memory_order_release);
  }

  /// Calls f(slot) for each queued slot, after unmarking it: a change made
  /// after that is queued again. Stops at a cell a marker has claimed but
  /// not yet written; the next drain takes it.
  template <typename F>
  void Drain(F&& f) {
    while (true) {
      std::atomic<uint32_t>& cell = ring_[tail_ % slots_];
      const uint32_t value = cell.load(std::memory_order_acquire);
      if (value == 0) return;
      cell.store(0, std::memory_order_relaxed);
      ++tail_;
      marked_[value - 1].exchange(0, std::memory_order_acq_rel);
      f(size_t{value - 1});
    }
  }

 private:
  const size_t slots_;
  std::unique_ptr<std::atomic<uint8_t>[]> marked_;
  std::unique_ptr<std::atomic<uint32_t>[]> ring_;  // slot + 1; 0: empty
  std::atomic<uint64_t> head_{0};
  uint64_t tail_ = 0;  // the consumer's
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_CHANGED_SLOTS_H_
