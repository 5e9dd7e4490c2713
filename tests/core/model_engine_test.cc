#include "core/engine/model_engine.h"

#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/store/synthetic_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/gated_store.h"
#include "tests/testing/test_util.h"

namespace moe_router {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kExpertBytes = 4096;

ModelConfig SmallModel(uint32_t layers = 4) {
  ModelConfig c;
  c.name = "tiny";
  c.num_layers = layers;
  c.router.num_experts = 8;
  c.router.top_k = 2;
  c.budget_bytes = layers * 4 * kExpertBytes;  // half of all experts
  return c;
}

std::shared_ptr<const ExpertStore> Store(uint32_t layers = 4,
                                         std::vector<std::pair<std::string, uint64_t>> variants = {
                                             {"default", kExpertBytes}}) {
  return std::shared_ptr<const ExpertStore>(*SyntheticStore::Create(
      {.num_layers = layers, .num_experts = 8, .variants = std::move(variants)}));
}

void Drain(ModelEngine& model) {
  ASSERT_TRUE(model.pool().WaitIdle(absl::Now() + absl::Seconds(30)));
}

TEST(ModelConfigTest, RejectsBadConfigByField) {
  ModelConfig c = SmallModel();
  c.name = "";
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("model.name"));
  c = SmallModel();
  c.budget_bytes = 0;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("budget_bytes"));
  c = SmallModel();
  c.eviction_policy = "belady";
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("eviction_policy"));
  c = SmallModel();
  c.router.top_k = 9;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("router.top_k"));
  c = SmallModel();
  c.precision.hot_threshold = 0.1;
  EXPECT_THAT(std::string(c.Validate().message()), HasSubstr("precision thresholds"));
  EXPECT_FALSE(ModelEngine::Create(c, Store()).ok());
}

TEST(ModelEngineTest, RouteQueuesPagingAndLaterHits) {
  auto model = *ModelEngine::Create(SmallModel(), Store());
  const std::vector<float> logits = {5, 4, 0, 0, 0, 0, 0, 0};
  auto first = model->Route(0, logits);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->batch.experts, ::testing::ElementsAre(0u, 1u));
  EXPECT_THAT(first->batch.resident, ::testing::ElementsAre(0, 0));
  EXPECT_EQ(first->urgent.size(), 2u);
  Drain(*model);
  auto second = model->Route(0, logits);
  ASSERT_TRUE(second.ok());
  EXPECT_THAT(second->batch.resident, ::testing::ElementsAre(1, 1));
  EXPECT_TRUE(second->urgent.empty());
  const ModelStats stats = model->Stats();
  EXPECT_EQ(stats.metrics.total.hits, 2u);
  EXPECT_EQ(stats.metrics.total.misses, 2u);
  EXPECT_EQ(stats.metrics.layers[0].routed_tokens, 2u);
  EXPECT_EQ(stats.layers[0].resident_experts, 2u);
  EXPECT_GE(stats.metrics.total.page_ins[0], 2u);
  EXPECT_DOUBLE_EQ(stats.metrics.targets.hit_rate, 0.5);
  EXPECT_FALSE(stats.metrics.targets.hit_rate_ok);
  EXPECT_LE(stats.cache.peak_bytes, stats.cache.budget_bytes);
}

TEST(ModelEngineTest, BadRequestsAreClearAndChangeNothing) {
  auto model = *ModelEngine::Create(SmallModel(), Store());
  std::vector<float> logits = testing::RandomLogits(3, 8, 1);
  EXPECT_THAT(std::string(model->Route(4, logits).status().message()),
              HasSubstr("layer 4 is out of range: model 'tiny' has 4 layers"));
  logits[17] = NAN;
  auto bad = model->Route(1, logits);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("token 2"));
  const ModelStats stats = model->Stats();
  EXPECT_EQ(stats.metrics.total.routed_tokens, 0u);
  EXPECT_EQ(stats.metrics.route_errors, 1u);
  EXPECT_EQ(stats.cache.resident_experts + stats.cache.loading_bytes, 0u);
  EXPECT_THAT(
      std::string(
          model->Prefetch({.layer = 0, .experts = std::vector<uint32_t>{8}}).status().message()),
      HasSubstr("expert 8 is out of range"));
  EXPECT_TRUE(absl::IsInvalidArgument(model->Fetch({0, 9}, absl::Now()).status()));
}

