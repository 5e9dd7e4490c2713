// Replay cost per access of each eviction policy alone (the CLI always adds
// lru, lfu and belady, which hides one policy's cost): one policy, one
// thread, a global budget of a share of the experts, on calibrated
// workloads of 8 to 256 experts.
//   moe_replay_bench --benchmark_filter='BM_Replay/vllm_lfru'
#include <benchmark/benchmark.h>

#include <map>
#include <string>
#include <vector>

#include "eval/replay.h"
#include "eval/workload.h"

namespace moe_router {
namespace {

struct Workload {
  const char* name;
  const char* preset;
  uint32_t layers = 0;  // 0: the preset's
  uint32_t experts = 0;
  uint32_t top_k = 0;
  uint32_t tokens;  // per sequence, two sequences
};

constexpr Workload kWorkloads[] = {
    {"e8", "mixtral", 0, 0, 0, 256},
    {"e60", "qwen3-30b-a3b", 24, 60, 4, 128},
    {"e128", "qwen3-30b-a3b", 0, 0, 0, 64},
    {"e256", "deepseek-v3", 0, 0, 0, 48},
};

const RoutingTrace& TraceOf(const Workload& w) {
  static auto* traces = new std::map<std::string, RoutingTrace>();
  auto it = traces->find(w.name);
  if (it != traces->end()) return it->second;
  WorkloadShape shape = GetWorkloadPreset(w.preset)->shape;
  if (w.layers != 0) shape.num_layers = w.layers;
  if (w.experts != 0) shape.num_experts = w.experts;
  if (w.top_k != 0) shape.top_k = w.top_k;
  return traces->emplace(w.name, GenerateTrace(shape, 2, w.tokens, /*seed=*/1)).first->second;
}

void BM_Replay(benchmark::State& state, std::string policy, const Workload& w, uint32_t percent) {
  const RoutingTrace& trace = TraceOf(w);
  ReplayOptions options;
  options.mode = BudgetMode::kGlobalSlots;
  options.amount = uint64_t{trace.num_layers} * trace.num_experts * percent / 100;
  options.policies = {policy};
  uint64_t accesses = 0;
  double hit_rate = 0;
  for (auto _ : state) {
    auto report = Replay(trace, options);
    if (!report.ok()) {
      state.SkipWithError(std::string(report.status().message()).c_str());
      return;
    }
    accesses += report->accesses;
    hit_rate = report->rows[0].hit_rate;
  }
  state.SetItemsProcessed(static_cast<int64_t>(accesses));
  state.counters["per_access"] = benchmark::Counter(
      static_cast<double>(accesses), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["hit_rate"] = hit_rate;
}

const bool kRegistered = [] {
  for (const std::string& policy : ReplayPolicyNames()) {
    for (const Workload& w : kWorkloads) {
      for (uint32_t percent : {10u, 50u}) {
        benchmark::RegisterBenchmark(
            ("BM_Replay/" + policy + "/" + w.name + "/" + std::to_string(percent) + "%").c_str(),
            BM_Replay, policy, w, percent)
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  return true;
}();

}  // namespace
}  // namespace moe_router

BENCHMARK_MAIN();
