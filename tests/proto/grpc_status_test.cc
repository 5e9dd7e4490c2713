#include "proto/grpc_status.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe_router {
namespace {

// Every canonical code survives the trip through gRPC and back, with its
// message, and has gRPC's name.
TEST(GrpcStatusTest, EveryCodeRoundTripsWithItsMessageAndName) {
  const char* kGrpcNames[] = {"OK",
                              "CANCELLED",
                              "UNKNOWN",
                              "INVALID_ARGUMENT",
                              "DEADLINE_EXCEEDED",
                              "NOT_FOUND",
                              "ALREADY_EXISTS",
                              "PERMISSION_DENIED",
                              "RESOURCE_EXHAUSTED",
                              "FAILED_PRECONDITION",
                              "ABORTED",
                              "OUT_OF_RANGE",
                              "UNIMPLEMENTED",
                              "INTERNAL",
                              "UNAVAILABLE",
                              "DATA_LOSS",
                              "UNAUTHENTICATED"};
  ASSERT_EQ(kStatusCodeCount, 17);
  for (int c = 0; c < kStatusCodeCount; ++c) {
    const auto code = static_cast<absl::StatusCode>(c);
    EXPECT_EQ(StatusCodeName(code), kGrpcNames[c]);
    const absl::Status original(code, c == 0 ? "" : "what went wrong");
    const grpc::Status wire = ToGrpcStatus(original);
    EXPECT_EQ(static_cast<int>(wire.error_code()), c);
    EXPECT_EQ(wire.error_message(), c == 0 ? "" : "what went wrong");
    EXPECT_EQ(FromGrpcStatus(wire), original) << kGrpcNames[c];
  }
}

TEST(GrpcStatusTest, AnUnknownCodeFromTheWireBecomesUnknownKeepingItsNumber) {
  // 20: no code, yet within the range grpc::StatusCode can hold (a larger
  // number would be undefined behaviour in grpc::Status itself).
  const absl::Status s = FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(20), "odd"));
  EXPECT_TRUE(absl::IsUnknown(s));
  EXPECT_EQ(s.message(), "status code 20: odd");
}

}  // namespace
}  // namespace moe_router
