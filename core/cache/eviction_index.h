#ifndef MOE_ROUTER_CORE_CACHE_EVICTION_INDEX_H_
#define MOE_ROUTER_CORE_CACHE_EVICTION_INDEX_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/base/types.h"
#include "core/cache/eviction_policy.h"
#include "core/cache/indexed_heap.h"

namespace moe_router {

/// The evictable entries of a cache, kept in the policy's eviction order as
/// they change, so that a decision costs O(log n) per victim instead of a
/// ranking of every entry. Shared by ExpertCache and WorkerCacheView.
///
/// The order is the one every cache uses: lowest Keep() first, ties to the
/// lower Tie() (the least recently accessed, unless the policy says), then
/// the lowest key. The owner tells the index
/// which entries are evictable (Insert, Erase) and when an entry's key may
/// have changed (Rekey: an access); what moves with the clock the index
/// follows itself through the policy's stamps (see KeyScope): a layer whose
/// stamp moved is re-keyed at the next decision, O(its members).
///
/// A heap per layer orders its members by key (Keep(), or for kLayer
/// policies LayerKey), then Tie(), then expert; a heap of the layers
/// orders them by their first entry's exact Keep(). For kLayer policies
/// keys of a layer that combine into one Keep() (rounding) are told apart by
/// Tie() and key, as a full ranking would.
///
/// Slots are layer * num_experts + expert. Not thread-safe: the owner
/// serialises every call. Per slot it keeps 20 bytes for each order the
/// policy has and 1 more (adaptive has two orders and 8 more bytes for its
/// population: 49).
class EvictionIndex {
 public:
  /// Where the index reads an entry's current state when it re-keys one.
  class Source {
   public:
    virtual EntryView View(size_t slot) const = 0;
    virtual uint64_t Bytes(size_t slot) const = 0;

   protected:
    ~Source() = default;
  };

  /// What an index holds per slot at most: two orders, and the population.
  static constexpr uint64_t kMaxBytesPerSlot = 2 * 20 + 1 + 8;

  EvictionIndex(uint32_t num_layers, uint32_t num_experts);

  /// Empties the index and orders it for `policy` (not owned; it must
  /// outlive its use here).
  void Reset(EvictionPolicy* policy);

  bool Contains(size_t slot) const { return member_[slot] != 0; }
  size_t size() const { return size_; }
  uint64_t bytes() const { return bytes_; }

  /// An entry becomes evictable, of `bytes` bytes, in state `view`.
  void Insert(size_t slot, uint64_t bytes, const EntryView& view, const CacheClock& clock);
  /// It is no longer evictable (evicted, pinned, ...).
  void Erase(size_t slot, uint64_t bytes);
  /// Its state changed (an access): re-keys a member, ignores others.
  void Rekey(size_t slot, const EntryView& view, const CacheClock& clock);
  /// Every member's state changed (ticks rebased).
  void RekeyAll(const Source& source, const CacheClock& clock);

  /// One eviction decision: the lowest-ranked members, in order, until
  /// `need` bytes are freed, into `plan` (its buffer reused). The members
  /// stay: the owner evicts the victims and erases them. kNoRoom when the
  /// members hold less than `need` (plan->freed is what they hold); for a
  /// prefetch of `incoming`, kValuedMore when a member the policy values at
  /// least as much would go first (plan->valued_more).
  /// `clock_moved` false: the clock and the policy's stamps are as at the
  /// previous Take (the bookings of one call share its first one's
  /// ranking), so layers are not looked at for re-keying.
  enum class Outcome : uint8_t { kTaken, kNoRoom, kValuedMore };
  Outcome Take(uint64_t need, const EntryView* incoming, const Source& source,
               const CacheClock& clock, EvictionPlan* plan, bool clock_moved = true);

  /// Calls f(slot) for each member, in no particular order.
  template <typename F>
  void ForEach(F&& f) const {
    for (size_t slot = 0; slot < member_.size(); ++slot) {
      if (member_[slot] != 0) f(slot);
    }
  }

  /// Checks an owner's state against the decisions of another ranking; for
  /// tests. Called at each Take with the members' views.
  class Auditor {
   public:
    virtual void Check(const EvictionIndex& index, const Source& source, const CacheClock& clock,
                       EvictionPolicy& policy, uint64_t need, const EntryView* incoming,
                       Outcome outcome, const EvictionPlan& plan) = 0;

   protected:
    ~Auditor() = default;
  };
  /// Process-wide; null to stop. Not for production use.
  static void SetAuditorForTesting(Auditor* auditor);

