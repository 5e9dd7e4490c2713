#include "core/paging/paging_pool.h"

#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/store/checksum.h"
#include "core/store/safetensors_store.h"
#include "core/store/synthetic_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/gated_store.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using testing::GatedStore;

struct Rig {
  explicit Rig(std::shared_ptr<const ExpertStore> s, uint64_t budget, uint32_t threads = 1,
               const std::string& policy = "lru")
      : store(std::move(s)), metrics(4) {
    cache =
        *ExpertCache::Create(CacheConfig{.num_layers = 4, .num_experts = 8, .budget_bytes = budget},
                             *MakeEvictionPolicy(policy, {}));
    auto p = PagingPool::Create(cache.get(), store,
                                [this](ExpertKey) { return store->Precisions().front(); }, &metrics,
                                {.threads = threads});
    EXPECT_TRUE(p.ok()) << p.status();
    pool = *std::move(p);
  }
  std::shared_ptr<const ExpertStore> store;
  ModelMetrics metrics;
  std::unique_ptr<ExpertCache> cache;
  std::unique_ptr<PagingPool> pool;
};

void Wait(const std::shared_ptr<const PageTicket>& t) {
  ASSERT_TRUE(t->WaitUntil(absl::Now() + absl::Seconds(30)));
}

TEST(PagingPoolTest, PagesInAndRecordsLatencyAndBytes) {
  auto store = std::shared_ptr<const ExpertStore>(*SyntheticStore::Create(
      {.num_layers = 4, .num_experts = 8, .variants = {{"default", 4096}}}));
  Rig rig(store, 1 << 20, 2);
  auto t = rig.pool->PageIn({2, 5}, Priority::kUrgent);
  Wait(t);
  EXPECT_TRUE(t->status().ok()) << t->status();
  EXPECT_TRUE(rig.cache->IsResident({2, 5}));
  auto pinned = rig.cache->Get({2, 5});
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ((*pinned)->checksum, (*store->Load({2, 5}, "default"))->checksum);
  const MetricsSnapshot m = rig.metrics.Snapshot();
  EXPECT_EQ(m.layers[2].page_ins[0], 1u);
  EXPECT_EQ(m.total.paged_bytes, 4096u);
  EXPECT_EQ(m.page_in_seconds.count, 1u);
  EXPECT_GT(m.page_in_seconds.sum, 0.0);
  // Already resident: completes at once.
  EXPECT_TRUE(rig.pool->PageIn({2, 5}, Priority::kPrefetch)->done());
}

TEST(PagingPoolTest, PrioritiesOrderTheQueueAndDuplicatesJoin) {
  auto store = std::make_shared<GatedStore>(100);
  Rig rig(store, 10000, 1);
  // The single worker takes the first request and blocks in the store.
  auto first = rig.pool->PageIn({0, 0}, Priority::kPrefetch);
  ASSERT_TRUE(testing::WaitFor([&] { return store->waiting() > 0; }));
  auto prefetch = rig.pool->PageIn({0, 1}, Priority::kPrefetch);
  auto normal = rig.pool->PageIn({0, 2}, Priority::kNormal);
  auto urgent = rig.pool->PageIn({0, 3}, Priority::kUrgent);
  auto raised = rig.pool->PageIn({0, 4}, Priority::kPrefetch);
  auto joined = rig.pool->PageIn({0, 4}, Priority::kUrgent);  // joins and raises
  EXPECT_EQ(raised.get(), joined.get());
  EXPECT_EQ(rig.pool->QueueDepth(Priority::kUrgent), 2u);
  EXPECT_EQ(rig.pool->QueueDepth(Priority::kNormal), 1u);
  EXPECT_EQ(rig.pool->QueueDepth(Priority::kPrefetch), 1u);
  store->Open();
  for (const auto& t : {first, prefetch, normal, urgent, joined}) Wait(t);
  EXPECT_THAT(store->loaded(), ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 3}, ExpertKey{0, 4},
                                           ExpertKey{0, 2}, ExpertKey{0, 1}));
  EXPECT_EQ(rig.pool->QueueDepth(Priority::kUrgent), 0u);
}

TEST(PagingPoolTest, QueuedPrefetchCanBeCancelled) {
  auto store = std::make_shared<GatedStore>(100);
  Rig rig(store, 10000, 1);
  auto busy = rig.pool->PageIn({1, 0}, Priority::kUrgent);
  ASSERT_TRUE(testing::WaitFor([&] { return store->waiting() > 0; }));
  auto prefetch = rig.pool->PageIn({1, 1}, Priority::kPrefetch);
  EXPECT_FALSE(rig.pool->CancelPrefetch({1, 0}));  // running: too late
  EXPECT_TRUE(rig.pool->CancelPrefetch({1, 1}));
  EXPECT_FALSE(rig.pool->CancelPrefetch({1, 1}));
  EXPECT_TRUE(prefetch->done());
  EXPECT_TRUE(absl::IsCancelled(prefetch->status()));
  store->Open();
  Wait(busy);
  rig.pool->Shutdown();
  EXPECT_THAT(store->loaded(), ElementsAre(ExpertKey{1, 0}));
  EXPECT_FALSE(rig.cache->IsResident({1, 1}));
}

