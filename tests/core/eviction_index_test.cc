#include "core/cache/eviction_index.h"

#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/cache/indexed_heap.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/ranking_oracle.h"

namespace moe_router {
namespace {

struct ByValue {
  const std::vector<double>* values = nullptr;
  bool operator()(uint32_t a, uint32_t b) const {
    return (*values)[a] != (*values)[b] ? (*values)[a] < (*values)[b] : a < b;
  }
};

// Every parent before its children, and each id where the heap says it is:
// checked whole, so a sift that leaves a subtree out of order fails at once
// instead of being repaired by a later heapify.
template <typename Heap>
::testing::AssertionResult InHeapOrder(const Heap& heap) {
  const auto items = heap.items();
  for (uint32_t i = 1; i < items.size(); ++i) {
    if (heap.less()(items[i], items[(i - 1) / 2])) {
      return ::testing::AssertionFailure() << "id " << items[i] << " at " << i
                                           << " comes before its parent " << items[(i - 1) / 2];
    }
  }
  for (uint32_t id : items) {
    if (!heap.Contains(id)) return ::testing::AssertionFailure() << "id " << id << " unplaced";
  }
  return ::testing::AssertionSuccess();
}

// The heap against an ordered set under random pushes, erases and key
// changes: the same first id and heap order after every operation, and the
// same contents.
template <typename Id>
void CheckHeapAgainstSet(uint32_t capacity, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> values(capacity);
  IndexedHeap<ByValue, Id> heap(capacity, ByValue{&values});
  const auto order = [&](uint32_t a, uint32_t b) { return ByValue{&values}(a, b); };
  std::set<uint32_t, decltype(order)> reference(order);
  for (int step = 0; step < 20000; ++step) {
    const uint32_t id = static_cast<uint32_t>(rng() % capacity);
    const int op = static_cast<int>(rng() % 3);
    // Few distinct values: many ties, broken by id.
    const double value = static_cast<double>(rng() % 7);
    if (heap.Contains(id)) {
      reference.erase(id);
      if (op == 0) {
        heap.Erase(id);
      } else {
        values[id] = value;
        heap.Update(id);
        reference.insert(id);
      }
    } else {
      values[id] = value;
      heap.Push(id);
      reference.insert(id);
    }
    ASSERT_EQ(heap.size(), reference.size());
    ASSERT_TRUE(InHeapOrder(heap)) << "step " << step;
    if (!reference.empty()) {
      ASSERT_EQ(heap.Top(), *reference.begin()) << "step " << step;
    }
  }
  // Any number of keys changed at once: Heapify restores the order.
  for (uint32_t id : heap.items()) values[id] = static_cast<double>(rng() % 5);
  heap.Heapify();
  ASSERT_TRUE(InHeapOrder(heap));
  std::vector<uint32_t> popped;
  while (!heap.empty()) {
    popped.push_back(heap.Top());
    heap.Erase(heap.Top());
  }
  EXPECT_TRUE(std::is_sorted(popped.begin(), popped.end(), order));
}

TEST(IndexedHeapTest, KeepsTheOrderOfASetUnderRandomOperations) {
  CheckHeapAgainstSet<uint16_t>(300, 1);
  CheckHeapAgainstSet<uint32_t>(5000, 2);
}

// A kLayer policy whose combination rounds keys down to whole numbers: many
// keys of a layer combine into one Keep(), which the index must break by
// last access and key as a full ranking does. Its layer keys move with a
// per-layer version the test bumps.
class RoundingPolicy final : public EvictionPolicy {
 public:
  explicit RoundingPolicy(const std::vector<uint64_t>* versions) : versions_(versions) {}
  std::string name() const override { return "rounding"; }
  double Keep(const EntryView& e, const CacheClock& clock) const override {
    return CombineLayerKey(e.key.layer, LayerKey(e, clock), clock);
  }
  KeyScope key_scope() const override { return KeyScope::kLayer; }
  double LayerKey(const EntryView& e, const CacheClock& /*clock*/) const override {
    // Moves with the version of the layer, differently per expert.
    return 0.37 * static_cast<double>(e.accesses % 11) +
           0.05 * static_cast<double>(((*versions_)[e.key.layer] + e.key.expert) % 5);
  }
  double CombineLayerKey(uint32_t layer, double key, const CacheClock& clock) const override {
    return std::floor(key) + 0.5 * ((layer + clock.current_layer) % 3);
  }
  bool CombinesByIdentity() const override { return false; }
  void LayerStamps(const CacheClock&, absl::Span<uint64_t> out) const override {
    for (size_t l = 0; l < out.size(); ++l) out[l] = (*versions_)[l];
  }
  uint64_t CombineStamp(const CacheClock& clock) const override { return clock.current_layer; }

