#include "cli/load_generator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace moe_router {
namespace {

// Distinct batches each worker cycles through, so the server sees varied
// logits without the generator paying for random numbers per call.
constexpr int kBatchesPerWorker = 16;

// One worker's results; merged after the run.
struct WorkerResult {
  std::vector<double> latencies_us;
  std::chrono::steady_clock::time_point last_done;
  uint64_t warmup_calls = 0;
  std::map<std::string, uint64_t> errors;
  std::string first_error;
};

using Clock = std::chrono::steady_clock;

// The window calls are measured in: after the warm-up, for the duration.
struct Window {
  Clock::time_point measure_from;
  Clock::time_point stop;
};

// Worker `w`'s closed loop: route one batch after another (over a stream,
// or unary calls) until `window.stop`, timing the calls inside the window.
// A request the server can never accept sets `failed_hard`, which ends
// every worker.
void RunWorker(Client& client, const LoadOptions& options, const v1::ModelSpec& spec, uint32_t w,
               const Window& window, std::atomic<bool>& failed_hard, WorkerResult& result) {
  std::mt19937_64 rng(options.seed * 1000003 + w);
  std::normal_distribution<float> noise(0.0f, 2.0f);
  std::vector<std::vector<float>> batches(kBatchesPerWorker);
  for (auto& b : batches) {
    b.resize(size_t{options.batch_tokens} * spec.num_experts());
    for (float& x : b) x = noise(rng);
  }
  std::string cache;
  if (options.cache_bytes > 0) {
    cache = absl::StrCat(options.cache_prefix, w);
    if (absl::Status s = client.OpenCache(options.model, cache, options.cache_bytes).status();
        !s.ok()) {
      result.first_error = s.ToString();
      ++result.errors[absl::StatusCodeToString(s.code())];
      failed_hard = true;
      return;
    }
  }
  std::unique_ptr<RouteStream> stream =
      options.stream ? client.OpenRouteStream(options.model) : nullptr;
  // Workers start on different layers, as workers of a pipeline would.
  uint64_t call = w;
  for (Clock::time_point now = Clock::now(); now < window.stop && !failed_hard; ++call) {
    const uint32_t layer = static_cast<uint32_t>(call % spec.num_layers());
    const std::vector<float>& logits = batches[call % kBatchesPerWorker];
    auto routed = stream != nullptr ? stream->Route(options.model, layer, logits, cache)
                                    : client.Route(options.model, layer, logits, cache);
    const Clock::time_point done = Clock::now();
    if (!routed.ok()) {
      ++result.errors[absl::StatusCodeToString(routed.status().code())];
      if (result.first_error.empty()) result.first_error = routed.status().ToString();
      // A stream ends with its first error; unary calls go on.
      if (stream != nullptr) stream = client.OpenRouteStream(options.model);
      // Bad requests will never succeed: stop rather than spin.
      if (absl::IsInvalidArgument(routed.status()) || absl::IsNotFound(routed.status())) {
        failed_hard = true;
      }
    } else if (now >= window.measure_from) {
      result.latencies_us.push_back(std::chrono::duration<double, std::micro>(done - now).count());
    } else {
      ++result.warmup_calls;
    }
    now = done;
  }
  result.last_done = Clock::now();
  if (stream != nullptr) stream->Finish().IgnoreError();
  if (!cache.empty()) client.CloseCache(options.model, cache).IgnoreError();
}

// The workers' results as one report: counts, percentiles, and the rate
// over the window, which ends when the last measured call does (calls
// started before the stop finish after it).
LoadReport Merge(std::vector<WorkerResult>& results, const LoadOptions& options,
                 const Window& window) {
  LoadReport report;
  std::vector<double> all;
  Clock::time_point window_end = window.measure_from;
  for (WorkerResult& r : results) {
    window_end = std::max(window_end, r.last_done);
    all.insert(all.end(), r.latencies_us.begin(), r.latencies_us.end());
    report.warmup_calls += r.warmup_calls;
    for (const auto& [code, n] : r.errors) report.errors[code] += n;
    if (report.first_error.empty()) report.first_error = r.first_error;
  }
  std::sort(all.begin(), all.end());
  report.calls = all.size();
  report.tokens = report.calls * options.batch_tokens;
  report.seconds = std::chrono::duration<double>(window_end - window.measure_from).count();
  report.p50_us = Percentile(all, 0.50);
  report.p99_us = Percentile(all, 0.99);
  report.p999_us = Percentile(all, 0.999);
  report.max_us = all.empty() ? 0 : all.back();
  return report;
}

}  // namespace

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()));
  return sorted[i];
}

absl::StatusOr<LoadReport> GenerateLoad(
    Client& client, const LoadOptions& options,
    const std::function<void(absl::Duration, absl::Duration)>& progress) {
  if (options.concurrency == 0) return absl::InvalidArgumentError("concurrency must be >= 1");
  if (options.batch_tokens == 0) return absl::InvalidArgumentError("batch size must be >= 1");
  if (options.duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("duration must be positive");
  }
  auto spec = client.FindModel(options.model);
  if (!spec.ok()) return spec.status();

  const Clock::time_point start = Clock::now();
  Window window;
  window.measure_from = start + absl::ToChronoNanoseconds(options.warmup);
  window.stop = window.measure_from + absl::ToChronoNanoseconds(options.duration);
  std::atomic<bool> failed_hard{false};
  std::vector<WorkerResult> results(options.concurrency);
  std::vector<std::thread> workers;
  for (uint32_t w = 0; w < options.concurrency; ++w) {
    workers.emplace_back(
        [&, w] { RunWorker(client, options, *spec, w, window, failed_hard, results[w]); });
  }
  const absl::Duration total = options.warmup + options.duration;
  for (;;) {
    const absl::Duration elapsed = absl::FromChrono(Clock::now() - start);
    progress(std::min(elapsed, total), total);
    if (elapsed >= total || failed_hard) break;
    absl::SleepFor(std::min(absl::Milliseconds(100), total - elapsed));
  }
  for (std::thread& t : workers) t.join();
  LoadReport report = Merge(results, options, window);
  if (failed_hard) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the server refused the load: %s", report.first_error));
  }
  return report;
}

}  // namespace moe_router
