#ifndef MOE_ROUTER_SERVER_METRICS_EXPORTER_H_
#define MOE_ROUTER_SERVER_METRICS_EXPORTER_H_

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

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

/// Serves /metrics over HTTP.
class MetricsExporter {
 public:
  /// `listen` is host:port; port 0 picks one (see port()).
  static absl::StatusOr<std::unique_ptr<MetricsExporter>> Start(const std::string& listen,
                                                                const ModelRegistry* registry);
  int port() const;

 private:
  class Collector;
  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_METRICS_EXPORTER_H_
