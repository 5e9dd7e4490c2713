#include "core/worker/worker_engine.h"

#include <atomic>
#include <cstdlib>
#include <new>

#include "core/engine/model_engine.h"
#include "core/store/synthetic_store.h"
#include "eval/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

// Counts the allocations of the thread that asks, to check that the
// per-layer path allocates nothing once warmed up. (GCC takes the replaced
// operators' malloc and free for a mismatch with new and delete.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
thread_local bool counting = false;
thread_local uint64_t allocations = 0;
}  // namespace

void* operator new(size_t size) {
  if (counting) ++allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace moe_router {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kExpertBytes = 1000;

struct Shape {
  uint32_t layers;
  uint32_t experts;
  uint32_t top_k;
};

ModelConfig Config(const Shape& shape, bool prefetch) {
  ModelConfig config;
  config.name = "m";
  config.num_layers = shape.layers;
  config.router.num_experts = shape.experts;
  config.router.top_k = shape.top_k;
  config.budget_bytes = uint64_t{shape.layers} * shape.experts * kExpertBytes;
  if (!prefetch) {
    config.router.prefetch_threshold = 0;
    config.prefetch_next_layer = 0;
  }
  return config;
}

std::shared_ptr<const ExpertStore> Store(const Shape& shape) {
  auto store = SyntheticStore::Create({.num_layers = shape.layers,
                                       .num_experts = shape.experts,
                                       .variants = {{"default", kExpertBytes}}});
  EXPECT_TRUE(store.ok()) << store.status();
  return *std::move(store);
}

// Batches of `tokens` tokens, each routed through every layer in turn.
WorkloadShape ShapeOf(const Shape& s) {
  WorkloadShape shape;
  shape.num_layers = s.layers;
  shape.num_experts = s.experts;
  shape.top_k = s.top_k;
  return shape;
}

class Batches {
 public:
  Batches(const Shape& shape, uint32_t tokens)
      : shape_(shape), tokens_(tokens), gen_(ShapeOf(shape), /*seed=*/7) {
    gen_.StartSequence();
  }
  // The next batch: per layer, tokens x experts.
  const std::vector<std::vector<float>>& Next() {
    layers_.assign(shape_.layers, {});
    for (uint32_t t = 0; t < tokens_; ++t) {
      const std::vector<float>& token = gen_.NextToken();
      for (uint32_t l = 0; l < shape_.layers; ++l) {
        layers_[l].insert(layers_[l].end(), token.begin() + size_t{l} * shape_.experts,
                          token.begin() + size_t{l + 1} * shape_.experts);
      }
    }
    return layers_;
  }

 private:
  Shape shape_;
  uint32_t tokens_;
  SyntheticRouting gen_;
  std::vector<std::vector<float>> layers_;
};

struct Pair {
  std::unique_ptr<ModelEngine> service;
  std::unique_ptr<WorkerEngine> worker;
};

Pair Make(const ModelConfig& config, const Shape& shape, uint64_t budget) {
  Pair pair;
  auto service = ModelEngine::Create(config, Store(shape));
  EXPECT_TRUE(service.ok()) << service.status();
  pair.service = *std::move(service);
  EXPECT_TRUE(pair.service->OpenCache("w", budget, "").ok());
  auto worker =
      WorkerEngine::Create(config, pair.service->sizes(), {.cache = "w", .budget_bytes = budget});
  EXPECT_TRUE(worker.ok()) << worker.status();
  pair.worker = *std::move(worker);
  return pair;
}

TEST(WorkerEngineTest, DecidesAsTheServiceDoesForTheSameCache) {
  for (const Shape& shape : {Shape{8, 8, 2}, Shape{6, 64, 6}}) {
    SCOPED_TRACE(shape.experts);
    const ModelConfig config = Config(shape, /*prefetch=*/false);
    const uint64_t budget = uint64_t{shape.layers} * shape.experts / 4 * kExpertBytes;
    Pair pair = Make(config, shape, budget);
    Batches batches(shape, 4);
    WorkerStep step;
    uint64_t evictions = 0;
    for (int b = 0; b < 60; ++b) {
      const auto& layers = batches.Next();
      for (uint32_t l = 0; l < shape.layers; ++l) {
        auto remote = pair.service->Route(l, layers[l], "w");
        ASSERT_TRUE(remote.ok()) << remote.status();
        ASSERT_TRUE(pair.worker->Route(l, layers[l], &step).ok());
        ASSERT_EQ(step.batch.experts, remote->batch.experts) << "batch " << b << " layer " << l;
        ASSERT_EQ(step.batch.weights, remote->batch.weights);
        ASSERT_EQ(step.batch.resident, remote->batch.resident);
        ASSERT_EQ(step.cache.evictions, remote->evictions);
        ASSERT_EQ(step.cache.urgent, remote->urgent);
        ASSERT_EQ(step.cache.prefetch, remote->prefetch);
        evictions += step.cache.evictions.size();
      }
    }
    EXPECT_GT(evictions, 0u);  // the budget was under pressure
    auto stats = pair.service->CacheStats("w");
    ASSERT_TRUE(stats.ok());
    const WorkerCacheCounters mine = pair.worker->counters();
    EXPECT_EQ(mine.hits, stats->counters.hits);
    EXPECT_EQ(mine.misses, stats->counters.misses);
    EXPECT_EQ(mine.evictions, stats->counters.evictions);
  }
}

// With decay 1 the fold is exact: a service that only hears reports learns
// what the service that routed the same calls learned.
TEST(WorkerEngineTest, FoldedReportsEqualRoutingAtTheService) {
  const Shape shape{6, 16, 2};
  // Without prefetch both route identically (see above), so their learning
  // can be compared; co-activation is learned all the same.
  ModelConfig config = Config(shape, /*prefetch=*/false);
  config.affinity.decay = 1;
  config.affinity.coactivation_decay = 1;
  config.affinity.max_score = 1e12;
  const uint64_t budget = 24 * kExpertBytes;
  Pair routed = Make(config, shape, budget);
  auto learner = ModelEngine::Create(config, Store(shape));
  ASSERT_TRUE(learner.ok());
  ASSERT_TRUE((*learner)->OpenCache("w", budget, "").ok());
  Batches batches(shape, 3);
  WorkerStep step;
  RoutingReport report;
  for (int b = 0; b < 40; ++b) {
    const auto& layers = batches.Next();
    for (uint32_t l = 0; l < shape.layers; ++l) {
      ASSERT_TRUE(routed.service->Route(l, layers[l], "w").ok());
      ASSERT_TRUE(routed.worker->Route(l, layers[l], &step).ok());
    }
    if (b % 7 == 6) {
      routed.worker->TakeReport(&report);
      ASSERT_TRUE((*learner)->FoldReport("w", report).ok());
    }
  }
  routed.worker->TakeReport(&report);
  EXPECT_EQ(report.sequence, 6u);
  ASSERT_TRUE((*learner)->FoldReport("w", report).ok());
  for (uint32_t l = 0; l < shape.layers; ++l) {
    const LayerLearnedState want = routed.service->ExportLayerState(l, shape.experts);
    const LayerLearnedState got = (*learner)->ExportLayerState(l, shape.experts);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.activations, want.activations);
    for (uint32_t e = 0; e < shape.experts; ++e) {
      EXPECT_DOUBLE_EQ(got.affinity[e], want.affinity[e]) << "layer " << l << " expert " << e;
    }
    EXPECT_NEAR(got.mean_logit_range, want.mean_logit_range, 1e-9 * want.mean_logit_range);
    EXPECT_EQ(got.successor_ids, want.successor_ids) << "layer " << l;
    EXPECT_EQ(got.successor_weights, want.successor_weights);
  }
  // The learner's view of the worker holds what the worker holds.
  auto view = (*learner)->CacheStats("w");
  auto truth = routed.service->CacheStats("w");
  ASSERT_TRUE(view.ok() && truth.ok());
  EXPECT_EQ(view->resident_by_layer, truth->resident_by_layer);
  EXPECT_EQ(view->resident_bytes, truth->resident_bytes);
  EXPECT_EQ(view->counters.hits, truth->counters.hits);
  EXPECT_EQ((*learner)->Stats().metrics.total.routed_tokens,
            routed.service->Stats().metrics.total.routed_tokens);
}

TEST(WorkerEngineTest, BadReportsChangeNothing) {
  const Shape shape{2, 8, 2};
  const ModelConfig config = Config(shape, true);
  Pair pair = Make(config, shape, 4 * kExpertBytes);
  Batches batches(shape, 2);
  WorkerStep step;
  for (uint32_t l = 0; l < 2; ++l)
    ASSERT_TRUE(pair.worker->Route(l, batches.Next()[l], &step).ok());
  RoutingReport good;
  pair.worker->TakeReport(&good);
  const auto rejected = [&](RoutingReport report, const std::string& message) {
    const absl::Status s = pair.service->FoldReport("w", report);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr(message));
  };
  RoutingReport r = good;
  r.layers.pop_back();
  rejected(r, "report has 1 layers; the model has 2");
  r = good;
  r.layers[1].activations[0] += 1;
  rejected(r, "activations for");
  r = good;
  r.layers[1].pair_index.push_back(64);
  r.layers[1].pair_count.push_back(1);
  rejected(r, "pair index 64 is past 8 experts squared");
  r = good;
  r.loaded.push_back({5, 0});
  r.loaded_variants.push_back(0);
  rejected(r, "loaded expert L5/E0 is outside");
  r = good;
  for (uint32_t e = 0; e < 8; ++e) {
    r.loaded.push_back({0, e});
    r.loaded_variants.push_back(0);
  }
  rejected(r, "over its budget");
  r = good;
  r.layers[0].range.keep = 2;
  rejected(r, "is not an EMA step");
  EXPECT_EQ(pair.service->Stats().metrics.total.routed_tokens, 0u);
  EXPECT_EQ(pair.service->CacheStats("w")->resident_bytes, 0u);
  EXPECT_TRUE(absl::IsNotFound(pair.service->FoldReport("nobody", good)));
  EXPECT_TRUE(pair.service->FoldReport("w", good).ok());
  EXPECT_EQ(pair.service->Stats().metrics.total.routed_tokens, 4u);
}