TEST(ModelEngineTest, LearnsCoActivationAndPrefetchesTheNextLayer) {
  ModelConfig config = SmallModel(2);
  config.budget_bytes = 16 * kExpertBytes;  // everything fits: no eviction noise
  auto model = *ModelEngine::Create(config, Store(2));
  // Layer 0 picks {0, 1}, then layer 1 picks {6, 7} for the same tokens.
  const std::vector<float> l0 = {5, 4, 0, 0, 0, 0, 0, 0};
  const std::vector<float> l1 = {0, 0, 0, 0, 0, 0, 4, 5};
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(model->Route(0, l0).ok());
    ASSERT_TRUE(model->Route(1, l1).ok());
  }
  const ModelStats stats = model->Stats();
  EXPECT_GT(stats.layers[1].coactivation_top1, 0.85);
  // With layer 1's experts gone, routing layer 0 must bring them back by
  // prefetch (whether earlier rounds prefetched depends on paging speed).
  Drain(*model);
  ASSERT_TRUE(model->cache().Evict({1, 6}).ok());
  ASSERT_TRUE(model->cache().Evict({1, 7}).ok());
  const uint64_t issued = model->Stats().metrics.total.prefetch_issued;
  auto routed = model->Route(0, l0);
  ASSERT_TRUE(routed.ok());
  Drain(*model);
  EXPECT_TRUE(model->cache().IsResident({1, 6}));
  EXPECT_TRUE(model->cache().IsResident({1, 7}));
  EXPECT_EQ(model->Stats().metrics.total.prefetch_issued, issued + 2);
}

TEST(ModelEngineTest, ExplicitAndChosenPrefetch) {
  auto model = *ModelEngine::Create(SmallModel(), Store());
  auto explicit_hints = model->Prefetch({.layer = 2, .experts = std::vector<uint32_t>{3, 3, 5}});
  ASSERT_TRUE(explicit_hints.ok());
  EXPECT_THAT(explicit_hints->queued, ::testing::ElementsAre(3u, 5u));
  Drain(*model);
  auto again = model->Prefetch({.layer = 2, .experts = std::vector<uint32_t>{3, 4}});
  EXPECT_THAT(again->already_resident, ::testing::ElementsAre(3u));
  EXPECT_THAT(again->queued, ::testing::ElementsAre(4u));
  // Server's choice: affinity of a layer that routed {1, 2}.
  ASSERT_TRUE(model->Route(3, std::vector<float>{0, 5, 4, 0, 0, 0, 0, 0}).ok());
  Drain(*model);
  ASSERT_TRUE(model->cache().Evict({3, 1}).ok());
  auto chosen = model->Prefetch({.layer = 3, .budget = 2});
  ASSERT_TRUE(chosen.ok());
  EXPECT_THAT(chosen->queued, ::testing::ElementsAre(1u));
  EXPECT_THAT(chosen->already_resident, ::testing::ElementsAre(2u));
}

