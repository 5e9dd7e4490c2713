#ifndef MOE_ROUTER_SERVER_ROUTE_STREAM_REACTOR_H_
#define MOE_ROUTER_SERVER_ROUTE_STREAM_REACTOR_H_

#include <utility>

#include "moe_router/v1/moe_router.grpc.pb.h"
#include "server/answering_stream.h"

namespace moe_router {

/// One RouteStream call: each request answered with `respond(request,
/// &response)` (an absl::Status), in request order. Header-only, so the null
/// service of the benchmarks shares it without linking the engine (with a
/// null gate).
///
///   return new RouteStreamReactor(&gate, [this](const auto& request, auto* response) {
///     return Route(request, response);
///   });
template <typename Respond>
class RouteStreamReactor final
    : public AnsweringStream<v1::RouteTokensRequest, v1::RouteTokensResponse> {
 public:
  RouteStreamReactor(CallGate* gate, Respond respond)
      : AnsweringStream(gate), respond_(std::move(respond)) {
    Start();
  }

 private:
  absl::Status Answer(const v1::RouteTokensRequest& request,
                      v1::RouteTokensResponse* response) override {
    return respond_(request, response);
  }

  Respond respond_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_ROUTE_STREAM_REACTOR_H_