// Fleet state offered to a worker is taken at its next call of the layer,
// with its own unacknowledged learning on top; successors drive prefetch.
TEST(WorkerEngineTest, OfferedStateIsTakenAtTheNextCall) {
  const Shape shape{3, 8, 2};
  ModelConfig config = Config(shape, true);
  config.router.prefetch_threshold = 0;
  config.prefetch_next_layer = 2;
  Pair pair = Make(config, shape, 24 * kExpertBytes);
  WorkerStep step;
  // Without fleet state there is nothing to predict the next layer from.
  std::vector<float> logits(8, 0.0f);
  logits[3] = 5;
  logits[4] = 4;
  ASSERT_TRUE(pair.worker->Route(0, logits, &step).ok());
  EXPECT_TRUE(step.cache.prefetch.empty());
  // The fleet learned that 3 and 4 lead to 6 and 7 in layer 1.
  LayerLearnedState one = pair.service->ExportLayerState(1, 4);
  one.successor_weights.assign(8 * 4, 0);
  for (uint32_t row : {3u, 4u}) {
    one.successor_ids[row * 4] = 6;
    one.successor_ids[row * 4 + 1] = 7;
    one.successor_weights[row * 4] = 2;
    one.successor_weights[row * 4 + 1] = 1;
  }
  one.activations[5] = 10;
  one.affinity[5] = 3;
  one.tokens = 5;
  LayerLearnedState zero = pair.service->ExportLayerState(0, 4);
  zero.mean_logit_range = 2.5;
  zero.tokens = 100;
  pair.worker->Offer({zero, one}, /*acknowledged=*/0);
  EXPECT_EQ(pair.worker->state_updates_applied(), 0u);
  ASSERT_TRUE(pair.worker->Route(0, logits, &step).ok());
  EXPECT_EQ(pair.worker->state_updates_applied(), 1u);
  // Layer 1's successors are taken only at its own next call.
  EXPECT_TRUE(step.cache.prefetch.empty());
  ASSERT_TRUE(pair.worker->Route(1, logits, &step).ok());
  EXPECT_EQ(pair.worker->state_updates_applied(), 2u);
  ASSERT_TRUE(pair.worker->Route(0, logits, &step).ok());
  EXPECT_THAT(step.cache.prefetch, ::testing::ElementsAre(ExpertKey{1, 6}, ExpertKey{1, 7}));
  // Layer 0's two unacknowledged calls (before the offer and the first
  // after it) were re-applied over the fleet's 100 tokens.
  RoutingReport report;
  pair.worker->TakeReport(&report);
  EXPECT_EQ(report.layers[0].tokens, 3u);
}