TEST(ModelEngineTest, FetchPagesInAndPins) {
  auto model = *ModelEngine::Create(SmallModel(), Store());
  auto fetched = model->Fetch({1, 6}, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  EXPECT_EQ((*fetched)->size, kExpertBytes);
  EXPECT_EQ((*fetched)->checksum, (*model->store().Load({1, 6}, "default"))->checksum);
  EXPECT_TRUE(absl::IsFailedPrecondition(model->cache().Evict({1, 6})));  // pinned
}

TEST(ModelEngineTest, StateSurvivesExportAndImport) {
  auto a = *ModelEngine::Create(SmallModel(2), Store(2));
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(a->Route(0, testing::RandomLogits(4, 8, i)).ok());
    ASSERT_TRUE(a->Route(1, testing::RandomLogits(4, 8, 100 + i)).ok());
  }
  const std::string state = a->ExportState();
  auto b = *ModelEngine::Create(SmallModel(2), Store(2));
  ASSERT_TRUE(b->ImportState(state).ok());
  EXPECT_EQ(b->ExportState(), state);
  // The running logit range comes back too, so the relative bonus the next
  // batch gets is the one it would have had before the restart.
  for (uint32_t l = 0; l < 2; ++l) {
    EXPECT_GT(a->Stats().layers[l].mean_logit_range, 0.0);
    EXPECT_EQ(b->Stats().layers[l].mean_logit_range, a->Stats().layers[l].mean_logit_range);
  }
  // A file saved before the range was kept still loads; the range starts anew.
  nlohmann::json old_format = nlohmann::json::parse(state);
  for (auto& layer : old_format["layers"]) layer.erase("mean_logit_range");
  auto d = *ModelEngine::Create(SmallModel(2), Store(2));
  ASSERT_TRUE(d->ImportState(old_format.dump()).ok());
  EXPECT_EQ(d->Stats().layers[0].mean_logit_range, 0.0);

  // A state for another shape, or a torn one, is refused and changes nothing.
  auto c = *ModelEngine::Create(SmallModel(3), Store(3));
  const std::string before = c->ExportState();
  EXPECT_THAT(std::string(c->ImportState(state).message()), HasSubstr("another model shape"));
  EXPECT_FALSE(c->ImportState(state.substr(0, state.size() / 2)).ok());
  nlohmann::json broken = nlohmann::json::parse(state);
  broken["layers"][1]["affinity_scores"][0] = -5;
  EXPECT_FALSE(b->ImportState(broken.dump()).ok());
  broken = nlohmann::json::parse(state);
  broken["layers"][1]["mean_logit_range"] = -1.0;
  EXPECT_THAT(std::string(b->ImportState(broken.dump()).message()),
              HasSubstr("layer 1: mean_logit_range -1 is not a finite range"));
  // Fields of another type are refusals, not exceptions (as the trace
  // reader's were, found by fuzzing).
  for (const char* field : {"format", "num_layers", "num_experts"}) {
    broken = nlohmann::json::parse(state);
    broken[field] = nlohmann::json::array({0, 3});
    EXPECT_FALSE(b->ImportState(broken.dump()).ok()) << field;
  }
  EXPECT_EQ(b->ExportState(), state);
  EXPECT_EQ(c->ExportState(), before);
}

TEST(ModelEngineTest, ColdExpertsUseLowerPrecisionAndArePagedAgainWhenHot) {
  ModelConfig config = SmallModel(1);
  config.precision.warmup_tokens = 4;
  config.budget_bytes = 8 * kExpertBytes;
  auto model = *ModelEngine::Create(
      config,
      Store(1, {{"Q4_K", kExpertBytes}, {"Q3_K", kExpertBytes / 2}, {"Q2_K", kExpertBytes / 4}}));
  // Warm-up: everything hot.
  EXPECT_EQ((*model->Fetch({0, 7}, absl::Now() + absl::Seconds(30)))->precision, "Q4_K");
  // Make expert 0 and 1 busy, 7 never used.
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(model->Route(0, std::vector<float>{5, 4, 0, 0, 0, 0, 0, 0}).ok());
  Drain(*model);
  // 7 is resident at Q4_K but now cold: the re-page brings the Q2_K variant.
  for (int i = 0; i < 100 && model->cache().ResidentPrecision({0, 7}) != "Q2_K"; ++i) {
    ASSERT_TRUE(model->Route(0, std::vector<float>{5, 4, 0, 0, 0, 0, 0, 0}).ok());
    Drain(*model);
  }
  EXPECT_EQ(model->cache().ResidentPrecision({0, 7}), "Q2_K");
  EXPECT_EQ(model->cache().ResidentPrecision({0, 0}), "Q4_K");
  const ModelStats stats = model->Stats();
  EXPECT_EQ(stats.resident_by_precision.at("Q2_K"), 1u);
  EXPECT_GE(stats.metrics.total.repages, 1u);
}

