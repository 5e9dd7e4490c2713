#ifndef MOE_ROUTER_CORE_CACHE_INDEXED_HEAP_H_
#define MOE_ROUTER_CORE_CACHE_INDEXED_HEAP_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/types/span.h"

namespace moe_router {

/// A binary min-heap of the ids 0..capacity-1 that knows where each id sits,
/// so that an id can be removed or re-sifted after its key changed in
/// O(log n). The keys live with the caller; `Less(a, b)` compares two ids'
/// keys and must be a strict weak order (a total one makes the heap's order
/// independent of the order of operations). Storage is sized once: nothing
/// allocates after construction. `Id` is the narrowest type that holds the
/// capacity (memory per id: two of them).
template <typename Less, typename Id = uint32_t>
class IndexedHeap {
 public:
  explicit IndexedHeap(uint32_t capacity = 0, Less less = Less())
      : pos_(capacity, kAbsent), less_(std::move(less)) {
    heap_.reserve(capacity);
  }

  uint32_t capacity() const { return static_cast<uint32_t>(pos_.size()); }
  bool empty() const { return heap_.empty(); }
  uint32_t size() const { return static_cast<uint32_t>(heap_.size()); }
  bool Contains(uint32_t id) const { return pos_[id] != kAbsent; }
  /// The lowest id by Less. Not on an empty heap.
  uint32_t Top() const { return heap_.front(); }
  /// The ids in heap order: the children of position i are 2i+1 and 2i+2.
  absl::Span<const Id> items() const { return heap_; }
  const Less& less() const { return less_; }

  void Push(uint32_t id) {
    const uint32_t at = size();
    heap_.push_back(static_cast<Id>(id));
    SiftUp(at);
  }
  void Erase(uint32_t id) {
    const uint32_t at = pos_[id];
    pos_[id] = kAbsent;
    const Id last = heap_.back();
    heap_.pop_back();
    if (at == heap_.size()) return;
    heap_[at] = last;
    pos_[last] = static_cast<Id>(at);
    Resift(at);
  }
  /// Adds without restoring the order: Heapify() after a batch of them.
  void Append(uint32_t id) {
    pos_[id] = static_cast<Id>(heap_.size());
    heap_.push_back(static_cast<Id>(id));
  }
  /// Restores the order after the key of `id` changed.
  void Update(uint32_t id) { Resift(pos_[id]); }
  /// Restores the order after any number of keys changed.
  void Heapify() {
    for (uint32_t i = size() / 2; i-- > 0;) SiftDown(i);
  }
  void Clear() {
    for (uint32_t id : heap_) pos_[id] = kAbsent;
    heap_.clear();
  }

 private:
  static constexpr Id kAbsent = static_cast<Id>(~Id{0});

  void Resift(uint32_t at) {
    if (at > 0 && less_(heap_[at], heap_[(at - 1) / 2])) {
      SiftUp(at);
    } else {
      SiftDown(at);
    }
  }
  void SiftUp(uint32_t at) {
    const Id id = heap_[at];
    while (at > 0) {
      const uint32_t parent = (at - 1) / 2;
      if (!less_(id, heap_[parent])) break;
      Place(heap_[parent], at);
      at = parent;
    }
    Place(id, at);
  }
  void SiftDown(uint32_t at) {
    const Id id = heap_[at];
    const uint32_t n = size();
    while (true) {
      uint32_t child = 2 * at + 1;
      if (child >= n) break;
      if (child + 1 < n && less_(heap_[child + 1], heap_[child])) ++child;
      if (!less_(heap_[child], id)) break;
      Place(heap_[child], at);
      at = child;
    }
    Place(id, at);
  }
  void Place(Id id, uint32_t at) {
    heap_[at] = id;
    pos_[id] = static_cast<Id>(at);
  }

  std::vector<Id> heap_;
  std::vector<Id> pos_;  // kAbsent for ids not in the heap
  Less less_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_INDEXED_HEAP_H_