TEST(WorkerEngineTest, RouteAllocatesNothingOnceWarm) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the sanitizer's allocator replaces operator new";
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  GTEST_SKIP() << "the sanitizer's allocator replaces operator new";
#endif
#endif
  for (const Shape& shape : {Shape{32, 8, 2}, Shape{8, 256, 8}}) {
    SCOPED_TRACE(shape.experts);
    const ModelConfig config = Config(shape, /*prefetch=*/true);
    const uint64_t budget = uint64_t{shape.layers} * shape.experts / 4 * kExpertBytes;
    Pair pair = Make(config, shape, budget);
    for (uint32_t l = 0; l < shape.layers; ++l) {
      pair.worker->Offer({pair.service->ExportLayerState(l, kDefaultSuccessorsPerRow)}, 0);
    }
    Batches batches(shape, 64);
    std::vector<std::vector<std::vector<float>>> all;
    for (int b = 0; b < 40; ++b) all.push_back(batches.Next());
    // Teach the service co-activation, then hand it to the worker.
    for (int b = 0; b < 10; ++b) {
      for (uint32_t l = 0; l < shape.layers; ++l)
        ASSERT_TRUE(pair.service->Route(l, all[b][l]).ok());
    }
    std::vector<LayerLearnedState> state;
    for (uint32_t l = 0; l < shape.layers; ++l) {
      state.push_back(pair.service->ExportLayerState(l, kDefaultSuccessorsPerRow));
    }
    pair.worker->Offer(std::move(state), 0);
    WorkerStep step;
    uint64_t prefetched = 0;
    for (int b = 0; b < 40; ++b) {
      if (b == 30) {
        allocations = 0;
        counting = true;
      }
      for (uint32_t l = 0; l < shape.layers; ++l) {
        ASSERT_TRUE(pair.worker->Route(l, all[b][l], &step).ok());
        prefetched += step.cache.prefetch.size();
      }
    }
    counting = false;
    EXPECT_EQ(allocations, 0u);
    EXPECT_GT(prefetched, 0u);
  }
}

