#include "cli/worker_play.h"

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/server_replay.h"

namespace moe_router {
namespace {

// One worker over its runs; errors name the run, token and layer.
absl::Status PlayOne(Client& client, const WorkerPlayOptions& options, WorkerPlayResult& result,
                     std::atomic<uint64_t>& steps_done, const std::function<void()>& step_done) {
  std::unique_ptr<WorkerCache> cache;
  if (!options.shared_server_cache) {
    absl::StatusOr<std::unique_ptr<ExpertSource>> source =
        options.make_source ? options.make_source()
                            : absl::StatusOr<std::unique_ptr<ExpertSource>>(
                                  ServerExpertSource(client, options.model));
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
  const RoutingTrace& trace = result.part;
  std::vector<float> scratch;
  WorkerCacheReport shared;  // without a cache: the server cache's residency
  for (const RoutingTrace::Run& run : trace.runs) {
    for (size_t i = 0; i < run.steps.size(); ++i) {
      const uint32_t layer = run.steps[i].layer;
      const absl::Span<const float> logits = StepLogitsForServer(trace, run, i, scratch);
      absl::Status status;
      if (cache != nullptr) {
        auto routed = cache->Route(layer, logits);
        for (int c = 0; routed.ok() && c < routed->experts_size(); ++c) {
          status.Update(cache->Get({layer, routed->experts(c)}).status());
        }
        status.Update(routed.status());
      } else {
        const auto start = std::chrono::steady_clock::now();
        auto routed = client.Route(options.model, layer, logits);
        shared.route_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (routed.ok()) {
          ++shared.route_calls;
          shared.tokens += routed->tokens();
          shared.accesses += routed->resident_size();
          for (bool r : routed->resident()) shared.hits += r;
        }
        status = routed.status();
      }
      if (!status.ok()) {
        return absl::Status(status.code(),
                            absl::StrFormat("%s: run %s, token %u, layer %u: %s", result.cache,
                                            run.name, run.steps[i].token, layer, status.message()));
      }
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
      statuses[w] = PlayOne(client, options, results[w], done, [&] {
        if (progress && w == 0) progress(done.load(std::memory_order_relaxed), total);
      });
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
