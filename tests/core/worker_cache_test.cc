#include <random>
#include <set>

#include "core/cache/expert_cache.h"
#include "core/cache/worker_cache_set.h"
#include "core/cache/worker_cache_view.h"
#include "core/model/page_routed_batch.h"
#include "core/store/synthetic_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/cache_steps.h"
#include "tests/testing/ranking_oracle.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr uint32_t kLayers = 4;
constexpr uint32_t kExperts = 8;
constexpr uint64_t kBytes = 1000;

std::shared_ptr<const ExpertSizeTable> Sizes(
    std::vector<std::pair<std::string, uint64_t>> variants = {{"default", kBytes}}) {
  auto store = SyntheticStore::Create(
      {.num_layers = kLayers, .num_experts = kExperts, .variants = std::move(variants)});
  EXPECT_TRUE(store.ok()) << store.status();
  auto sizes = ExpertSizeTable::Build(**store, kLayers, kExperts);
  EXPECT_TRUE(sizes.ok()) << sizes.status();
  return *sizes;
}

std::unique_ptr<EvictionPolicy> Policy(const std::string& name) {
  auto policy = MakeEvictionPolicy(name, {});
  EXPECT_TRUE(policy.ok()) << policy.status();
  return *std::move(policy);
}

std::unique_ptr<WorkerCacheView> View(const std::string& policy, uint64_t budget_experts,
                                      uint64_t tick_limit = WorkerCacheView::kDefaultTickLimit) {
  return std::make_unique<WorkerCacheView>("w", kLayers, kExperts, budget_experts * kBytes,
                                           Policy(policy), Sizes(), tick_limit);
}

// One step as the engine runs it (and the replay): the step's experts
// pinned, each use recorded in order, a miss loaded at its first use. One
// token unless `tokens` says.
void Step(WorkerCacheView& view, uint32_t layer, const std::vector<uint32_t>& experts,
          uint32_t tokens = 1) ABSL_EXCLUSIVE_LOCKS_REQUIRED(view.mu()) {
  for (const WorkerCacheView::Miss& miss : view.BeginStep(layer, tokens, experts)) {
    const bool placed = view.Admit({layer, miss.expert}, 0, Priority::kUrgent).ok();
    ASSERT_TRUE(placed);
    view.NoteMiss(miss, placed);
  }
}

// The same step on an ExpertCache, a use at a time, then its misses loaded;
// the hits.
uint64_t Step(ExpertCache& cache, uint32_t layer, const std::vector<uint32_t>& experts,
              uint32_t tokens = 1) {
  return testing::ServeStep(cache, layer, experts, kBytes, tokens);
}

class ViewMatchesCacheTest : public ::testing::TestWithParam<std::string> {};

