#ifndef MOE_ROUTER_SERVER_SERVER_H_
#define MOE_ROUTER_SERVER_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/admin_access.h"
#include "server/metrics_exporter.h"
#include "server/model_registry.h"
#include "server/service.h"
#include "server/tls.h"

namespace moe_router {

struct ServerOptions {
  /// host:port; port 0 picks a free one (see RouterServer::port()).
  std::string listen = "0.0.0.0:50051";
  /// TLS or mutual TLS on the data port. The health and metrics ports stay
  /// plaintext: kubelet gRPC probes and most scrapers speak no TLS, and
  /// neither port carries model data.
  TlsFiles tls;
  /// Model management off, or for admin certificates only
  /// (tls.admin_client_ca).
  bool disable_model_management = false;
  ServiceLimits limits;
  /// Largest request or response message.
  int max_message_bytes = 64 << 20;
  /// Calls open at once on one client connection (HTTP/2 streams).
  int max_concurrent_streams = 256;
  /// Where learned state is kept ("" keeps none), the models' memory
  /// limit, paging threads and worker-cache limits.
  RegistryOptions registry;
  /// How often learned state is saved to the state directory while
  /// serving, so a crash loses at most this much learning (it is also saved
  /// at shutdown).
  absl::Duration snapshot_interval = absl::Minutes(1);
  /// Prometheus /metrics (host:port, port 0 picks one; "" serves none).
  std::string metrics_listen;
  /// The health service alone on its own port too, so probes do not share
  /// the data path's port ("" for none).
  std::string health_listen;
};

/// A running moe-router gRPC server with its models, health service
/// ("", "liveness", "readiness", "moe_router.v1.MoeRouter") and reflection.
/// The destructor shuts it down.
///
///   auto server = RouterServer::Start({.listen = "127.0.0.1:0"});
///   int port = (*server)->port();
class RouterServer {
 public:
  static absl::StatusOr<std::unique_ptr<RouterServer>> Start(const ServerOptions& options);
  ~RouterServer();

  int port() const { return port_; }
  /// The health-only port, or 0 when not serving one.
  int health_port() const { return health_port_; }
  /// The /metrics port, or 0 when not serving metrics.
  int metrics_port() const { return metrics_ != nullptr ? metrics_->port() : 0; }
  ModelRegistry& registry() { return registry_; }
  /// Readiness ("readiness" and the service name) for load balancers;
  /// liveness stays SERVING until shutdown.
  void SetReady(bool ready);
  /// Drains and stops: refuses new calls (UNAVAILABLE, marked safe to
  /// retry), ends open streams at their next message boundary, lets the
  /// calls in flight complete until `deadline` (then cancels them), and only
  /// then shuts gRPC's transports down, so nothing in flight is cut off.
  /// Then saves the models' learned state (if a state_dir is set) and stops
  /// paging. Readiness is off from the start.
  void Shutdown(absl::Time deadline);

 private:
  RouterServer(const ServerOptions& options, std::unique_ptr<AdminAccess> admin)
      : registry_(options.registry),
        admin_(std::move(admin)),
        service_(&registry_, admin_.get(), &gate_, options.limits),
        snapshot_interval_(options.snapshot_interval) {}
  // Until shutdown: closes idle worker caches and saves learned state.
  void Housekeep();
  // Saves learned state, logging a failure.
  void SaveStates();

  ModelRegistry registry_;
  std::unique_ptr<AdminAccess> admin_;
  CallGate gate_;
  MoeRouterService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;
  int health_port_ = 0;
  // What /readyz and /livez answer; outlives metrics_, which reads it.
  ProbeStates probes_;
  std::unique_ptr<MetricsExporter> metrics_;
  int port_ = 0;
  bool stopped_ = false;
  const absl::Duration snapshot_interval_;
  absl::Notification stop_housekeeping_;
  std::thread housekeeper_;
};

}  // namespace moe_router

#endif  // MOE_ROUTER_SERVER_SERVER_H_
