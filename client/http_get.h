#ifndef MOE_ROUTER_CLIENT_HTTP_GET_H_
#define MOE_ROUTER_CLIENT_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace moe_router {

/// GET http://host:port/path (HTTP/1.0, IPv4 or a name), the body of a 200
/// answer: enough to read a Prometheus /metrics page. A server that does
/// not answer within `timeout` is UNAVAILABLE.
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(30));

/// The value of an unlabelled sample `name` in a Prometheus text page, or
/// the sum over its labelled samples; NOT_FOUND when it has none.
absl::StatusOr<double> MetricValue(const std::string& page, const std::string& name);

}  // namespace moe_router

#endif  // MOE_ROUTER_CLIENT_HTTP_GET_H_
