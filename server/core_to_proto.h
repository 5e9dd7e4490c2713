#ifndef MOE_ROUTER_SERVER_CORE_TO_PROTO_H_
#define MOE_ROUTER_SERVER_CORE_TO_PROTO_H_

#include "core/engine/model_engine.h"
#include "core/store/expert_store.h"
#include "moe_router/v1/moe_router.pb.h"

namespace moe_router {

// The core's results, turned into what goes out over the API. The other
// direction is proto_to_core.h.

/// A routed batch and the page-ins it queued.
void ToProto(const RouteOutcome& routed, v1::RouteTokensResponse* out);
void ToProto(const PrefetchOutcome& outcome, v1::PrefetchResponse* out);
void ToProto(const ModelStats& stats, v1::ModelStats* out);
/// One worker cache's figures, in the fields GetModelStats documents.
void ToProto(const std::string& model, const WorkerCacheStats& stats, v1::ModelStats* out);
void ToProto(const std::string& model, const WorkerCacheInfo& info, v1::CacheInfo* out);
/// The description a FetchExpert stream opens with (no data).
void ToProtoHeader(const ExpertData& expert, v1::ExpertChunk* out);

/// The embedded default: mixtral-8x7b on a synthetic store, half budgeted.
v1::ModelSpec DefaultModelSpec();

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_CORE_TO_PROTO_H_
