#ifndef MOE_ROUTER_SERVER_MODEL_REGISTRY_H_
#define MOE_ROUTER_SERVER_MODEL_REGISTRY_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/model_engine.h"
#include "core/engine/model_footprint.h"
#include "moe_router/v1/moe_router.pb.h"
#include "proto/grpc_status.h"

namespace moe_router {

/// A hosted model: its spec, engine, the memory reserved for it, and
/// RouteTokens calls by status code.
struct HostedModel {
  v1::ModelSpec spec;
  /// The spec as workers route by it: the checkpoint's choice biases filled
  /// in where the spec left them to it (WithCheckpointBias).
  v1::ModelSpec worker_spec;
  std::shared_ptr<ModelEngine> engine;
  ModelFootprint footprint;
  std::unique_ptr<std::atomic<uint64_t>[]> route_requests =
      std::make_unique<std::atomic<uint64_t>[]>(kStatusCodeCount);
};

struct RegistryOptions {
  /// With a state directory, a registered model starts from its saved
  /// learned state (`<dir>/<model>.state.json`) if one is there, and
  /// SaveStates() writes them. A torn or corrupt state file is logged to
  /// stderr and ignored. Checksum manifests computed for checkpoints that
  /// publish none are kept in `<dir>/manifests`.
  std::string state_dir = {};
  /// Paging worker threads per model.
  uint32_t paging_threads = 2;
  /// Per model: open worker caches, and how long an idle one lives.
  WorkerCacheLimits worker_caches = {};
  /// What all models together may hold (see ModelFootprint); a
  /// registration past it is RESOURCE_EXHAUSTED.
  uint64_t memory_limit_bytes = ~uint64_t{0};
  uint32_t max_models = 64;
  /// This replica's name (the pod's), in ModelInfo and in "no model"
  /// errors: through a proxy a call reaches one replica, and a model
  /// registered there alone is missing on the others.
  std::string replica = {};
};

/// The models a server hosts, by name. Lookups take a shared reader lock
/// only long enough to copy a shared_ptr, so routing different models (or
/// layers) never serialises on it. Every model's footprint is reserved
/// against the memory limit before anything of it is allocated.
class ModelRegistry {
 public:
  explicit ModelRegistry(RegistryOptions options = {}) : options_(std::move(options)) {}
  /// Writes every model's learned state atomically; returns the first error.
  /// A failed write leaves that model's previous snapshot as it was.
  absl::Status SaveStates() const;
  /// Snapshots (SaveStates calls with a state directory) that failed, and
  /// when the last one succeeded (seconds since the epoch, 0: never).
  uint64_t snapshot_failures() const { return snapshot_failures_.load(); }
  double last_snapshot_seconds() const { return last_snapshot_seconds_.load(); }

  /// Registers a model. Registering the same spec again is OK (created =
  /// false); another spec under a taken name is ALREADY_EXISTS. Bad specs
  /// are INVALID_ARGUMENT naming the field; a model past the memory limit
  /// or the model limit is RESOURCE_EXHAUSTED naming the numbers. Neither
  /// changes anything.
  /// `interrupted` is asked between the slow steps (indexing a checkpoint):
  /// a status other than OK (the call's deadline or cancellation) abandons
  /// the registration with it.
  absl::StatusOr<bool> Register(const v1::ModelSpec& spec,
                                const std::function<absl::Status()>& interrupted = nullptr);
  absl::Status Unregister(const std::string& name);
  /// NOT_FOUND for an unknown name, INVALID_ARGUMENT for an empty one.
  absl::StatusOr<std::shared_ptr<const HostedModel>> Find(const std::string& name) const;
  std::vector<std::shared_ptr<const HostedModel>> List() const;
  /// Closes every model's worker caches idle past the timeout; how many.
  size_t CloseIdleCaches(absl::Time now) const;
  const WorkerCacheLimits& worker_cache_limits() const { return options_.worker_caches; }
  uint64_t memory_limit_bytes() const { return options_.memory_limit_bytes; }
  const std::string& replica() const { return options_.replica; }
  /// The footprints of the hosted models and of registrations under way.
  uint64_t committed_bytes() const;
  /// RouteTokens calls naming no hosted model, by status code (one label
  /// value for all of them keeps metric labels bounded).
  std::atomic<uint64_t>* unknown_route_requests() const { return unknown_route_requests_.get(); }

 private:
  // NOT_FOUND for `name`, naming this replica when it has a name.
  absl::Status NoSuchModel(const std::string& name) const;
  /// Where a model's state lives: never outside the state directory,
  /// whatever its name.
  absl::StatusOr<std::string> StatePath(const std::string& model) const;
  /// Reserves a registration's footprint and model slot, or says why not.
  absl::Status Reserve(const std::string& name, const ModelFootprint& footprint);
  absl::StatusOr<std::shared_ptr<HostedModel>> Build(
      const v1::ModelSpec& spec, const v1::ModelSpec& worker_spec, const ModelConfig& config,
      const std::function<absl::Status()>& interrupted);

  const RegistryOptions options_;
  std::unique_ptr<std::atomic<uint64_t>[]> unknown_route_requests_ =
      std::make_unique<std::atomic<uint64_t>[]>(kStatusCodeCount);
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const HostedModel>> models_ ABSL_GUARDED_BY(mu_);
  uint64_t committed_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t registrations_under_way_ ABSL_GUARDED_BY(mu_) = 0;
  mutable std::atomic<uint64_t> snapshot_failures_{0};
  mutable std::atomic<double> last_snapshot_seconds_{0};
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_MODEL_REGISTRY_H_
