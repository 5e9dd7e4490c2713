#include "core/cache/expert_cache.h"

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/fixed_rank_policy.h"
#include "tests/testing/ranking_oracle.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::shared_ptr<const ExpertData> Data(ExpertKey key, uint64_t size,
                                       std::string precision = "default") {
  auto d = std::make_shared<ExpertData>();
  d->key = key;
  d->size = size;
  d->precision = std::move(precision);
  d->bytes = AllocateExpertBytes(size);
  return d;
}

std::unique_ptr<ExpertCache> MakeCache(const std::string& policy, uint64_t budget,
                                       uint32_t layers = 4, uint32_t experts = 8,
                                       EvictionPolicyOptions options = {}) {
  auto p = MakeEvictionPolicy(policy, options);
  EXPECT_TRUE(p.ok()) << p.status();
  auto cache = ExpertCache::Create(
      CacheConfig{.num_layers = layers, .num_experts = experts, .budget_bytes = budget},
      *std::move(p));
  EXPECT_TRUE(cache.ok()) << cache.status();
  return *std::move(cache);
}

// Demand access as a replay would: hit, or load (evicting by policy).
bool Use(ExpertCache& cache, ExpertKey key, uint64_t size = 100) {
  const bool hit = cache.Access(key);
  if (!hit) {
    EXPECT_TRUE(cache.Reserve(key, size, Priority::kUrgent).ok());
    EXPECT_TRUE(cache.Commit(Data(key, size)).ok());
  }
  return hit;
}

// The policy factory's own errors are tested in eviction_policy_test.
TEST(ExpertCacheTest, RejectsBadConfig) {
  EXPECT_FALSE(
      ExpertCache::Create(CacheConfig{.budget_bytes = 0}, *MakeEvictionPolicy("lru", {})).ok());
}

TEST(ExpertCacheTest, LruEvictsLeastRecentlyUsed) {
  auto cache = MakeCache("lru", 300);
  Use(*cache, {0, 1});
  Use(*cache, {0, 2});
  Use(*cache, {0, 3});
  EXPECT_TRUE(Use(*cache, {0, 1}));  // 1 is now most recent
  Use(*cache, {0, 4});               // evicts 2
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 3}, ExpertKey{0, 4}));
  EXPECT_FALSE(cache->IsResident({0, 2}));
  EXPECT_EQ(cache->Stats().evictions, 1u);
}

TEST(ExpertCacheTest, LfuEvictsLeastFrequentTiesByRecency) {
  auto cache = MakeCache("lfu", 300);
  for (int i = 0; i < 3; ++i) Use(*cache, {0, 1});
  Use(*cache, {0, 2});
  Use(*cache, {0, 3});
  Use(*cache, {0, 4});  // 2 and 3 have one access each; 2 is older
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 3}, ExpertKey{0, 4}));
}

TEST(ExpertCacheTest, AffinityPolicyEvictsLeastAffine) {
  EvictionPolicyOptions options;
  options.affinity = [](ExpertKey k) { return k.expert == 2 ? 0.1 : 1.0 + k.expert; };
  auto cache = MakeCache("affinity", 300, 4, 8, options);
  Use(*cache, {0, 1});
  Use(*cache, {0, 2});
  Use(*cache, {0, 3});
  Use(*cache, {0, 4});
  EXPECT_FALSE(cache->IsResident({0, 2}));
  EXPECT_EQ(cache->Stats().policy, "affinity");
}

TEST(ExpertCacheTest, AdaptiveSwitchesBetweenLruAndLfu) {
  // Flat counts: behaves as LRU (evicts the oldest).
  auto flat = MakeCache("adaptive", 300);
  Use(*flat, {0, 1});
  Use(*flat, {0, 2});
  Use(*flat, {0, 3});
  Use(*flat, {0, 4});
  EXPECT_FALSE(flat->IsResident({0, 1}));
  // Skewed counts: behaves as LFU (keeps the busy oldest one).
  auto skewed = MakeCache("adaptive", 300);
  for (int i = 0; i < 20; ++i) Use(*skewed, {0, 1});
  Use(*skewed, {0, 2});
  Use(*skewed, {0, 3});
  Use(*skewed, {0, 4});
  EXPECT_TRUE(skewed->IsResident({0, 1}));
  EXPECT_FALSE(skewed->IsResident({0, 2}));
}

