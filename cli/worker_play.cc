#include "cli/worker_play.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/server_replay.h"

namespace moe_router {
namespace {

absl::Status StepError(const WorkerPlayResult& result, const RoutingTrace::Run& run, size_t i,
                       const absl::Status& status) {
  return absl::Status(status.code(),
                      absl::StrFormat("%s: run %s, token %u, layer %u: %s", result.cache, run.name,
                                      run.steps[i].token, run.steps[i].layer, status.message()));
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::StatusOr<std::unique_ptr<ExpertSource>> MakeSource(Client& client,
                                                         const WorkerPlayOptions& options,
                                                         const std::string& cache) {
  if (options.make_source) return options.make_source();
  return ServerExpertSource(client, options.model, cache);
}

// One worker routing remotely (or, shared, against the server's cache);
// errors name the run, token and layer.
absl::Status PlayRemote(Client& client, const WorkerPlayOptions& options, WorkerPlayResult& result,
                        std::atomic<uint64_t>& steps_done, const std::function<void()>& step_done) {
  std::unique_ptr<WorkerCache> cache;
  if (!options.shared_server_cache) {
    auto source = MakeSource(client, options, result.cache);
    if (!source.ok()) return source.status();
    auto opened = WorkerCache::Open(client,
                                    {.model = options.model,
                                     .cache = result.cache,
                                     .budget_bytes = options.cache_bytes,
                                     .eviction_policy = options.eviction_policy},
                                    *std::move(source));
    if (!opened.ok()) return opened.status();
    cache = *std::move(opened);
    result.policy = cache->policy();
  }
  result.mode = "remote";
  const RoutingTrace& trace = result.part;
  std::vector<float> scratch;
  WorkerCacheReport shared;  // without a cache: the server cache's residency
  for (const RoutingTrace::Run& run : trace.runs) {
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const uint32_t layer = run.steps[i].layer;
      const absl::Span<const float> logits = StepLogitsForServer(trace, run, i, scratch);
      absl::Status status;
      if (cache != nullptr) {
        const double before = cache->report().route_seconds;
        auto routed = cache->Route(layer, logits);
        result.route_us.push_back((cache->report().route_seconds - before) * 1e6);
        for (int c = 0; routed.ok() && c < routed->experts_size(); ++c) {
          status.Update(cache->Get({layer, routed->experts(c)}).status());
        }
        status.Update(routed.status());
      } else {
        const auto start = std::chrono::steady_clock::now();
        auto routed = client.Route(options.model, layer, logits);
        const double seconds = SecondsSince(start);
        shared.route_seconds += seconds;
        result.route_us.push_back(seconds * 1e6);
        if (routed.ok()) {
          ++shared.route_calls;
          shared.tokens += routed->tokens();
          shared.accesses += routed->resident_size();
          for (bool r : routed->resident()) shared.hits += r;
        }
        status = routed.status();
      }
      if (!status.ok()) return StepError(result, run, i, status);
      steps_done.fetch_add(1, std::memory_order_relaxed);
      step_done();
    }
  }
  if (cache == nullptr) {
    result.report = shared;
    return absl::OkStatus();
  }
  result.report = cache->report();
  return cache->Close();
}

// One worker routing in this process: the engine decides, this worker's
// bytes follow, the Learn stream reports in the background.
absl::Status PlayInProcess(Client& client, const WorkerPlayOptions& options,
                           WorkerPlayResult& result, std::atomic<uint64_t>& steps_done,
                           const std::function<void()>& step_done) {
  auto source = MakeSource(client, options, result.cache);
  if (!source.ok()) return source.status();
  HeldExperts held(*std::move(source));
  auto worker = InProcessWorker::Start(options.in_process_channel,
                                       {.model = options.model,
                                        .cache = result.cache,
                                        .budget_bytes = options.cache_bytes,
                                        .eviction_policy = options.eviction_policy});
  if (!worker.ok()) return worker.status();
  WorkerEngine& engine = (*worker)->engine();
  result.mode = "in_process";
  result.policy = engine.policy_name();
  WorkerCacheReport& report = result.report;
  const RoutingTrace& trace = result.part;
  std::vector<float> scratch;
  WorkerStep step;
  std::vector<ExpertKey> loads;
  for (const RoutingTrace::Run& run : trace.runs) {
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const uint32_t layer = run.steps[i].layer;
      const absl::Span<const float> logits = StepLogitsForServer(trace, run, i, scratch);
      const auto start = std::chrono::steady_clock::now();
      absl::Status status = engine.Route(layer, logits, &step);
      const double seconds = SecondsSince(start);
      if (!status.ok()) return StepError(result, run, i, status);
      report.route_seconds += seconds;
      result.route_us.push_back(seconds * 1e6);
      ++report.route_calls;
      report.tokens += step.batch.tokens;
      report.accesses += step.batch.experts.size();
      for (uint8_t r : step.batch.resident) report.hits += r;
      loads = step.cache.urgent;
      loads.insert(loads.end(), step.cache.prefetch.begin(), step.cache.prefetch.end());
      status = held.CarryOut(step.cache.evictions, loads, &report);
      if (!status.ok()) {
        // The engine's view must be what the worker really holds.
        engine.Adopt(held.Keys()).IgnoreError();
        return StepError(result, run, i, status);
      }
      for (uint32_t e : step.batch.experts) status.Update(held.Get({layer, e}, &report).status());
      if (!status.ok()) return StepError(result, run, i, status);
      steps_done.fetch_add(1, std::memory_order_relaxed);
      step_done();
    }
  }
  (*worker)->Flush(absl::Seconds(10));
  result.control = (*worker)->control_stats();
  worker->reset();
  return client.CloseCache(options.model, result.cache);
}

}  // namespace

absl::StatusOr<std::vector<WorkerPlayResult>> PlayWorkers(
    Client& client, const RoutingTrace& trace, const WorkerPlayOptions& options,
    const std::function<void(uint64_t, uint64_t)>& progress) {
  if (options.workers == 0) return absl::InvalidArgumentError("--workers must be at least 1");
  if (!options.shared_server_cache && options.cache_bytes == 0) {
    return absl::InvalidArgumentError("each worker needs a cache budget (--cache-bytes)");
  }
  if (absl::Status s = CheckModelFitsTrace(client, options.model, trace); !s.ok()) return s;
  std::vector<WorkerPlayResult> results(options.workers);
  for (uint32_t w = 0; w < options.workers; ++w) {
    results[w].cache = absl::StrCat(options.cache_prefix, w);
    results[w].part = SplitRoundRobin(trace, options.workers, w);
  }
  const uint64_t total = trace.Steps();
  std::atomic<uint64_t> done{0};
  std::vector<absl::Status> statuses(options.workers);
  std::vector<std::thread> threads;
  for (uint32_t w = 0; w < options.workers; ++w) {
    threads.emplace_back([&, w] {
      const auto start = std::chrono::steady_clock::now();
      const auto step_done = [&] {
        if (progress && w == 0) progress(done.load(std::memory_order_relaxed), total);
      };
      statuses[w] = options.in_process_channel != nullptr
                        ? PlayInProcess(client, options, results[w], done, step_done)
                        : PlayRemote(client, options, results[w], done, step_done);
      results[w].seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : statuses) {
    if (!s.ok()) return s;
  }
  if (progress) progress(total, total);
  return results;
}

}  // namespace moe_router
