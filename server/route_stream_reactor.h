#ifndef MOE_ROUTER_SERVER_ROUTE_STREAM_REACTOR_H_
#define MOE_ROUTER_SERVER_ROUTE_STREAM_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/status/status.h"
#include "moe_router/v1/moe_router.grpc.pb.h"
#include "proto/grpc_status.h"

namespace moe_router {

/// One RouteStream call on the callback API: read a request, answer it with
/// `respond(request, &response)` (an absl::Status), write the answer, read
/// the next; so answers come in request order. An error from `respond` ends
/// the stream with that status (the requests before it were answered).
/// Header-only, so the null service of the benchmarks shares it without
/// linking the engine.
///
///   return new RouteStreamReactor([this](const auto& request, auto* response) {
///     return Route(request, response);
///   });
template <typename Respond>
class RouteStreamReactor final
    : public grpc::ServerBidiReactor<v1::RouteTokensRequest, v1::RouteTokensResponse> {
 public:
  explicit RouteStreamReactor(Respond respond) : respond_(std::move(respond)) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client finished sending
      Finish(grpc::Status::OK);
      return;
    }
    response_.Clear();
    if (absl::Status s = respond_(request_, &response_); !s.ok()) {
      Finish(ToGrpcStatus(s));
      return;
    }
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the client went away"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  Respond respond_;
  v1::RouteTokensRequest request_;
  v1::RouteTokensResponse response_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_ROUTE_STREAM_REACTOR_H_