// A report carries each layer's strongest pairs up to the cap, and counts
// the rest as dropped.
TEST(WorkerEngineTest, ReportsKeepTheStrongestPairsUpToTheCap) {
  const Shape shape{2, 8, 2};
  const ModelConfig config = Config(shape, false);
  auto store = Store(shape);
  auto sizes = ExpertSizeTable::Build(*store, 2, 8);
  ASSERT_TRUE(sizes.ok());
  auto worker = WorkerEngine::Create(
      config, *sizes, {.cache = "w", .budget_bytes = 16 * kExpertBytes, .max_pairs_per_layer = 2});
  ASSERT_TRUE(worker.ok());
  WorkerStep step;
  // Token 0 goes 0,1 -> 2,3 three times; token 1 goes 4,5 -> 6,7 once.
  const auto row = [](uint32_t a, uint32_t b) {
    std::vector<float> logits(8, 0.0f);
    logits[a] = 5;
    logits[b] = 4;
    return logits;
  };
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*worker)->Route(0, row(0, 1), &step).ok());
    ASSERT_TRUE((*worker)->Route(1, row(2, 3), &step).ok());
  }
  ASSERT_TRUE((*worker)->Route(0, row(4, 5), &step).ok());
  ASSERT_TRUE((*worker)->Route(1, row(6, 7), &step).ok());
  RoutingReport report;
  (*worker)->TakeReport(&report);
  // Pairs 0->2 and 0->3 (3 each) are kept: ties between the four count-3
  // pairs go to the lower index; the other two of them and the four
  // single pairs are dropped.
  EXPECT_THAT(report.layers[1].pair_index, ::testing::ElementsAre(0 * 8 + 2, 0 * 8 + 3));
  EXPECT_THAT(report.layers[1].pair_count, ::testing::ElementsAre(3, 3));
  EXPECT_EQ((*worker)->pairs_dropped(), 2u * 3 + 4);
  // The next report starts from zero in the other buffer, and so on.
  ASSERT_TRUE((*worker)->Route(0, row(4, 5), &step).ok());
  ASSERT_TRUE((*worker)->Route(1, row(6, 7), &step).ok());
  (*worker)->TakeReport(&report);
  EXPECT_THAT(report.layers[1].pair_index, ::testing::ElementsAre(4 * 8 + 6, 4 * 8 + 7));
  EXPECT_THAT(report.layers[1].pair_count, ::testing::ElementsAre(1, 1));
}

