#include "core/cache/eviction_index.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <optional>
#include <vector>

namespace moe_router {
namespace {

std::atomic<EvictionIndex::Auditor*> auditor{nullptr};

// Calls visit(id) for the entries of a heap (in heap order, `items`) below
// its top, descending past those it returns true for. Entries whose keys
// lie in a range that starts at the top's form such a subtree.
template <typename Visit>
void WalkBelowTop(absl::Span<const uint16_t> items, std::vector<uint32_t>& stack, Visit visit) {
  stack.clear();
  stack.push_back(0);
  while (!stack.empty()) {
    const uint32_t at = stack.back();
    stack.pop_back();
    for (uint32_t child = 2 * at + 1; child <= 2 * at + 2 && child < items.size(); ++child) {
      if (visit(items[child])) stack.push_back(child);
    }
  }
}

}  // namespace

void EvictionIndex::SetAuditorForTesting(Auditor* a) { auditor.store(a); }

EvictionIndex::EvictionIndex(uint32_t num_layers, uint32_t num_experts)
    : num_layers_(num_layers), num_experts_(num_experts) {}

void EvictionIndex::Reset(EvictionPolicy* policy) {
  policy_ = policy;
  layer_keys_ = policy->key_scope() == KeyScope::kLayer;
  identity_combine_ = !layer_keys_ || policy->CombinesByIdentity();
  const size_t slots = size_t{num_layers_} * num_experts_;
  orders_.clear();
  orders_.resize(layer_keys_ ? 1 : policy->NumOrders());
  for (Order& o : orders_) {
    o.keys.assign(slots, Key{});
    o.groups.clear();
    o.groups.reserve(num_layers_);
    for (uint32_t g = 0; g < num_layers_; ++g) {
      o.groups.emplace_back(num_experts_, ByKey{o.keys.data() + size_t{g} * num_experts_});
    }
    o.next_keys.assign(num_layers_, NextKey{});
    o.heads.assign(num_layers_, Head{});
    o.layers = IndexedHeap<ByHead>(num_layers_, ByHead{o.heads.data()});
    o.stale_head.assign(num_layers_, 0);
    o.stale_heads.clear();
    o.stale_heads.reserve(num_layers_);
  }
  member_.assign(slots, 0);
  size_ = 0;
  bytes_ = 0;
  layer_stamps_.assign(num_layers_, 0);
  stamps_now_.assign(num_layers_, 0);
  stamps_valid_ = false;
  // Adaptive decides by the lfu order's keys, which are access counts.
  track_population_ = policy->RanksByPopulation() && orders_.size() == 2;
  busiest_ = IndexedHeap<ByAccessesDesc>(track_population_ ? static_cast<uint32_t>(slots) : 0,
                                         ByAccessesDesc{orders_.back().keys.data()});
  sum_accesses_ = 0;
}

uint64_t EvictionIndex::AccessesOf(size_t slot) const {
  return static_cast<uint64_t>(orders_[1].keys[slot].k);
}

EvictionIndex::Key EvictionIndex::KeyOf(size_t order, const EntryView& view,
                                        const CacheClock& clock) const {
  return {layer_keys_ ? policy_->LayerKey(view, clock) : policy_->OrderKeep(order, view, clock),
          policy_->OrderTie(order, view)};
}

void EvictionIndex::MarkStale(Order& order, uint32_t group) {
  if (order.stale_head[group] != 0) return;
  order.stale_head[group] = 1;
  order.stale_heads.push_back(group);
}

void EvictionIndex::Insert(size_t slot, uint64_t bytes, const EntryView& view,
                           const CacheClock& clock) {
  member_[slot] = 1;
  ++size_;
  bytes_ += bytes;
  const uint32_t group = GroupOf(slot);
  for (size_t i = 0; i < orders_.size(); ++i) {
    Order& o = orders_[i];
    o.keys[slot] = KeyOf(i, view, clock);
    PushToGroup(o, group, LocalOf(slot));
    MarkStale(o, group);
  }
  if (track_population_) {
    sum_accesses_ += AccessesOf(slot);
    busiest_.Push(static_cast<uint32_t>(slot));
  }
}

void EvictionIndex::Erase(size_t slot, uint64_t bytes) {
  member_[slot] = 0;
  --size_;
  bytes_ -= bytes;
  const uint32_t group = GroupOf(slot);
  for (Order& o : orders_) {
    EraseFromGroup(o, group, LocalOf(slot));
    MarkStale(o, group);
  }
  if (track_population_) {
    sum_accesses_ -= AccessesOf(slot);
    busiest_.Erase(static_cast<uint32_t>(slot));
  }
}

void EvictionIndex::Rekey(size_t slot, const EntryView& view, const CacheClock& clock) {
  if (member_[slot] == 0) return;
  // Out and back in with its new key; its bytes stay as they were.
  Erase(slot, 0);
  Insert(slot, 0, view, clock);
}

void EvictionIndex::RekeyAll(const Source& source, const CacheClock& clock) {
  for (size_t i = 0; i < orders_.size(); ++i) {
    Order& o = orders_[i];
    for (uint32_t g = 0; g < num_layers_; ++g) {
      for (uint32_t local : o.groups[g].items()) {
        const size_t slot = SlotOf(g, local);
        o.keys[slot] = KeyOf(i, source.View(slot), clock);
      }
      o.groups[g].Heapify();
      o.next_keys[g].valid = false;
      MarkStale(o, g);
    }
  }
  if (track_population_) {
    sum_accesses_ = 0;
    ForEach([this](size_t slot) { sum_accesses_ += AccessesOf(slot); });
    busiest_.Heapify();
  }
}

void EvictionIndex::Sync(const Source& source, const CacheClock& clock, bool clock_moved) {
  if (layer_keys_ && (clock_moved || !stamps_valid_)) {
    Order& o = orders_[0];
    const uint64_t combine = policy_->CombineStamp(clock);
    const bool combine_moved = !stamps_valid_ || combine != combine_stamp_;
    policy_->LayerStamps(clock, absl::MakeSpan(stamps_now_));
    for (uint32_t g = 0; g < num_layers_; ++g) {
      const uint64_t stamp = stamps_now_[g];
      if (stamps_valid_ && stamp == layer_stamps_[g]) {
        if (combine_moved && !o.groups[g].empty()) MarkStale(o, g);
        continue;
      }
      layer_stamps_[g] = stamp;
      IndexedHeap<ByKey, uint16_t>& heap = o.groups[g];
      if (heap.empty()) continue;
      for (uint32_t local : heap.items()) {
        const size_t slot = SlotOf(g, local);
        o.keys[slot] = KeyOf(0, source.View(slot), clock);
      }
      heap.Heapify();
      o.next_keys[g].valid = false;
      MarkStale(o, g);
    }
    combine_stamp_ = combine;
    stamps_valid_ = true;
  }
  for (Order& o : orders_) {
    if (o.stale_heads.size() > num_layers_ / 4) {
      // Most heads moved (a step of a layer-keyed policy): one heapify of
      // the layers instead of a sift per layer.
      for (uint32_t g : o.stale_heads) ComputeHead(o, g, clock);
      o.layers.Clear();
      for (uint32_t g = 0; g < num_layers_; ++g) {
        if (!o.groups[g].empty()) o.layers.Append(g);
      }
      o.layers.Heapify();
    } else {
      for (uint32_t g : o.stale_heads) RefreshHead(o, g, clock);
    }
    o.stale_heads.clear();
  }
}

void EvictionIndex::RefreshHead(Order& order, uint32_t group, const CacheClock& clock) {
  if (!ComputeHead(order, group, clock)) {
    if (order.layers.Contains(group)) order.layers.Erase(group);
  } else if (order.layers.Contains(group)) {
    order.layers.Update(group);
  } else {
    order.layers.Push(group);
  }
}

bool EvictionIndex::ComputeHead(Order& order, uint32_t group, const CacheClock& clock) {
  order.stale_head[group] = 0;
  const IndexedHeap<ByKey, uint16_t>& heap = order.groups[group];
  if (heap.empty()) return false;
  const Key* keys = heap.less().keys;
  const uint32_t top = heap.Top();
  Head head{keys[top].k, keys[top].last, top};
  if (!identity_combine_) {
    head.keep = policy_->CombineLayerKey(group, keys[top].k, clock);
    NextKey& next = order.next_keys[group];
    if (!next.valid || next.smallest != keys[top].k) {
      next = {keys[top].k, NextLargerKey(order, group, keys[top].k), true};
    }
    // Only when a larger key rounds into the same Keep() (rare) must the
    // entries that do be compared by last access and key: they sit at the
    // top of the heap, the combination being monotone.
    if (next.next != std::numeric_limits<double>::infinity() &&
        policy_->CombineLayerKey(group, next.next, clock) == head.keep) {
      WalkBelowTop(heap.items(), walk_, [&](uint32_t id) {
        if (keys[id].k != keys[top].k &&
            policy_->CombineLayerKey(group, keys[id].k, clock) != head.keep) {
          return false;
        }
        if (keys[id].last < head.last || (keys[id].last == head.last && id < head.local)) {
          head.last = keys[id].last;
          head.local = id;
        }
        return true;
      });
    }
  }
  order.heads[group] = head;
  return true;
}

void EvictionIndex::PushToGroup(Order& order, uint32_t group, uint32_t local) {
  order.groups[group].Push(local);
  NextKey& next = order.next_keys[group];
  if (!next.valid) return;
  const double key = order.keys[SlotOf(group, local)].k;
  if (key < next.smallest) {
    next.next = next.smallest;
    next.smallest = key;
  } else if (key > next.smallest && key < next.next) {
    next.next = key;
  }
}

void EvictionIndex::EraseFromGroup(Order& order, uint32_t group, uint32_t local) {
  order.groups[group].Erase(local);
  NextKey& next = order.next_keys[group];
  // NextKey.next only errs low (a key gone), which costs a needless walk but
  // never a wrong head; forgetting it here saves those walks. The smallest
  // is checked against the heap's top when it is used.
  if (next.valid && order.keys[SlotOf(group, local)].k == next.next) next.valid = false;
}

double EvictionIndex::NextLargerKey(const Order& order, uint32_t group, double smallest) {
  const IndexedHeap<ByKey, uint16_t>& heap = order.groups[group];
  const Key* keys = heap.less().keys;
  double next = std::numeric_limits<double>::infinity();
  WalkBelowTop(heap.items(), walk_, [&](uint32_t id) {
    if (keys[id].k == smallest) return true;
    next = std::min(next, keys[id].k);
    return false;
  });
  return next;
}

EvictionIndex::Outcome EvictionIndex::Take(uint64_t need, const EntryView* incoming,
                                           const Source& source, const CacheClock& clock,
                                           EvictionPlan* plan, bool clock_moved) {
  plan->victims.clear();
  plan->freed = 0;
  plan->valued_more.reset();
  Sync(source, clock, clock_moved);
  if (track_population_) {
    policy_->PrepareFromStats({.count = size_,
                               .max_accesses = size_ == 0 ? 0 : AccessesOf(busiest_.Top()),
                               .sum_accesses = sum_accesses_});
  }
  std::optional<double> incoming_keep;
  if (incoming != nullptr) incoming_keep = policy_->Keep(*incoming, clock);
  Outcome outcome = Outcome::kTaken;
  if (bytes_ < need) {
    plan->freed = bytes_;
    outcome = Outcome::kNoRoom;
  } else {
    // Walk the order by taking the first entry out, and put back what was
    // taken: the owner erases the victims it evicts.
    Order& o = orders_[policy_->ActiveOrder(clock)];
    taken_.clear();
    // Most bookings evict one entry: the first head decides them without
    // taking anything out.
    const uint32_t first = o.layers.Top();
    const size_t first_slot = SlotOf(first, o.heads[first].local);
    if ((!incoming_keep || o.heads[first].keep < *incoming_keep) &&
        source.Bytes(first_slot) >= need) {
      plan->victims.push_back({first, o.heads[first].local});
      plan->freed = source.Bytes(first_slot);
    }
    while (plan->freed < need) {
      const uint32_t group = o.layers.Top();
      const Head& head = o.heads[group];
      const size_t slot = SlotOf(group, head.local);
      const ExpertKey key{static_cast<uint32_t>(slot / num_experts_),
                          static_cast<uint32_t>(slot % num_experts_)};
      if (incoming_keep && head.keep >= *incoming_keep) {
        plan->valued_more = key;
        outcome = Outcome::kValuedMore;
        break;
      }
      plan->victims.push_back(key);
      plan->freed += source.Bytes(slot);
      taken_.push_back(slot);
      EraseFromGroup(o, group, head.local);
      RefreshHead(o, group, clock);
    }
    for (size_t slot : taken_) {
      PushToGroup(o, GroupOf(slot), LocalOf(slot));
      MarkStale(o, GroupOf(slot));
    }
    if (outcome == Outcome::kValuedMore) {
      plan->victims.clear();
      plan->freed = 0;
    }
  }
  if (Auditor* a = auditor.load(std::memory_order_relaxed); a != nullptr) {
    a->Check(*this, source, clock, *policy_, need, incoming, outcome, *plan);
  }
  return outcome;
}

}  // namespace moe_router
