#include "proto/grpc_status.h"

#include "absl/strings/str_format.h"

namespace moe_router {
namespace {

// Every code has the same number on both sides, so a cast converts it.
#define MOE_SAME_CODE(absl_code, grpc_code)                      \
  static_assert(static_cast<int>(absl::StatusCode::absl_code) == \
                static_cast<int>(grpc::StatusCode::grpc_code))
MOE_SAME_CODE(kOk, OK);
MOE_SAME_CODE(kCancelled, CANCELLED);
MOE_SAME_CODE(kUnknown, UNKNOWN);
MOE_SAME_CODE(kInvalidArgument, INVALID_ARGUMENT);
MOE_SAME_CODE(kDeadlineExceeded, DEADLINE_EXCEEDED);
MOE_SAME_CODE(kNotFound, NOT_FOUND);
MOE_SAME_CODE(kAlreadyExists, ALREADY_EXISTS);
MOE_SAME_CODE(kPermissionDenied, PERMISSION_DENIED);
MOE_SAME_CODE(kResourceExhausted, RESOURCE_EXHAUSTED);
MOE_SAME_CODE(kFailedPrecondition, FAILED_PRECONDITION);
MOE_SAME_CODE(kAborted, ABORTED);
MOE_SAME_CODE(kOutOfRange, OUT_OF_RANGE);
MOE_SAME_CODE(kUnimplemented, UNIMPLEMENTED);
MOE_SAME_CODE(kInternal, INTERNAL);
MOE_SAME_CODE(kUnavailable, UNAVAILABLE);
MOE_SAME_CODE(kDataLoss, DATA_LOSS);
MOE_SAME_CODE(kUnauthenticated, UNAUTHENTICATED);
#undef MOE_SAME_CODE

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  if (code <= 0 || code >= kStatusCodeCount) {
    return absl::UnknownError(absl::StrFormat("status code %d: %s", code, status.error_message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.error_message());
}

std::string StatusCodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

}  // namespace moe_router
