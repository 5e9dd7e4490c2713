// The critical-path cost of one layer call, 64-token batches, a worker
// budget of a quarter of the experts: remote RouteTokens against the
// worker's cache (moe-routerd in this process, a real channel on loopback)
// beside the in-process WorkerEngine with the fleet's state. Args: layers,
// experts, top_k.
#include <benchmark/benchmark.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "core/model_engine.h"
#include "core/synthetic_store.h"
#include "core/worker_engine.h"
#include "server/server.h"

namespace moe_router {
namespace {

constexpr uint32_t kBatchTokens = 64;
constexpr uint64_t kExpertBytes = 1 << 10;

std::vector<std::vector<float>> Batches(uint32_t experts) {
  std::mt19937 rng(1);
  std::normal_distribution<float> noise(0.0f, 1.5f);
  std::vector<std::vector<float>> batches(8, std::vector<float>(size_t{kBatchTokens} * experts));
  for (auto& batch : batches) {
    for (float& x : batch) x = noise(rng);
  }
  return batches;
}

ModelConfig Config(const benchmark::State& state) {
  ModelConfig config;
  config.name = "bench";
  config.num_layers = static_cast<uint32_t>(state.range(0));
  config.router.num_experts = static_cast<uint32_t>(state.range(1));
  config.router.top_k = static_cast<uint32_t>(state.range(2));
  config.budget_bytes = uint64_t{config.num_layers} * config.router.num_experts * kExpertBytes;
  return config;
}

uint64_t QuarterBudget(const ModelConfig& config) {
  return uint64_t{config.num_layers} * config.router.num_experts / 4 * kExpertBytes;
}

void BM_InProcessRoute(benchmark::State& state) {
  const ModelConfig config = Config(state);
  auto store = SyntheticStore::Create({.num_layers = config.num_layers,
                                       .num_experts = config.router.num_experts,
                                       .variants = {{"default", kExpertBytes}}});
  auto service = ModelEngine::Create(config, *std::move(store));
  if (!service.ok()) return state.SkipWithError(std::string(service.status().message()).c_str());
  const auto batches = Batches(config.router.num_experts);
  // The fleet learned co-activation from these batches; the worker has it.
  for (int round = 0; round < 4; ++round) {
    for (uint32_t l = 0; l < config.num_layers; ++l) {
      (void)(*service)->Route(l, batches[(round + l) % batches.size()]);
    }
  }
  auto worker = WorkerEngine::Create(config, (*service)->sizes(),
                                     {.cache = "w", .budget_bytes = QuarterBudget(config)});
  std::vector<LayerLearnedState> fleet;
  for (uint32_t l = 0; l < config.num_layers; ++l) {
    fleet.push_back((*service)->ExportLayerState(l, kDefaultSuccessorsPerRow));
  }
  (*worker)->Offer(std::move(fleet), 0);
  WorkerStep step;
  size_t i = 0;
  for (auto _ : state) {
    const uint32_t layer = static_cast<uint32_t>(i % config.num_layers);
    (void)(*worker)->Route(layer, batches[(i / config.num_layers + layer) % batches.size()], &step);
    ++i;
    benchmark::DoNotOptimize(step);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kBatchTokens);
}
BENCHMARK(BM_InProcessRoute)->Args({32, 8, 2})->Args({58, 256, 8});

void BM_RemoteRoute(benchmark::State& state) {
  const ModelConfig config = Config(state);
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.health_listen = "";
  auto server = RouterServer::Start(options);
  if (!server.ok()) return state.SkipWithError(std::string(server.status().message()).c_str());
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", (*server)->port()));
  v1::ModelSpec spec;
  spec.set_name("bench");
  spec.set_num_layers(config.num_layers);
  spec.set_num_experts(config.router.num_experts);
  spec.set_top_k(config.router.top_k);
  spec.set_budget_bytes(config.budget_bytes);
  spec.mutable_synthetic()->set_expert_bytes(kExpertBytes);
  if (!(*client)->Register(spec).ok() ||
      !(*client)->OpenCache("bench", "w", QuarterBudget(config)).ok()) {
    return state.SkipWithError("could not register the model or open the cache");
  }
  const auto batches = Batches(config.router.num_experts);
  size_t i = 0;
  for (auto _ : state) {
    const uint32_t layer = static_cast<uint32_t>(i % config.num_layers);
    auto routed = (*client)->Route("bench", layer,
                                   batches[(i / config.num_layers + layer) % batches.size()], "w");
    ++i;
    benchmark::DoNotOptimize(routed);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kBatchTokens);
}
BENCHMARK(BM_RemoteRoute)->Args({32, 8, 2})->Args({58, 256, 8})->UseRealTime();

}  // namespace
}  // namespace moe_router

BENCHMARK_MAIN();
