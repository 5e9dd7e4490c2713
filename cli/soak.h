#ifndef MOE_ROUTER_CLI_SOAK_H_
#define MOE_ROUTER_CLI_SOAK_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace moe_router {

struct SoakOptions {
  std::string model;
  /// Routing workers, each on all layers with a worker cache of its own.
  uint32_t workers = 4;
  uint64_t cache_bytes = 0;  // per worker cache (0: a quarter of the model's budget)
  uint32_t batch_tokens = 16;
  absl::Duration duration = absl::Seconds(60);
  /// Resident memory is judged after this (allocators and caches fill up
  /// first).
  absl::Duration warmup = absl::Seconds(10);
  /// Register and unregister a scratch model over and over (needs model
  /// management on the server).
  bool churn = true;
  /// The server's /metrics ("host", port), for its resident memory; port 0
  /// reads no metrics.
  std::string metrics_host = "127.0.0.1";
  int metrics_port = 0;
  uint64_t seed = 1;
};

struct SoakReport {
  absl::Duration elapsed;
  /// Calls by kind ("route", "prefetch", "fetch", "register", ...).
  std::map<std::string, uint64_t> calls;
  /// Calls that failed other than by deadline, with the first few reasons.
  uint64_t failures = 0;
  uint64_t deadline_exceeded = 0;
  std::vector<std::string> failure_samples;
  /// Invariants seen broken by the checker (budgets, queues).
  std::vector<std::string> violations;
  uint64_t checks = 0;
  uint64_t max_queue_depth = 0;
  /// The server's resident memory (from /metrics): at the end of the warm-up
  /// and at the end, and the least-squares slope after the warm-up.
  double rss_after_warmup_mib = 0;
  double rss_end_mib = 0;
  double rss_slope_mib_per_minute = 0;
  uint64_t rss_samples = 0;

  bool ok() const { return failures == 0 && violations.empty(); }
  std::string ToString() const;
};

/// Drives a server hard for `duration` and checks it all along: routing from
/// many workers on all layers, with prefetch and FetchExpert, and
/// register/unregister churn; GetModelStats and /metrics every half second:
/// resident plus loading bytes within every budget (the server's cache and
/// each worker cache), the paging queue bounded by the experts there are,
/// resident memory flat after warm-up. `progress` is called about every
/// second with the time so far.
absl::StatusOr<SoakReport> RunSoak(Client& client, const SoakOptions& options,
                                   const std::function<void(absl::Duration)>& progress = nullptr);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_SOAK_H_