// A layer call never grows the pair log: with no room left the batch's
// pairs are dropped and counted, and routing goes on.
TEST(WorkerEngineTest, AFullPairLogDropsTheBatchsPairs) {
  const Shape shape{2, 8, 2};
  auto store = Store(shape);
  auto sizes = ExpertSizeTable::Build(*store, 2, 8);
  ASSERT_TRUE(sizes.ok());
  // One 2-token top-2 batch logs 3 + 2 x 4 entries.
  auto worker = WorkerEngine::Create(
      Config(shape, false), *sizes,
      {.cache = "w", .budget_bytes = 16 * kExpertBytes, .pair_log_entries = 11});
  ASSERT_TRUE(worker.ok());
  WorkerStep step;
  const std::vector<float> logits = ::moe_router::testing::RandomLogits(2, 8, 3);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE((*worker)->Route(0, logits, &step).ok());
    ASSERT_TRUE((*worker)->Route(1, logits, &step).ok());
  }
  EXPECT_EQ((*worker)->pairs_dropped(), 2u * 2 * 2);  // the second batch's
  RoutingReport report;
  (*worker)->TakeReport(&report);
  uint64_t pairs = 0;
  for (uint32_t c : report.layers[1].pair_count) pairs += c;
  EXPECT_EQ(pairs, 2u * 2 * 2);  // the first batch's
  EXPECT_EQ(report.layers[1].tokens, 4u);
}

TEST(WorkerEngineTest, RefusesBadCallsWithoutChangingState) {
  const Shape shape{2, 8, 2};
  Pair pair = Make(Config(shape, true), shape, 4 * kExpertBytes);
  WorkerStep step;
  std::vector<float> logits(8, 1.0f);
  EXPECT_THAT(pair.worker->Route(2, logits, &step).message(),
              HasSubstr("layer 2 is out of range: model 'm' has 2 layers"));
  logits[3] = std::nanf("");
  EXPECT_THAT(pair.worker->Route(0, logits, &step).message(), HasSubstr("NaN value at expert 3"));
  EXPECT_THAT(pair.worker->Prefetch(0, std::vector<float>(7, 0), 0, &step.cache).message(),
              HasSubstr("has 7 values; model 'm' has 8 experts"));
  EXPECT_THAT(pair.worker->Adopt({{0, 1}, {0, 2}, {0, 3}, {0, 4}, {0, 5}}).message(),
              HasSubstr("over its budget"));
  EXPECT_TRUE(pair.worker->Residency().empty());
  RoutingReport report;
  pair.worker->TakeReport(&report);
  EXPECT_EQ(report.layers[0].tokens, 0u);
  auto tiny = WorkerEngine::Create(Config(shape, true), pair.service->sizes(),
                                   {.cache = "w", .budget_bytes = 10});
  EXPECT_THAT(tiny.status().message(), HasSubstr("smaller than one expert"));
}

}  // namespace
}  // namespace moe_router
