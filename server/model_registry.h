#ifndef MOE_ROUTER_SERVER_MODEL_REGISTRY_H_
#define MOE_ROUTER_SERVER_MODEL_REGISTRY_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/model_engine.h"
#include "moe_router/v1/moe_router.pb.h"
#include "proto/grpc_status.h"

namespace moe_router {

/// A hosted model: its spec, engine, and RouteTokens calls by status code.
struct HostedModel {
  v1::ModelSpec spec;
  std::shared_ptr<ModelEngine> engine;
  std::unique_ptr<std::atomic<uint64_t>[]> route_requests =
      std::make_unique<std::atomic<uint64_t>[]>(kStatusCodeCount);
};

/// The models a server hosts, by name. Lookups take a shared reader lock
/// only long enough to copy a shared_ptr, so routing different models (or
/// layers) never serialises on it.
class ModelRegistry {
 public:
  /// With a state directory, a registered model starts from its saved
  /// learned state (`<dir>/<model>.state.json`) if one is there, and
  /// SaveStates() writes them. A torn or corrupt state file is logged to
  /// stderr and ignored.
  explicit ModelRegistry(std::string state_dir = "", uint32_t paging_threads = 2,
                         WorkerCacheLimits worker_caches = {})
      : state_dir_(std::move(state_dir)),
        paging_threads_(paging_threads),
        worker_caches_(worker_caches) {}
  /// Writes every model's learned state atomically; returns the first error.
  absl::Status SaveStates() const;

  /// Registers a model. Registering the same spec again is OK (created =
  /// false); another spec under a taken name is ALREADY_EXISTS. Bad specs
  /// are INVALID_ARGUMENT naming the field, and change nothing.
  absl::StatusOr<bool> Register(const v1::ModelSpec& spec);
  absl::Status Unregister(const std::string& name);
  /// NOT_FOUND for an unknown name, INVALID_ARGUMENT for an empty one.
  absl::StatusOr<std::shared_ptr<const HostedModel>> Find(const std::string& name) const;
  std::vector<std::shared_ptr<const HostedModel>> List() const;
  /// Closes every model's worker caches idle past the timeout; how many.
  size_t CloseIdleCaches(absl::Time now) const;
  const WorkerCacheLimits& worker_cache_limits() const { return worker_caches_; }
  /// RouteTokens calls naming no hosted model, by status code (one label
  /// value for all of them keeps metric labels bounded).
  std::atomic<uint64_t>* unknown_route_requests() const { return unknown_route_requests_.get(); }

 private:
  /// Where a model's state lives: never outside state_dir_, whatever its name.
  absl::StatusOr<std::string> StatePath(const std::string& model) const;

  const std::string state_dir_;
  const uint32_t paging_threads_;
  const WorkerCacheLimits worker_caches_;
  std::unique_ptr<std::atomic<uint64_t>[]> unknown_route_requests_ =
      std::make_unique<std::atomic<uint64_t>[]>(kStatusCodeCount);
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const HostedModel>> models_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_MODEL_REGISTRY_H_
