// The engines' own expert caches (core/cache/peer_policies.h), each against
// a trace worked by hand from its documented rules, through the real cache.
#include "core/cache/peer_policies.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/cache/expert_cache.h"
#include "eval/replay.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/cache_steps.h"

namespace moe_router {
namespace {

using ::testing::ElementsAre;

constexpr uint64_t kBytes = 1000;

std::unique_ptr<ExpertCache> Cache(const std::string& policy, uint32_t layers, uint32_t experts,
                                   uint64_t slots) {
  auto made = MakeEvictionPolicy(policy, {});
  EXPECT_TRUE(made.ok()) << made.status();
  auto cache = ExpertCache::Create(
      {.num_layers = layers, .num_experts = experts, .budget_bytes = slots * kBytes},
      *std::move(made));
  EXPECT_TRUE(cache.ok()) << cache.status();
  return *std::move(cache);
}

uint64_t Serve(ExpertCache& cache, uint32_t layer, std::vector<uint32_t> experts) {
  return testing::ServeStep(cache, layer, std::move(experts), kBytes);
}

TEST(PeerPoliciesTest, NamesAreSelectableAndSetApart) {
  for (const std::string& name : PeerPolicyNames()) {
    EXPECT_TRUE(IsPeerPolicy(name));
    auto policy = MakeEvictionPolicy(name, {});
    ASSERT_TRUE(policy.ok()) << name;
    EXPECT_EQ((*policy)->name(), name);
  }
  EXPECT_FALSE(IsPeerPolicy("lru"));
  EXPECT_FALSE(IsPeerPolicy("layer_reuse"));
}

// llama.cpp before b12170: one LRU over all layers; in a step, hits become
// most recent in the order listed, then misses in expert-id order. Plain
// LRU touches them as listed, and evicts differently at each check below.
TEST(PeerPoliciesTest, LlamaCppLruTouchesHitsThenMissesById) {
  auto cache = Cache("llama_cpp_lru", 2, 4, 3);
  Serve(*cache, 0, {3, 1});  // misses, touched 1 then 3
  Serve(*cache, 1, {2, 0});  // (1,0) fills the third slot; (1,2) evicts (0,1), not (0,3)
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 3}, ExpertKey{1, 0}, ExpertKey{1, 2}));
  EXPECT_EQ(Serve(*cache, 0, {1, 3}), 1u);  // hit 3 touched first, then miss 1 evicts (1,0)
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 3}, ExpertKey{1, 2}));
  // Two misses: the least recent are (1,2), then (0,3) (touched before (0,1)).
  Serve(*cache, 1, {3, 1});
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 1}, ExpertKey{1, 1}, ExpertKey{1, 3}));
}

// llama.cpp's CRF: +1 per use, halved every 128 visits of the layer.
TEST(PeerPoliciesTest, LlamaCppCrfDecaysWithAHalfLifeOf128Visits) {
  EXPECT_EQ(CrfAfterUse(0, 0, 1), 1.0);
  EXPECT_EQ(CrfAfterUse(1, 1, 129), 1.5);
  EXPECT_EQ(CrfAfterUse(2, 10, 266), 1.5);
  EXPECT_EQ(CrfAfterUse(3, 4, 4), 4.0);  // a second use in one visit is not counted apart
}

// ClassLRU: class floor(log2(CRF)) as of the last use; the victim has the
// largest age / 2^class (age in visits of its layer since its last use).
TEST(PeerPoliciesTest, LlamaCppEvictsTheLargestAgeOverTwoToTheClass) {
  auto cache = Cache("llama_cpp", 1, 8, 3);
  for (int visit = 1; visit <= 3; ++visit) Serve(*cache, 0, {0});  // CRF 2.98: class 1
  Serve(*cache, 0, {1});                                           // visit 4, class 0
  Serve(*cache, 0, {2});                                           // visit 5, class 0
  // Visit 6: 0 scores 3/2, 1 scores 2/1, 2 scores 1/1. LRU would evict 0.
  Serve(*cache, 0, {3});
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 2}, ExpertKey{0, 3}));
  Serve(*cache, 0, {3});  // visit 7: a hit, 3 is 1.99 (class 0)
  // Visit 8: 0 scores 5/2, 2 scores 3/1, 3 scores 1/1.
  Serve(*cache, 0, {4});
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 3}, ExpertKey{0, 4}));
  // Visit 9: 0 scores 6/2, 3 scores 2/1, 4 scores 1/1.
  Serve(*cache, 0, {5});
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 3}, ExpertKey{0, 4}, ExpertKey{0, 5}));
}

