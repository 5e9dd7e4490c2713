#ifndef MOE_ROUTER_PROTO_GRPC_STATUS_H_
#define MOE_ROUTER_PROTO_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace moe_router {

/// Canonical status codes run from OK (0) to UNAUTHENTICATED, the highest;
/// arrays indexed by code have this many entries.
inline constexpr int kStatusCodeCount = static_cast<int>(absl::StatusCode::kUnauthenticated) + 1;

/// Trailing metadata on a call a draining replica refused before doing any
/// of it, so sending it again is safe (through a proxy it reaches another
/// replica); the clients retry such calls.
inline constexpr char kRefusedTrailer[] = "x-moe-refused";

/// The one place absl::Status becomes grpc::Status: the server's handlers
/// finish with it. Codes agree one to one; the message is kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

/// The one place grpc::Status becomes absl::Status: the client returns it.
/// A code outside the canonical range becomes UNKNOWN, its number kept in
/// the message.
absl::Status FromGrpcStatus(const grpc::Status& status);

/// "OK", "INVALID_ARGUMENT", ... (Abseil's names, which are gRPC's), for
/// metric labels.
std::string StatusCodeName(absl::StatusCode code);

}  // namespace moe_router

#endif  // MOE_ROUTER_PROTO_GRPC_STATUS_H_
