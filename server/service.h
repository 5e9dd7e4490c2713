#ifndef MOE_ROUTER_SERVER_SERVICE_H_
#define MOE_ROUTER_SERVER_SERVICE_H_

#include <cstdint>

#include "moe_router/v1/moe_router.grpc.pb.h"
#include "server/admin_access.h"
#include "server/blocking_call_pool.h"
#include "server/call_gate.h"
#include "server/learn_reactor.h"
#include "server/model_registry.h"

namespace moe_router {

struct ServiceLimits {
  /// Tokens in one RouteTokens request; more is RESOURCE_EXHAUSTED.
  uint32_t max_tokens_per_request = 65536;
  /// How each Learn stream pushes fleet state down.
  LearnStreamOptions learn_stream = {};
};

/// RegisterModel and UnregisterModel calls waiting for a thread; more are
/// RESOURCE_EXHAUSTED.
inline constexpr size_t kMaxQueuedBlockingCalls = 64;

/// Largest data payload of one FetchExpert chunk.
inline constexpr uint64_t kExpertChunkBytes = 1 << 20;

/// The MoeRouter gRPC service: thin handlers over the core engine, with
/// absl::Status turned into grpc::Status at the edge. Unary handlers run
/// inline on the callback threads: routing, prefetch and stats are
/// microseconds of CPU and never wait on I/O (paging happens on the engine's
/// pool; FetchExpert completes from it). RegisterModel and UnregisterModel
/// block (registering opens the store and may hash a checkpoint,
/// unregistering waits for the model's paging workers), so they run on
/// threads of their own, and a registration stops at the call's deadline or
/// cancellation.
class MoeRouterService final : public v1::MoeRouter::CallbackService {
 public:
  /// `admin` decides who may register and unregister models; every call
  /// passes `gate`, which a drain closes.
  MoeRouterService(ModelRegistry* registry, const AdminAccess* admin, CallGate* gate,
                   const ServiceLimits& limits)
      : registry_(registry), admin_(admin), gate_(gate), limits_(limits) {}

  grpc::ServerUnaryReactor* RouteTokens(grpc::CallbackServerContext* context,
                                        const v1::RouteTokensRequest* request,
                                        v1::RouteTokensResponse* response) override;
  grpc::ServerUnaryReactor* Prefetch(grpc::CallbackServerContext* context,
                                     const v1::PrefetchRequest* request,
                                     v1::PrefetchResponse* response) override;
  grpc::ServerUnaryReactor* RegisterModel(grpc::CallbackServerContext* context,
                                          const v1::RegisterModelRequest* request,
                                          v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* UnregisterModel(grpc::CallbackServerContext* context,
                                            const v1::UnregisterModelRequest* request,
                                            v1::UnregisterModelResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModelStats(grpc::CallbackServerContext* context,
                                          const v1::GetModelStatsRequest* request,
                                          v1::ModelStats* response) override;
  grpc::ServerBidiReactor<v1::RouteTokensRequest, v1::RouteTokensResponse>* RouteStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<v1::ExpertChunk>* FetchExpert(
      grpc::CallbackServerContext* context, const v1::FetchExpertRequest* request) override;
  grpc::ServerUnaryReactor* OpenCache(grpc::CallbackServerContext* context,
                                      const v1::OpenCacheRequest* request,
                                      v1::CacheInfo* response) override;
  grpc::ServerUnaryReactor* CloseCache(grpc::CallbackServerContext* context,
                                       const v1::CloseCacheRequest* request,
                                       v1::CloseCacheResponse* response) override;
  grpc::ServerUnaryReactor* SyncCache(grpc::CallbackServerContext* context,
                                      const v1::SyncCacheRequest* request,
                                      v1::CacheInfo* response) override;
  grpc::ServerBidiReactor<v1::WorkerReport, v1::FleetUpdate>* Learn(
      grpc::CallbackServerContext* context) override;

 private:
  absl::Status Route(const v1::RouteTokensRequest& request, v1::RouteTokensResponse* response);
  absl::Status RouteModel(const HostedModel& model, const v1::RouteTokensRequest& request,
                          v1::RouteTokensResponse* response);
  absl::Status Stats(const v1::GetModelStatsRequest& request, v1::ModelStats* response);

  ModelRegistry* const registry_;
  const AdminAccess* const admin_;
  CallGate* const gate_;
  const ServiceLimits limits_;
  BlockingCallPool blocking_calls_{/*threads=*/2, kMaxQueuedBlockingCalls};
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_SERVICE_H_