// An expert used at each of 600 visits reaches class 7 (CRF 178; without
// the decay it would be 600, capped at 7 alike): once idle it outlives
// one-use experts until its age over 2^7 reaches theirs, at most 2.
TEST(PeerPoliciesTest, LlamaCppKeepsAFrequentExpertUntilItsAgeOver128PassesTheOthers) {
  auto cache = Cache("llama_cpp", 1, 1000, 3);
  uint32_t next = 1;
  for (int visit = 1; visit <= 600; ++visit) Serve(*cache, 0, {0, next++});
  for (int visit = 601; visit <= 855; ++visit) Serve(*cache, 0, {next++});
  EXPECT_TRUE(cache->IsResident({0, 0}));  // visit 855: age 255 / 128 < 2
  Serve(*cache, 0, {next++});              // visit 856: 256 / 128 = 2, the older goes
  EXPECT_FALSE(cache->IsResident({0, 0}));
}

// Replay gives llama.cpp one slot fewer than the budget, as it allocates
// one past its last: at 33 slots it hits as its cache of 32, each run cold.
TEST(PeerPoliciesTest, ReplayKeepsLlamaCppsPaddingSlot) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/2, /*tokens=*/40,
                    /*seed=*/5);
  for (const char* policy : {"llama_cpp", "llama_cpp_lru"}) {
    ReplayOptions options;
    options.amount = 33;
    options.policies = {policy};
    auto report = Replay(trace, options);
    ASSERT_TRUE(report.ok()) << report.status();
    uint64_t hits = 0;
    for (const RoutingTrace::Run& run : trace.runs) {
      auto cache = Cache(policy, trace.num_layers, trace.num_experts, 32);
      for (size_t i = 0; i < run.steps.size(); ++i) {
        const auto experts = trace.StepExperts(run, i);
        hits += Serve(*cache, run.steps[i].layer, {experts.begin(), experts.end()});
      }
    }
    EXPECT_EQ(report->rows[0].demand_hits, hits) << policy;
    options.amount = trace.top_k;
    auto refused = Replay(trace, options);
    ASSERT_TRUE(refused.ok()) << refused.status();
    EXPECT_THAT(refused->rows[0].refused,
                ::testing::HasSubstr(std::string(policy) +
                                     " keeps a padding slot: a budget of 2 experts leaves "
                                     "fewer than the 2 of one step"));
  }
}

// vLLM pull request #37190's cache, written out from its rules apart from
// the engine's cache: per layer, a clock that ticks once per expert of a
// step in id order; a hit sets freq += 1, last = clock; a miss takes a free
// slot or evicts the lowest freq / (clock - last + 1) among the slots not
// of this step (ties to the earliest inserted), then enters with freq 1.
uint64_t VllmOracleHits(const RoutingTrace& trace, uint32_t slots_per_layer) {
  struct Slot {
    uint32_t expert;
    uint64_t freq, last, inserted;
  };
  uint64_t hits = 0;
  for (const RoutingTrace::Run& run : trace.runs) {
    std::vector<std::vector<Slot>> layers(trace.num_layers);
    std::vector<uint64_t> clock(trace.num_layers, 0), inserts(trace.num_layers, 0);
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const uint32_t l = run.steps[i].layer;
      std::vector<uint32_t> step(trace.StepExperts(run, i).begin(),
                                 trace.StepExperts(run, i).end());
      std::sort(step.begin(), step.end());
      step.erase(std::unique(step.begin(), step.end()), step.end());
      std::vector<Slot>& cache = layers[l];
      for (uint32_t e : step) {
        const uint64_t now = ++clock[l];
        auto it =
            std::find_if(cache.begin(), cache.end(), [e](const Slot& s) { return s.expert == e; });
        if (it != cache.end()) {
          ++hits;
          ++it->freq;
          it->last = now;
          continue;
        }
        if (cache.size() == slots_per_layer) {
          auto victim = cache.end();
          double lowest = 0;
          for (auto c = cache.begin(); c != cache.end(); ++c) {
            if (std::find(step.begin(), step.end(), c->expert) != step.end()) continue;
            const double score = static_cast<double>(c->freq) / (now - c->last + 1);
            if (victim == cache.end() || score < lowest ||
                (score == lowest && c->inserted < victim->inserted)) {
              victim = c;
              lowest = score;
            }
          }
          cache.erase(victim);
        }
        cache.push_back({e, 1, now, ++inserts[l]});
      }
    }
  }
  return hits;
}

