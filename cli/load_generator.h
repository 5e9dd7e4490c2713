#ifndef MOE_ROUTER_CLI_LOAD_GENERATOR_H_
#define MOE_ROUTER_CLI_LOAD_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "core/engine/defaults.h"

namespace moe_router {

/// The q-quantile of ascending `sorted` (0 when empty).
double Percentile(const std::vector<double>& sorted, double q);

struct LoadOptions {
  std::string model = kDefaultModelName;
  /// Closed loop: this many workers, each with one call outstanding.
  uint32_t concurrency = 8;
  /// Tokens per request.
  uint32_t batch_tokens = 64;
  absl::Duration duration = absl::Seconds(10);
  /// Calls made before measuring starts (connections, caches, allocators).
  absl::Duration warmup = absl::Seconds(1);
  /// One RouteStream per worker instead of unary RouteTokens.
  bool stream = false;
  uint64_t seed = 1;
  /// Each worker routes against a worker cache of its own of this many
  /// bytes (named cache_prefix + index, closed at the end); 0: none.
  uint64_t cache_bytes = 0;
  std::string cache_prefix = "loadgen-";
};

struct LoadReport {
  uint64_t calls = 0;   // measured calls
  uint64_t tokens = 0;  // measured tokens
  uint64_t warmup_calls = 0;
  double seconds = 0;  // measured wall time
  double p50_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
  /// Failed calls by status code name, measured or not.
  std::map<std::string, uint64_t> errors;
  std::string first_error;
  double TokensPerSecond() const { return seconds > 0 ? tokens / seconds : 0; }
  double CallsPerSecond() const { return seconds > 0 ? calls / seconds : 0; }
};

/// Drives RouteTokens (or RouteStream) of `options.model` with random gate
/// logits from `concurrency` workers, each routing the model's layers in
/// turn, and measures per-call latency. `progress(elapsed, total)` is called
/// about every 100 ms from the calling thread.
absl::StatusOr<LoadReport> GenerateLoad(
    Client& client, const LoadOptions& options,
    const std::function<void(absl::Duration, absl::Duration)>& progress);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_LOAD_GENERATOR_H_