TEST(ModelEngineTest, ConcurrentWorkersOnManyLayers) {
  ModelConfig config = SmallModel(8);
  config.paging.threads = 2;
  auto model = *ModelEngine::Create(config, Store(8));
  std::vector<std::thread> workers;
  absl::Mutex mu;
  std::vector<std::string> errors;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      for (int i = 0; i < 200; ++i) {
        const uint32_t layer = static_cast<uint32_t>((w * 2 + i) % 8);
        absl::Status s = model->Route(layer, testing::RandomLogits(16, 8, w * 1000 + i)).status();
        if (s.ok() && i % 50 == 0) {
          s = model->Fetch({layer, 3}, absl::Now() + absl::Seconds(30)).status();
        }
        if (!s.ok()) {
          absl::MutexLock lock(&mu);
          errors.push_back(s.ToString());
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  Drain(*model);
  EXPECT_THAT(errors, ::testing::IsEmpty());
  const ModelStats stats = model->Stats();
  EXPECT_EQ(stats.metrics.total.routed_tokens, 4u * 200 * 16);
  EXPECT_EQ(stats.metrics.total.hits + stats.metrics.total.misses, 4u * 200 * 16 * 2);
  EXPECT_LE(stats.cache.peak_bytes, config.budget_bytes);
}

// A store that does not answer (a slow disk, a hung network volume) holds
// only the paging workers: routing queues its page-ins and answers at once,
// with the experts reported absent, and urgent page-ins are served before
// the prefetches queued earlier once the store answers.
TEST(ModelEngineTest, RoutingNeverWaitsForASlowStore) {
  auto store = std::make_shared<testing::GatedStore>(kExpertBytes);
  ModelConfig config = SmallModel(4);
  config.paging.threads = 1;
  auto model = *ModelEngine::Create(config, store);
  absl::Notification routed;
  std::vector<RouteOutcome> outcomes;
  std::thread caller([&] {
    for (uint32_t i = 0; i < 8; ++i)
      outcomes.push_back(*model->Route(i % 4, testing::RandomLogits(4, 8, i)));
    routed.Notify();
  });
  const bool answered = routed.WaitForNotificationWithTimeout(absl::Seconds(30));
  store->Open();  // whatever happened, let the caller finish
  caller.join();
  ASSERT_TRUE(answered) << "Route waited for the store";
  for (const RouteOutcome& o : outcomes) {
    EXPECT_THAT(o.batch.resident, ::testing::Each(0)) << "nothing could have been loaded";
  }
  // Every urgent page-in queued by routing ran before any prefetch (but
  // for the first load, which the worker may have taken before routing
  // queued the rest).
  Drain(*model);
  std::vector<ExpertKey> urgent;
  for (const RouteOutcome& o : outcomes)
    urgent.insert(urgent.end(), o.urgent.begin(), o.urgent.end());
  const std::vector<ExpertKey> loaded = store->loaded();
  ASSERT_GT(loaded.size(), 1u);
  size_t first_prefetch = loaded.size();
  for (size_t i = 1; i < loaded.size(); ++i) {
    if (std::find(urgent.begin(), urgent.end(), loaded[i]) == urgent.end()) {
      first_prefetch = std::min(first_prefetch, i);
    } else {
      EXPECT_LT(i, first_prefetch) << "an urgent page-in ran after a prefetch";
    }
  }
}

}  // namespace
}  // namespace moe_router