TEST(PeerPoliciesTest, ReplayRunsVllmPerLayerInItsTickOrder) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/3, /*tokens=*/60,
                    /*seed=*/11);
  for (uint32_t per_layer : {2u, 3u, 5u}) {
    ReplayOptions options;
    options.amount = per_layer * trace.num_layers + 1;  // the remainder is not used
    options.policies = {"vllm_lfru"};
    auto report = Replay(trace, options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->rows[0].demand_hits, VllmOracleHits(trace, per_layer)) << per_layer;
  }
  ReplayOptions options;
  options.amount = 2 * trace.num_layers - 1;
  options.policies = {"vllm_lfru", "lru"};
  auto report = Replay(trace, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->rows[0].refused,
            "vllm_lfru sizes its cache per layer: a budget of 63 experts over 32 layers leaves 1 "
            "per layer, fewer than top_k 2 (vLLM refuses to start)");
  EXPECT_TRUE(report->rows[1].refused.empty());
  EXPECT_GT(report->rows[1].demand_hits, 0u);
}

TEST(PeerPoliciesTest, LlamaCppCountsABatchsDistinctExpertsOnce) {
  std::vector<uint32_t> batch = {5, 2, 5, 7, 2, 1, 7};
  ArrangeStep(StepOrder::kHitsThenMissesById, batch, [](uint32_t e) { return e == 7 || e == 2; });
  EXPECT_THAT(batch, ElementsAre(2, 7, 1, 5));
  std::vector<uint32_t> routed = {5, 2, 5};
  ArrangeStep(StepOrder::kAsRouted, routed, [](uint32_t) { return false; });
  EXPECT_THAT(routed, ElementsAre(5, 2, 5));
}

// SGLang: the lowest count goes; a count kept across evictions; ties (in
// one-token calls) to the least recently used.
TEST(PeerPoliciesTest, SglangKeepsCountsAcrossEvictionsAndTiesToLeastRecent) {
  auto cache = Cache("sglang", 1, 4, 2);
  for (int i = 0; i < 3; ++i) Serve(*cache, 0, {0});
  for (int i = 0; i < 4; ++i) Serve(*cache, 0, {1});
  Serve(*cache, 0, {2});  // counts 0:3 1:4: 0 goes
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
  Serve(*cache, 0, {0});  // 0 comes back with 4 (its 3 kept); 2 (1) goes
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 1}));
  // 0 and 1 both at 4: the least recently used, 1, goes. (Had the count
  // been reset, 0 would have gone.)
  Serve(*cache, 0, {3});
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 3}));
}

// SGLang counts once per call: three tokens of a batch on expert 0 add 1,
// not 3, so 0 goes before 1, used in two calls.
TEST(PeerPoliciesTest, SglangCountsAnExpertOncePerCall) {
  std::vector<uint32_t> batch = {5, 2, 5, 7, 2};
  ArrangeStep(StepOrder::kDistinctAsRouted, batch, [](uint32_t e) { return e == 7; });
  EXPECT_THAT(batch, ElementsAre(5, 2, 7));
  auto cache = Cache("sglang", 1, 4, 2);
  Serve(*cache, 0, {0, 0, 0, 1});
  Serve(*cache, 0, {1});
  Serve(*cache, 0, {2});
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
}