TEST(PagingPoolTest, ChecksumFailureLeavesExpertAbsentAndCounts) {
  testing::TempDir dir;
  testing::WriteExpertShard(dir.File("m.safetensors"), 4, 8, 8, 9, kMixtralExpertPattern);
  ASSERT_TRUE(SafetensorsStore::WriteManifests({.directory = dir.path()}).ok());  // published
  auto header = ReadSafetensorsHeader(dir.File("m.safetensors"));
  for (const auto& t : header->tensors) {
    if (t.name == "model.layers.3.block_sparse_moe.experts.1.w2.weight") {
      testing::CorruptByte(dir.File("m.safetensors"), t.begin);
    }
  }
  std::shared_ptr<const ExpertStore> store = *SafetensorsStore::Open({.directory = dir.path()});
  Rig rig(store, 1 << 20, 2);
  auto bad = rig.pool->PageIn({3, 1}, Priority::kUrgent);
  auto good = rig.pool->PageIn({3, 2}, Priority::kUrgent);
  Wait(bad);
  Wait(good);
  EXPECT_TRUE(absl::IsDataLoss(bad->status()));
  EXPECT_THAT(std::string(bad->status().message()),
              HasSubstr("tensor 'model.layers.3.block_sparse_moe.experts.1.w2.weight'"));
  EXPECT_FALSE(rig.cache->IsResident({3, 1}));
  EXPECT_TRUE(rig.cache->IsResident({3, 2}));
  const CacheStats stats = rig.cache->Stats();
  EXPECT_EQ(stats.loading_bytes, 0u);  // the booking was returned
  const MetricsSnapshot m = rig.metrics.Snapshot();
  EXPECT_EQ(m.checksum_failures, 1u);
  EXPECT_EQ(m.layers[3].page_in_failures, 1u);
}

TEST(PagingPoolTest, PrefetchThatWouldEvictMoreValuableIsDropped) {
  auto store = std::shared_ptr<const ExpertStore>(
      *SyntheticStore::Create({.num_layers = 4, .num_experts = 8, .variants = {{"default", 100}}}));
  Rig rig(store, 100, 1, "lfu");
  Wait(rig.pool->PageIn({0, 0}, Priority::kUrgent));
  for (int i = 0; i < 3; ++i) rig.cache->Access({0, 0});
  auto dropped = rig.pool->PageIn({0, 1}, Priority::kPrefetch);
  Wait(dropped);
  EXPECT_TRUE(absl::IsResourceExhausted(dropped->status()));
  EXPECT_TRUE(rig.cache->IsResident({0, 0}));
  EXPECT_EQ(rig.metrics.Snapshot().total.prefetch_dropped, 1u);
  auto page_out = rig.pool->PageOut({0, 0});
  Wait(page_out);
  EXPECT_TRUE(page_out->status().ok());
  EXPECT_FALSE(rig.cache->IsResident({0, 0}));
}

TEST(PagingPoolTest, ShutdownCancelsQueuedWorkAndRefusesNew) {
  auto store = std::make_shared<GatedStore>(100);
  Rig rig(store, 10000, 1);
  auto running = rig.pool->PageIn({0, 0}, Priority::kUrgent);
  ASSERT_TRUE(testing::WaitFor([&] { return store->waiting() > 0; }));
  auto queued = rig.pool->PageIn({0, 1}, Priority::kNormal);
  std::thread stopper([&] { rig.pool->Shutdown(); });
  Wait(queued);
  EXPECT_TRUE(absl::IsCancelled(queued->status()));
  store->Open();
  stopper.join();
  EXPECT_TRUE(running->done());
  EXPECT_TRUE(running->status().ok());
  auto late = rig.pool->PageIn({0, 2}, Priority::kUrgent);
  EXPECT_TRUE(absl::IsUnavailable(late->status()));
}

// Readers never see an expert before its load completed: while the store
// is still reading it, the expert is booked (its bytes count against the
// budget) but neither resident for the router nor readable; once the load
// completes, all of it is.
TEST(PagingPoolTest, AnExpertIsInvisibleUntilItsLoadCompletes) {
  auto store = std::make_shared<GatedStore>(4096);
  Rig rig(store, 10 * 4096, 1);
  auto ticket = rig.pool->PageIn({2, 6}, Priority::kUrgent);
  ASSERT_TRUE(testing::WaitFor([&] { return store->waiting() > 0; }));
  EXPECT_FALSE(rig.cache->IsResident({2, 6}));
  EXPECT_EQ(rig.cache->ResidentFlags(2)[6].load(), 0);
  EXPECT_TRUE(absl::IsNotFound(rig.cache->Get({2, 6}).status()));
  EXPECT_EQ(rig.cache->Stats().loading_bytes, 4096u);
  EXPECT_EQ(rig.cache->Stats().resident_bytes, 0u);
  EXPECT_FALSE(ticket->done());
  store->Open();
  Wait(ticket);
  ASSERT_TRUE(ticket->status().ok()) << ticket->status();
  EXPECT_TRUE(rig.cache->IsResident({2, 6}));
  auto pinned = rig.cache->Get({2, 6});
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ((*pinned)->size, 4096u);
  std::vector<std::pair<std::string, uint64_t>> digests;
  for (const TensorData& t : (*pinned)->tensors) {
    digests.emplace_back(t.name, Xxh3((*pinned)->TensorBytes(t)));
  }
  EXPECT_EQ(ExpertChecksum(digests), (*pinned)->checksum);
  EXPECT_EQ(rig.cache->Stats().loading_bytes, 0u);
}

TEST(PagingPoolTest, RejectsBadOptions) {
  auto store = std::shared_ptr<const ExpertStore>(*SyntheticStore::Create({}));
  auto cache =
      *ExpertCache::Create(CacheConfig{.budget_bytes = 10}, *MakeEvictionPolicy("lru", {}));
  EXPECT_FALSE(PagingPool::Create(cache.get(), store,
                                  [](ExpertKey) { return std::string("default"); }, nullptr,
                                  {.threads = 0})
                   .ok());
  EXPECT_FALSE(PagingPool::Create(nullptr, store, nullptr, nullptr, {}).ok());
}

}  // namespace
}  // namespace moe_router