// The view pages exactly like the server's own cache, step for step: the
// guarantee that a worker's hit rate equals the offline replay's.
TEST_P(ViewMatchesCacheTest, SameResidencyAfterEveryStep) {
  {
    auto view = View(GetParam(), 9);
    auto policy = Policy(GetParam());
    auto cache = *ExpertCache::Create(
        {.num_layers = kLayers, .num_experts = kExperts, .budget_bytes = 9 * kBytes},
        std::move(policy));
    std::mt19937 rng(7);
    // Skewed choices, layers in order: a forward pass per step, of one or
    // two tokens (a batch).
    std::discrete_distribution<uint32_t> pick({8, 5, 3, 2, 1, 1, 1, 1});
    absl::MutexLock lock(&view->mu());
    for (int token = 0; token < 300; ++token) {
      const uint32_t tokens = 1 + token % 2;
      for (uint32_t layer = 0; layer < kLayers; ++layer) {
        std::vector<uint32_t> experts;
        for (uint32_t t = 0; t < tokens; ++t) {
          uint32_t a = pick(rng), b = pick(rng);
          if (a == b) b = (a + 1) % kExperts;
          experts.insert(experts.end(), {a, b});
        }
        Step(*view, layer, experts, tokens);
        view->EndCall();
        Step(*cache, layer, experts, tokens);
        ASSERT_EQ(view->ResidentKeys(), cache->ResidentKeys())
            << "token " << token << " layer " << layer;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, ViewMatchesCacheTest,
                         ::testing::Values("lru", "lfu", "layer_reuse", "adaptive", "llama_cpp",
                                           "llama_cpp_lru", "sglang", "vllm_lfru", "least_stale"));

class ViewDecisionsTest : public ::testing::TestWithParam<std::string> {};

// Batches paged as the service and the in-process engine page them (misses
// at first use, runners-up and next-layer predictions prefetched), in two
// variants of different sizes, with ticks rebased every 64 accesses, resized,
// adopted and switched policies in between: every eviction decision of the
// view's index equals a ranking of all its evictable entries.
TEST_P(ViewDecisionsTest, EveryEvictionEqualsARankingOfAllEvictableEntries) {
  std::vector<double> scores(kLayers * kExperts, 0.0);
  std::vector<uint64_t> versions(kLayers, 0);
  EvictionPolicyOptions options;
  options.affinity = [&](ExpertKey k) { return scores[k.layer * kExperts + k.expert]; };
  options.affinity_version = [&](uint32_t layer) { return versions[layer]; };
  WorkerCacheView view("w", kLayers, kExperts, 10 * kBytes,
                       *MakeEvictionPolicy(GetParam(), options),
                       Sizes({{"default", kBytes}, {"small", kBytes / 2}}), /*tick_limit=*/64);
  testing::RankingOracle oracle;
  std::mt19937 rng(5);
  std::discrete_distribution<uint32_t> pick({8, 5, 3, 2, 1, 1, 1, 1});
  absl::MutexLock lock(&view.mu());
  CacheInstructions out;
  for (int call = 0; call < 3000; ++call) {
    const uint32_t layer = call % kLayers;
    RouteResult batch;
    batch.top_k = 2;
    batch.tokens = 1 + rng() % 4;
    for (uint32_t t = 0; t < batch.tokens; ++t) {
      const uint32_t a = pick(rng);
      batch.experts.push_back(a);
      batch.experts.push_back((a + 1 + rng() % (kExperts - 1)) % kExperts);
    }
    if (rng() % 2 == 0) batch.prefetch = {static_cast<uint32_t>(rng() % kExperts)};
    std::vector<uint32_t> next;
    if (layer + 1 < kLayers) next = {pick(rng), static_cast<uint32_t>(rng() % kExperts)};
    PageRoutedBatch(
        view, layer, batch, next, [](ExpertKey k) -> uint8_t { return k.expert % 3 == 0; }, &out);
    for (uint32_t e : batch.experts) scores[layer * kExperts + e] += 1;
    ++versions[layer];
    if (call % 97 == 0) {
      view.Resize((6 + rng() % 8) * kBytes);
      view.EndCall(&out);
    }
    if (call % 331 == 0) {
      std::vector<std::pair<ExpertKey, uint8_t>> held;
      for (uint32_t e = 0; e < 4; ++e) held.push_back({{e % kLayers, e}, 0});
      ASSERT_TRUE(view.Adopt(held).ok());
    }
    if (call % 1000 == 999) view.SetPolicy(*MakeEvictionPolicy(GetParam(), options));
  }
  EXPECT_GT(oracle.decisions(), 1000u);
  EXPECT_GT(oracle.victims(), 1000u);
  EXPECT_EQ(oracle.differences(), 0u) << ::testing::PrintToString(oracle.first_differences());
}

INSTANTIATE_TEST_SUITE_P(Policies, ViewDecisionsTest,
                         ::testing::Values("lru", "lfu", "affinity", "layer_reuse", "adaptive",
                                           "llama_cpp", "llama_cpp_lru", "sglang", "vllm_lfru",
                                           "least_stale"));

// llama_cpp reads CRF, which a view keeps only while such a policy runs:
// switched back to llama_cpp, it counts afresh, as a new llama.cpp cache does.
TEST(WorkerCacheViewTest, CrfIsCountedAfreshWhenLlamaCppReturns) {
  auto view = View("llama_cpp", 2);
  absl::MutexLock lock(&view->mu());
  for (int i = 0; i < 10; ++i) {
    Step(*view, 0, {0});
    view->EndCall();
  }
  view->SetPolicy(Policy("lru"));
  Step(*view, 0, {1});
  view->EndCall();
  view->SetPolicy(Policy("llama_cpp"));
  Step(*view, 0, {2});
  view->EndCall();
  // Both in class 0: the older goes. Had expert 0's ten uses still counted
  // (class 3), expert 1 would have gone.
  EXPECT_THAT(view->ResidentKeys(), ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
}

TEST(WorkerCacheViewTest, EndCallReportsNetLoadsAndDrops) {
  auto view = View("lru", 2);
  absl::MutexLock lock(&view->mu());
  Step(*view, 0, {1});
  Step(*view, 0, {2});
  CacheInstructions first = view->EndCall();
  EXPECT_THAT(first.urgent, ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
  EXPECT_THAT(first.evictions, IsEmpty());
  EXPECT_EQ(first.load_bytes, 2 * kBytes);
  // 3 evicts 1 (least recent); then 4 evicts 2: the worker drops 1 and 2.
  Step(*view, 1, {3});
  Step(*view, 1, {4});
  CacheInstructions second = view->EndCall();
  EXPECT_THAT(second.urgent, ElementsAre(ExpertKey{1, 3}, ExpertKey{1, 4}));
  EXPECT_THAT(second.evictions, ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
  // Loaded and dropped again within one call: nothing to tell.
  Step(*view, 2, {5});
  Step(*view, 2, {6});
  Step(*view, 2, {7});
  CacheInstructions third = view->EndCall();
  EXPECT_THAT(third.urgent, ElementsAre(ExpertKey{2, 6}, ExpertKey{2, 7}));
  EXPECT_THAT(third.evictions, ElementsAre(ExpertKey{1, 3}, ExpertKey{1, 4}));
  EXPECT_EQ(view->counters().urgent_loads, 6u);
  EXPECT_EQ(view->counters().evictions, 4u);
  EXPECT_EQ(view->resident_bytes(), 2 * kBytes);
}

TEST(WorkerCacheViewTest, PinnedExpertsAreNeverEvictedAndOverflowIsRefused) {
  auto view = View("lru", 2);
  absl::MutexLock lock(&view->mu());
  EXPECT_EQ(view->BeginStep(0, 2, {0, 1, 2, 2}).size(), 3u);
  EXPECT_TRUE(view->Admit({0, 0}, 0, Priority::kUrgent).ok());
  EXPECT_TRUE(view->Admit({0, 1}, 0, Priority::kUrgent).ok());
  absl::Status third = view->Admit({0, 2}, 0, Priority::kUrgent);
  EXPECT_TRUE(absl::IsResourceExhausted(third)) << third;
  EXPECT_THAT(third.message(), HasSubstr("this call's experts"));
  EXPECT_THAT(view->ResidentKeys(), ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 1}));
  view->NoteMiss({.expert = 2, .uses = 2}, /*placed=*/false);
  EXPECT_EQ(view->counters().unplaced, 2u);
  EXPECT_EQ(view->counters().misses, 2u);
}

// A batch (several tokens' uses, repeats included) is recorded per expert,
// and pages as the same step through an ExpertCache: its uses one at a
// time, or its distinct experts once each where the policy's engine counts
// them so (llama.cpp, SGLang).
TEST_P(ViewMatchesCacheTest, ABatchPagesLikeItsUsesOneByOne) {
  auto view = View(GetParam(), 7);
  auto cache = *ExpertCache::Create(
      {.num_layers = kLayers, .num_experts = kExperts, .budget_bytes = 7 * kBytes},
      Policy(GetParam()));
  absl::MutexLock lock(&view->mu());
  std::mt19937 rng(3);
  uint64_t cache_hits = 0;
  for (int step = 0; step < 400; ++step) {
    const uint32_t layer = step % kLayers;
    std::vector<uint32_t> experts;
    for (int use = 0; use < 6; ++use) experts.push_back(rng() % 3 + (rng() % 2) * 4);
    Step(*view, layer, experts);
    view->EndCall();
    // A missing expert's first use misses, its others hit.
    std::set<uint32_t> missing;
    for (uint32_t e : experts) {
      if (!cache->IsResident({layer, e})) missing.insert(e);
    }
    cache_hits += experts.size() - missing.size();
    Step(*cache, layer, experts);
    ASSERT_EQ(view->ResidentKeys(), cache->ResidentKeys()) << "step " << step;
  }
  EXPECT_EQ(view->counters().hits, cache_hits);
  EXPECT_EQ(view->counters().hits + view->counters().misses, 400u * 6);
}

TEST(WorkerCacheViewTest, PrefetchEvictsOnlyWhatThePolicyValuesLess) {
  auto view = View("lfu", 1);
  absl::MutexLock lock(&view->mu());
  Step(*view, 0, {0, 0, 0});
  view->EndCall();
  // Expert 1 was never used: LFU values it below expert 0, used 3 times.
  absl::Status dropped = view->Admit({0, 1}, 0, Priority::kPrefetch);
  EXPECT_TRUE(absl::IsResourceExhausted(dropped)) << dropped;
  EXPECT_THAT(dropped.message(), HasSubstr("values more"));
  EXPECT_THAT(view->ResidentKeys(), ElementsAre(ExpertKey{0, 0}));
  // On demand it goes in.
  EXPECT_TRUE(view->Admit({0, 1}, 0, Priority::kUrgent).ok());
  EXPECT_THAT(view->EndCall().evictions, ElementsAre(ExpertKey{0, 0}));
}

TEST(WorkerCacheViewTest, ResizeEvictsByPolicyDownToTheBudget) {
  auto view = View("lru", 4);
  absl::MutexLock lock(&view->mu());
  for (uint32_t e : {0u, 1u, 2u, 3u}) Step(*view, 0, {e});
  view->EndCall();
  view->Resize(2 * kBytes);
  EXPECT_THAT(view->EndCall().evictions, ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 1}));
  EXPECT_THAT(view->ResidentKeys(), ElementsAre(ExpertKey{0, 2}, ExpertKey{0, 3}));
  EXPECT_EQ(view->resident_bytes(), 2 * kBytes);
}

TEST(WorkerCacheViewTest, AdoptOverBudgetNamesTheNumbersAndChangesNothing) {
  auto view = View("lru", 2);
  absl::MutexLock lock(&view->mu());
  Step(*view, 0, {5});
  view->EndCall();
  const std::vector<std::pair<ExpertKey, uint8_t>> three = {{{1, 0}, 0}, {{1, 1}, 0}, {{1, 2}, 0}};
  absl::Status over = view->Adopt(three);
  EXPECT_TRUE(absl::IsInvalidArgument(over)) << over;
  EXPECT_THAT(over.message(), HasSubstr("3000 bytes, over its budget of 2000"));
  EXPECT_THAT(view->ResidentKeys(), ElementsAre(ExpertKey{0, 5}));
  // Duplicates count once.
  ASSERT_TRUE(view->Adopt({{{1, 0}, 0}, {{1, 0}, 0}, {{2, 3}, 0}}).ok());
  EXPECT_THAT(view->ResidentKeys(), ElementsAre(ExpertKey{1, 0}, ExpertKey{2, 3}));
  EXPECT_EQ(view->resident_bytes(), 2 * kBytes);
}

TEST(WorkerCacheViewTest, VariantsAreAccountedAtTheirOwnSize) {
  auto view = std::make_unique<WorkerCacheView>("w", kLayers, kExperts, 3000, Policy("lru"),
                                                Sizes({{"bf16", 2000}, {"fp8", 1000}}));
  absl::MutexLock lock(&view->mu());
  view->BeginStep(0, 1, {0, 1});
  ASSERT_TRUE(view->Admit({0, 0}, /*variant=*/0, Priority::kUrgent).ok());
  ASSERT_TRUE(view->Admit({0, 1}, /*variant=*/1, Priority::kUrgent).ok());
  EXPECT_EQ(view->resident_bytes(), 3000u);
  EXPECT_EQ(view->ResidentVariant({0, 1}), 1);
  EXPECT_EQ(view->EndCall().load_bytes, 3000u);
}

// Ages are kept in 32 bits; past the limit they are rebased and the recent
// order survives. A limit of 16 accesses exercises what 2^32 would.
TEST(WorkerCacheViewTest, RebasedTicksKeepTheRecentOrder) {
  auto rebased = View("lru", 3, /*tick_limit=*/16);
  auto exact = View("lru", 3);
  absl::MutexLock lock_rebased(&rebased->mu());
  absl::MutexLock lock_exact(&exact->mu());
  const uint32_t order[] = {0, 1, 2, 0, 3, 1, 4, 0, 2, 5, 1, 0, 6, 2, 7, 0, 1, 3, 0, 2};
  for (int round = 0; round < 5; ++round) {
    for (uint32_t e : order) {
      Step(*rebased, 0, {e});
      Step(*exact, 0, {e});
      ASSERT_EQ(rebased->ResidentKeys(), exact->ResidentKeys()) << "round " << round;
    }
  }
}

TEST(WorkerCacheSetTest, OpenFindResizeCloseAndLimits) {
  WorkerCacheSet set("m", kLayers, kExperts, Sizes(), {.max_caches = 2}, "lru", {});
  const absl::Time now = absl::Now();
  auto a = set.Open("a", 4 * kBytes, "", now);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->created);
  EXPECT_EQ(a->policy, "lru");
  auto again = set.Open("a", 4 * kBytes, "lfu", now);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->policy, "lfu");
  ASSERT_TRUE(set.Open("b", kBytes, "", now).ok());

  absl::Status third = set.Open("c", kBytes, "", now).status();
  EXPECT_TRUE(absl::IsResourceExhausted(third)) << third;
  EXPECT_THAT(third.message(), HasSubstr("--max_caches_per_model"));
  absl::Status small = set.Open("d", kBytes - 1, "", now).status();
  EXPECT_TRUE(absl::IsInvalidArgument(small)) << small;
  EXPECT_THAT(small.message(), HasSubstr("smaller than one expert"));
  EXPECT_TRUE(absl::IsInvalidArgument(set.Open("../x", kBytes, "", now).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(set.Open("e", kBytes, "mru", now).status()));

  absl::Status unknown = set.Find("zz").status();
  EXPECT_TRUE(absl::IsNotFound(unknown));
  EXPECT_THAT(unknown.message(), HasSubstr("open it with OpenCache"));
  EXPECT_TRUE(set.Close("b").ok());
  EXPECT_TRUE(absl::IsNotFound(set.Close("b")));
  EXPECT_EQ(set.size(), 1u);
}

TEST(WorkerCacheSetTest, IdleCachesAreClosed) {
  WorkerCacheSet set("m", kLayers, kExperts, Sizes(), {.idle_timeout = absl::Minutes(10)}, "lru",
                     {});
  const absl::Time start = absl::Now();
  ASSERT_TRUE(set.Open("old", kBytes, "", start).ok());
  ASSERT_TRUE(set.Open("busy", kBytes, "", start).ok());
  (*set.Find("busy"))->Touch(start + absl::Minutes(8));
  EXPECT_EQ(set.CloseIdle(start + absl::Minutes(9)), 0u);
  EXPECT_EQ(set.CloseIdle(start + absl::Minutes(11)), 1u);
  EXPECT_TRUE(set.Find("busy").ok());
  EXPECT_TRUE(absl::IsNotFound(set.Find("old").status()));
}

}  // namespace
}  // namespace moe_router