 private:
  struct Key {
    double k = 0;
    uint64_t last = 0;
  };
  // Orders local ids of one group (a layer, or all slots) by key, then
  // last access, then id.
  struct ByKey {
    const Key* keys = nullptr;
    bool operator()(uint32_t a, uint32_t b) const {
      const Key& x = keys[a];
      const Key& y = keys[b];
      if (x.k != y.k) return x.k < y.k;
      if (x.last != y.last) return x.last < y.last;
      return a < b;
    }
  };
  // A group's first entry under the combined key.
  struct Head {
    double keep = 0;
    uint64_t last = 0;
    uint32_t local = 0;
  };
  struct ByHead {
    const Head* heads = nullptr;
    bool operator()(uint32_t a, uint32_t b) const {
      const Head& x = heads[a];
      const Head& y = heads[b];
      if (x.keep != y.keep) return x.keep < y.keep;
      if (x.last != y.last) return x.last < y.last;
      if (a != b) return a < b;  // groups are in key order
      return x.local < y.local;
    }
  };
  // One ranking of the members.
  // A layer's smallest key and the next larger one, kept while valid, so
  // that telling whether keys round together does not walk the (often
  // large) group of equal smallest keys at every victim.
  struct NextKey {
    double smallest = 0;
    double next = 0;  // +inf: no larger key
    bool valid = false;
  };
  struct Order {
    std::vector<Key> keys;                             // per slot
    std::vector<IndexedHeap<ByKey, uint16_t>> groups;  // per layer, by expert
    std::vector<NextKey> next_keys;                    // per layer
    std::vector<Head> heads;                           // per layer
    IndexedHeap<ByHead> layers;                        // layers with members, by head
    std::vector<uint8_t> stale_head;                   // per layer
    std::vector<uint32_t> stale_heads;
  };
  // Orders by how often entries were used, most first, for the population
  // (the counts are the keys of the policy's second order).
  struct ByAccessesDesc {
    const Key* count_keys = nullptr;
    bool operator()(uint32_t a, uint32_t b) const { return count_keys[a].k > count_keys[b].k; }
  };

  uint32_t GroupOf(size_t slot) const { return static_cast<uint32_t>(slot / num_experts_); }
  uint32_t LocalOf(size_t slot) const { return static_cast<uint32_t>(slot % num_experts_); }
  size_t SlotOf(uint32_t group, uint32_t local) const {
    return size_t{group} * num_experts_ + local;
  }
  uint64_t AccessesOf(size_t slot) const;
  Key KeyOf(size_t order, const EntryView& view, const CacheClock& clock) const;
  void MarkStale(Order& order, uint32_t group);
  // Brings the orders up to date with the clock: stale layers re-keyed,
  // heads recomputed.
  void Sync(const Source& source, const CacheClock& clock, bool clock_moved);
  void RefreshHead(Order& order, uint32_t group, const CacheClock& clock);
  // The layer's head, without placing it among the layers; false if the
  // layer has no member.
  bool ComputeHead(Order& order, uint32_t group, const CacheClock& clock);
  // A layer's heap changes, keeping its NextKey: `key` joins, or leaves.
  void PushToGroup(Order& order, uint32_t group, uint32_t local);
  void EraseFromGroup(Order& order, uint32_t group, uint32_t local);
  // The smallest key of the layer above `smallest` (+inf if none): a walk of
  // the entries with the smallest key.
  double NextLargerKey(const Order& order, uint32_t group, double smallest);

  const uint32_t num_layers_;
  const uint32_t num_experts_;
  EvictionPolicy* policy_ = nullptr;
  bool layer_keys_ = false;  // KeyScope::kLayer
  bool identity_combine_ = true;
  std::vector<Order> orders_;
  std::vector<uint8_t> member_;  // per slot
  size_t size_ = 0;
  uint64_t bytes_ = 0;
  // Per layer, the stamp its keys were made at, and the stamps now
  // (scratch); the CombineStamp of the heads.
  std::vector<uint64_t> layer_stamps_;
  std::vector<uint64_t> stamps_now_;
  uint64_t combine_stamp_ = 0;
  bool stamps_valid_ = false;
  // For RanksByPopulation policies with a count order (adaptive).
  bool track_population_ = false;
  IndexedHeap<ByAccessesDesc> busiest_;
  uint64_t sum_accesses_ = 0;
  // Scratch: grows to the largest decision, then allocates no more.
  std::vector<size_t> taken_;
  std::vector<uint32_t> walk_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_CORE_CACHE_EVICTION_INDEX_H_
