#ifndef MOE_ROUTER_CLI_WORKER_PLAY_H_
#define MOE_ROUTER_CLI_WORKER_PLAY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/in_process_worker.h"
#include "client/worker_cache.h"
#include "eval/trace.h"

namespace moe_router {

struct WorkerPlayOptions {
  std::string model;
  uint32_t workers = 1;
  uint64_t cache_bytes = 0;
  std::string eviction_policy;  // empty: the model's
  /// Caches are named prefix + worker index.
  std::string cache_prefix = "worker-";
  /// Gives each worker its expert source; null: FetchExpert from the server.
  std::function<absl::StatusOr<std::unique_ptr<ExpertSource>>()> make_source;
  /// Workers route without a cache of their own, against the server's
  /// (what every worker shared before worker caches): no bytes move.
  bool shared_server_cache = false;
  /// Workers route in this process (InProcessWorker over this channel, the
  /// server's), learning over the Learn stream, instead of RouteTokens.
  std::shared_ptr<grpc::Channel> in_process_channel = nullptr;
};

/// One worker's part of a trace and what it saw.
struct WorkerPlayResult {
  std::string cache;
  RoutingTrace part;  // its runs (round-robin)
  WorkerCacheReport report;
  std::string policy;
  std::string mode;              // "remote" or "in_process"
  std::vector<double> route_us;  // each layer call's routing time
  ControlStats control;          // in process: its Learn stream
  double seconds = 0;            // wall time of its whole part
  /// Tokens of its runs through all layers, per second.
  double TokensPerSecond() const { return seconds > 0 ? part.Tokens() / seconds : 0; }
};

/// Plays inference workers over a trace: runs go round-robin to `workers`
/// concurrent workers, each with its own cache on the server (closed at the
/// end) and its own expert bytes, routing every step of its runs in order
/// and getting every chosen expert's bytes. `progress(done, total)` counts
/// steps over all workers, from any thread.
absl::StatusOr<std::vector<WorkerPlayResult>> PlayWorkers(
    Client& client, const RoutingTrace& trace, const WorkerPlayOptions& options,
    const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace moe_router

#endif  // MOE_ROUTER_CLI_WORKER_PLAY_H_