TEST(ExpertCacheTest, LayerReuseKeepsTheLayerServedNextWhereLruDoesNot) {
  // Four layers visited cyclically, room for three experts. At layer 3, the
  // oldest entry is layer 0's, which is needed next: LRU evicts it, the
  // layer-aware policy evicts layer 2's, needed last.
  for (const auto& [policy, evicted] :
       {std::pair{"lru", ExpertKey{0, 0}}, std::pair{"layer_reuse", ExpertKey{2, 0}}}) {
    auto cache = MakeCache(policy, 300);
    for (uint32_t l = 0; l < 4; ++l) {
      cache->BeginStep(l, 1);
      Use(*cache, {l, 0});
    }
    EXPECT_FALSE(cache->IsResident(evicted)) << policy;
    EXPECT_EQ(cache->Stats().resident_experts, 3u);
  }
}

TEST(ExpertCacheTest, PinnedEntriesAreNeverEvicted) {
  auto cache = MakeCache("lru", 200);
  Use(*cache, {0, 1});
  Use(*cache, {0, 2});
  EXPECT_TRUE(cache->Pin({0, 1}));
  EXPECT_TRUE(cache->Pin({0, 2}));
  const absl::Status s = cache->Reserve({0, 3}, 100, Priority::kUrgent);
  EXPECT_TRUE(absl::IsResourceExhausted(s));
  EXPECT_THAT(std::string(s.message()), HasSubstr("only 0 of them are evictable"));
  EXPECT_TRUE(absl::IsFailedPrecondition(cache->Evict({0, 1})));
  cache->Unpin({0, 1});
  EXPECT_TRUE(cache->Reserve({0, 3}, 100, Priority::kUrgent).ok());
  EXPECT_FALSE(cache->IsResident({0, 1}));
  EXPECT_TRUE(cache->IsResident({0, 2}));
  cache->Unpin({0, 2});
}

TEST(ExpertCacheTest, GetPinsUntilTheHandleIsGone) {
  auto cache = MakeCache("lru", 100);
  Use(*cache, {1, 1});
  {
    auto pinned = cache->Get({1, 1});
    ASSERT_TRUE(pinned.ok());
    EXPECT_EQ((*pinned)->key, (ExpertKey{1, 1}));
    EXPECT_TRUE(absl::IsResourceExhausted(cache->Reserve({1, 2}, 100, Priority::kUrgent)));
  }
  EXPECT_TRUE(cache->Reserve({1, 2}, 100, Priority::kUrgent).ok());
  EXPECT_TRUE(absl::IsNotFound(cache->Get({1, 1}).status()));
}

TEST(ExpertCacheTest, ReservationRules) {
  auto cache = MakeCache("lru", 250);
  EXPECT_THAT(std::string(cache->Reserve({0, 1}, 300, Priority::kUrgent).message()),
              HasSubstr("more than the whole cache budget"));
  EXPECT_TRUE(absl::IsInvalidArgument(cache->Reserve({9, 1}, 10, Priority::kUrgent)));
  ASSERT_TRUE(cache->Reserve({0, 1}, 100, Priority::kUrgent).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(cache->Reserve({0, 1}, 100, Priority::kUrgent)));
  EXPECT_EQ(cache->Stats().loading_bytes, 100u);
  EXPECT_FALSE(cache->IsResident({0, 1}));             // not until committed
  EXPECT_FALSE(cache->Commit(Data({0, 1}, 99)).ok());  // size must match the booking
  cache->Abort({0, 1});
  EXPECT_EQ(cache->Stats().loading_bytes, 0u);
  EXPECT_TRUE(absl::IsFailedPrecondition(cache->Commit(Data({0, 1}, 100))));
}

TEST(ExpertCacheTest, PrefetchIsDroppedRatherThanEvictSomethingMoreValuable) {
  auto cache = MakeCache("lfu", 200);
  for (int i = 0; i < 5; ++i) Use(*cache, {0, 1});
  for (int i = 0; i < 5; ++i) Use(*cache, {0, 2});
  // A never-used expert is worth less to LFU than ones used five times.
  const absl::Status dropped = cache->CanAdmit({0, 3}, 100, Priority::kPrefetch);
  EXPECT_TRUE(absl::IsResourceExhausted(dropped));
  EXPECT_THAT(std::string(dropped.message()), HasSubstr("prefetch of L0/E3 dropped"));
  EXPECT_TRUE(absl::IsResourceExhausted(cache->Reserve({0, 3}, 100, Priority::kPrefetch)));
  EXPECT_EQ(cache->Stats().resident_experts, 2u);
  // Urgent demand still gets in.
  EXPECT_TRUE(cache->CanAdmit({0, 3}, 100, Priority::kUrgent).ok());
  EXPECT_EQ(cache->Stats().resident_experts, 2u);  // CanAdmit changed nothing
}