// For a call of more than one token, SGLang breaks ties of the count to the
// most recently used; for one token, to the least. Experts 0, 1, 2 used
// once each in that order, then 3 and 4 arrive.
TEST(PeerPoliciesTest, SglangTiesToMostRecentInCallsOfMoreThanOneToken) {
  for (const auto& [tokens, kept] :
       {std::pair{1u, std::vector<ExpertKey>{{0, 2}, {0, 3}, {0, 4}}},
        std::pair{2u, std::vector<ExpertKey>{{0, 0}, {0, 3}, {0, 4}}}}) {
    auto cache = Cache("sglang", 1, 5, 3);
    for (uint32_t e = 0; e < 3; ++e) Serve(*cache, 0, {e});
    // One token: 0 then 1 go. Two tokens: 2 goes for 3, then 1 for 4 (3 is
    // requested by the call, so it is not a candidate).
    testing::ServeStep(*cache, 0, {3, 4}, kBytes, tokens);
    EXPECT_EQ(cache->ResidentKeys(), kept) << tokens << " tokens";
  }
}

// Exactly 255, from both sides: 256 uses count as 255 (a tie the least
// recently used loses), and 255 still beat 254 (which a limit of 254 would
// make a tie).
TEST(PeerPoliciesTest, SglangCountsSaturateAt255) {
  auto cache = Cache("sglang", 1, 4, 2);
  for (int i = 0; i < 256; ++i) Serve(*cache, 0, {0});
  for (int i = 0; i < 255; ++i) Serve(*cache, 0, {1});
  // 255 each: the least recently used, 0, goes (at a limit above 255, 1).
  Serve(*cache, 0, {2});
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
  auto other = Cache("sglang", 1, 4, 2);
  for (int i = 0; i < 255; ++i) Serve(*other, 0, {0});
  for (int i = 0; i < 254; ++i) Serve(*other, 0, {1});
  // 255 against 254: the busier 0 stays though less recent (at a limit
  // below 255, a tie, and 0 would go).
  Serve(*other, 0, {2});
  EXPECT_THAT(other->ResidentKeys(), ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 2}));
}

// vLLM's LFRU: the lowest freq / (clock - last + 1), the clock its layer's
// access count (the miss's own access counted first).
TEST(PeerPoliciesTest, VllmLfruWeighsFrequencyByAgeAndResetsOnEviction) {
  auto cache = Cache("vllm_lfru", 1, 4, 2);
  for (int i = 0; i < 3; ++i) Serve(*cache, 0, {0});  // 0: freq 3, last 3
  Serve(*cache, 0, {1});                              // 1: freq 1, last 4
  // Clock 5: 0 scores 3/3, 1 scores 1/2: 1 goes, though 0 is less recent.
  Serve(*cache, 0, {2});
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 0}, ExpertKey{0, 2}));
  Serve(*cache, 0, {2});  // 2: freq 2, last 6
  // Clock 7: 0 scores 3/5, 2 scores 2/2: 0 goes, though used more often.
  Serve(*cache, 0, {1});  // 1 re-enters with freq 1, last 7
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 1}, ExpertKey{0, 2}));
  // Clock 8: 1 scores 1/2, 2 scores 2/3: 1 goes. Had its count been kept
  // across its eviction (2 uses), it would score 2/2 and 2 would go.
  Serve(*cache, 0, {3});
  EXPECT_THAT(cache->ResidentKeys(), ElementsAre(ExpertKey{0, 2}, ExpertKey{0, 3}));
}

TEST(PeerPoliciesTest, VllmLfruClocksEachLayerAndTiesToEarliestInserted) {
  auto cache = Cache("vllm_lfru", 2, 3, 3);
  Serve(*cache, 0, {0});  // A = (0,0) inserted first; layer 0 clock 1
  Serve(*cache, 1, {0});  // B = (1,0); layer 1 clock 1
  Serve(*cache, 1, {0});  // B: freq 2, last 2 (least recently used from here)
  Serve(*cache, 0, {0});  // A: freq 2, last 2
  Serve(*cache, 0, {1});  // C = (0,1): freq 1, last 3; full
  // D = (1,1): layer 1 clock 3, layer 0 clock 3. A 2/2, B 2/2, C 1/1: all
  // tie at 1, and the earliest inserted, A, goes (least recent would be B).
  Serve(*cache, 1, {1});
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 1}, ExpertKey{1, 0}, ExpertKey{1, 1}));
}

