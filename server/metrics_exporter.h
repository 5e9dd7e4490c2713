#ifndef MOE_ROUTER_SERVER_METRICS_EXPORTER_H_
#define MOE_ROUTER_SERVER_METRICS_EXPORTER_H_

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/model_registry.h"

namespace moe_router {

/// Every model's metrics as Prometheus families, read from the core's
/// counters at scrape time (nothing is added on the routing path). Names in
/// base units, `_total` only on counters, labels bounded: model, priority,
/// code.
std::vector<prometheus::MetricFamily> CollectMetrics(const ModelRegistry& registry);

/// What /readyz and /livez answer: the states the gRPC health service
/// reports for readiness and liveness, for HTTP load balancers (HAProxy's
/// httpchk, which passes a gRPC path on HTTP 200 whatever grpc-status says).
struct ProbeStates {
  std::atomic<bool> ready{false};
  std::atomic<bool> live{false};
};

/// Serves /metrics over HTTP, and /readyz and /livez: 200 or 503, an O(1)
/// read of `probes`, answered before any metric is collected.
class MetricsExporter {
 public:
  /// `listen` is host:port; port 0 picks one (see port()). `probes` outlives
  /// the exporter.
  static absl::StatusOr<std::unique_ptr<MetricsExporter>> Start(const std::string& listen,
                                                                const ModelRegistry* registry,
                                                                const ProbeStates* probes);
  ~MetricsExporter();
  int port() const;

 private:
  class Collector;
  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_METRICS_EXPORTER_H_