TEST(ExpertCacheTest, PrefetchAccounting) {
  auto cache = MakeCache("lru", 300);
  ASSERT_TRUE(cache->Reserve({0, 1}, 100, Priority::kPrefetch).ok());
  ASSERT_TRUE(cache->Commit(Data({0, 1}, 100)).ok());
  ASSERT_TRUE(cache->Reserve({0, 2}, 100, Priority::kPrefetch).ok());
  ASSERT_TRUE(cache->Commit(Data({0, 2}, 100)).ok());
  EXPECT_TRUE(cache->Access({0, 1}));
  EXPECT_TRUE(cache->Access({0, 1}));
  ASSERT_TRUE(cache->Evict({0, 2}).ok());
  const CacheStats stats = cache->Stats();
  EXPECT_EQ(stats.prefetch_loaded, 2u);
  EXPECT_EQ(stats.prefetch_used, 1u);
  EXPECT_EQ(stats.prefetch_wasted, 1u);
}

TEST(ExpertCacheTest, ReplacementNeedsFreeRoomAndSwapsAtOnce) {
  std::vector<ExpertKey> evicted;
  auto cache = *ExpertCache::Create(
      CacheConfig{.num_layers = 1, .num_experts = 4, .budget_bytes = 300},
      *MakeEvictionPolicy("lru", {}), [&](ExpertKey k) { evicted.push_back(k); });
  Use(*cache, {0, 0}, 100);
  Use(*cache, {0, 1}, 100);
  EXPECT_TRUE(absl::IsResourceExhausted(cache->ReserveReplacement({0, 0}, 150)));
  ASSERT_TRUE(cache->ReserveReplacement({0, 0}, 60).ok());
  EXPECT_TRUE(cache->IsResident({0, 0}));  // the old variant serves meanwhile
  EXPECT_EQ(cache->Stats().loading_bytes, 60u);
  ASSERT_TRUE(cache->Commit(Data({0, 0}, 60, "Q2_K")).ok());
  EXPECT_EQ(cache->ResidentPrecision({0, 0}), "Q2_K");
  EXPECT_EQ(cache->Stats().resident_bytes, 160u);
  EXPECT_EQ(cache->Stats().loading_bytes, 0u);
  EXPECT_TRUE(evicted.empty());
  ASSERT_TRUE(cache->Evict({0, 1}).ok());
  EXPECT_THAT(evicted, ElementsAre(ExpertKey{0, 1}));
}

