#ifndef MOE_ROUTER_SERVER_STATUS_UTIL_H_
#define MOE_ROUTER_SERVER_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace moe_router {

/// The one place absl::Status becomes grpc::Status (codes agree 1:1).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_STATUS_UTIL_H_