 private:
  const std::vector<uint64_t>* versions_;
};

// A cache's entries as a plain table: what the index reads.
class FakeCache final : public EvictionIndex::Source {
 public:
  FakeCache(uint32_t layers, uint32_t experts)
      : views_(size_t{layers} * experts), bytes_(views_.size()) {
    for (size_t i = 0; i < views_.size(); ++i) {
      views_[i].key = {static_cast<uint32_t>(i / experts), static_cast<uint32_t>(i % experts)};
    }
    clock_.num_layers = layers;
    clock_.layer_visits.assign(layers, 0);
  }
  EntryView View(size_t slot) const override { return views_[slot]; }
  uint64_t Bytes(size_t slot) const override { return bytes_[slot]; }

  EntryView& view(size_t slot) { return views_[slot]; }
  uint64_t& bytes(size_t slot) { return bytes_[slot]; }
  CacheClock& clock() { return clock_; }
  size_t slots() const { return views_.size(); }

 private:
  std::vector<EntryView> views_;
  std::vector<uint64_t> bytes_;
  CacheClock clock_;
};

struct PolicyCase {
  std::string name;
  uint32_t layers;
  uint32_t experts;
};

class EvictionIndexOracleTest : public ::testing::TestWithParam<PolicyCase> {};

// Random insertions, accesses, evictions, prefetch judgements, visits,
// score changes and rebases: every decision equals a ranking of all members.
TEST_P(EvictionIndexOracleTest, EveryDecisionEqualsARankingOfAllMembers) {
  const PolicyCase& c = GetParam();
  FakeCache cache(c.layers, c.experts);
  std::vector<uint64_t> versions(c.layers, 0);
  std::vector<double> scores(cache.slots(), 0.0);
  std::unique_ptr<EvictionPolicy> policy;
  if (c.name == "rounding") {
    policy = std::make_unique<RoundingPolicy>(&versions);
  } else {
    EvictionPolicyOptions options;
    options.affinity = [&](ExpertKey k) { return scores[size_t{k.layer} * c.experts + k.expert]; };
    options.affinity_version = [&](uint32_t layer) { return versions[layer]; };
    policy = *MakeEvictionPolicy(c.name, options);
  }
  EvictionIndex index(c.layers, c.experts);
  index.Reset(policy.get());
  testing::RankingOracle oracle;
  std::mt19937_64 rng(7);
  CacheClock& clock = cache.clock();
  EvictionPlan plan;
  uint64_t evicted = 0;
  for (int step = 0; step < 4000; ++step) {
    const size_t slot = rng() % cache.slots();
    EntryView& v = cache.view(slot);
    switch (rng() % 8) {
      case 0:
      case 1: {  // becomes evictable (or is used while it is)
        if (rng() % 4 != 0) {
          // Few distinct ticks and counts: ties everywhere.
          v.last_access = rng() % 3 == 0 ? 0 : clock.now - rng() % 4;
          v.accesses = rng() % 4;
          v.reuse = static_cast<double>(rng() % 3) / 4;
          v.reuse_visit = clock.layer_visits[v.key.layer] - rng() % 2 * (rng() % 2);
          scores[slot] = static_cast<double>(rng() % 3);
        }
        if (index.Contains(slot)) {
          index.Rekey(slot, v, clock);
        } else {
          cache.bytes(slot) = 1 + rng() % 3;
          index.Insert(slot, cache.bytes(slot), v, clock);
        }
        break;
      }
      case 2:  // pinned, or evicted outside a decision
        if (index.Contains(slot)) index.Erase(slot, cache.bytes(slot));
        break;
      case 3: {  // a step: the clock moves, a layer is visited
        ++clock.now;
        clock.current_layer = static_cast<uint32_t>(rng() % c.layers);
        ++clock.layer_visits[clock.current_layer];
        if (rng() % 3 == 0) {  // the layer's scores move
          ++versions[clock.current_layer];
          for (uint32_t e = 0; e < c.experts; ++e) {
            scores[size_t{clock.current_layer} * c.experts + e] += static_cast<double>(rng() % 3);
          }
        }
        break;
      }
      case 4: {  // ticks rebased: every member's state may have changed
        if (rng() % 20 != 0) break;
        for (size_t i = 0; i < cache.slots(); ++i) {
          EntryView& w = cache.view(i);
          w.last_access = w.last_access / 2;
        }
        index.RekeyAll(cache, clock);
        break;
      }
      default: {  // a booking, demand or prefetch
        const uint64_t need = 1 + rng() % 6;
        EntryView incoming = cache.view(rng() % cache.slots());
        incoming.accesses += rng() % 3;
        incoming.last_access = clock.now + 1;
        const bool prefetch = rng() % 3 == 0;
        if (index.Take(need, prefetch ? &incoming : nullptr, cache, clock, &plan) ==
            EvictionIndex::Outcome::kTaken) {
          for (const ExpertKey& k : plan.victims) {
            const size_t victim = size_t{k.layer} * c.experts + k.expert;
            index.Erase(victim, cache.bytes(victim));
            ++evicted;
          }
        }
      }
    }
  }
  EXPECT_GT(oracle.decisions(), 1000u);
  EXPECT_GT(evicted, 300u);
  EXPECT_EQ(oracle.differences(), 0u) << ::testing::PrintToString(oracle.first_differences());
}

INSTANTIATE_TEST_SUITE_P(
    Policies, EvictionIndexOracleTest,
    ::testing::Values(PolicyCase{"lru", 3, 8}, PolicyCase{"lfu", 3, 8},
                      PolicyCase{"affinity", 4, 16}, PolicyCase{"adaptive", 2, 16},
                      PolicyCase{"layer_reuse", 5, 8}, PolicyCase{"layer_reuse", 2, 384},
                      PolicyCase{"rounding", 4, 16}),
    [](const auto& info) { return info.param.name + "_" + std::to_string(info.param.experts); });

// The prefetch judgement stops at the first member valued at least as much,
// and a decision that cannot free enough takes nothing, as a ranking does.
TEST(EvictionIndexTest, PrefetchAndShortfallDecideAsARanking) {
  FakeCache cache(1, 4);
  auto policy = *MakeEvictionPolicy("lru", {});
  EvictionIndex index(1, 4);
  index.Reset(policy.get());
  for (uint32_t e = 0; e < 3; ++e) {
    cache.view(e).last_access = 10 + e;
    cache.bytes(e) = 10;
    index.Insert(e, 10, cache.view(e), cache.clock());
  }
  EvictionPlan plan;
  EXPECT_EQ(index.Take(31, nullptr, cache, cache.clock(), &plan), EvictionIndex::Outcome::kNoRoom);
  EXPECT_EQ(plan.freed, 30u);
  EXPECT_TRUE(plan.victims.empty());
  EntryView incoming = cache.view(3);
  incoming.last_access = 11;  // valued as much as expert 1
  EXPECT_EQ(index.Take(20, &incoming, cache, cache.clock(), &plan),
            EvictionIndex::Outcome::kValuedMore);
  EXPECT_EQ(plan.valued_more, (ExpertKey{0, 1}));
  EXPECT_TRUE(plan.victims.empty());
  ASSERT_EQ(index.Take(20, nullptr, cache, cache.clock(), &plan), EvictionIndex::Outcome::kTaken);
  EXPECT_THAT(plan.victims, ::testing::ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 1}));
  EXPECT_EQ(index.size(), 3u);  // the owner erases what it evicts
}

}  // namespace
}  // namespace moe_router