// Property: under concurrent routing-like access, pins and paging, resident
// plus loading bytes never exceed the budget, and no pinned entry vanishes.
TEST(ExpertCacheTest, BudgetHoldsUnderConcurrency) {
  constexpr uint64_t kBudget = 1000;
  auto cache = MakeCache("layer_reuse", kBudget, 4, 8);
  std::atomic<bool> stop{false};
  std::atomic<int> violations{0};
  std::thread watcher([&] {
    while (!stop.load()) {
      const CacheStats s = cache->Stats();
      if (s.resident_bytes + s.loading_bytes > kBudget) violations.fetch_add(1);
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      std::mt19937 rng(w);
      for (int i = 0; i < 3000; ++i) {
        const ExpertKey key{static_cast<uint32_t>(rng() % 4), static_cast<uint32_t>(rng() % 8)};
        const uint64_t size = 100 + (key.expert % 3) * 50;
        switch (rng() % 4) {
          case 0:
            if (cache->Pin(key)) {
              // Pinned and resident: must stay resident until unpinned.
              if (!cache->IsResident(key)) violations.fetch_add(1);
            }
            cache->Unpin(key);
            break;
          case 1:
            if (cache->Reserve(key, size, static_cast<Priority>(rng() % 3)).ok()) {
              if (rng() % 5 == 0) {
                cache->Abort(key);
              } else if (!cache->Commit(Data(key, size)).ok()) {
                violations.fetch_add(1);
              }
            }
            break;
          case 2:
            (void)cache->Evict(key);
            break;
          default: {
            auto pinned = cache->Get(key);
            if (pinned.ok() && (*pinned)->key != key) violations.fetch_add(1);
          }
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  stop = true;
  watcher.join();
  EXPECT_EQ(violations.load(), 0);
  const CacheStats s = cache->Stats();
  EXPECT_LE(s.peak_bytes, kBudget);
  EXPECT_EQ(s.loading_bytes, 0u);
}

// The cache evicts what its policy ranks lowest, and offers the policy only
// evictable entries: a pinned expert is never a candidate.
TEST(ExpertCacheTest, EvictsThePolicysLowestRankedAmongTheUnpinned) {
  auto state = std::make_shared<testing::FixedRankPolicy::State>();
  auto cache =
      *ExpertCache::Create(CacheConfig{.num_layers = 1, .num_experts = 8, .budget_bytes = 300},
                           std::make_unique<testing::FixedRankPolicy>(state));
  state->keep = {{{0, 0}, 1.0}, {{0, 1}, 5.0}, {{0, 2}, 3.0}, {{0, 3}, 10.0}};
  for (uint32_t e = 0; e < 3; ++e) Use(*cache, {0, e});
  testing::RankingOracle oracle(/*keep_members=*/true);
  ASSERT_TRUE(cache->Pin({0, 0}));  // the lowest ranked, but pinned
  Use(*cache, {0, 3});
  cache->Unpin({0, 0});
  ASSERT_EQ(oracle.decisions(), 1u);
  EXPECT_THAT(oracle.members()[0],
              ::testing::UnorderedElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
  EXPECT_FALSE(cache->IsResident({0, 2}));  // ranked 3.0, below 5.0
  EXPECT_TRUE(cache->IsResident({0, 0}));
  EXPECT_TRUE(cache->IsResident({0, 1}));
  // Unpinned, the lowest ranked goes next.
  Use(*cache, {0, 4});
  EXPECT_EQ(oracle.differences(), 0u);
  EXPECT_FALSE(cache->IsResident({0, 0}));
}

// A booking that finds the budget full of pinned experts can wait for room:
// releasing the reader's pin wakes it, and the booking then fits.
TEST(ExpertCacheTest, AwaitRoomWakesWhenAReaderReleasesItsPin) {
  auto cache = MakeCache("lru", 100, 1, 4);
  Use(*cache, {0, 0});
  auto pinned = cache->Get({0, 0});
  ASSERT_TRUE(pinned.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(cache->Reserve({0, 1}, 100, Priority::kUrgent)));
  const uint64_t seen = cache->RoomGeneration();
  EXPECT_FALSE(cache->AwaitRoom(seen, absl::Now()));  // nothing changed yet
  std::thread reader([&] { *pinned = PinnedExpert(); });
  EXPECT_TRUE(cache->AwaitRoom(seen, absl::Now() + absl::Seconds(30)));
  reader.join();
  EXPECT_TRUE(cache->Reserve({0, 1}, 100, Priority::kUrgent).ok());
}

// Pins taken without the lock against evictions under it: pinners hold
// each pin across many yields (so evictions land while pins are held, not
// only in the instant of taking one), while evicting threads hammer the same
// few experts both directly and through policy eviction on page-in. A pin
// that saw its expert resident must keep it resident, and readable, until
// unpinned.
TEST(ExpertCacheTest, APinnedExpertIsNeverEvicted) {
  constexpr uint32_t kExperts = 8;
  constexpr uint64_t kSize = 100;
  // Room for 4 of the 8 experts: every page-in must evict.
  auto cache = MakeCache("lru", 4 * kSize, 1, kExperts);
  for (uint32_t e = 0; e < 4; ++e) Use(*cache, {0, e}, kSize);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> held_pins{0}, evicted_while_pinned{0};
  std::vector<std::thread> evictors;
  for (int w = 0; w < 2; ++w) {
    evictors.emplace_back([&, w] {
      std::mt19937 rng(100 + w);
      while (!stop.load(std::memory_order_relaxed)) {
        const ExpertKey key{0, static_cast<uint32_t>(rng() % kExperts)};
        if (rng() % 2 == 0) {
          (void)cache->Evict(key);
        } else if (cache->Reserve(key, kSize, Priority::kUrgent).ok()) {
          EXPECT_TRUE(cache->Commit(Data(key, kSize)).ok());
        }
      }
    });
  }
  std::vector<std::thread> pinners;
  for (int w = 0; w < 2; ++w) {
    pinners.emplace_back([&, w] {
      std::mt19937 rng(w);
      // Until this thread held 2000 pins (half the experts are resident at
      // any time), with a cap that only a broken cache would reach.
      int held = 0;
      for (int i = 0; i < 1000000 && held < 2000; ++i) {
        const ExpertKey key{0, static_cast<uint32_t>(rng() % kExperts)};
        if (cache->Pin(key)) {
          ++held;
          held_pins.fetch_add(1);
          for (int y = 0; y < 20; ++y) {
            std::this_thread::yield();
            if (!cache->IsResident(key) || !cache->Get(key).ok()) {
              evicted_while_pinned.fetch_add(1);
              break;
            }
          }
        }
        cache->Unpin(key);
      }
    });
  }
  for (auto& t : pinners) t.join();
  stop = true;
  for (auto& t : evictors) t.join();
  EXPECT_EQ(evicted_while_pinned.load(), 0u);
  // The race was really run: pins were held, and evictions happened meanwhile.
  EXPECT_EQ(held_pins.load(), 4000u);
  EXPECT_GT(cache->Stats().evictions, 1000u);
}

}  // namespace
}  // namespace moe_router