// Least-Stale: an entry touched in an earlier pass is stale and goes before
// any fresh one; a hit makes it fresh again.
TEST(PeerPoliciesTest, LeastStaleFlipsFreshToStaleAtEachPass) {
  auto policy = MakePeerPolicy("least_stale");
  CacheClock clock;
  clock.num_layers = 2;
  clock.pass_start = 10;  // this pass's accesses are ticks 11 on
  const EntryView stale_recent{.key = {1, 0}, .last_access = 9};
  const EntryView stale_old{.key = {0, 0}, .last_access = 3};
  const EntryView fresh{.key = {0, 1}, .last_access = 11};
  EXPECT_LT(policy->Keep(stale_old, clock), policy->Keep(stale_recent, clock));
  EXPECT_LT(policy->Keep(stale_recent, clock), policy->Keep(fresh, clock));
  // A hit on the stale entry (tick 12) makes it fresh, above the other.
  EntryView hit = stale_old;
  hit.last_access = 12;
  EXPECT_GT(policy->Keep(hit, clock), policy->Keep(fresh, clock));
  // At the next pass every one of them is stale, oldest first.
  clock.pass_start = 20;
  EXPECT_LT(policy->Keep(fresh, clock), policy->Keep(hit, clock));
  EXPECT_LT(policy->Keep(hit, clock), 20.0);

  // Through the cache: a pass is a step whose layer does not follow the
  // previous one's.
  auto cache = Cache("least_stale", 2, 4, 3);
  Serve(*cache, 0, {0});
  Serve(*cache, 1, {0});  // pass 1: (0,0), (1,0)
  Serve(*cache, 0, {1});  // pass 2 begins: (0,0) and (1,0) are stale
  Serve(*cache, 1, {1});  // the oldest stale, (0,0), goes
  EXPECT_THAT(cache->ResidentKeys(),
              ElementsAre(ExpertKey{0, 1}, ExpertKey{1, 0}, ExpertKey{1, 1}));
}

// Every fresh entry was touched after every stale one, so in one-token
// decode Least-Stale decides as LRU does: the same hits and loads on a
// calibrated workload, at every budget.
TEST(PeerPoliciesTest, LeastStaleDecidesAsLruInOneTokenDecode) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/2, /*tokens=*/60,
                    /*seed=*/3);
  for (uint64_t slots : {26u, 64u, 128u, 192u}) {
    ReplayOptions options;
    options.amount = slots;
    options.policies = {"lru", "least_stale"};
    auto report = Replay(trace, options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->rows[0].demand_hits, report->rows[1].demand_hits) << slots;
    EXPECT_EQ(report->rows[0].demand_loads, report->rows[1].demand_loads) << slots;
  }
}

// The peers route plain top-k and do not prefetch: their ready figures are
// their demand ones, whatever the replay asks of ours.
TEST(PeerPoliciesTest, ReplayRunsPeersWithoutPrefetchOrBonus) {
  const RoutingTrace trace =
      GenerateTrace(GetWorkloadPreset("mixtral")->shape, /*sequences=*/2, /*tokens=*/40,
                    /*seed=*/5);
  ReplayOptions options;
  options.amount = 64;
  options.prefetch_budget = 2;
  options.policies = PeerPolicyNames();
  options.policies.push_back("layer_reuse");
  auto report = Replay(trace, options);
  ASSERT_TRUE(report.ok()) << report.status();
  for (const ReplayRow& row : report->rows) {
    if (!IsPeerPolicy(row.policy)) {
      EXPECT_GT(row.prefetch_loads, 0u) << row.policy;
      continue;
    }
    EXPECT_EQ(row.prefetch_loads, 0u) << row.policy;
    EXPECT_EQ(row.ready_hits, row.demand_hits) << row.policy;
  }
}

}  // namespace
}  // namespace moe_router
