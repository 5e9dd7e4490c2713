// Core engine benchmarks: routing cost per token, paging throughput against
// plain read(2). Run: moe_core_bench --benchmark_filter=BM_RouteToken
#include <benchmark/benchmark.h>

#include <atomic>
#include <memory>
#include <random>
#include <vector>

#include "core/engine/model_engine.h"
#include "core/routing/router.h"
#include "core/routing/top_select.h"
#include "core/store/synthetic_store.h"

namespace moe_router {
namespace {

constexpr uint32_t kBatchTokens = 64;

// Gate logits like a trained router's: a few experts stand out per token.
std::vector<float> MakeLogits(uint32_t tokens, uint32_t experts, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 1.5f);
  std::vector<float> logits(size_t{tokens} * experts);
  for (float& x : logits) x = noise(rng);
  return logits;
}

// The routing rules the benchmarks take as a third argument, by index: the
// default (Mixtral's softmax) first.
constexpr const char* kBenchRules[] = {"mixtral",     "deepseek_v3", "glm4_moe", "gpt_oss",
                                       "llama4",      "minimax_m2",  "ernie4_5", "qwen_no_norm",
                                       "deepseek_v2", "dbrx"};

// Choice biases of the size DeepSeek-V3's corrections have next to sigmoid
// scores: enough to change some choices.
std::vector<float> MakeBias(uint32_t experts) {
  std::mt19937 rng(99);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  std::vector<float> bias(experts);
  for (float& b : bias) b = noise(rng);
  return bias;
}

// Routes one layer batch per iteration with the default config (memory
// aware, relative bonus, quality guard) over a half-resident cache; the
// affinity update is included. Items are tokens. Args: experts, top_k.
void RouteTokens(benchmark::State& state, bool memory_aware, const char* rule = "mixtral") {
  const uint32_t experts = static_cast<uint32_t>(state.range(0));
  const uint32_t top_k = static_cast<uint32_t>(state.range(1));
  RouterConfig config;
  config.num_experts = experts;
  config.top_k = top_k;
  config.memory_aware = memory_aware;
  config.rule = *RoutingRulePreset(rule);
  const std::vector<float> bias =
      config.rule.choice_bias ? MakeBias(experts) : std::vector<float>{};
  auto router = LayerRouter::Create(config, AffinityConfig{}, bias);
  if (!router.ok()) {
    state.SkipWithError(std::string(router.status().message()).c_str());
    return;
  }
  std::unique_ptr<std::atomic<uint8_t>[]> resident(new std::atomic<uint8_t>[experts]);
  for (uint32_t e = 0; e < experts; ++e) resident[e].store(e % 2);
  // Several batches so branch predictors do not memorise one.
  std::vector<std::vector<float>> batches;
  for (uint32_t b = 0; b < 8; ++b) batches.push_back(MakeLogits(kBatchTokens, experts, b));
  RouteResult out;
  size_t i = 0;
  for (auto _ : state) {
    absl::Status s = router->Route(batches[i++ % batches.size()], resident.get(), &out);
    benchmark::DoNotOptimize(s);
    benchmark::DoNotOptimize(out.experts.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kBatchTokens);
  state.counters["rerouted"] = static_cast<double>(out.changed_tokens) / kBatchTokens;
  if (const ChoiceScorer* scorer = router->choice_scorer(); scorer && scorer->shortlists()) {
    // How many tokens the shortlist decided (the rest scored every expert).
    state.counters["shortlisted"] =
        static_cast<double>(scorer->shortlisted()) /
        static_cast<double>(scorer->shortlisted() + scorer->full_rows());
    state.counters["scored"] = static_cast<double>(scorer->shortlist_scored()) /
                               static_cast<double>(scorer->shortlisted() + scorer->full_rows());
  }
}

// Random logits against a half-resident cache reroute most tokens: the
// costly case for the cache-aware path.
void BM_RouteToken(benchmark::State& state) { RouteTokens(state, /*memory_aware=*/true); }
BENCHMARK(BM_RouteToken)
    ->Args({8, 2})
    ->Args({64, 6})
    ->Args({128, 8})
    ->Args({256, 8})
    ->Args({384, 8});

// The same under each family's rule, a third argument indexing kBenchRules
// (0: the default at the same shape, for comparison); the name is kept.
void BM_RouteTokenByRule(benchmark::State& state) {
  const char* rule = kBenchRules[state.range(2)];
  state.SetLabel(rule);
  RouteTokens(state, /*memory_aware=*/true, rule);
}
const benchmark::internal::Benchmark* const kRouteTokenByRule =
    benchmark::RegisterBenchmark("BM_RouteToken", BM_RouteTokenByRule)
        ->Args({256, 8, 1})  // deepseek_v3: 8 groups keep 4
        ->Args({384, 8, 2})  // kimi k2's shape with glm4_moe's rule (one group)
        ->Args({160, 8, 0})
        ->Args({160, 8, 2})  // glm4_moe
        ->Args({128, 4, 0})
        ->Args({128, 4, 3})  // gpt_oss
        ->Args({128, 1, 0})
        ->Args({128, 1, 4})  // llama4
        ->Args({256, 8, 5})  // minimax_m2
        ->Args({64, 6, 6})   // ernie4_5
        ->Args({64, 6, 0})
        ->Args({128, 8, 7})  // qwen_no_norm
        ->Args({160, 6, 0})
        ->Args({160, 6, 8})  // deepseek_v2
        ->Args({16, 4, 0})
        ->Args({16, 4, 9});  // dbrx

// Plain top-k with the affinity update, for comparison.
void BM_RouteTokenPlain(benchmark::State& state) { RouteTokens(state, /*memory_aware=*/false); }
BENCHMARK(BM_RouteTokenPlain)
    ->Args({8, 2})
    ->Args({64, 6})
    ->Args({128, 8})
    ->Args({256, 8})
    ->Args({384, 8});

// Selection alone (the original top max_rank of each token), the largest
// part of routing: items are tokens.
void BM_SelectTopR(benchmark::State& state) {
  const uint32_t experts = static_cast<uint32_t>(state.range(0));
  const uint32_t r = static_cast<uint32_t>(state.range(1));
  TopSelector selector(experts, r);
  std::vector<std::vector<float>> batches;
  for (uint32_t b = 0; b < 8; ++b) batches.push_back(MakeLogits(kBatchTokens, experts, b));
  std::vector<uint32_t> ids(size_t{kBatchTokens} * r);
  std::vector<float> values(size_t{kBatchTokens} * r), lowest(kBatchTokens);
  size_t i = 0;
  for (auto _ : state) {
    const bool finite = selector.SelectRows(batches[i++ % batches.size()].data(), kBatchTokens,
                                            ids.data(), values.data(), lowest.data());
    benchmark::DoNotOptimize(finite);
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kBatchTokens);
  // The share of rows the 8-row kernel handed to the portable path: only
  // speed depends on it, so it is watched here, not tested.
  state.counters["redone"] = selector.rows_batched() == 0
                                 ? 0.0
                                 : static_cast<double>(selector.rows_redone()) /
                                       static_cast<double>(selector.rows_batched());
}
BENCHMARK(BM_SelectTopR)->Args({8, 4})->Args({64, 8})->Args({128, 10})->Args({256, 10});

// ModelEngine::Route over the layers in turn, 64-token batches, with the
// server's cache holding every expert (no paging), without a worker cache
// (cache = 0) or against one of half the experts (cache = 1): what a worker
// cache adds to a call. Args: layers, experts, top_k, cache.
void BM_EngineRoute(benchmark::State& state) {
  const uint32_t layers = static_cast<uint32_t>(state.range(0));
  const uint32_t experts = static_cast<uint32_t>(state.range(1));
  const bool with_cache = state.range(3) != 0;
  constexpr uint64_t kExpertBytes = 1 << 10;
  ModelConfig config;
  config.name = "bench";
  config.num_layers = layers;
  config.router.num_experts = experts;
  config.router.top_k = static_cast<uint32_t>(state.range(2));
  config.budget_bytes = uint64_t{layers} * experts * kExpertBytes;
  auto store = SyntheticStore::Create(
      {.num_layers = layers, .num_experts = experts, .variants = {{"default", kExpertBytes}}});
  auto engine = ModelEngine::Create(config, *std::move(store));
  if (!engine.ok()) {
    state.SkipWithError(std::string(engine.status().message()).c_str());
    return;
  }
  std::vector<std::vector<float>> batches;
  for (uint32_t b = 0; b < 8; ++b) batches.push_back(MakeLogits(kBatchTokens, experts, b));
  // Warm the server's cache so that no call pages.
  for (uint32_t l = 0; l < layers; ++l) {
    for (uint32_t e = 0; e < experts; ++e) (*engine)->pool().PageIn({l, e}, Priority::kUrgent);
  }
  (*engine)->pool().WaitIdle(absl::InfiniteFuture());
  std::string cache;
  if (with_cache) {
    cache = "worker";
    (void)(*engine)->OpenCache(cache, config.budget_bytes / 2, "");
  }
  size_t i = 0;
  for (auto _ : state) {
    auto routed =
        (*engine)->Route(static_cast<uint32_t>(i % layers), batches[i % batches.size()], cache);
    ++i;
    benchmark::DoNotOptimize(routed);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kBatchTokens);
}
BENCHMARK(BM_EngineRoute)
    ->Args({32, 8, 2, 0})
    ->Args({32, 8, 2, 1})
    ->Args({58, 256, 8, 0})
    ->Args({58, 256, 8, 1});

}  // namespace
}  // namespace moe_router

BENCHMARK_MAIN();
