#ifndef MOE_ROUTER_PROTO_CONTROL_STREAM_PROTO_H_
#define MOE_ROUTER_PROTO_CONTROL_STREAM_PROTO_H_

#include <memory>

#include "absl/status/statusor.h"
#include "core/cache/worker_cache_set.h"
#include "core/model/learned_state.h"
#include "moe_router/v1/moe_router.pb.h"

namespace moe_router {

// The Learn stream's messages and the core's types, both ways: the worker
// side (client/) sends reports and reads fleet state, the service side
// (server/) the reverse.

/// A report for the wire: only the layers that routed anything.
void ToProto(const RoutingReport& report, v1::WorkerReport* out);
/// A report from the wire, one entry per model layer. Errors name the
/// field; the values themselves are checked by ValidateReport.
absl::StatusOr<RoutingReport> ReportFromProto(const v1::WorkerReport& report, uint32_t num_layers,
                                              uint32_t num_experts);

void ToProto(const LayerLearnedState& state, v1::LayerLearnedState* out);
LayerLearnedState StateFromProto(const v1::LayerLearnedState& state);

void ToProto(const ExpertSizeTable& sizes, v1::FleetUpdate* out);
absl::StatusOr<std::shared_ptr<const ExpertSizeTable>> SizesFromProto(const v1::FleetUpdate& update,
                                                                      uint32_t num_layers,
                                                                      uint32_t num_experts);

}  // namespace moe_router

#endif  // MOE_ROUTER_PROTO_CONTROL_STREAM_PROTO_H_
