// The critical-path cost of one layer call, 64-token batches, a worker
// budget of a quarter of the experts: remote RouteTokens against the
// worker's cache (moe-routerd in this process, a real channel on loopback)
// beside the in-process WorkerEngine with the fleet's state. Args: layers,
// experts, top_k (and for BM_InProcessRoute, tokens per call).
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "core/engine/model_engine.h"
#include "core/store/synthetic_store.h"
#include "core/worker/worker_engine.h"
#include "eval/workload.h"
#include "proto/control_stream_proto.h"
#include "server/server.h"

namespace moe_router {
namespace {

constexpr uint32_t kBatchTokens = 64;
constexpr uint64_t kExpertBytes = 1 << 10;

std::vector<std::vector<float>> Batches(uint32_t experts, uint32_t tokens = kBatchTokens) {
  std::mt19937 rng(1);
  std::normal_distribution<float> noise(0.0f, 1.5f);
  std::vector<std::vector<float>> batches(8, std::vector<float>(size_t{tokens} * experts));
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

// The service's engine for `config`, on a synthetic store.
absl::StatusOr<std::unique_ptr<ModelEngine>> Service(const ModelConfig& config) {
  auto store = SyntheticStore::Create({.num_layers = config.num_layers,
                                       .num_experts = config.router.num_experts,
                                       .variants = {{"default", kExpertBytes}}});
  if (!store.ok()) return store.status();
  return ModelEngine::Create(config, *std::move(store));
}

uint64_t QuarterBudget(const ModelConfig& config) {
  return uint64_t{config.num_layers} * config.router.num_experts / 4 * kExpertBytes;
}

// A worker with a quarter of the experts, given every layer's state as the
// service learned it.
std::unique_ptr<WorkerEngine> WorkerWithFleetState(const ModelConfig& config,
                                                   const ModelEngine& service) {
  auto worker = WorkerEngine::Create(config, service.sizes(),
                                     {.cache = "w", .budget_bytes = QuarterBudget(config)});
  std::vector<LayerLearnedState> fleet;
  for (uint32_t l = 0; l < config.num_layers; ++l) {
    fleet.push_back(service.ExportLayerState(l, kDefaultSuccessorsPerRow));
  }
  (*worker)->Offer(std::move(fleet), 0);
  return *std::move(worker);
}

// One layer call after another over the layers, the worker holding the
// fleet's state: config's model, args layers, experts, top_k, tokens.
void RouteInProcess(benchmark::State& state, const ModelConfig& config) {
  const uint32_t tokens = static_cast<uint32_t>(state.range(3));
  auto service = Service(config);
  if (!service.ok()) return state.SkipWithError(std::string(service.status().message()).c_str());
  const auto batches = Batches(config.router.num_experts, tokens);
  // The fleet learned co-activation from these batches; the worker has it.
  for (int round = 0; round < 4; ++round) {
    for (uint32_t l = 0; l < config.num_layers; ++l) {
      (void)(*service)->Route(l, batches[(round + l) % batches.size()]);
    }
  }
  auto worker = WorkerWithFleetState(config, **service);
  WorkerStep step;
  size_t i = 0;
  for (auto _ : state) {
    const uint32_t layer = static_cast<uint32_t>(i % config.num_layers);
    (void)worker->Route(layer, batches[(i / config.num_layers + layer) % batches.size()], &step);
    ++i;
    benchmark::DoNotOptimize(step);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * tokens);
}

void BM_InProcessRoute(benchmark::State& state) { RouteInProcess(state, Config(state)); }
BENCHMARK(BM_InProcessRoute)
    ->ArgsProduct({{32}, {8}, {2}, {1, 8, 64}})
    ->ArgsProduct({{58}, {256}, {8}, {1, 8, 64}})
    ->ArgsProduct({{60}, {384}, {8}, {1, 8, 64}});

// The same under DeepSeek-V3's rule (8 groups, 4 kept): the name is kept,
// a fifth argument 1 says the rule.
void BM_InProcessRouteDeepSeek(benchmark::State& state) {
  ModelConfig config = Config(state);
  config.router.rule = *RoutingRulePreset("deepseek_v3");
  WorkloadShape shape;
  shape.num_layers = config.num_layers;
  shape.num_experts = config.router.num_experts;
  shape.top_k = config.router.top_k;
  shape.rule = config.router.rule;
  config.choice_bias = BalancedChoiceBias(shape, 1);
  state.SetLabel("deepseek_v3");
  RouteInProcess(state, config);
}
const benchmark::internal::Benchmark* const kInProcessRouteDeepSeek =
    benchmark::RegisterBenchmark("BM_InProcessRoute", BM_InProcessRouteDeepSeek)
        ->ArgsProduct({{58}, {256}, {8}, {1, 8, 64}, {1}});

// One-token calls of the Mixtral shape as a worker loop makes them: between
// calls the worker moves an expert's bytes (range(0) KiB copied, timing
// paused), which leaves the call's code and data out of the CPU's caches.
void BM_InProcessRouteBetweenCopies(benchmark::State& state) {
  ModelConfig config;
  config.name = "bench";
  config.num_layers = 32;
  config.router.num_experts = 8;
  config.router.top_k = 2;
  config.budget_bytes = uint64_t{32} * 8 * kExpertBytes;
  auto service = Service(config);
  if (!service.ok()) return state.SkipWithError(std::string(service.status().message()).c_str());
  const auto batches = Batches(config.router.num_experts, 1);
  auto worker = WorkerWithFleetState(config, **service);
  const size_t copy_bytes = static_cast<size_t>(state.range(0)) << 10;
  std::vector<char> from(copy_bytes, 1), to(copy_bytes);
  WorkerStep step;
  size_t i = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::memcpy(to.data(), from.data(), copy_bytes);
    benchmark::ClobberMemory();
    state.ResumeTiming();
    const uint32_t layer = static_cast<uint32_t>(i % config.num_layers);
    (void)worker->Route(layer, batches[(i / config.num_layers + layer) % batches.size()], &step);
    ++i;
    benchmark::DoNotOptimize(step);
  }
}
BENCHMARK(BM_InProcessRouteBetweenCopies)->Arg(0)->Arg(2048)->Arg(32768);

// The same call on the calibrated workloads (eval/workload.h: skewed
// experts, topics that persist across tokens), 64 concurrent sequences a
// batch, each batch one decode step through every layer: what a worker's
// cache sees, rather than i.i.d. logits that make every call evict.
void BM_InProcessRouteCalibrated(benchmark::State& state, const std::string& preset_name) {
  auto preset = GetWorkloadPreset(preset_name);
  if (!preset.ok()) return state.SkipWithError(std::string(preset.status().message()).c_str());
  const WorkloadShape& shape = preset->shape;
  ModelConfig config;
  config.name = "bench";
  config.num_layers = shape.num_layers;
  config.router.num_experts = shape.num_experts;
  config.router.top_k = shape.top_k;
  config.budget_bytes = uint64_t{shape.num_layers} * shape.num_experts * kExpertBytes;
  auto service = Service(config);
  if (!service.ok()) return state.SkipWithError(std::string(service.status().message()).c_str());
  // 64 sequences, 16 steps: per step and layer, 64 rows of logits.
  const uint32_t n = shape.num_experts;
  std::vector<SyntheticRouting> sequences;
  for (uint32_t s = 0; s < kBatchTokens; ++s) {
    sequences.emplace_back(shape, /*seed=*/s + 1);
    sequences.back().StartSequence();
  }
  std::vector<std::vector<std::vector<float>>> steps(16);  // [step][layer]
  for (auto& step : steps) {
    step.assign(shape.num_layers, std::vector<float>(size_t{kBatchTokens} * n));
    for (uint32_t s = 0; s < kBatchTokens; ++s) {
      const std::vector<float>& token = sequences[s].NextToken();
      for (uint32_t l = 0; l < shape.num_layers; ++l) {
        std::copy(token.begin() + size_t{l} * n, token.begin() + size_t{l + 1} * n,
                  step[l].begin() + size_t{s} * n);
      }
    }
  }
  for (const auto& step : steps) {
    for (uint32_t l = 0; l < shape.num_layers; ++l) (void)(*service)->Route(l, step[l]);
  }
  auto worker = WorkerWithFleetState(config, **service);
  WorkerStep step;
  uint64_t evictions = 0, calls = 0;
  size_t i = 0;
  for (auto _ : state) {
    const uint32_t layer = static_cast<uint32_t>(i % config.num_layers);
    (void)worker->Route(layer, steps[(i / config.num_layers) % steps.size()][layer], &step);
    evictions += step.cache.evictions.size();
    ++calls;
    ++i;
  }
  state.counters["evictions_per_call"] =
      static_cast<double>(evictions) / std::max<uint64_t>(calls, 1);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kBatchTokens);
}
BENCHMARK_CAPTURE(BM_InProcessRouteCalibrated, mixtral, std::string("mixtral"));
BENCHMARK_CAPTURE(BM_InProcessRouteCalibrated, deepseek_v3, std::string("deepseek-v3"));
BENCHMARK_CAPTURE(BM_InProcessRouteCalibrated, kimi_k2, std::string("kimi-k2"));

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

// The service's cost of folding one worker's report, and the Learn stream's
// bytes: a report of 100 ms of decode at 20 steps/s (two steps of
// `range(3)` tokens through every layer) and the state updates that follow.
// Counters: report_bytes and update_bytes per report (serialized), so
// bytes/s each way are ten times those at the default interval.
void BM_FoldReport(benchmark::State& state) {
  ModelConfig config = Config(state);
  const uint32_t tokens = static_cast<uint32_t>(state.range(3));
  auto service = Service(config);
  if (!service.ok()) return state.SkipWithError(std::string(service.status().message()).c_str());
  (void)(*service)->OpenCache("w", QuarterBudget(config), "");
  auto worker = WorkerEngine::Create(config, (*service)->sizes(),
                                     {.cache = "w", .budget_bytes = QuarterBudget(config)});
  std::mt19937 rng(1);
  std::normal_distribution<float> noise(0.0f, 1.5f);
  std::vector<float> logits(size_t{tokens} * config.router.num_experts);
  WorkerStep step;
  RoutingReport report;
  std::vector<RoutingReport> reports;
  for (int r = 0; r < 8; ++r) {
    for (int s = 0; s < 2; ++s) {
      for (float& x : logits) x = noise(rng);
      for (uint32_t l = 0; l < config.num_layers; ++l) (void)(*worker)->Route(l, logits, &step);
    }
    (*worker)->TakeReport(&report);
    reports.push_back(report);
  }
  v1::WorkerReport wire;
  ToProto(reports.back(), &wire);
  size_t i = 0;
  for (auto _ : state) {
    // Fold reports of the same worker in turn (their residency changes are
    // skipped: they were taken in sequence once).
    RoutingReport& r = reports[i++ % reports.size()];
    r.residency_in_sync = true;
    benchmark::DoNotOptimize((*service)->FoldReport("w", r));
  }
  // What goes down after a report: changed layers, 64 KiB at the most.
  v1::FleetUpdate update;
  uint64_t update_bytes = 0;
  for (uint32_t l = 0; l < config.num_layers && update_bytes < (64 << 10); ++l) {
    v1::LayerLearnedState* layer = update.add_layers();
    ToProto((*service)->ExportLayerState(l, kDefaultSuccessorsPerRow), layer);
    update_bytes += layer->ByteSizeLong();
  }
  state.counters["report_bytes"] = static_cast<double>(wire.ByteSizeLong());
  state.counters["update_bytes"] = static_cast<double>(update.ByteSizeLong());
  state.counters["full_state_bytes_per_layer"] =
      static_cast<double>(update.ByteSizeLong()) / update.layers_size();
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_FoldReport)->Args({32, 8, 2, 1})->Args({58, 256, 8, 1})->Args({58, 256, 8, 64});

}  // namespace
}  // namespace moe_router

BENCHMARK_MAIN();
